"""Batched calls at the broker: the checks of a call (docs/protocol.md 5.8, leg 1, in the order of its
table), and the book of calls in flight, whose parts are counted down as their replies come.

Nothing here sends: the broker fans a checked call out and answers the trainer.
"""

from __future__ import annotations

import itertools
from typing import Any

from broker.leases import SlotTable
from broker.records import Batch, Part, Refusal, Slot, Trainer, WorkerRecord
from rlay import protocol as P

__all__ = ["CallBook", "check_timeout", "DEFAULT_CALL_TIMEOUT", "MAX_CALL_TIMEOUT", "NO_LEASE"]

DEFAULT_CALL_TIMEOUT = 60.0  # s, when a batched call names none
MAX_CALL_TIMEOUT = 24 * 3600.0
MAX_CACHED_PARTS = 4096  # slot lists remembered per lease (a trainer's parts repeat call after call)
NO_LEASE = "this connection holds no lease (the broker restarted, or released it when its heartbeats stopped)"


def check_timeout(value: Any, zero_ok: bool) -> bool:
    """A timeout from the wire: an int or float (not a bool) up to a day; 0 only where waiting is optional
    (a lease or replace that must be granted at once), never for a batched call."""
    return type(value) in (int, float) and (0 <= value if zero_ok else 0 < value) and value <= MAX_CALL_TIMEOUT


