"""Liveness between a peer (worker or trainer) and its broker: the Paranoid Pirate pattern.

A peer pings the broker every ``interval`` seconds from a thread of its own, on a
socket of its own whose routing id is the peer's main id plus ``|hb``: a main
thread that is busy in a long env step, or in the trainer's own computation,
still proves its process alive. The broker answers every ping; it counts a peer
lost after ``interval * liveness`` seconds without a ping, and the peer counts the
broker lost after as long without an answer. A process that is killed, stopped
(SIGSTOP) or cut off stops pinging, whatever its main thread was doing.
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
STOP_SLICE = 0.05  # s: how long stop() may wait for the thread to notice


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
    """Pings ``address`` on behalf of the peer whose main socket has routing id ``identity``."""

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
        self.answered = False  # whether any answer ever came (none at all: wrong address, or refused by CURVE)
        self._next_ping = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlay-heartbeat", daemon=True)
        self._thread.start()

    @property
    def silence(self) -> float:
        """Seconds since the broker last answered."""
        return time.monotonic() - self.last_answer

    @property
    def lost(self) -> bool:
        return self.silence > self.interval * self.liveness

    def reset(self) -> None:
        """Start counting again (after registering anew)."""
        self.last_answer = time.monotonic()
        self.last_unknown = None

    def adopt(self, answer: dict) -> None:
        """Take the broker's heartbeat settings from its `registered` or `leased` ``answer`` (protocol 5.3,
        5.5): ping every interval it expects, and count it lost after as long a silence as it allows.
        Settings it does not announce (or announces malformed) are kept."""
        interval, liveness = announced_heartbeat(answer)
        if liveness is not None:
            self.liveness = liveness
        if interval is not None and interval != self.interval:
            self.interval = interval
            self._next_ping = min(self._next_ping, time.monotonic() + interval)  # (the thread reads it)

    def forgotten_since(self, since: float) -> bool:
        """Whether the broker said it does not know this peer in an answer received more than an
        interval after ``since`` (when the peer registered or leased): older answers may predate it."""
        return self.last_unknown is not None and self.last_unknown > since + self.interval

    def _run(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self.identity + HEARTBEAT_SUFFIX)
        sock.setsockopt(zmq.SNDHWM, self.liveness)  # a broker that is away gets no backlog of pings
        if self.curve is not None:
            self.curve.secure_client(sock)
        sock.connect(self.address)
        ping = header(P.HEARTBEAT)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= self._next_ping:
                    try:
                        sock.send(ping, zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # the broker is not there: silence grows, the owner finds out
                    self._next_ping = now + self.interval
                # short slices: stop() must not wait for a whole interval, nor a new interval be missed
                if sock.poll(min(max(0.0, self._next_ping - time.monotonic()), STOP_SLICE) * 1000):
                    frames = sock.recv_multipart()
                    try:
                        answer = decode_header(frames[0])
                        if answer[P.TYPE] == P.HEARTBEAT:
                            self.last_answer = time.monotonic()
                            self.last_unknown = None if answer.get("known") else self.last_answer
                            self.answered = True
                    except Exception:
                        log.warning("unreadable answer to a heartbeat")
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval * 2 + 1)
