"""The progress of a long command: tqdm's bar on a terminal, and otherwise (a log file, CI, a pipe) a
plain line every few seconds, which a log keeps readable."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]

PLAIN_EVERY = float(os.environ.get("RLAY_PROGRESS_EVERY", 5.0))  # s between the plain lines


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds // 60 % 60:02d}:00"


class Progress:
    """``total`` things of ``unit`` to do. ``update(n, **stats)`` counts ``n`` more done, with the
    stats to show beside the count (episodes, mean return, ...); ``note(text)`` says what it waits for."""

    def __init__(
        self, total: int, unit: str, desc: str, stream: TextIO | None = None, every: float = PLAIN_EVERY
    ) -> None:
        self.total, self.unit, self.desc = total, unit, desc
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.done = 0
        self.stats: dict[str, Any] = {}
        self.start = time.monotonic()
        self._next_line = self.start + every
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=f" {unit}", unit_scale=True, desc=desc, file=self.stream, leave=False)

    def update(self, n: int, **stats: Any) -> None:
        self.done += n
        self.stats.update(stats)
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: v for k, v in self.stats.items() if v is not None}, refresh=False)
        elif time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + self.every
            print(self.line(), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """What the command waits for now (a lease, instances starting)."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.desc} ({text})")
        else:
            print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        stats = "".join(f", {k.replace('_', ' ')} {v}" for k, v in self.stats.items() if v is not None)
        return (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(1, self.total):.0f}%), "
            f"{rate:,.0f} {self.unit}/s{stats}, {_duration(elapsed)} elapsed, "
            f"{_duration(left) if left != float('inf') else '?'} left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