class CallBook:
    """The batched calls in flight, and their parts by worker."""

    def __init__(self, table: SlotTable):
        self.table = table
        self.batches: dict[int, Batch] = {}
        self.inflight: dict[tuple[bytes, int], Part] = {}  # (worker ident, batch id) -> part
        self._by_worker: dict[bytes, dict[int, Part]] = {}
        # Per lease, the slot lists it has sent before, checked: (worker, env indices, slots). What
        # does not change between calls (the lease, one worker, distinct slots) is checked once.
        self._parts: dict[bytes, dict[tuple, tuple[WorkerRecord, list[int], list[Slot]]]] = {}
        self._ids = itertools.count(1)

    # -- leg 1: checking a call ------------------------------------------------------------

    def check(self, ident: bytes, head: dict, frames: list[Any], now: float) -> tuple[Batch, dict[Part, str]]:
        """The batch of a call, checked completely; with ``partial``, the parts on LOST slots (to fail
        at once) and why. Raises Refusal (the first failing check of protocol 5.8's table)."""
        req, kind = head.get(P.REQ), head[P.TYPE]
        timeout, spec = head.get("timeout", DEFAULT_CALL_TIMEOUT), head.get("parts")
        if not check_timeout(timeout, zero_ok=False):
            raise Refusal(P.E_BAD_MESSAGE, f"bad timeout {timeout!r}")
        if not isinstance(spec, list) or not spec:
            raise Refusal(P.E_BAD_MESSAGE, "a batched call needs a non-empty 'parts' list")
        gather, partial = head.get("gather", True), head.get("partial", False)
        for key, flag in (("gather", gather), ("partial", partial)):
            if type(flag) is not bool:
                raise Refusal(P.E_BAD_MESSAGE, f"{key!r} must be true or false, got {flag!r}")
        trainer = self.table.trainers.get(ident)
        if trainer is None:
            raise Refusal(P.E_NO_LEASE, NO_LEASE)
        reported = head.get("loss_truncations", trainer.loss_truncations)  # the trainer's count (for status)
        if type(reported) is not int or reported < 0:
            raise Refusal(P.E_BAD_MESSAGE, f"'loss_truncations' must be an int >= 0, got {reported!r}")
        batch = Batch(next(self._ids), ident, req, kind, timeout, now + timeout, gather, partial, opened=now)
        offset, workers, lost = 0, set(), {}
        for part_spec in spec:
            worker, envs, slots, nframes = self._part(trainer, part_spec, len(frames) - offset, workers)
            part = Part(batch, worker, part_spec[0], frames[offset : offset + nframes], envs, slots)
            if slots[0].lost is not None:  # a worker's slots are lost together
                message = f"slots [{', '.join(str(s.id) for s in slots)}] are lost: {slots[0].lost}"
                if not partial:
                    raise Refusal(P.E_WORKER_LOST, message)
                part.frames = []
                lost[part] = message
            batch.parts.append(part)
            workers.add(worker.ident)
            offset += nframes
        if offset != len(frames):
            raise Refusal(P.E_BAD_MESSAGE, f"parts announce {offset} frames but {len(frames)} came")
        batch.pending = len(batch.parts)
        trainer.loss_truncations = reported  # (once the call is accepted)
        return batch, lost

    def _part(
        self, trainer: Trainer, spec: Any, frames_left: int, workers: set[bytes]
    ) -> tuple[WorkerRecord, list[int], list[Slot], int]:
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], list) and type(spec[1]) is int):
            raise Refusal(P.E_BAD_MESSAGE, "each part must be [slot ids, frame count]")
        slot_ids, nframes = spec
        if not slot_ids or not 1 <= nframes <= frames_left:
            raise Refusal(
                P.E_BAD_MESSAGE,
                f"part {spec!r} announces {nframes} frames; {frames_left} are left (a part needs its body frame)",
            )
        cache = self._parts.setdefault(trainer.ident, {})
        try:
            key = tuple(slot_ids)
            resolved = cache.get(key)
        except TypeError:  # an unhashable slot id
            raise Refusal(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}") from None
        if resolved is None:
            resolved = self._resolve(trainer.ident, slot_ids)
            if len(cache) < MAX_CACHED_PARTS:
                cache[key] = resolved
        worker, envs, slots = resolved
        if len(set(map(type, slot_ids))) != 1 or type(slot_ids[0]) is not int:  # 1.0 and True hash as 1
            raise Refusal(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}")
        if slots[0].lost is not None:  # refused, or failed at once: the caller says which
            return worker, envs, slots, nframes
        for slot in slots:
            if slot.busy is not None:
                raise Refusal(
                    P.E_SLOT,
                    f"slot {slot.id} is still busy with an earlier call on {worker.describe()} "
                    "(a call that timed out runs on until its worker replies)",
                )
        if worker.ident in workers:
            raise Refusal(P.E_BAD_MESSAGE, f"two parts address {worker.describe()}; put all its slots in one part")
        return worker, envs, slots, nframes

    def _resolve(self, ident: bytes, slot_ids: list[int]) -> tuple[WorkerRecord, list[int], list[Slot]]:
        if not all(type(s) is int for s in slot_ids):
            raise Refusal(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}")
        if len(set(slot_ids)) != len(slot_ids):
            raise Refusal(P.E_BAD_MESSAGE, f"slots {slot_ids} repeat a slot")
        worker, slots = None, []
        for slot_id in slot_ids:
            slot = self.table.slots.get(slot_id)
            if slot is None or slot.lease != ident:
                raise Refusal(P.E_SLOT, f"slot {slot_id!r} is not leased to this trainer")
            if worker is not None and slot.worker is not worker:
                raise Refusal(P.E_BAD_MESSAGE, f"slots {slot_ids} of one part live on different workers")
            worker = slot.worker
            slots.append(slot)
        return worker, [s.index for s in slots], slots

    def forget_parts(self, ident: bytes | None = None) -> None:
        """Drop the remembered slot lists of one lease (its slots moved), or of all (a worker was lost)."""
        if ident is None:
            self._parts.clear()
        else:
            self._parts.pop(ident, None)

    # -- calls in flight ---------------------------------------------------------------------

    def open(self, batch: Batch) -> None:
        self.batches[batch.id] = batch

    def sent(self, part: Part) -> None:
        """``part`` goes to its worker now: its slots are BUSY until it is answered."""
        for slot in part.slot_objects:
            slot.busy = part
        self.inflight[(part.worker.ident, part.batch.id)] = part
        self._by_worker.setdefault(part.worker.ident, {})[part.batch.id] = part

    def answered(self, worker_ident: bytes, req: Any) -> Part | None:
        """The part a worker's reply (or error) with ``req`` answers, now no longer in flight; its slots
        are LEASED again (FREE if released meanwhile)."""
        part = self.inflight.pop((worker_ident, req), None) if type(req) is int else None
        if part is None:
            return None
        self._by_worker[worker_ident].pop(req, None)
        for slot in part.slot_objects:
            if slot.busy is part:
                self.table.done(slot)
        return part

    def in_flight_on(self, worker_ident: bytes) -> list[Part]:
        """Every part in flight on a worker, now no longer in flight (the worker is gone)."""
        parts = self._by_worker.pop(worker_ident, {})
        for batch_id in parts:
            del self.inflight[(worker_ident, batch_id)]
        return list(parts.values())

    def finish(self, part: Part) -> bool:
        """``part`` has its reply or error; True once every part of its batch has (the batch is over)."""
        batch = part.batch
        batch.pending -= 1
        if batch.pending:
            return False
        self.batches.pop(batch.id, None)
        return True

    def release(self, trainer_ident: bytes) -> None:
        """The trainer released its lease: its calls in flight are never answered (protocol 5.6)."""
        for batch in self.batches.values():
            if batch.trainer == trainer_ident:  # (this connection may lease again before the batch ends)
                batch.released = True
        self.forget_parts(trainer_ident)

    def overdue(self, now: float) -> list[Batch]:
        return [batch for batch in self.batches.values() if batch.deadline <= now]
