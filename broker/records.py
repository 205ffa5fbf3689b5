"""What the broker knows: workers, slots, trainers, batched calls and their parts, pending leases.

Small records with no behaviour beyond describing themselves; broker/leases.py and
broker/calls.py change them. A slot's state (docs/protocol.md 7.1) is derived from its fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerRecord", "Slot", "SlotState", "Trainer", "Part", "Batch", "PendingLease", "Refusal", "slot_info"]


class Refusal(Exception):
    """A request refused as a whole: one `error` with ``code`` and ``message`` (and ``extra`` fields), and
    nothing done. ``counter``: the broker limit it is over, counted in `status` (broker/status.py)."""

    def __init__(self, code: str, message: str, counter: str | None = None, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.counter, self.extra = code, message, counter, extra


@dataclass(eq=False)
class WorkerRecord:
    ident: bytes
    name: str
    seq: int  # registration order
    host: str
    pid: int
    env_id: str
    mode: str
    rank: int
    obs_space: Any
    act_space: Any
    metadata: dict
    render_mode: Any
    program: str | None = None  # the fleet program it is an instance of (rlay up), and which
    instance: int | None = None
    slots: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"worker {self.name} (pid {self.pid} on host {self.host})"


class SlotState(enum.Enum):
    FREE = "free"
    LEASED = "leased"
    BUSY = "busy"  # a part naming it is running (it may have no lease: released meanwhile)
    LOST = "lost"  # its worker is gone; it stays in its lease until released or replaced


@dataclass(eq=False)
class Slot:
    id: int
    worker: WorkerRecord
    index: int  # env index within the worker
    lease: bytes | None = None  # the trainer's ident
    busy: Part | None = None
    lost: str | None = None  # why the slot's worker is gone

    @property
    def state(self) -> SlotState:
        if self.lost is not None:
            return SlotState.LOST
        if self.busy is not None:
            return SlotState.BUSY
        return SlotState.FREE if self.lease is None else SlotState.LEASED

    @property
    def order(self) -> tuple[int, int, int]:
        """Leases take free slots in this order: worker rank, registration order, env index (protocol 5.5)."""
        return self.worker.rank, self.worker.seq, self.index


@dataclass(eq=False)
class Trainer:
    ident: bytes
    name: str
    env_id: str
    slots: list[int]  # by row: row r is slots[r]
    replaced: int = 0  # LOST slots this lease has had replaced
    # Over the connection's life (a trainer that leases again keeps its name and these, protocol 8.5):
    re_leases: int = 0  # leases after the first, from the same routing id
    timed_out: int = 0  # times the broker released it because it fell silent
    loss_truncations: int = 0  # as the trainer reports it (`loss_truncations` in a call's header, 5.8)

    def past(self, **changes: int) -> PastTrainer:
        """What to remember of this trainer once its lease ends."""
        kept = {"re_leases": self.re_leases, "timed_out": self.timed_out, "loss_truncations": self.loss_truncations}
        return PastTrainer(self.name, **{**kept, **changes})


@dataclass(frozen=True)
class PastTrainer:
    """What the broker keeps of a routing id whose lease ended, for when it leases again (protocol 8.5)."""

    name: str
    re_leases: int
    timed_out: int
    loss_truncations: int


@dataclass(eq=False)
class Part:
    """One worker's share of a batched call."""

    batch: Batch
    worker: WorkerRecord
    slots: list[int]
    frames: list[Any]
    envs: list[int] = field(default_factory=list)  # the slots' env indices on the worker
    slot_objects: list[Slot] = field(default_factory=list)
    reply: list[Any] | None = None
    error: dict | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


@dataclass(eq=False)
class Batch:
    """A batched call of a trainer: one part per worker."""

    id: int
    trainer: bytes
    req: Any
    kind: str
    timeout: float
    deadline: float
    gather: bool = True  # False: answer each part as it completes (first-ready stepping)
    partial: bool = False  # True: a failed part does not fail the call (the trainer replaces lost slots)
    parts: list[Part] = field(default_factory=list)
    pending: int = 0  # parts not done yet: counted down, never rescanned
    released: bool = False  # its trainer released its lease meanwhile: never answered (protocol 5.6)
    opened: float = 0.0  # monotonic s it arrived (and its parts were sent)
    first_done: float | None = None  # monotonic s its first part was done

    @property
    def finished(self) -> bool:
        return self.pending == 0


@dataclass(eq=False)
class PendingLease:
    """A `lease` (or, with ``replaces``, a `replace`) waiting for free slots."""

    ident: bytes
    req: Any
    env_id: str
    num_envs: int
    timeout: float
    deadline: float
    replaces: list[int] | None = None  # a `replace`: the trainer's LOST slots the new ones stand in for


def slot_info(slot: Slot) -> dict[str, Any]:
    """A slot as `leased` and `replaced` describe it to the trainer."""
    w = slot.worker
    return {"slot": slot.id, "worker": w.name, "host": w.host, "pid": w.pid, "index": slot.index, "mode": w.mode}
