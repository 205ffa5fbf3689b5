"""Liveness between a peer (worker or trainer) and its broker: the Paranoid Pirate pattern.

A peer pings the broker every ``interval`` seconds it has sent nothing else, from a thread of
its own, on a socket of its own whose routing id is the peer's main id plus ``|hb``: a main
thread that is busy in a long env step, or in the trainer's own computation, still proves its
process alive. The broker answers every ping. A process that is killed, stopped (SIGSTOP) or cut
off stops pinging, whatever its main thread was doing.

Network cuts (protocol 8.5): a cut shorter than the expiry (``interval * liveness``) costs nothing.
The broker loses a peer whose connection is still open only after the expiry plus
CUT_GRACE_INTERVALS intervals (the window), which leaves room for the ping interval and TCP's
retransmission once the link is back, and a peer counts its broker lost one interval after that,
so that the broker's verdict comes first and a peer recovers once.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import zmq

from rlay import protocol as P
from rlay.wire import decode_header, header

__all__ = ["Heartbeat", "new_identity", "announced_heartbeat", "HEARTBEAT_SUFFIX"]

log = logging.getLogger("rlay.heartbeat")

HEARTBEAT_SUFFIX = b"|hb"


def announced_heartbeat(answer: dict) -> tuple[float | None, int | None]:
    """The heartbeat interval (s) and liveness a broker announces in `registered` or `leased`;
    None for a value it does not announce, or announces out of range (which must not make a peer
    ping in a busy loop, or never)."""
    interval, liveness = answer.get("heartbeat_interval"), answer.get("heartbeat_liveness")
    interval_ok = type(interval) in (int, float) and P.MIN_HEARTBEAT_INTERVAL <= interval <= P.MAX_HEARTBEAT_INTERVAL
    liveness_ok = type(liveness) is int and 1 <= liveness <= P.MAX_HEARTBEAT_LIVENESS
    return (float(interval) if interval_ok else None), (liveness if liveness_ok else None)


def new_identity() -> bytes:
    """A routing id for a peer's main socket; its heartbeat socket adds HEARTBEAT_SUFFIX."""
    return b"r" + os.urandom(11)


