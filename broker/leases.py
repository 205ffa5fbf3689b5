"""The slot table: workers' slots, trainers' leases, and the leases still waiting for free slots.

Every change of a slot's state (docs/protocol.md 7.1) happens here. Free slots are indexed by env
id, in lease order (a heap per env id), so granting a lease costs O(slots granted), and pending
leases are looked at again only when slots of their env id become free: a lease that cannot be
met costs nothing while others step. Grants are returned, not sent: the broker sends them, and a
grant whose `leased` cannot be delivered is undone by release() (no re-entrant calls).
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections import defaultdict
from typing import Any

from broker.limits import Limits
from broker.records import PastTrainer, PendingLease, Refusal, Slot, SlotState, Trainer, WorkerRecord
from rlay import protocol as P
from rlay.spaces import MAX_SPACE_DEPTH

__all__ = ["SlotTable", "check_registration"]

MAX_NAME = 200  # characters of a program name (registrations and fleet reports)
# A space map is at most 4 msgpack levels a space level (a Dict's map, its "spaces" map, and so on),
# plus its leaves: deeper is refused before anything walks it recursively (comparing two maps does).
MAX_SPACE_MAP_DEPTH = 4 * MAX_SPACE_DEPTH + 8
MAX_PAST_PEERS = 4096  # routing ids of former trainers and workers remembered, to count recoveries
REGISTER_FIELDS = {"env_id": str, "num_envs": int, "host": str, "pid": int, "obs_space": dict, "act_space": dict}


class _FreeSlots:
    """The FREE slots of one env id, by lease order. Each FREE slot has exactly one entry; entries
    of slots deleted since (their worker was lost) are skipped when they come up."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, int, int]] = []  # (rank, seq, index, slot id)
        self.count = 0

    def push(self, slot: Slot) -> None:
        heapq.heappush(self.heap, (*slot.order, slot.id))
        self.count += 1

    def take(self, n: int, slots: dict[int, Slot]) -> list[Slot]:
        taken: list[Slot] = []
        while len(taken) < n:
            slot = slots.get(heapq.heappop(self.heap)[3])
            if slot is not None and slot.state is SlotState.FREE:
                taken.append(slot)
        self.count -= n
        return taken


