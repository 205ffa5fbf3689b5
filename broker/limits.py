"""What a peer may ask of the broker (docs/protocol.md 5.2, 5.5): each bound configurable, with a
default that serves real deployments. A request over a bound gets an `error` with code `limit` at
once; nothing a peer sends can make the broker stall or grow without bound."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Limits", "TokenBucket"]


@dataclass(frozen=True)
class Limits:
    max_envs_per_worker: int = 10_000  # envs one `register` may declare
    max_slots: int = 200_000  # slots of all registered workers together
    max_pending_leases: int = 10_000  # `lease` and `replace` requests waiting, over all connections
    registrations_per_second: float = 200.0  # sustained; a fleet starting (or a broker restart) uses the burst
    registration_burst: int = 2_000


class TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
