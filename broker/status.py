"""What the broker reports about itself: failures and refusals since it started, the latest worker
losses, and log lines that a flood of one kind cannot multiply."""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from rlay import protocol as P

__all__ = ["FailureLog", "LogLimiter", "FleetReports", "table_report", "FAILURE_COUNTS", "REFUSAL_COUNTS"]

MAX_REPORTERS = 64  # supervisors whose latest fleet report the broker keeps
MAX_PROGRAMS = 1024  # programs in one report
PROGRAM_COUNTS = ("count", "running", "restarts", "unregistered", "given_up")

RECENT_LOSSES = 20  # worker losses `status` lists
FAILURE_COUNTS = (
    "workers_lost",
    "slots_lost",
    "slots_replaced",
    f"calls_{P.E_WORKER_LOST}",
    f"calls_{P.E_TIMEOUT}",
    f"calls_{P.E_ENV}",
    "calls_other",
    "trainers_timed_out",  # released because they fell silent past the window (protocol 8.5)
    "re_leases",  # leases from a routing id that held one before
    "re_registrations",  # registrations from a routing id that registered before
)
# Requests refused because they ask for more than the broker's limits allow (broker/limits.py).
REFUSAL_COUNTS = (
    "registrations_too_many_envs",
    "registrations_too_many_slots",
    "registrations_rate_limited",
    "leases_too_many_pending",
)


class FailureLog:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()
        self.recent_losses: collections.deque[dict] = collections.deque(maxlen=RECENT_LOSSES)

    def call_failed(self, code: str) -> None:
        counter = f"calls_{code}"
        self.counts[counter if counter in FAILURE_COUNTS else "calls_other"] += 1  # (codes from workers: bounded)

    def worker_lost(self, worker: Any, leased: int, why: str) -> None:
        self.counts["workers_lost"] += 1
        self.counts["slots_lost"] += leased
        self.recent_losses.append(
            {
                "time": round(time.time(), 3),
                "worker": worker.name,
                "host": worker.host,
                "pid": worker.pid,
                "env_id": worker.env_id,
                "leased": leased,
                "why": why,
            }
        )

    def report(self) -> dict[str, Any]:
        return {
            "failures": {key: self.counts[key] for key in FAILURE_COUNTS},
            "refusals": {key: self.refusals[key] for key in REFUSAL_COUNTS},
            "recent_losses": list(self.recent_losses),
        }


class LogLimiter:
    """Log a line of one kind at most once per ``period`` seconds; the next line says how many were
    left out. A peer that floods the broker with one mistake cannot flood its log."""

    def __init__(self, logger: logging.Logger, period: float = 10.0):
        self.logger, self.period = logger, period
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter[str] = collections.Counter()

    def __call__(self, kind: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.period) < self.period:
            self._skipped[kind] += 1
            return
        skipped = self._skipped.pop(kind, 0)
        if len(self._last) > 1024:  # (kinds are the broker's own: bounded, but stay safe)
            self._last.clear()
        self._last[kind] = now
        if skipped:
            message += f" ({skipped} more like it in the last {self.period:g} s were not logged)"
        self.logger.log(level, message, *args)


def table_report(table: Any) -> dict[str, Any]:
    """Workers, trainers and pending leases as `status` reports them (broker/leases.py SlotTable)."""
    slots = table.slots
    workers = []
    for w in table.workers.values():
        mine = [slots[s] for s in w.slots]
        workers.append(
            {
                "name": w.name,
                "host": w.host,
                "pid": w.pid,
                "env_id": w.env_id,
                "mode": w.mode,
                "slots": len(mine),
                "leased": sum(s.lease is not None for s in mine),
                "busy": sum(s.busy is not None for s in mine),
                **({"program": w.program, "instance": w.instance} if w.program is not None else {}),
            }
        )
    trainers = [
        {
            "name": t.name,
            "env_id": t.env_id,
            "slots": len(t.slots),
            "lost": sum(1 for s in t.slots if s in slots and slots[s].lost),
            "replaced": t.replaced,
            "re_leases": t.re_leases,
            "timed_out": t.timed_out,
            "loss_truncations": t.loss_truncations,
        }
        for t in table.trainers.values()
    ]
    return {"workers": workers, "trainers": trainers, "pending_leases": len(table.pending)}


class FleetReports:
    """The latest `fleet` report of each supervisor (rlay up): the programs it runs, how many
    instances it wants and has running, and their restarts (protocol 5.16). The broker adds what it
    knows itself: how many are registered."""

    def __init__(self) -> None:
        self.reports: dict[bytes, tuple[float, list[dict]]] = {}  # supervisor ident -> (when, programs)

    @staticmethod
    def check(programs: Any) -> list[dict] | None:
        """The programs of a report, or None if it is malformed."""
        if not isinstance(programs, list) or len(programs) > MAX_PROGRAMS:
            return None
        for entry in programs:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("name"), str)
                and 0 < len(entry["name"]) <= 200
                and all(type(entry.get(key, 0)) is int and entry.get(key, 0) >= 0 for key in PROGRAM_COUNTS)
            ):
                return None
        return [{"name": e["name"], **{key: e.get(key, 0) for key in PROGRAM_COUNTS}} for e in programs]

    def report(self, ident: bytes, programs: list[dict]) -> None:
        if ident not in self.reports and len(self.reports) >= MAX_REPORTERS:  # forget the stalest
            del self.reports[min(self.reports, key=lambda i: self.reports[i][0])]
        self.reports[ident] = (time.monotonic(), programs)

    def forget(self, ident: bytes) -> None:
        self.reports.pop(ident, None)

    def status(self, workers: Any) -> list[dict]:
        """Every reported program with its registered instances (the instance indices below its count that
        workers registered under its name: one registered again counts once), and the report's age."""
        registered: dict[str, set[int]] = collections.defaultdict(set)
        for worker in workers:
            if worker.program is not None:
                registered[worker.program].add(worker.instance)
        now = time.monotonic()
        return [
            {
                **program,
                "registered": sum(i < program["count"] for i in registered[program["name"]]),
                "age": round(now - when, 1),
            }
            for when, programs in sorted(self.reports.values(), key=lambda r: -r[0])
            for program in programs
        ]