class SlotTable:
    def __init__(self) -> None:
        self.slots: dict[int, Slot] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.trainers: dict[bytes, Trainer] = {}
        self.pending: dict[bytes, PendingLease] = {}  # one per connection, in arrival order
        self._by_env: dict[str, dict[bytes, WorkerRecord]] = defaultdict(dict)
        self._free: dict[str, _FreeSlots] = defaultdict(_FreeSlots)
        self._slot_ids = itertools.count()
        self._worker_seq = itertools.count(1)
        self._trainer_seq = itertools.count(1)
        # Routing ids that held a lease, or registered, before: a lease or registration from one of
        # them is a recovery (protocol 8.5), counted as such. Bounded: the oldest are forgotten.
        self.past_trainers: collections.OrderedDict[bytes, PastTrainer] = collections.OrderedDict()
        self.past_workers: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    # -- workers -----------------------------------------------------------------------

    def workers_of(self, env_id: str) -> list[WorkerRecord]:
        """The registered workers of ``env_id``, in registration order."""
        return list(self._by_env.get(env_id, {}).values())

    def conflicting(self, env_id: str, obs_space: Any, act_space: Any) -> WorkerRecord | None:
        """A registered worker of ``env_id`` whose spaces differ (all of one env id have the same)."""
        other = next(iter(self._by_env.get(env_id, {}).values()), None)
        if other is not None and (other.obs_space != obs_space or other.act_space != act_space):
            return other
        return None

    def register(self, ident: bytes, num_envs: int, **fields: Any) -> WorkerRecord:
        """A new worker with ``num_envs`` FREE slots."""
        self._remember(self.past_workers, ident, None)
        seq = next(self._worker_seq)
        worker = WorkerRecord(ident=ident, name=f"w{seq}", seq=seq, **fields)
        free = self._free[worker.env_id]
        for index in range(num_envs):
            slot = Slot(next(self._slot_ids), worker, index)
            self.slots[slot.id] = slot
            worker.slots.append(slot.id)
            free.push(slot)
        self.workers[ident] = worker
        self._by_env[worker.env_id][ident] = worker
        return worker

    def lose_worker(self, worker: WorkerRecord, reason: str) -> int:
        """Forget ``worker``: its leased slots become LOST, the others are deleted. Returns how many were leased."""
        self.workers.pop(worker.ident, None)
        peers = self._by_env[worker.env_id]
        peers.pop(worker.ident, None)
        if not peers:
            del self._by_env[worker.env_id]
        leased = 0
        for slot_id in worker.slots:
            slot = self.slots[slot_id]
            if slot.lease is not None:
                slot.lost = reason
                leased += 1
                continue
            if slot.state is SlotState.FREE:
                self._free[worker.env_id].count -= 1
            del self.slots[slot_id]
        return leased

    # -- leases ------------------------------------------------------------------------

    def free_count(self, env_id: str) -> int:
        free = self._free.get(env_id)
        return 0 if free is None else free.count

    def wait(self, pending: PendingLease) -> None:
        """Queue a lease or replace; one per connection (a new replace supersedes an old one)."""
        self.pending.pop(pending.ident, None)
        self.pending[pending.ident] = pending

    def grant_ready(self, env_id: str) -> list[tuple[PendingLease, list[Slot]]]:
        """Grant every pending request for ``env_id`` that its free slots can meet: replacements first
        (a running lease that lost envs goes before new leases), each kind in arrival order; one that
        cannot be met does not hold up later ones. The grants are applied; the caller sends them."""
        waiting = [p for p in self.pending.values() if p.env_id == env_id]
        if not waiting:
            return []
        grants = []
        for pending in sorted(waiting, key=lambda p: p.replaces is None):
            if pending.num_envs > self.free_count(env_id):
                continue
            del self.pending[pending.ident]
            granted = self._free[env_id].take(pending.num_envs, self.slots)
            for slot in granted:
                slot.lease = pending.ident
            if pending.replaces is None:
                self.trainers[pending.ident] = self._new_lease(pending.ident, env_id, [s.id for s in granted])
            else:
                self._replace(self.trainers[pending.ident], pending.replaces, granted)
            grants.append((pending, granted))
        return grants

    def _new_lease(self, ident: bytes, env_id: str, slots: list[int]) -> Trainer:
        """A lease for ``ident``; a routing id that held one before keeps its name and counters."""
        past = self.past_trainers.pop(ident, None)
        if past is None:
            return Trainer(ident, f"t{next(self._trainer_seq)}", env_id, slots)
        kept = {"timed_out": past.timed_out, "loss_truncations": past.loss_truncations}
        return Trainer(ident, past.name, env_id, slots, re_leases=past.re_leases + 1, **kept)

    def _remember(self, past: collections.OrderedDict, ident: bytes, record: Any) -> None:
        past.pop(ident, None)
        past[ident] = record
        while len(past) > MAX_PAST_PEERS:
            past.popitem(last=False)

    def _replace(self, trainer: Trainer, lost: list[int], granted: list[Slot]) -> None:
        position = {slot_id: row for row, slot_id in enumerate(trainer.slots)}
        for old_id, slot in zip(lost, granted):
            trainer.slots[position[old_id]] = slot.id
            self.slots.pop(old_id, None)  # it was LOST: gone once its lease lets go of it
        trainer.replaced += len(granted)

    def release(self, ident: bytes, undo: bool = False) -> Trainer | None:
        """End the lease of ``ident`` and drop its pending request: LEASED slots become FREE, BUSY ones
        lose their lease (FREE when their reply comes), LOST ones are deleted. ``undo``: the lease was
        just granted and never delivered, so it does not count as one."""
        self.pending.pop(ident, None)
        trainer = self.trainers.pop(ident, None)
        if trainer is None:
            return None
        if not undo:
            self._remember(self.past_trainers, ident, trainer.past())
        elif trainer.re_leases:  # a grant that could not be delivered: as if it never happened
            self._remember(self.past_trainers, ident, trainer.past(re_leases=trainer.re_leases - 1))
        for slot_id in trainer.slots:
            slot = self.slots.get(slot_id)
            if slot is None:
                continue
            state = slot.state
            slot.lease = None
            if state is SlotState.LOST:
                del self.slots[slot_id]
            elif state is SlotState.LEASED:
                self._free[slot.worker.env_id].push(slot)
        return trainer

    def done(self, slot: Slot) -> bool:
        """A BUSY slot's part is answered; True if the slot became FREE (it was released meanwhile)."""
        slot.busy = None
        if slot.lease is None and slot.lost is None and self.slots.get(slot.id) is slot:
            self._free[slot.worker.env_id].push(slot)
            return True
        return False

    def shortfall(self, pending: PendingLease) -> str:
        """Why ``pending`` was not granted: what the broker has of its env id, and the other env ids."""
        workers = list(self._by_env.get(pending.env_id, {}).values())
        registered = sum(len(w.slots) for w in workers)
        free = self.free_count(pending.env_id)
        hosts = sorted({w.host for w in workers})
        others = sorted(set(self._by_env) - {pending.env_id})
        return (
            f"timed out after {pending.timeout:g} s: "
            f"found {free} free of {registered} registered on {len(workers)} worker(s)"
            + (f" on host(s) {', '.join(hosts)}" if hosts else "")
            + f", {registered - free} leased or busy"
            + (f"; other env ids registered: {', '.join(others)}" if others else "")
        )


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded msgpack) nests maps and lists more than ``limit`` deep; not recursive."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for pair in item.items() for x in pair)
        elif isinstance(item, (list, tuple)):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in item)
    return False


