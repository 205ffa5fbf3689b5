"""Which peers the broker watches, and which have fallen silent (docs/protocol.md 8.5).

A watched peer's every ping, and every other message on its main socket, is a sign of life. Workers
are watched from their registration (heartbeats are mandatory for them); trainers from their lease
request. A peer that pings before the broker knows it is remembered as pinging (a bounded set), so
that it is watched from the moment it is known.

Silence has two causes that the broker tells apart: a peer that is gone (killed: its connection
closed) and a peer cut off by the network (its connection still open, and TCP holding what it sent).
Once a peer has been silent for the expiry it is **probed**: the broker sends an unasked heartbeat
answer to the socket it pings from, which fails at once if ZeroMQ has seen that connection close. A peer that fails the
probe is lost then; one whose connection is still open is lost only after CUT_GRACE_INTERVALS more
intervals of silence, long enough for a cut shorter than the expiry to heal and its pings to come.
"""

from __future__ import annotations

import time

from rlay import protocol as P

__all__ = ["Liveness"]

MAX_PINGING = 65536  # unknown peers remembered as pinging: bounded against a flood


class Liveness:
    def __init__(self, interval: float, liveness: int):
        self.interval = interval
        self.expiry = interval * liveness
        self.window = interval * (liveness + P.CUT_GRACE_INTERVALS)  # for a peer whose connection is open
        self.last_seen: dict[bytes, float] = {}  # watched peers: main ident -> last sign of life
        self.ping_from: dict[bytes, bytes] = {}  # watched peers that ping: main ident -> the ident it pinged from
        self.pinging: dict[bytes, tuple[float, bytes]] = {}  # peers that pinged before they were known
        self._next_check = 0.0

    def ping(self, ident: bytes, main: bytes) -> None:
        """A ping from ``ident``, a socket of peer ``main``: a sign of life if it is watched, else a note
        that it pings (a trainer whose lease request is still on its way, a worker about to register)."""
        now = time.monotonic()
        if main in self.last_seen:
            self.last_seen[main] = now
            self.ping_from[main] = ident
        elif len(self.pinging) < MAX_PINGING or main in self.pinging:
            self.pinging[main] = (now, ident)

    def seen(self, ident: bytes) -> None:
        """Any other message from a peer's main socket."""
        if ident in self.last_seen:
            self.last_seen[ident] = time.monotonic()

    def watch(self, ident: bytes) -> None:
        """Peer ``ident`` just became known: watch it from now, not from its next ping, so that one dying
        in between is not missed and one that never pings is expired."""
        pinged = self.pinging.pop(ident, None)
        self.last_seen[ident] = time.monotonic()
        if pinged is not None:  # (watched again, at a grant: where it pinged from is kept)
            self.ping_from[ident] = pinged[1]

    def forget(self, ident: bytes) -> None:
        self.last_seen.pop(ident, None)
        self.ping_from.pop(ident, None)

    def silent(self, now: float) -> tuple[list[tuple[bytes, float]], list[tuple[bytes, bytes, float]]]:
        """The watched peers silent past the window, with their silence (no longer watched), and those
        silent past the expiry but within the window, to probe: (main ident, the ident to probe,
        silence). Looked at most once per interval."""
        if now < self._next_check:
            return [], []
        self._next_check = now + self.interval
        if self.pinging:
            self.pinging = {i: seen for i, seen in self.pinging.items() if now - seen[0] <= self.expiry}
        lost, probe = [], []
        for ident, seen in self.last_seen.items():
            if now - seen > self.window:
                lost.append((ident, now - seen))
            elif now - seen > self.expiry and ident in self.ping_from:  # (one that never pinged: the window)
                probe.append((ident, self.ping_from[ident], now - seen))
        for ident, _ in lost:
            self.forget(ident)
        return lost, probe