class Heartbeat:
    """Pings ``address`` on behalf of the peer whose main socket has routing id ``identity``.

    Pings ride on traffic: the owner reports each message it sends and receives on its main
    socket (``sent()``, ``received()``), and a ping goes out only when the owner has sent nothing
    for an interval (the broker counts any message from a peer as a sign of life, protocol 8.5),
    so a busy peer pings not at all. A message from the broker counts as an answer. The thread
    sleeps until the next ping is due: it wakes for pings, their answers, and stop() or a new
    interval (a byte on a pipe), not on a timer.
    """

    def __init__(
        self,
        address: str,
        identity: bytes,
        interval: float = P.HEARTBEAT_INTERVAL,
        liveness: int = P.HEARTBEAT_LIVENESS,
        context: zmq.Context | None = None,
        curve=None,
    ):
        self.address = address
        self.identity = identity
        self.interval = interval
        self.liveness = liveness
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.last_answer = time.monotonic()
        self.last_unknown: float | None = None  # when the broker last said it does not know this peer
        self.last_sent = 0.0  # when the owner last sent on its main socket
        self.answered = False  # whether any answer ever came (none at all: wrong address, or refused by CURVE)
        self.pings = 0  # pings sent (the rest rode on traffic)
        self.longest_silence = 0.0  # s: the longest silence an answer ended (after a network cut, say)
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="rlay-heartbeat", daemon=True)
        self._thread.start()

    @property
    def silence(self) -> float:
        """Seconds since the broker last answered, or sent anything."""
        return time.monotonic() - self.last_answer

    @property
    def window(self) -> float:
        """The silence (s) after which the broker counts as lost: the expiry, the broker's grace for a
        cut (protocol.CUT_GRACE_INTERVALS), and one interval more for its verdict to arrive first."""
        return self.interval * (self.liveness + P.CUT_GRACE_INTERVALS + 1)

    @property
    def lost(self) -> bool:
        return self.silence > self.window

    def reset(self) -> None:
        """Start counting again (after registering anew)."""
        self.last_answer = time.monotonic()
        self.last_unknown = None

    def sent(self) -> None:
        """The owner sent a message to the broker on its main socket: a sign of life there."""
        self.last_sent = time.monotonic()

    def received(self) -> None:
        """A message came from the broker on the owner's main socket: the broker is there."""
        self._answered_now()
        self.answered = True

    def _answered_now(self) -> None:
        now = time.monotonic()
        self.longest_silence = max(self.longest_silence, now - self.last_answer)
        self.last_answer = now

    def adopt(self, answer: dict) -> None:
        """Take the broker's heartbeat settings from its `registered` or `leased` ``answer`` (protocol 5.3,
        5.5): ping every interval it expects, and count it lost after as long a silence as it allows.
        Settings it does not announce (or announces malformed) are kept."""
        interval, liveness = announced_heartbeat(answer)
        if liveness is not None:
            self.liveness = liveness
        if interval is not None and interval != self.interval:
            self.interval = interval
            self._wake()  # the next ping is due at most one new interval from now

    def forgotten_since(self, since: float) -> bool:
        """Whether the broker said it does not know this peer in an answer received more than an
        interval after ``since`` (when the peer registered or leased): older answers may predate it."""
        return self.last_unknown is not None and self.last_unknown > since + self.interval

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # (closed: the thread is gone)
            pass

    def _connect(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self.identity + HEARTBEAT_SUFFIX)
        sock.setsockopt(zmq.SNDHWM, self.liveness)  # a broker that is away gets no backlog of pings
        if self.curve is not None:
            self.curve.secure_client(sock)
        sock.connect(self.address)
        return sock

    def _run(self) -> None:
        """Ping until stop(). Nothing ends the thread early: a socket that fails (no file descriptor
        left, say) is logged and made again 100 ms later. A thread that died would leave its peer
        lost, and registering or leasing again, every window for the rest of its life."""
        sock: zmq.Socket | None = None
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        ping = header(P.HEARTBEAT)
        next_ping = time.monotonic()
        failing = False
        while not self._stopping:
            try:
                if sock is None:
                    sock = self._connect()
                    poller.register(sock, zmq.POLLIN)
                now = time.monotonic()
                if now >= next_ping:
                    # Pings ride on the owner's traffic only while the broker answers: when it falls
                    # silent, the ping path proves this peer alive on its own.
                    if now - self.last_sent >= self.interval or now - self.last_answer >= self.interval:
                        try:
                            sock.send(ping, zmq.NOBLOCK)
                            self.pings += 1
                        except zmq.Again:
                            pass  # the broker is not there: silence grows, the owner finds out
                        next_ping = now + self.interval
                    else:  # the owner's own traffic proves it alive: look again an interval after it
                        next_ping = self.last_sent + self.interval
                for item, _ in poller.poll(max(0.0, next_ping - time.monotonic()) * 1000):
                    if item is sock:
                        self._answer(sock.recv_multipart())
                    else:  # stop(), or a new interval: due at most one interval from now
                        os.read(self._wake_r, 64)
                        next_ping = min(next_ping, time.monotonic() + self.interval)
                failing = False
            except (zmq.ZMQError, OSError) as exc:
                if not failing:
                    log.error("the heartbeat socket failed (making it again): %s", exc)
                failing = True
                if sock is not None:
                    poller.unregister(sock)
                    sock.close()
                    sock = None
                if self._stopping:
                    break
                try:
                    poller.poll(100)  # (a retry 100 ms later, unless stop() wakes it first)
                except zmq.ZMQError:
                    time.sleep(0.1)
        if sock is not None:
            sock.close()

    def _answer(self, frames: list[bytes]) -> None:
        try:
            answer = decode_header(frames[0])
        except Exception:
            log.warning("unreadable answer to a heartbeat")
            return
        if answer[P.TYPE] == P.HEARTBEAT:
            self._answered_now()
            self.last_unknown = None if answer.get("known") else self.last_answer
            self.answered = True

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(self.interval * 2 + 1)
        if not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)
