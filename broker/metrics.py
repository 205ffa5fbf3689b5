"""What the broker measures of the calls it routes, for `status` (protocol 5.7) and for Prometheus.

Per trainer and per worker: env-steps (the envs of each step answered), calls, and the latency of
each, a trainer's batch from its arrival to its last part, a worker's part from its send to its
reply. Per trainer also the wait on the slowest worker: the time from a batch's first part done to
its last. Latency quantiles come from the last ``WINDOW`` samples. Per env id: its slots by state.
The totals of trainers that have left stay in the broker's totals.

The hot path pays one clock read and a few additions per part (docs/performance.md has the figures
with metrics on and off).
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["Metrics", "CallStats", "MetricsServer", "prometheus_text", "slots_by_env"]

WINDOW = 1024  # latency samples kept per trainer or worker
MAX_DEPARTED = 20  # trainers that have left, whose stats `status` still shows


class CallStats:
    """The calls of one trainer or worker."""

    __slots__ = ("env_steps", "calls", "latency", "slowest_wait", "failed")

    def __init__(self) -> None:
        self.env_steps = 0
        self.calls = 0
        self.failed = 0
        self.latency: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.slowest_wait: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def report(self) -> dict[str, Any]:
        out = {"env_steps": self.env_steps, "calls": self.calls, "failed_calls": self.failed}
        out.update(_quantiles("latency_ms", self.latency))
        if self.slowest_wait:
            out.update(_quantiles("slowest_wait_ms", self.slowest_wait))
        return out


def _quantiles(name: str, samples: collections.deque[float]) -> dict[str, float | None]:
    if not samples:
        return {f"{name}_p50": None, f"{name}_p99": None}
    ordered = sorted(samples)
    n = len(ordered)
    return {
        f"{name}_p50": round(ordered[(n - 1) // 2] * 1000, 3),
        f"{name}_p99": round(ordered[min(n - 1, int(n * 0.99))] * 1000, 3),
    }


class Metrics:
    """The broker's measurements: ``enabled`` False records nothing (for `rlay bench`'s comparison)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.trainers: dict[str, CallStats] = {}
        self.workers: dict[str, CallStats] = {}
        self.departed: collections.OrderedDict[str, CallStats] = collections.OrderedDict()
        self.env_steps = 0  # every trainer's, since the broker started
        self.calls = 0

    def part_done(self, worker: str, is_step: bool, envs: int, failed: bool, latency: float) -> None:
        stats = self.workers.get(worker)
        if stats is None:
            stats = self.workers[worker] = CallStats()
        stats.calls += 1
        if failed:
            stats.failed += 1
        elif is_step:
            stats.env_steps += envs
        stats.latency.append(latency)

    def batch_done(self, trainer: str, env_steps: int, failed: bool, latency: float, slowest_wait: float) -> None:
        stats = self.trainers.get(trainer)
        if stats is None:
            stats = self.trainers[trainer] = CallStats()
        stats.calls += 1
        stats.env_steps += env_steps
        if failed:
            stats.failed += 1
        stats.latency.append(latency)
        stats.slowest_wait.append(slowest_wait)
        self.calls += 1
        self.env_steps += env_steps

    def trainer_left(self, trainer: str) -> None:
        stats = self.trainers.pop(trainer, None)
        if stats is not None:
            self.departed[trainer] = stats
            while len(self.departed) > MAX_DEPARTED:
                self.departed.popitem(last=False)

    def trainer_back(self, trainer: str) -> None:
        """A trainer that left leases again under its name (protocol 8.5): its stats go on."""
        stats = self.departed.pop(trainer, None)
        if stats is not None:
            self.trainers[trainer] = stats

    def worker_left(self, worker: str) -> None:
        self.workers.pop(worker, None)

    def report(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "env_steps": self.env_steps,
            "calls": self.calls,
            "trainers": {name: s.report() for name, s in self.trainers.items()},
            "workers": {name: s.report() for name, s in self.workers.items()},
            "departed_trainers": {name: s.report() for name, s in self.departed.items()},
        }


