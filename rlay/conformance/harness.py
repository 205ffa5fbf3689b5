"""The processes and sockets a conformance run drives: the worker under test, a real broker, and a
raw broker stand-in that sends what no real broker would.

Every wait here has a timeout, and its error names what was awaited; every process started here
is stopped by ``close()``, its whole process group included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from rlay import protocol as P
from rlay.client import BrokerClient
from rlay.heartbeat import HEARTBEAT_SUFFIX
from rlay.values import WireError
from rlay.wire import decode_header, header

__all__ = ["CheckFailed", "WorkerProcess", "BrokerProcess", "RawBroker", "wait_until"]


class CheckFailed(AssertionError):
    """A check found the worker wrong: the message is the one line the report shows."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it is truthy; CheckFailed naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """The worker under test: ``command`` with ``{broker}`` replaced by the back-end address, also in
    ``RLAY_BROKER``, in a process group of its own (so that signals reach what it starts), its output
    in a log file."""

    def __init__(self, command: list[str], backend: str, log_path: Path):
        self.command = [arg.replace("{broker}", backend) for arg in command]
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None
        self.backend = backend

    def start(self) -> None:
        env = {**os.environ, "RLAY_BROKER": self.backend}
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise CheckFailed(f"cannot start {self.command[0]!r}: {exc.strerror}") from None
        finally:
            log.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        """Signal the worker's whole process group."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def wait_exit(self, timeout: float, what: str) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the worker (pid {self.pid}) did not exit within {timeout:g} s after {what}") from None

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what is left after 10 s; a stopped group is continued first."""
        if self.popen is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.signal(signal.SIGKILL)  # (also any child the worker left behind)
        self.popen.wait(10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class BrokerProcess:
    """A real broker (`rlay broker`) on ``frontend`` and ``backend``; ``kill()`` stops it without the
    `disconnect` a clean stop sends, as a crash would."""

    def __init__(self, frontend: str, backend: str, interval: float, liveness: int, log_path: Path):
        self.frontend, self.backend = frontend, backend
        self.args = [
            sys.executable,
            "-m",
            "rlay.cli",
            "--log-level",
            "INFO",
            "broker",
            "--frontend",
            frontend,
            "--backend",
            backend,
            "--heartbeat-interval",
            str(interval),
            "--heartbeat-liveness",
            str(liveness),
        ]
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers(), timeout, f"the broker to answer on {self.frontend}")

    def _answers(self) -> bool:
        if self.popen.poll() is not None:
            raise CheckFailed(f"the broker exited with code {self.popen.returncode} (log: {self.log_path})")
        try:
            self.status(timeout=1.0)
            return True
        except Exception:
            return False

    def status(self, timeout: float = 5.0) -> dict:
        client = BrokerClient(self.frontend)
        try:
            return client.request(P.STATUS, timeout, f"the status of the broker at {self.frontend}")
        finally:
            client.close()

    def workers(self) -> list[dict]:
        return self.status()["workers"]

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self) -> None:
        """A clean stop: the broker sends `disconnect` to its workers."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RawBroker:
    """A ROUTER bound where the broker's back end would be, speaking the protocol by hand: it registers
    the worker, answers its pings, and sends it requests no real broker would send."""

    def __init__(self, backend: str, interval: float, liveness: int):
        self.backend, self.interval, self.liveness = backend, interval, liveness
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(backend)
        self.worker: bytes | None = None  # the registered worker's routing id
        self.pings: list[float] = []  # when the registered worker's pings arrived
        self.registered_at: float | None = None
        self.forgotten = False  # answer pings known: false (as a broker that restarted)
        self.alive: Callable[[], None] = lambda: None  # raises CheckFailed once the worker has exited

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def _next(self, deadline: float, what: str) -> tuple[bytes, list[bytes]]:
        """The next message that is not a ping (pings are answered and recorded here)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckFailed(f"timed out waiting for {what} from the worker on {self.backend}")
            if not self.sock.poll(min(remaining, 0.25) * 1000):
                self.alive()
                continue
            ident, *frames = self.sock.recv_multipart()
            main = ident[: -len(HEARTBEAT_SUFFIX)] if ident.endswith(HEARTBEAT_SUFFIX) else ident
            try:
                head = decode_header(frames[0]) if frames else None
            except WireError:
                head = None
            if head is not None and head[P.TYPE] == P.HEARTBEAT:
                known = main == self.worker and not self.forgotten
                if main == self.worker:
                    self.pings.append(time.monotonic())
                self.sock.send_multipart([ident, header(P.HEARTBEAT, known=known)])
                continue
            return ident, frames

    def expect_register(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ident, frames = self._next(deadline, "a `register`")
            try:
                head = decode_header(frames[0])
            except (WireError, IndexError) as exc:
                raise CheckFailed(f"the worker's first message is unreadable: {exc}") from None
            if head[P.TYPE] == P.REGISTER:
                self.worker = ident
                head["routing_id"] = ident
                return head

    def registered(self, num_envs: int, announce: bool = True) -> None:
        """Answer the worker's `register`; ``announce``: with this broker's heartbeat settings (5.3)."""
        settings = {"heartbeat_interval": self.interval, "heartbeat_liveness": self.liveness} if announce else {}
        self.sock.send_multipart(
            [self.worker, header(P.REGISTERED, worker="w1", slots=list(range(num_envs)), **settings)]
        )
        self.registered_at = time.monotonic()
        self.forgotten = False

    def refuse_registration(self, retry_after: float) -> None:
        """Answer the worker's `register` as a broker over its registration rate (protocol 8.6)."""
        self.sock.send_multipart(
            [
                self.worker,
                header(
                    P.ERROR,
                    req=None,
                    code=P.E_LIMIT,
                    retry_after=retry_after,
                    message=f"too many registrations; try again in {retry_after} s",
                ),
            ]
        )

    def forget(self) -> None:
        self.forgotten = True

    def ask(self, frames: list[bytes], timeout: float, what: str) -> tuple[dict, list[bytes]]:
        """Send ``frames`` to the worker; its answer: (header, frames after it)."""
        self.sock.send_multipart([self.worker, *frames])
        return self.answer(timeout, what)

    def answer(self, timeout: float, what: str) -> tuple[dict, list[bytes]]:
        deadline = time.monotonic() + timeout
        ident, frames = self._next(deadline, f"the answer to {what}")
        if ident != self.worker:
            raise CheckFailed(f"an answer to {what} came from another routing id than the registered worker's")
        try:
            return decode_header(frames[0]), frames[1:]
        except (WireError, IndexError) as exc:
            raise CheckFailed(f"the answer to {what} has an unreadable header: {exc}") from None

    def silent_for(self, seconds: float, what: str) -> None:
        """Check that the worker sends nothing but pings for ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            ident, frames = self._next(deadline, "nothing")
        except CheckFailed:
            return
        raise CheckFailed(f"the worker answered {what}, which must not be answered: {frames[:1]!r:.120}")

    def pump(self, seconds: float) -> None:
        """Answer pings for ``seconds``; anything else the worker sends is an error."""
        self.silent_for(seconds, "nothing (an unprompted message)")
