"""Fleets: the programs of a deployment file, launched and supervised by `rlay up`.

A program is any executable that speaks the protocol: a packaged game server, a C++ worker, a
Python push game. `rlay up` starts ``count`` instances of each, with the broker's back-end address
in ``{broker}`` and in ``RLAY_BROKER``, and which instance it is in ``RLAY_PROGRAM`` and
``RLAY_INSTANCE`` (the SDKs put both in `register`, so the broker counts registered instances).
``{python}`` in a command is the Python interpreter of whoever starts the instance (`rlay up`'s,
or on a Ray node the cluster's).
Each instance's output goes to a log file of its own. An instance is ready once it has registered;
one that has not within ``register_timeout`` is reported. One that exits is started again after a
growing delay, at most so often (rlay.cluster.Restarts), and every instance is stopped with its
whole process group: a shell script's children too.

Where the instances run is a launcher's business: processes on this host (LocalLauncher), or
Ray actors across a cluster (rlay/ray_fleet.py). A launcher has open(), launch() -> Handle, and
close(); the Fleet opens it before the first launch and closes it after stopping every instance.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlay import protocol as P
from rlay.cluster import Restarts, Supervision

__all__ = ["Program", "Fleet", "Launcher", "Handle", "LocalLauncher", "REPORT_INTERVAL", "dial_address", "start_logged"]

log = logging.getLogger("rlay.fleet")

REPORT_INTERVAL = 1.0  # s between looks at the broker's registrations and reports to it
STOP_TIMEOUT = 5.0  # s an instance gets to exit after SIGTERM before its group is killed


@dataclass(frozen=True)
class Program:
    """One [[programs]] table: ``count`` instances of ``command``."""

    name: str
    command: tuple[str, ...]
    count: int = 1
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    register_timeout: float = 60.0
    resources: dict[str, float] = field(default_factory=dict)  # per instance, on a Ray cluster

    def argv(self, index: int, broker: str, python: str = sys.executable) -> list[str]:
        """The command of instance ``index``: {broker}, {index}, {name} and {python} replaced."""
        return [
            arg.replace("{broker}", broker)
            .replace("{index}", str(index))
            .replace("{name}", self.name)
            .replace("{python}", python)
            for arg in self.command
        ]

    def environment(self, index: int, broker: str) -> dict[str, str]:
        """What the instance finds in its environment, besides what it inherits."""
        return {**self.env, "RLAY_BROKER": broker, P.PROGRAM_ENV: self.name, P.INSTANCE_ENV: str(index)}


class Handle(Protocol):
    """A launched instance, wherever it runs."""

    pid: int  # 0 until it runs
    where: str  # the host (or Ray node) it runs on
    log: str  # where its output goes (on a Ray node: "NODE:PATH")

    def exitcode(self) -> int | None: ...

    def pids(self) -> set[int]:
        """Its process and its descendants (to know its registration by pid when it names no program)."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    """Starts instances somewhere: this host (LocalLauncher), a Ray cluster (rlay.ray_fleet.RayLauncher)."""

    def open(self) -> None: ...

    def launch(self, program: Program, index: int, broker: str, log_path: Path) -> Handle: ...

    def close(self) -> None:
        """After stop(): nothing it launched is left."""
        ...


def dial_address(bind: str, host: str) -> str:
    """The address to dial a socket bound to ``bind`` at, from elsewhere: a wildcard host (tcp://*:5556,
    tcp://0.0.0.0:5556) is replaced by ``host``, the address the instances know the broker's host by."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bind.startswith(wildcard):
            return f"tcp://{host}:{bind[len(wildcard) :]}"
    return bind


def start_logged(argv: list[str], env: dict[str, str], cwd: str | None, log_path: Path | str, banner: str, **popen):
    """Start an instance's process in a session of its own, its output appended to ``log_path`` after a
    line with the time and ``banner``. OSError if it cannot start (the caller says where)."""
    with open(log_path, "ab") as out:
        out.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
        out.flush()
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )


class LocalProcess:
    """An instance on this host: a process in a new session (its own process group), its output to a
    log file."""

    where = "local"

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None, log_path: Path):
        self.popen = start_logged(argv, env, cwd, log_path, f"rlay up starts: {' '.join(argv)}")
        self.pid = self.popen.pid
        self.log = str(log_path)

    def exitcode(self) -> int | None:
        return self.popen.poll()

    def pids(self) -> set[int]:
        return {self.pid} | descendants(self.pid)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # (the group: what a shell script started dies with it)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("instance pid %d did not die after SIGKILL", self.pid)


