"""``rlay bench``: RlayVectorEnv against gymnasium's SyncVectorEnv and AsyncVectorEnv, in one run.

Every workload runs each implementation in turn, interleaved over several
rounds, and reports the median. Ratios within one run are the meaningful
numbers: this machine's absolute speed varies from run to run.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlay.progress import Progress

__all__ = ["run", "SleepEnv", "FrameEnv", "NoopEnv"]


class SleepEnv(gym.Env):
    """A latency-bound env: each step sleeps ``delay`` seconds, like a game waiting on its frame."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: float = 0.001):
        self.delay = delay
        self.obs = np.zeros(4, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.obs, {}

    def step(self, action):
        time.sleep(self.delay)
        return self.obs, 0.0, False, False, {}


class FrameEnv(gym.Env):
    """Returns a uint8 image of ``shape`` every step (rendered once: the bench measures transport)."""

    action_space = spaces.Discrete(2)

    def __init__(self, shape: tuple[int, ...] = (84, 84, 3)):
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.frame, {}

    def step(self, action):
        return self.frame, 0.0, False, False, {}


class NoopEnv(FrameEnv):
    """The cheapest possible env, for round-trip latency: a 4-float observation."""

    def __init__(self):
        super().__init__((4,))
        self.observation_space = spaces.Box(0, 255, (4,), np.uint8)


def cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


@dataclass
class Workload:
    name: str
    make: Callable[[], gym.Env]
    num_envs: int
    seconds: float  # per implementation per round
    obs_bytes: int = 0  # per env step, for GB/s
    rlay_kwargs: dict[str, Any] = field(default_factory=dict)  # what the docs tell a user to set
    sleep_floor: float = 0.0  # an env that only sleeps this long: also measure the floor without rlay


def workloads(scale: float) -> list[Workload]:
    import functools

    big = (1080, 1920, 4)
    return [
        Workload("CartPole-v1 x8", cartpole, 8, 1.0 * scale),
        Workload("CartPole-v1 x64", cartpole, 64, 1.0 * scale),
        # Envs that block: several per worker, stepped by as many threads (README, RlayVectorEnv docs).
        # Envs that block, with default arguments: the worker finds they wait, and steps them on threads.
        Workload("sleep 1 ms x64", functools.partial(SleepEnv, 0.001), 64, 1.0 * scale, sleep_floor=0.001),
        # Game instances: one env per process, each step waiting 1 ms on its frame.
        Workload(
            "game instances x64",
            functools.partial(SleepEnv, 0.001),
            64,
            1.0 * scale,
            rlay_kwargs={"envs_per_worker": 1},
            sleep_floor=0.001,
        ),
        Workload("uint8[84,84,3] x8", functools.partial(FrameEnv, (84, 84, 3)), 8, 1.0 * scale, 84 * 84 * 3),
        Workload("uint8[1080,1920,4] x8", functools.partial(FrameEnv, big), 8, 1.5 * scale, int(np.prod(big))),
    ]


def default_envs_per_worker(num_envs: int) -> int:
    from rlay.vector import default_envs_per_worker as default

    return default(num_envs)


def make_vector(kind: str, w: Workload):
    from rlay import RlayVectorEnv

    fns = [w.make] * w.num_envs
    if kind == "sync":
        return gym.vector.SyncVectorEnv(fns, copy=False)
    if kind == "async":
        return gym.vector.AsyncVectorEnv(fns, copy=False)
    return RlayVectorEnv(fns, copy=False, **w.rlay_kwargs)


def steps_per_second(envs, seconds: float, warmup: int = 3) -> float:
    """Env-steps/s of envs.step over about ``seconds`` (actions sampled beforehand)."""
    actions = [envs.action_space.sample() for _ in range(64)]
    envs.reset(seed=0)
    for n in range(warmup):
        envs.step(actions[n % 64])
    gc.collect()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        envs.step(actions[n % 64])
        n += 1
        now = time.perf_counter()
        if now >= deadline and n >= 3:
            return n * envs.num_envs / (now - start)


def memcpy_gbps(nbytes: int, repeats: int = 5) -> float:
    """Copy bandwidth (GB/s) into a warm, preallocated buffer: the best a copy can do here."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros_like(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


@contextlib.contextmanager
def _peer(target: Callable, *args: Any):
    """A ROUTER on a fresh ipc address and a peer process running ``target(address, *args)``,
    which says hello first; yields (router, peer identity) and cleans both up."""
    import zmq

    with tempfile.TemporaryDirectory(prefix="rlay-bench-") as tmp:
        address = f"ipc://{tmp}/peer"
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(address)
        proc = multiprocessing.Process(target=target, args=(address, *args), daemon=True)
        proc.start()
        try:
            if not router.poll(30_000):
                raise RuntimeError("the bench's peer process did not start")
            ident, _ = router.recv_multipart()
            yield router, ident
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            router.close()
            ctx.term()


def _frame_sender(address: str, shape: tuple[int, ...], count: int, n: int) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    frames = [np.full(shape, i, np.uint8) for i in range(count)]
    sock.send(b"hello")
    for _ in range(n):
        sock.recv()
        sock.send_multipart([b"h", *frames], copy=False)
    sock.close()
    ctx.term()


def bare_frames_gbps(shape: tuple[int, ...], count: int, seconds: float) -> float:
    """A bare pyzmq transfer of ``count`` frames of ``shape`` per request over ipc, copied into a
    preallocated batch as rlay's trainer does: the transport's ceiling on this machine."""
    n = max(3, int(seconds * 20))
    buf = np.zeros((count, *shape), np.uint8)
    with _peer(_frame_sender, shape, count, n) as (router, ident):
        for i in range(n):
            if i == 1:
                start = time.perf_counter()  # the first transfer warms the buffers
            router.send_multipart([ident, b"go"])
            for k, frame in enumerate(router.recv_multipart(copy=False)[2:]):
                buf[k] = np.frombuffer(frame.buffer, np.uint8).reshape(shape)
        elapsed = time.perf_counter() - start
    return buf.nbytes * (n - 1) / elapsed / 1e9


def _echo(address: str) -> None:
    """The far end of the bare round trip: a DEALER that says hello, then echoes until told to stop."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"hello")
    while True:
        frames = sock.recv_multipart()
        if frames == [b"stop"]:
            break
        sock.send_multipart(frames)
    sock.close()
    ctx.term()


def bare_round_trips(count: int) -> list[float]:
    """Round-trip seconds of a bare pyzmq DEALER/ROUTER echo over ipc between two processes."""
    payload = [b"h" * 32, np.zeros(4, np.uint8).tobytes()]  # a header and a small observation
    times = []
    with _peer(_echo) as (router, ident):
        for _ in range(count):
            t = time.perf_counter()
            router.send_multipart([ident, *payload])
            router.recv_multipart()
            times.append(time.perf_counter() - t)
        router.send_multipart([ident, b"stop"])
    return times


def rlay_round_trips(count: int) -> list[float]:
    """Round-trip seconds of one env's step through RlayVectorEnv, broker and worker."""
    from rlay import RlayVectorEnv

    envs = RlayVectorEnv([NoopEnv], copy=False)
    try:
        envs.reset(seed=0)
        action = np.zeros(1, np.int64)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            envs.step(action)
            times.append(time.perf_counter() - t)
        return times
    finally:
        envs.close()


NOOP_ENV_ID = "rlay/Noop-v0"  # what the C++ example worker registers with --env noop


@contextlib.contextmanager
def remote_deployment(worker: list[str], copies: int):
    """A broker process (ipc) and ``copies`` worker processes ``worker`` hosting NOOP_ENV_ID one env each;
    yields a lease of all of them and the pids of the processes that serve them (as they registered:
    `rlay worker` serves from a child). Everything is stopped afterwards."""
    import subprocess
    import sys

    from rlay import RlayVectorEnv
    from rlay import protocol as P
    from rlay.client import BrokerClient

    with tempfile.TemporaryDirectory(prefix="rlay-bench-") as tmp:
        front, back = f"ipc://{tmp}/front", f"ipc://{tmp}/back"
        cli = [sys.executable, "-m", "rlay.cli", "--log-level", "ERROR"]
        procs = [subprocess.Popen([*cli, "broker", "--frontend", front, "--backend", back], stdin=subprocess.DEVNULL)]
        try:
            client = BrokerClient(front)
            try:  # (up before leasing: a lease gives up on a broker silent for a heartbeat expiry)
                client.request(P.STATUS, 60, f"the status of the bench's broker at {front}")
            finally:
                client.close()
            env = {**os.environ, "RLAY_BROKER": back}
            procs += [
                subprocess.Popen(
                    worker, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
                )
                for _ in range(copies)
            ]
            envs = RlayVectorEnv.remote(NOOP_ENV_ID, copies, broker=front, copy=False, timeout=60)
            try:
                yield envs, sorted({slot["pid"] for slot in envs._lease.slot_info.values()})  # (the workers' own pids)
            finally:
                envs.close()
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def remote_round_trips(worker: list[str], count: int) -> list[float]:
    """Round-trip seconds of one env's step through a broker process (ipc) and the worker process
    ``worker`` hosting NOOP_ENV_ID: the deployed path, two hops, for a worker of any language."""
    with remote_deployment(worker, 1) as (envs, _):
        envs.reset(seed=0)
        action = np.zeros(1, np.int64)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            envs.step(action)
            times.append(time.perf_counter() - t)
        return times


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker_cpu_per_message(worker: list[str], copies: int = 8, seconds: float = 2.0) -> float:
    """Microseconds of CPU a worker process spends per message (a step request in, its reply out), with
    a no-op env: all of it, its I/O and heartbeat threads included; ``copies`` workers stepped at once."""
    with remote_deployment(worker, copies) as (envs, pids):
        envs.reset(seed=0)
        action = np.zeros(copies, np.int64)
        for _ in range(20):
            envs.step(action)
        before, batches, start = [cpu_seconds(p) for p in pids], 0, time.perf_counter()
        while time.perf_counter() - start < seconds or batches < 10:
            envs.step(action)
            batches += 1
        spent = sum(cpu_seconds(p) - b for p, b in zip(pids, before))
        return spent / copies / batches * 1e6


def python_noop_worker() -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "rlay.cli",
        "--log-level",
        "ERROR",
        "worker",
        "rlay.bench:NoopEnv",
        "--name",
        NOOP_ENV_ID,
        "--no-restart",
    ]


