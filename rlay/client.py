"""A trainer's connection to a broker: requests with ids, replies with deadlines."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import zmq

from rlay import protocol as P
from rlay.errors import BrokerError, BrokerLostError, RlayTimeoutError
from rlay.heartbeat import Heartbeat, new_identity
from rlay.values import WireError
from rlay.wire import announced_limit, decode_header, header, oversized, send_frames

__all__ = ["BrokerClient"]

log = logging.getLogger("rlay.client")


class BrokerClient:
    """One DEALER socket to a broker's front end.

    ``health_check`` is called while waiting (every few hundred ms) so that an
    embedded trainer notices a local child process that died.
    """

    def __init__(
        self,
        address: str,
        *,
        health_check: Callable[[], None] | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_liveness: int = P.HEARTBEAT_LIVENESS,
        curve: Any = None,
    ):
        self.address = address
        self.health_check = health_check
        self.leased_at: float | None = None  # once a lease is granted, a broker that forgets us is an error
        self.ctx = zmq.Context()
        self.identity, self.curve = new_identity(), curve
        self.sock = self._connect()
        self.heartbeat = None
        if heartbeat_interval is not None:
            self.heartbeat = Heartbeat(address, self.identity, heartbeat_interval, heartbeat_liveness, self.ctx, curve)
        self._req_ids = itertools.count(1)
        self._next_check = time.monotonic() + P.IDLE_POLL_MS / 1000  # the health check costs syscalls
        self.answered = False  # whether anything ever came back on the main socket
        self.max_frame: int | None = None  # the broker's max_message_size, from `leased`

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(P.SEND_TIMEOUT * 1000))
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        if self.curve is not None:
            self.curve.secure_client(sock)
        sock.connect(self.address)
        return sock

    def reconnect(self) -> None:
        """Replace the main connection, keeping the routing id (protocol 8.5), to lease again: once the
        broker is lost or has forgotten this trainer, what the old one holds is moot, and after a network
        cut TCP may hold it back for seconds more. The broker hands the id over to the new connection."""
        self.sock.close(linger=0)
        self.sock = self._connect()

    def leased(self, answer: dict) -> None:
        """A lease was granted (``answer`` is its `leased`): from now on a broker that forgets this
        trainer is an error, and the broker's max_message_size and heartbeat settings apply (each
        lease: a restarted broker may have others)."""
        self.leased_at = time.monotonic()
        self.max_frame = announced_limit(answer)
        if self.heartbeat is not None:
            self.heartbeat.adopt(answer)

    def send(self, type_: str, frames: Sequence[Any] = (), **fields: Any) -> int:
        """Send a request; returns its id for :meth:`wait`.

        A request with a frame over the broker's max_message_size is not sent (ZeroMQ would drop it
        and cut this connection, and its wait would time out): BrokerError says so instead."""
        req = next(self._req_ids)
        frames = [header(type_, req=req, **fields), *frames]
        largest = oversized(frames, self.max_frame)
        if largest is not None:
            raise BrokerError(
                f"cannot send a {type_} to {self.where}: a frame of {largest} bytes is over the "
                f"broker's max_message_size of {self.max_frame}; nothing was sent"
            )
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            raise BrokerLostError(
                f"could not send a {type_} to {self.where} within {P.SEND_TIMEOUT:g} s: no "
                "connection (with CURVE on: is this trainer's key among the broker's "
                "authorized keys?)"
            ) from None
        if self.heartbeat is not None:
            self.heartbeat.sent()
        return req

    def wait(
        self, req: int | Container[int], wait_s: float, what: str, *, check_broker: bool = True
    ) -> tuple[dict, list[Any]]:
        """Wait up to ``wait_s`` s for a reply to ``req`` (or to any of several); stale replies are dropped.

        Returns (header, frames after the header). An ``error`` reply is
        returned too: the caller knows what it means for its request.
        ``check_broker=False`` waits out a broker that is away (for a lease
        that may only be answered once it is back) instead of raising BrokerLostError.
        """
        answer = self.poll(req, wait_s, what, check_broker=check_broker)
        if answer is None:
            raise RlayTimeoutError(
                f"no reply from {self.where} within {wait_s:g} s while waiting for {what}{self._never_answered()}"
            )
        return answer

    def poll(
        self, req: int | Container[int], wait_s: float, what: str, *, check_broker: bool = True
    ) -> tuple[dict, list[Any]] | None:
        """As wait(), but None when no reply came within ``wait_s`` s."""
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.health_check is not None and time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + P.IDLE_POLL_MS / 1000
                self.health_check()
            if check_broker:
                self._check_broker(what)
            frames = self._next_message(min(remaining * 1000, P.IDLE_POLL_MS) + 1)
            if frames is None:
                continue
            self.answered = True
            try:
                head = decode_header(frames[0])
            except WireError as exc:
                raise BrokerError(f"unreadable reply from {self.where}: {exc}") from None
            if _answers(head, req):
                return head, frames[1:]
            log.debug("dropping a stale reply to request %r", head.get(P.REQ))

    @property
    def where(self) -> str:
        return f"the broker at {self.address}"

    def _next_message(self, timeout_ms: float) -> list[Any] | None:
        """The next message from the broker, if one comes within ``timeout_ms``."""
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart(copy=False)
        if self.heartbeat is not None:
            self.heartbeat.received()
        return frames

    def _check_broker(self, what: str) -> None:
        hb = self.heartbeat
        if hb is None:
            return
        if hb.lost:
            raise BrokerLostError(
                f"the broker at {self.address} has not answered heartbeats for "
                f"{hb.silence:.1f} s, while waiting for {what}{self._never_answered()}"
            )
        if self.leased_at is not None and hb.forgotten_since(self.leased_at):
            raise BrokerLostError(
                f"the broker at {self.address} no longer knows this trainer (it restarted, or "
                f"counted this trainer lost): its lease is gone; while waiting for {what}"
            )

    def _never_answered(self) -> str:
        """A hint for an error, when nothing at all ever came from the broker's address."""
        if self.answered or (self.heartbeat is not None and self.heartbeat.answered):
            return ""
        return (
            "; nothing at all has come from that address since connecting: is a broker running there? If it "
            'uses CURVE, this client needs the keys (--curve DIR, or curve=Curve.from_dir(DIR, "client")), '
            "and its public key must be among the broker's authorized keys"
        )

    def request(
        self, type_: str, wait_s: float, what: str, error: type[Exception] = BrokerError, **fields: Any
    ) -> dict:
        """Send a header-only request and return the reply header; raise ``error`` on an error reply."""
        head, _ = self.wait(self.send(type_, **fields), wait_s, what)
        if head[P.TYPE] == P.ERROR:
            raise error(f"the broker refused {what}: {head.get('message')}")
        return head

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.sock.close()
        self.ctx.term()