class LocalLauncher:
    """Starts instances as processes of this host."""

    def open(self) -> None:
        pass

    def launch(self, program: Program, index: int, broker: str, log_path: Path) -> Handle:
        broker = dial_address(broker, "127.0.0.1")
        try:
            return LocalProcess(program.argv(index, broker), program.environment(index, broker), program.cwd, log_path)
        except OSError as exc:  # not found, not executable: as if it exited at once
            with open(log_path, "ab") as out:
                out.write(f"rlay up cannot start {program.command[0]!r}: {exc}\n".encode())
            return _Failed(exc, log_path)

    def close(self) -> None:
        pass


class _Failed:
    """An instance that could not even start."""

    pid, where = 0, "local"

    def __init__(self, exc: OSError, log_path: Path):
        self.exc, self.log = exc, str(log_path)

    def exitcode(self) -> int:
        return 127

    def pids(self) -> set[int]:
        return set()

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


@dataclass
class Instance:
    program: Program
    index: int
    log_path: Path
    handle: Handle | None = None
    launched: float = 0.0
    registered: bool = False
    late: bool = False  # reported as not registered within its program's register_timeout

    @property
    def label(self) -> str:
        return f"{self.program.name}#{self.index}"


class Fleet:
    """Every instance of ``programs``, launched by ``launcher`` and supervised under ``supervision``
    (None: an instance that exits stays down)."""

    def __init__(
        self,
        programs: list[Program],
        broker: str,
        log_dir: Path,
        *,
        supervision: Supervision | None,
        launcher: Launcher | None = None,
        frontend: str | None = None,
        curve: Any = None,
    ):
        """``broker``: the back end the instances dial; ``frontend``: where to ask the broker who registered
        and report to it (None: nobody to ask: instances are never counted registered)."""
        self.programs, self.broker, self.log_dir = programs, broker, Path(log_dir)
        self.frontend, self.curve = frontend, curve
        self._client: Any = None
        self._next_report = 0.0
        self.supervision = supervision
        self.restarts = Restarts(supervision or Supervision())
        self.launcher = launcher or LocalLauncher()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.instances = [
            # (a name may hold '/', as env ids do: one file per instance all the same)
            Instance(p, i, self.log_dir / f"{p.name.replace('/', '_')}-{i}.log")
            for p in programs
            for i in range(p.count)
        ]
        self.stopped = False

    def start(self) -> None:
        self.launcher.open()
        for instance in self.instances:
            self._launch(instance, time.monotonic())
        log.info(
            "fleet: %d instance(s) of %d program(s) started; logs in %s",
            len(self.instances),
            len(self.programs),
            self.log_dir,
        )

    def _launch(self, instance: Instance, now: float) -> None:
        instance.handle = self.launcher.launch(instance.program, instance.index, self.broker, instance.log_path)
        instance.launched, instance.registered, instance.late = now, False, False

    def poll(self, now: float, workers: list[dict] | None = None) -> None:
        """Restart what exited (when due), and, given the broker's workers, note who registered and
        report launches that have not within their program's register_timeout."""
        for instance in self.instances:
            if instance.handle is None or instance.label in self.restarts.gave_up:
                continue
            code = instance.handle.exitcode()
            if code is None:
                continue
            if self.supervision is None:
                if not instance.late:  # (reported once)
                    log.error(
                        "%s (pid %d on %s) exited with code %s; not restarted (--no-restart; its log: %s)",
                        instance.label,
                        instance.handle.pid,
                        instance.handle.where,
                        code,
                        instance.handle.log,
                    )
                    instance.late = True
                continue
            if not self.restarts.waiting(instance.label):
                delay = self.restarts.died(instance.label, now)
                instance.registered = False
                if delay is None:
                    log.error(
                        "%s died %d times in %g s; not restarting it again (its log: %s)",
                        instance.label,
                        self.restarts.count(instance.label) + 1,
                        self.restarts.policy.window,
                        instance.handle.log,
                    )
                else:
                    log.warning(
                        "%s (pid %d on %s) exited with code %s; restarting it in %.1f s (its log: %s)",
                        instance.label,
                        instance.handle.pid,
                        instance.handle.where,
                        code,
                        delay,
                        instance.handle.log,
                    )
            elif self.restarts.ready(instance.label, now):
                self._launch(instance, now)
        if workers is not None:
            self._registrations(now, workers)

    def _registrations(self, now: float, workers: list[dict]) -> None:
        named = {(w.get("program"), w.get("instance")) for w in workers if "program" in w}
        pids = {w["pid"] for w in workers if "program" not in w}
        for instance in self.instances:
            handle = instance.handle
            if handle is None or handle.exitcode() is not None:
                continue
            registered = (instance.program.name, instance.index) in named or bool(pids and pids & handle.pids())
            if registered and not instance.registered:
                log.info(
                    "%s (pid %d on %s) registered %.1f s after its launch; its log: %s",
                    instance.label,
                    handle.pid,
                    handle.where,
                    now - instance.launched,
                    handle.log,
                )
            instance.registered = registered
            if not registered and not instance.late and now - instance.launched > instance.program.register_timeout:
                instance.late = True
                log.error(
                    "%s (pid %d on %s) has not registered within %g s of its launch; its log: %s",
                    instance.label,
                    handle.pid,
                    handle.where,
                    instance.program.register_timeout,
                    handle.log,
                )

    def report(self) -> list[dict[str, Any]]:
        """What `fleet` tells the broker (protocol 5.16): per program, instances wanted, running, not
        registered in time, given up on, and restarts."""
        programs = []
        for program in self.programs:
            mine = [i for i in self.instances if i.program is program]
            live = [i for i in mine if i.handle is not None and i.handle.exitcode() is None]
            programs.append(
                {
                    "name": program.name,
                    "count": program.count,
                    "running": len(live),
                    "unregistered": sum(i.late and not i.registered for i in live),
                    "given_up": sum(i.label in self.restarts.gave_up for i in mine),
                    "restarts": sum(self.restarts.count(i.label) for i in mine),
                }
            )
        return programs

    def tend(self, now: float) -> None:
        """poll(), with the broker's registrations at most once per REPORT_INTERVAL, then report to it."""
        if self.frontend is None or now < self._next_report:
            self.poll(now)
            return
        self._next_report = now + REPORT_INTERVAL
        from rlay.client import BrokerClient
        from rlay.errors import RlayError

        if self._client is None:
            self._client = BrokerClient(self.frontend, curve=self.curve)
        try:
            workers = self._client.request(P.STATUS, REPORT_INTERVAL * 2, "the broker's status")["workers"]
            self.poll(now, workers)
            self._client.request(P.FLEET, REPORT_INTERVAL * 2, "a fleet report", programs=self.report())
        except (RlayError, TimeoutError) as exc:  # the broker is away: supervise on, ask again later
            log.warning("fleet: no word from the broker at %s (%s); instances are still supervised", self.frontend, exc)
            self.poll(now)
            self._client.close()  # (a fresh connection next time: the answers to this one are not awaited)
            self._client = None

    @property
    def next_due(self) -> float | None:
        return self.restarts.next_due

    @property
    def gave_up(self) -> set[str]:
        return self.restarts.gave_up

    def _exited(self, instance: Instance) -> int | None:
        return None if instance.handle is None else instance.handle.exitcode()

    @property
    def down(self) -> bool:
        """Whether no instance runs and none will again: each exited unsupervised, or was given up on."""
        return all(
            instance.label in self.restarts.gave_up or (self.supervision is None and self._exited(instance) is not None)
            for instance in self.instances
        )

    @property
    def failed(self) -> set[str]:
        """Instances given up on, and, unsupervised, those that exited with an error."""
        unsupervised = set()
        if self.supervision is None:
            unsupervised = {i.label for i in self.instances if self._exited(i) not in (None, 0)}
        return self.restarts.gave_up | unsupervised

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every instance's process group, wait up to ``timeout``, then SIGKILL what is left."""
        if self.stopped:
            return
        self.stopped = True
        live = [i.handle for i in self.instances if i.handle is not None and i.handle.exitcode() is None]
        for handle in live:
            handle.terminate()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(h.exitcode() is None for h in live):
            time.sleep(0.05)
        for handle in live:  # (a group outlives its leader: kill what is left of each, exited or not)
            handle.kill()
        self.launcher.close()
        if self._client is not None:
            self._client.close()
            self._client = None


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found
