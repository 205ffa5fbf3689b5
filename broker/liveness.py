"""Which peers the broker watches, and which have fallen silent (docs/protocol.md 8.5).

A watched peer's every ping, and every other message on its main socket, is a sign of life; one
silent for the expiry is lost. Workers are watched from their registration (heartbeats are
mandatory for them); trainers from their lease request. A peer that pings before the broker knows
it is remembered as pinging (a bounded set), so that it is watched from the moment it is known.
"""

from __future__ import annotations

import time

__all__ = ["Liveness"]

MAX_PINGING = 65536  # unknown peers remembered as pinging: bounded against a flood


class Liveness:
    def __init__(self, interval: float, liveness: int):
        self.interval = interval
        self.expiry = interval * liveness
        self.last_seen: dict[bytes, float] = {}  # watched peers: main ident -> last sign of life
        self.pinging: dict[bytes, float] = {}  # peers that pinged before they were known
        self._next_check = 0.0

    def ping(self, ident: bytes) -> None:
        """A ping from peer ``ident`` (its main ident): a sign of life if it is watched, else a note that
        it pings (a trainer whose lease request is still on its way, a worker about to register)."""
        now = time.monotonic()
        if ident in self.last_seen:
            self.last_seen[ident] = now
        elif len(self.pinging) < MAX_PINGING or ident in self.pinging:
            self.pinging[ident] = now

    def seen(self, ident: bytes) -> None:
        """Any other message from a peer's main socket."""
        if ident in self.last_seen:
            self.last_seen[ident] = time.monotonic()

    def watch(self, ident: bytes) -> None:
        """Peer ``ident`` just became known: watch it from now, not from its next ping, so that one dying
        in between is not missed and one that never pings is expired."""
        self.pinging.pop(ident, None)
        self.last_seen[ident] = time.monotonic()

    def forget(self, ident: bytes) -> None:
        self.last_seen.pop(ident, None)

    def silent(self, now: float) -> list[tuple[bytes, float]]:
        """The watched peers silent for longer than the expiry, with their silence, no longer watched.
        Looked at most once per interval."""
        if now < self._next_check:
            return []
        self._next_check = now + self.interval
        if self.pinging:
            self.pinging = {i: t for i, t in self.pinging.items() if now - t <= self.expiry}
        lost = [(ident, now - seen) for ident, seen in self.last_seen.items() if now - seen > self.expiry]
        for ident, _ in lost:
            del self.last_seen[ident]
        return lost
