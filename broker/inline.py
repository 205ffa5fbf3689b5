"""The front end of a broker that lives in its trainer's process (embedded mode)."""

from __future__ import annotations

import collections
from typing import Any

import zmq

__all__ = ["InlineFrontEnd", "INLINE"]

INLINE = "inline"  # what such a broker reports as its front end
_SNDMORE = int(zmq.SNDMORE)


class InlineFrontEnd:
    """Stands in for the front-end ROUTER: what the broker sends to a trainer is queued here, and the
    trainer, which calls ``process_trainer`` and ``pump`` itself while it waits, takes it from the
    queue. No socket hop, no thread."""

    def __init__(self) -> None:
        self.outbox: dict[bytes, collections.deque] = collections.defaultdict(collections.deque)
        self._partial: list[Any] = []

    def send(self, frame: Any, flags: int = 0, copy: bool = True) -> None:
        """Like a ROUTER's send: frames gather until one comes without SNDMORE."""
        self._partial.append(frame)
        if not flags & _SNDMORE:
            frames, self._partial = self._partial, []
            self.outbox[frames[0]].append(frames[1:])

    def close(self) -> None:
        self.outbox.clear()