def slots_by_env(table: Any) -> dict[str, dict[str, int]]:
    """Per env id, its slots by state (protocol 7.1): free, leased (idle), busy and lost."""
    out: dict[str, dict[str, int]] = {}
    for slot in table.slots.values():
        counts = out.setdefault(slot.worker.env_id, {"free": 0, "leased": 0, "busy": 0, "lost": 0})
        state = slot.state.value
        counts[state] = counts.get(state, 0) + 1
    return out


def prometheus_text(status: dict[str, Any]) -> str:
    """The broker's `status` as Prometheus' text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    metrics = status.get("metrics", {})
    family("rlay_env_steps_total", "counter", "Env steps answered, every trainer's.", [({}, metrics.get("env_steps"))])
    family("rlay_calls_total", "counter", "Batched calls answered.", [({}, metrics.get("calls"))])
    for who in ("trainers", "workers"):
        one = who[:-1]
        rows = metrics.get(who, {})
        family(
            f"rlay_{one}_env_steps_total",
            "counter",
            f"Env steps answered, per {one}.",
            [({one: name}, s["env_steps"]) for name, s in rows.items()],
        )
        family(
            f"rlay_{one}_calls_total",
            "counter",
            f"Calls answered, per {one}.",
            [({one: name}, s["calls"]) for name, s in rows.items()],
        )
        family(
            f"rlay_{one}_failed_calls_total",
            "counter",
            f"Calls that failed, per {one}.",
            [({one: name}, s["failed_calls"]) for name, s in rows.items()],
        )
        for q in ("p50", "p99"):
            family(
                f"rlay_{one}_latency_{q}_seconds",
                "gauge",
                f"The {q} latency of the last calls, per {one}.",
                [({one: name}, _seconds(s[f"latency_ms_{q}"])) for name, s in rows.items()],
            )
    family(
        "rlay_trainer_slowest_wait_p99_seconds",
        "gauge",
        "The p99 time from a batch's first part done to its last: the wait on the slowest worker.",
        [({"trainer": n}, _seconds(s.get("slowest_wait_ms_p99"))) for n, s in metrics.get("trainers", {}).items()],
    )
    family(
        "rlay_slots",
        "gauge",
        "Slots by env id and state.",
        [
            ({"env_id": env_id, "state": state}, count)
            for env_id, counts in status.get("slots_by_env", {}).items()
            for state, count in counts.items()
        ],
    )
    family("rlay_workers", "gauge", "Registered workers.", [({}, len(status.get("workers", [])))])
    family("rlay_trainers", "gauge", "Trainers holding a lease.", [({}, len(status.get("trainers", [])))])
    failures = status.get("failures", {})
    family(
        "rlay_failures_total",
        "counter",
        "Failures since the broker started, by kind.",
        [({"kind": kind}, count) for kind, count in failures.items()],
    )
    return "\n".join(lines) + "\n"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MetricsServer:
    """Serves the broker's metrics to Prometheus (``GET /metrics`` at ``host:port``) from a daemon
    thread. The broker's loop renews the page every ``REFRESH`` seconds (``due``/``update``), so the
    thread never reads the broker's state, and a slow scraper never slows the loop."""

    REFRESH = 1.0  # s between renewals of the page
    REQUEST_TIMEOUT = 5.0  # s a scraper gets to send its request

    def __init__(self, address: str):
        import http.server
        import threading

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a metrics address is HOST:PORT, got {address!r}")
        self.page = b"# the broker has not measured anything yet\n"
        self.next_update = 0.0
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = self.REQUEST_TIMEOUT

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "the metrics are at /metrics")
                    return
                page = server_self.page
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:  # (scrapes are not news)
                pass

        self.server = http.server.ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.address = f"{bound_host}:{bound_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="rlay-metrics", daemon=True)
        self.thread.start()

    def due(self, now: float) -> bool:
        return now >= self.next_update

    def update(self, page: str, now: float) -> None:
        self.page = page.encode()
        self.next_update = now + self.REFRESH

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
