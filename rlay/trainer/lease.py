"""The slots a trainer leases, by row (row r is slot ``slots[r]``), and its rows grouped by the worker
that hosts them: one part of every batched call per worker."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np

from rlay import protocol as P
from rlay.errors import LeaseError, RlayTimeoutError

__all__ = ["Lease", "WorkerRows", "request_lease", "row_index", "rows_text"]

log = logging.getLogger("rlay.vector")

LEASE_NOTE_S = 5.0  # s between the log lines of a lease wait, saying what it waits for
REPLY_GRACE = 5.0  # s past the broker's own deadline (its refusal says more than a timeout)

SLOTS_IN_TEXT = re.compile(r"slots \[([0-9, ]*)\]")  # how broker messages name slots (protocol 5.13)


class WorkerRows:
    """The trainer's envs that live on one worker."""

    def __init__(self, worker: str, host: str, pid: int, rows: list[int], slots: list[int]):
        self.worker, self.host, self.pid = worker, host, pid
        self.rows = np.asarray(rows)
        self.slots = slots
        self.index = row_index(rows)

    def describe(self) -> str:
        return f"worker {self.worker} (pid {self.pid} on host {self.host})"


class Lease:
    """The slots of a lease, as `leased` and `replaced` describe them (protocol 5.5, 5.15)."""

    def __init__(self, env_id: str, slots: list[dict], spaces: tuple[dict, dict]):
        self.env_id = env_id
        self.spaces = spaces  # the leased obs_space and act_space maps, as the broker sent them
        self.generation = 0  # leases taken anew from a broker that forgot this trainer
        self.adopt(slots)

    def adopt(self, slots: list[dict]) -> None:
        """Take ``slots`` (row r is ``slots[r]``) and group the rows by worker."""
        self.slots = [s["slot"] for s in slots]
        self.slot_info = {s["slot"]: s for s in slots}
        self._regroup()

    def renew(self, slots: list[dict]) -> None:
        """A new lease of every row, from a broker that no longer knew the old one."""
        self.adopt(slots)
        self.generation += 1

    def move(self, replaces: list[int], slots: list[dict]) -> list[int]:
        """Each LOST slot ``replaces[i]`` is now ``slots[i]`` (a granted `replace`); returns their rows."""
        rows = []
        for old, info in zip(replaces, slots):
            row = self.row_of_slot[old]
            self.slots[row] = info["slot"]
            del self.slot_info[old]
            self.slot_info[info["slot"]] = info
            rows.append(row)
        self._regroup()
        return rows

    def _regroup(self) -> None:
        by_worker: dict[str, list[int]] = {}
        for row, slot in enumerate(self.slots):
            by_worker.setdefault(self.slot_info[slot]["worker"], []).append(row)
        self.groups = []
        for rows in by_worker.values():
            info = self.slot_info[self.slots[rows[0]]]
            self.groups.append(
                WorkerRows(info["worker"], info["host"], info["pid"], rows, [self.slots[r] for r in rows])
            )
        self.row_of_slot = {slot: row for row, slot in enumerate(self.slots)}

    def rows_of(self, slots: list[int]) -> list[int]:
        return sorted(self.row_of_slot[s] for s in slots if s in self.row_of_slot)

    def name_rows(self, message: str) -> str:
        """A broker message with the trainer's own indices: 'slots [7, 8]' -> 'envs 2, 3 (slots [7, 8])'."""

        def named(match: re.Match) -> str:
            slots = [int(s) for s in match.group(1).split(",") if s.strip()]
            return f"envs {rows_text([self.row_of_slot.get(s) for s in slots])} ({match.group(0)})"

        return SLOTS_IN_TEXT.sub(named, message)


def row_index(rows: list[int]) -> slice | np.ndarray:
    """A slice for contiguous rows (views, no fancy-index copy), else an index array."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return np.asarray(rows)


def rows_text(rows: list) -> str:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))) and len(rows) > 2:
        return f"{rows[0]}-{rows[-1]}"
    return ", ".join(str(r) for r in rows)


def request_lease(client: Any, env_id: str, num_envs: int, lease_timeout: float) -> dict:
    """Lease ``num_envs`` slots of ``env_id`` (protocol 5.5) and return the broker's `leased`. While the
    broker makes it wait, a log line every LEASE_NOTE_S seconds says for what: how many slots of the
    env id are registered and free, and which env ids the broker has (a typo shows at once)."""
    what = f"a lease of {num_envs} slots of {env_id!r}"
    req = client.send(P.LEASE, env_id=env_id, num_envs=num_envs, timeout=lease_timeout)
    start = time.monotonic()
    deadline, note_at, asked = start + lease_timeout + REPLY_GRACE, start + LEASE_NOTE_S, None
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise RlayTimeoutError(
                f"no reply from {client.where} within {lease_timeout + REPLY_GRACE:g} s while "
                f"waiting for {what}{client._never_answered()}"
            )
        answer = client.poll({req} if asked is None else {req, asked}, min(deadline, note_at) - now, what)
        if answer is None:  # time for a note: ask the broker what it has
            asked, note_at = client.send(P.STATUS), time.monotonic() + LEASE_NOTE_S
            continue
        head, _ = answer
        if head.get(P.REQ) == req:
            if head[P.TYPE] == P.ERROR:
                raise LeaseError(f"the broker refused {what}: {head.get('message')}")
            return head
        asked = None
        if head[P.TYPE] == P.STATUS:
            log.warning("waiting for %s (%.0f s so far): %s", what, time.monotonic() - start, _shortfall(head, env_id))


def _shortfall(status: dict, env_id: str) -> str:
    """What a broker's `status` says of the slots of ``env_id``, and of its other env ids."""
    slots = status.get("slots_by_env") or {}
    mine = slots.get(env_id)
    if mine is None:
        text = f"no worker has registered {env_id!r}"
    else:
        text = f"{sum(mine.values())} registered, {mine.get('free', 0)} free"
    others = [
        f"{name} ({sum(c.values())} slots, {c.get('free', 0)} free)" for name, c in slots.items() if name != env_id
    ]
    return text + ("; registered env ids: " + ", ".join(others) if others else "; no other env id is registered")