def percentiles(times: list[float]) -> dict[str, float]:
    us = np.asarray(times[len(times) // 10 :]) * 1e6  # drop the first tenth: warm-up
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}


IMPLEMENTATIONS = ("rlay", "sync", "async")


def run(
    scale: float = 1.0,
    rounds: int = 3,
    latency_count: int = 3000,
    log: Callable[[str], None] = print,
    cpp_worker: str | None = None,
) -> dict[str, Any]:
    """Run every workload and the latency test; returns the report ``rlay bench --json`` prints.

    ``cpp_worker``: the C++ example worker (build/cpp/rlay_example_command), whose round trip
    through a broker process is measured beside the Python worker's."""
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": os.uname().sysname + " " + os.uname().release,
            "python": ".".join(map(str, __import__("sys").version_info[:3])),
            "gymnasium": gym.__version__,
            "numpy": np.__version__,
            "pyzmq": __import__("zmq").__version__,
        },
        "rounds": rounds,
        "workloads": [],
    }
    todo = workloads(scale)
    # (on stderr: tqdm's bar on a terminal, else a line every few seconds; the table stays on stdout)
    progress = Progress(len(todo) * rounds * len(IMPLEMENTATIONS), "runs", "rlay bench")
    for w in todo:
        rates = {kind: [] for kind in IMPLEMENTATIONS}
        shared = False
        for _ in range(rounds):
            for kind in IMPLEMENTATIONS:  # interleaved; each runs alone (built before, closed after)
                envs = make_vector(kind, w)
                try:
                    if kind == "rlay":
                        shared = envs._buffer.segment is not None  # large observations in shared memory (rlay/shm.py)
                    # (rlay's workers time their envs' first steps to choose how to step them)
                    rates[kind].append(steps_per_second(envs, w.seconds, warmup=20 if kind == "rlay" else 3))
                finally:
                    envs.close()
                progress.update(1, workload=w.name)
        entry = {
            "name": w.name,
            "num_envs": w.num_envs,
            "rlay_kwargs": w.rlay_kwargs,
            **{kind: statistics.median(r) for kind, r in rates.items()},
        }
        if w.obs_bytes:
            entry["rlay_shared_memory"] = shared
            entry["rlay_gbps"] = entry["rlay"] * w.obs_bytes / 1e9
            entry["memcpy_gbps"] = memcpy_gbps(w.obs_bytes * w.num_envs)
            shape = w.make().observation_space.shape
            entry["bare_pyzmq_gbps"] = bare_frames_gbps(shape, w.num_envs, w.seconds)
        if w.sleep_floor:
            per = w.rlay_kwargs.get("envs_per_worker") or default_envs_per_worker(w.num_envs)
            entry["floor"] = sleep_floor(w.num_envs // per, per, w.sleep_floor, w.seconds)
            entry["floor_layout"] = f"{w.num_envs // per} processes x {per} threads"
            entry["ideal"] = w.num_envs / w.sleep_floor
        report["workloads"].append(entry)
        log(format_row(entry))
    progress.close()
    progress.note("round trips and worker CPU")
    report["latency"] = {
        "bare_pyzmq": percentiles(bare_round_trips(latency_count)),
        "rlay": percentiles(rlay_round_trips(latency_count)),
        "broker_python_worker": percentiles(remote_round_trips(python_noop_worker(), latency_count)),
    }
    report["worker_cpu_us"] = {"python": worker_cpu_per_message(python_noop_worker(), seconds=2 * scale)}
    if cpp_worker is not None:
        cpp = [cpp_worker, "--env", "noop", "--envs", "1"]
        report["latency"]["broker_cpp_worker"] = percentiles(remote_round_trips(cpp, latency_count))
        report["worker_cpu_us"]["cpp"] = worker_cpu_per_message(cpp, seconds=2 * scale)
    return report


def format_row(e: dict[str, Any]) -> str:
    row = (
        f"{e['name']:<24} {e['rlay']:>12,.0f} {e['sync']:>12,.0f} {e['async']:>12,.0f} "
        f"{e['rlay'] / e['sync']:>9.2f}x {e['rlay'] / e['async']:>9.2f}x"
    )
    if e.get("rlay_kwargs"):
        row += "   (" + ", ".join(f"{k}={v}" for k, v in e["rlay_kwargs"].items()) + ")"
    return row


def _sleep_rounds(conn, threads: int, delay: float) -> None:
    """One process of the sleep floor: per round, ``threads`` chunks each sleep ``delay`` once,
    run by the worker's own ChunkRunner (the same thread hand-offs as an rlay worker)."""
    from workers.worker import ChunkRunner

    runner = ChunkRunner(threads)
    chunks = [delay] * threads
    try:
        while conn.recv_bytes() == b"go":
            runner.map(time.sleep, chunks)
            conn.send_bytes(b"done")
    finally:
        runner.close()


def sleep_floor(processes: int, threads: int, delay: float, seconds: float) -> float:
    """Env-steps/s of the sleeping workload's layout with no broker, no sockets and no env:
    ``processes`` processes of ``threads`` threads (a worker's ChunkRunner), each sleeping
    ``delay`` per round, driven over pipes. What thread wake-ups and GIL hand-offs leave of
    the ideal on this machine; the rest of the gap to rlay is rlay's messages and Python."""
    pipes = [multiprocessing.Pipe() for _ in range(processes)]
    procs = [
        multiprocessing.Process(target=_sleep_rounds, args=(child, threads, delay), daemon=True) for _, child in pipes
    ]
    for proc in procs:
        proc.start()
    try:
        rounds, start = 0, time.perf_counter()
        while True:
            for parent, _ in pipes:
                parent.send_bytes(b"go")
            for parent, _ in pipes:
                if not parent.poll(30):
                    raise RuntimeError("a sleep-floor process did not answer within 30 s")
                parent.recv_bytes()
            rounds += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and rounds >= 3:
                return rounds * processes * threads / elapsed
    finally:
        for parent, _ in pipes:
            parent.send_bytes(b"stop")
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def format_floor(e: dict[str, Any]) -> str:
    return (
        f"{e['name']:<24} rlay {e['rlay']:,.0f} = {e['rlay'] / e['ideal']:.0%} of the ideal {e['ideal']:,.0f}; "
        f"floor without rlay ({e['floor_layout']}, pipes, no env) {e['floor']:,.0f} = "
        f"{e['floor'] / e['ideal']:.0%}, {e['floor'] / e['async']:.2f}x async; "
        f"rlay = {e['rlay'] / e['floor']:.0%} of it"
    )


def format_bandwidth(e: dict[str, Any]) -> str:
    path = "through shared memory" if e.get("rlay_shared_memory") else "as frames"
    return (
        f"{e['name']:<24} rlay {e['rlay_gbps']:.2f} GB/s of observations ({path}) = "
        f"{e['rlay_gbps'] / e['memcpy_gbps']:.0%} of memcpy ({e['memcpy_gbps']:.2f} GB/s), "
        f"{e['rlay_gbps'] / e['bare_pyzmq_gbps']:.2f}x a bare pyzmq ipc transfer ({e['bare_pyzmq_gbps']:.2f} GB/s)"
    )


HEADER = f"{'workload (env-steps/s)':<24} {'rlay':>12} {'sync':>12} {'async':>12} {'vs sync':>10} {'vs async':>10}"


LATENCY_ROWS = {  # report key -> what it measured
    "bare_pyzmq": "bare pyzmq echo (ipc)",
    "rlay": "rlay embedded (trainer+broker, Python worker)",
    "broker_python_worker": "rlay via a broker process, Python worker",
    "broker_cpp_worker": "rlay via a broker process, C++ worker",
}


def format_worker_cpu(cpu: dict[str, float]) -> str:
    return "worker CPU per message, no-op env, 8 workers: " + ", ".join(
        f"{kind} {us:.0f} us" for kind, us in cpu.items()
    )


def format_latency(lat: dict[str, dict[str, float]]) -> str:
    bare = lat["bare_pyzmq"]["median_us"]
    lines = ["round trip of one env (ipc)                     median      p99   vs bare"]
    for key, what in LATENCY_ROWS.items():
        if key in lat:
            row = lat[key]
            lines.append(
                f"  {what:<46} {row['median_us']:>6.0f} us {row['p99_us']:>6.0f} us {row['median_us'] / bare:>7.2f}x"
            )
    return "\n".join(lines)
