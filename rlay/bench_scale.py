"""``rlay bench --scale``: one broker and W simulated workers, to see what the broker costs per worker.

The W workers live in one process, each a DEALER socket with one trivial env whose replies are
made once and sent again (1000 Python worker processes do not fit in this machine's memory). A
trainer leases all W envs and steps them. Measured on the broker process, from /proc: its CPU
time per part (one request out to a worker, one reply in), its idle CPU for the workers'
heartbeats alone, and its resident memory.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlay import protocol as P
from rlay.bench import cpu_seconds, rss_mb

__all__ = ["run_scale", "format_scale", "SCALE_ENV_ID"]

SCALE_ENV_ID = "rlay/Scale-v0"


def _spaces() -> tuple[dict, dict]:
    from gymnasium import spaces

    from rlay.spaces import encode_space

    return encode_space(spaces.Box(0, 255, (4,), np.uint8)), encode_space(spaces.Discrete(2))


def _simulated_workers(backend: str, count: int, ready: Any, stop: Any) -> None:
    """``count`` workers in one process: each registers one env and answers at once."""
    import msgpack
    import zmq

    from rlay.values import packb
    from rlay.wire import header

    obs_space, act_space = _spaces()
    leaf = [{"dtype": "|u1", "shape": [1, 4]}]
    bodies = {
        P.RESET: packb({"obs": leaf, "info": [{}]}),
        P.STEP: packb(
            {"obs": leaf, "reward": [0.0], "terminated": [False], "truncated": [False], "info": [{}], "final": [None]}
        ),
    }
    obs = bytes(4)
    ping = header(P.HEARTBEAT)
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for i in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, b"sim" + i.to_bytes(4, "big"))
        sock.connect(backend)
        sock.send(
            header(
                P.REGISTER,
                env_id=SCALE_ENV_ID,
                num_envs=1,
                host="simulated",
                pid=os.getpid(),
                obs_space=obs_space,
                act_space=act_space,
            )
        )
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    registered, interval, next_ping = 0, P.HEARTBEAT_INTERVAL, 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_ping:  # pings ride on the main socket (protocol 8.5 allows it)
            for sock in socks:
                sock.send(ping, zmq.NOBLOCK)
            next_ping = now + interval * 0.8
        for sock, _ in poller.poll(50):
            while sock.poll(0):
                frames = sock.recv_multipart()
                head = msgpack.unpackb(frames[0])
                kind = head["type"]
                if kind in bodies:
                    sock.send_multipart([header(P.REPLY, req=head["req"]), bodies[kind], obs])
                elif kind == P.REGISTERED:
                    registered += 1
                    interval = head.get("heartbeat_interval", interval)
                    if registered == count:
                        ready.set()
    for sock in socks:
        sock.close()
    ctx.term()


def measure(count: int, seconds: float, metrics: bool = True) -> dict[str, float]:
    """One broker process and ``count`` simulated workers: per-batch time, broker CPU and memory;
    ``metrics``: the broker measures the calls it routes (broker/metrics.py), as it does by default."""
    from rlay import RlayVectorEnv

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="rlay-scale-") as tmp:
        front, back = f"ipc://{tmp}/front", f"ipc://{tmp}/back"
        broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlay.cli",
                "--log-level",
                "ERROR",
                "broker",
                "--frontend",
                front,
                "--backend",
                back,
                *([] if metrics else ["--no-metrics"]),
            ],
            stdin=subprocess.DEVNULL,
        )
        ready, stop = ctx.Event(), ctx.Event()
        sim = ctx.Process(target=_simulated_workers, args=(back, count, ready, stop), daemon=True)
        sim.start()
        envs = None
        try:
            if not ready.wait(120):
                raise RuntimeError(f"the {count} simulated workers did not all register within 120 s")
            envs = RlayVectorEnv.remote(SCALE_ENV_ID, count, broker=front, copy=False, timeout=120)
            rss_registered = rss_mb(broker.pid)
            idle_start, cpu0 = time.perf_counter(), cpu_seconds(broker.pid)
            time.sleep(min(2.0, seconds))  # heartbeats only: what being idle costs the broker
            idle_rate = (cpu_seconds(broker.pid) - cpu0) / (time.perf_counter() - idle_start)
            envs.reset(seed=0)
            action = np.zeros(count, np.int64)
            envs.step(action)
            batches, start, cpu0 = 0, time.perf_counter(), cpu_seconds(broker.pid)
            while time.perf_counter() - start < seconds or batches < 3:
                envs.step(action)
                batches += 1
            elapsed, cpu = time.perf_counter() - start, cpu_seconds(broker.pid) - cpu0
            return {
                "workers": count,
                "metrics": metrics,
                "batch_ms": elapsed / batches * 1e3,
                "broker_cpu_us_per_part": max(0.0, cpu - idle_rate * elapsed) / (batches * count) * 1e6,
                "broker_idle_cpu_percent": idle_rate * 100,
                "broker_rss_mb": max(rss_registered, rss_mb(broker.pid)),
            }
        finally:
            if envs is not None:
                envs.close()
            stop.set()
            sim.join(30)
            if sim.is_alive():
                sim.kill()
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait(10)


def run_scale(
    counts: tuple[int, ...] = (10, 100, 1000), seconds: float = 3.0, log: Callable[[str], None] = print
) -> list[dict[str, float]]:
    """Each count with the broker's metrics on, then off (what measuring costs the hot path)."""
    log(SCALE_HEADER)
    rows = []
    for count in counts:
        for metrics in (True, False):
            rows.append(measure(count, seconds, metrics))
            log(format_scale(rows[-1]))
    return rows


SCALE_HEADER = (
    f"{'workers':>8} {'metrics':>8} {'batch (ms)':>11} {'broker CPU per part (us)':>25} {'broker idle CPU':>16} "
    f"{'broker RSS (MB)':>16}"
)


def format_scale(row: dict[str, float]) -> str:
    return (
        f"{row['workers']:>8} {'on' if row['metrics'] else 'off':>8} {row['batch_ms']:>11.2f} "
        f"{row['broker_cpu_us_per_part']:>25.1f} {row['broker_idle_cpu_percent']:>15.1f}% {row['broker_rss_mb']:>16.1f}"
    )
