"""`rlay status` as text: the broker's workers, trainers, slots, calls and failures, and, between two
reports (`rlay status --watch`), the rates: env-steps/s per trainer and per worker."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["KEYS", "render", "table"]

RECENT_LOSSES_SHOWN = 5  # worker losses the text lists (the JSON has all the broker keeps)
# The keys of the broker's `status` answer that `rlay status --json` prints (protocol 5.7).
KEYS = (
    "broker",
    "workers",
    "trainers",
    "pending_leases",
    "programs",
    "failures",
    "refusals",
    "recent_losses",
    "metrics",
    "slots_by_env",
)


def table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [columns] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rate(now: dict, before: dict | None, seconds: float | None) -> str:
    """Env-steps/s between two reports of one trainer or worker; '-' without an earlier one."""
    if before is None or not seconds:
        return "-"
    return f"{max(0, now['env_steps'] - before['env_steps']) / seconds:,.0f}"


def render(report: dict[str, Any], previous: dict[str, Any] | None = None, seconds: float | None = None) -> str:
    """The text of a `status` report; with the ``previous`` one, taken ``seconds`` earlier, the rates."""
    out: list[str] = []
    b = report["broker"]
    out.append(
        f"broker pid {b['pid']}, protocol v{b['version']}, up {b['uptime']} s; "
        f"trainers on {b['frontend']}, workers on {b['backend']}"
    )
    metrics = report.get("metrics") or {}
    before = (previous or {}).get("metrics") or {}
    steps = metrics.get("env_steps", 0)
    rate = _rate(metrics, before, seconds) if before else "-"
    out.append(f"env steps since start: {steps:,} ({rate} env-steps/s now); calls: {metrics.get('calls', 0):,}")
    per_worker = metrics.get("workers", {})
    out.append(
        table(
            [
                "WORKER",
                "HOST",
                "PID",
                "ENV ID",
                "MODE",
                "SLOTS",
                "LEASED",
                "BUSY",
                "STEPS",
                "STEPS/S",
                "P50 MS",
                "P99 MS",
            ],
            [
                [w["name"], w["host"], w["pid"], w["env_id"], w["mode"], w["slots"], w["leased"], w["busy"]]
                + _call_columns(per_worker.get(w["name"]), before.get("workers", {}).get(w["name"]), seconds)
                for w in report["workers"]
            ],
        )
    )
    slots = sum(w["slots"] for w in report["workers"])
    leased = sum(w["leased"] for w in report["workers"])
    out.append(f"{len(report['workers'])} worker(s), {slots} slot(s): {slots - leased} free, {leased} leased")
    by_env = report.get("slots_by_env") or {}
    if len(by_env) > 1:
        out.append(
            "by env id: "
            + "; ".join(f"{env_id} {c['free']} free, {c['leased'] + c['busy']} leased" for env_id, c in by_env.items())
        )
    per_trainer = metrics.get("trainers", {})
    out.append(
        table(
            ["TRAINER", "ENV ID", "SLOTS", "LOST", "REPLACED", "STEPS", "STEPS/S", "P50 MS", "P99 MS", "SLOWEST P99"]
            + ["TIMED OUT", "RE-LEASES", "LOSS TRUNCS"],
            [
                [t["name"], t["env_id"], t["slots"], t["lost"], t["replaced"]]
                + _call_columns(per_trainer.get(t["name"]), before.get("trainers", {}).get(t["name"]), seconds)
                + [_ms((per_trainer.get(t["name"]) or {}).get("slowest_wait_ms_p99"))]
                + [t.get("timed_out", "-"), t.get("re_leases", "-"), t.get("loss_truncations", "-")]
                for t in report["trainers"]
            ],
        )
    )
    out.append(f"{len(report['trainers'])} trainer(s), {report['pending_leases']} lease request(s) waiting")
    f = report["failures"]
    out.append(
        f"failures since start: {f['workers_lost']} worker(s) lost ({f['slots_lost']} leased slots), "
        f"{f['slots_replaced']} slot(s) replaced; calls failed: {f['calls_worker_lost']} on a lost worker, "
        f"{f['calls_timeout']} timed out, {f['calls_env_error']} env error(s), {f['calls_other']} other"
    )
    if "re_leases" in f:  # (a broker before issue 18 does not count recoveries)
        out.append(
            f"recoveries: {f['trainers_timed_out']} trainer(s) timed out, {f['re_leases']} re-lease(s), "
            f"{f['re_registrations']} re-registration(s)"
        )
    if report.get("programs"):
        out.append(
            table(
                ["PROGRAM", "COUNT", "RUNNING", "REGISTERED", "RESTARTS", "LATE", "GIVEN UP"],
                [
                    [
                        p["name"],
                        p["count"],
                        p["running"],
                        p["registered"],
                        p["restarts"],
                        p["unregistered"],
                        p["given_up"],
                    ]
                    for p in report["programs"]
                ],
            )
        )
    r = report.get("refusals") or {}
    if any(r.values()):
        out.append(
            "refused since start (over the broker's limits): "
            f"{r.get('registrations_too_many_envs', 0)} registration(s) of too many envs, "
            f"{r.get('registrations_too_many_slots', 0)} past max_slots, "
            f"{r.get('registrations_rate_limited', 0)} rate-limited; "
            f"{r.get('leases_too_many_pending', 0)} lease request(s) past max_pending_leases"
        )
    for loss in report["recent_losses"][-RECENT_LOSSES_SHOWN:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(loss["time"]))
        out.append(
            f"  {when}  lost worker {loss['worker']} (pid {loss['pid']} on host {loss['host']}, "
            f"{loss['env_id']!r}, {loss['leased']} leased): {loss['why']}"
        )
    return "\n".join(out)


def _call_columns(stats: dict | None, before: dict | None, seconds: float | None) -> list[str]:
    if stats is None:
        return ["0", "-", "-", "-"]
    return [
        f"{stats['env_steps']:,}",
        _rate(stats, before, seconds),
        _ms(stats.get("latency_ms_p50")),
        _ms(stats.get("latency_ms_p99")),
    ]