def _answers(head: dict, req: int | Container[int]) -> bool:
    """Whether ``head`` answers ``req``; an error without req means the broker could not read our header."""
    got = head.get(P.REQ)
    if got is None:
        return head[P.TYPE] == P.ERROR
    return got == req if isinstance(req, int) else got in req


class InlineBrokerClient(BrokerClient):
    """A trainer's connection to a broker in its own process (embedded mode).

    Requests go straight to the broker's handlers, and while it waits the
    trainer's thread turns the broker's poll loop itself: a step travels
    trainer -> worker -> trainer with no broker hop and no thread hand-off.
    """

    IDENT = b"inline-trainer"
    IDLE_PUMP_S = 0.1  # while the trainer computes, the broker still answers its workers' heartbeats

    def __init__(self, broker: Any, *, health_check: Callable[[], None] | None = None):
        self.broker = broker
        self.address = "the private broker"
        self.health_check = health_check
        self.outbox = broker.front.outbox[self.IDENT]
        self.heartbeat = None  # in the same process: nothing to ping
        self.answered = True  # (no address to get wrong: no hint in its errors)
        self.leased_at: float | None = None
        self.max_frame: int | None = None  # (an embedded broker has no limit)
        self._req_ids = itertools.count(1)
        self._next_check = time.monotonic() + P.IDLE_POLL_MS / 1000  # the health check costs syscalls
        # The broker is turned by whoever holds the lock: the trainer's thread in send/wait,
        # otherwise the idle pumper, which never blocks while holding it.
        self.lock = threading.Lock()
        self._closed = threading.Event()
        self._pumper = threading.Thread(target=self._pump_while_idle, name="rlay-inline-broker", daemon=True)
        self._pumper.start()

    def _pump_while_idle(self) -> None:
        while not self._closed.wait(self.IDLE_PUMP_S):
            if self.lock.acquire(blocking=False):
                try:
                    if not self._closed.is_set():
                        self.broker.pump(0)
                except Exception:
                    log.exception("the private broker failed while the trainer was idle")
                finally:
                    self.lock.release()

    def send(self, type_: str, frames: Sequence[Any] = (), **fields: Any) -> int:
        req = next(self._req_ids)
        with self.lock:
            self.broker.process_trainer(self.IDENT, [header(type_, req=req, **fields), *frames])
        return req

    def poll(
        self, req: int | Container[int], wait_s: float, what: str, *, check_broker: bool = True
    ) -> tuple[dict, list[Any]] | None:
        with self.lock:  # the idle pumper stays out while this thread turns the broker
            return super().poll(req, wait_s, what, check_broker=check_broker)

    @property
    def where(self) -> str:
        return "the private broker"

    def reconnect(self) -> None:
        """(No connection to replace: the broker is in this process.)"""

    def _next_message(self, timeout_ms: float) -> list[Any] | None:
        """What the broker answered, turning its poll loop for up to ``timeout_ms`` if nothing is queued."""
        if not self.outbox:
            self.broker.pump(timeout_ms)
        return self.outbox.popleft() if self.outbox else None

    def close(self) -> None:
        """Stop the idle pumper; the broker itself belongs to the cluster, which closes it."""
        self._closed.set()
        self._pumper.join(self.IDLE_PUMP_S * 10)