def check_registration(head: dict, limits: Limits, table: SlotTable) -> dict[str, Any]:
    """The fields of a `register` (protocol 5.2) for SlotTable.register; raises Refusal: `registration` for
    a malformed one or spaces that differ from the env id's, `limit` for one over the broker's limits."""
    fields = {key: head.get(key) for key in REGISTER_FIELDS}
    if not all(type(fields[key]) is kind for key, kind in REGISTER_FIELDS.items()) or fields["num_envs"] < 1:
        raise Refusal(
            P.E_REGISTRATION,
            "register needs env_id (str), num_envs (int >= 1), host (str), pid (int), obs_space and act_space (maps)",
        )
    mode = head.get("mode", P.COMMAND_MODE)
    if mode not in P.WORKER_MODES:
        raise Refusal(P.E_REGISTRATION, f"unknown worker mode {mode!r}")
    num_envs = fields["num_envs"]
    if num_envs > limits.max_envs_per_worker:
        raise Refusal(
            P.E_LIMIT,
            f"a registration of {num_envs} envs: the broker takes at most "
            f"{limits.max_envs_per_worker} from one worker (its max_envs_per_worker)",
            "registrations_too_many_envs",
        )
    if len(table.slots) + num_envs > limits.max_slots:
        raise Refusal(
            P.E_LIMIT,
            f"a registration of {num_envs} envs: the broker holds {len(table.slots)} slots, and "
            f"at most {limits.max_slots} (its max_slots)",
            "registrations_too_many_slots",
        )
    for key in ("obs_space", "act_space"):
        if nested_deeper_than(fields[key], MAX_SPACE_MAP_DEPTH):
            raise Refusal(
                P.E_REGISTRATION,
                f"{key} nests maps and arrays more than {MAX_SPACE_MAP_DEPTH} deep (spaces nest at most "
                f"{MAX_SPACE_DEPTH} deep, protocol 4.1)",
            )
    other = table.conflicting(fields["env_id"], fields["obs_space"], fields["act_space"])
    if other is not None:
        raise Refusal(P.E_REGISTRATION, f"spaces differ from those of {other.describe()} for env id {other.env_id!r}")
    rank, metadata = head.get("rank", 0), head.get("metadata")
    program, instance = head.get("program"), head.get("instance")
    if (program is not None or instance is not None) and not (
        isinstance(program, str) and 0 < len(program) <= MAX_NAME and type(instance) is int and instance >= 0
    ):
        raise Refusal(
            P.E_REGISTRATION,
            f"program must be a str of 1 to {MAX_NAME} characters and instance an int >= 0, both or neither",
        )
    return {
        **fields,
        "mode": mode,
        "rank": rank if type(rank) is int else 0,
        "program": program,
        "instance": instance,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "render_mode": head.get("render_mode"),
    }
