"""Shared fixtures: real processes, real sockets, and a check that none is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlay.conformance.compare import assert_same  # noqa: F401  (the tests import it from here)
from rlay.conformance.harness import wait_until as wait_for  # noqa: F401  (polls a condition, with a timeout)
from rlay.fleet import descendants

ROOT = Path(__file__).resolve().parent.parent
RLAY = [sys.executable, "-m", "rlay.cli"]
GAME = [sys.executable, "-m", "workers.examples.tick_game"]


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must stop the processes it started."""
    before = descendants(os.getpid())
    yield
    try:
        wait_for(lambda: not (descendants(os.getpid()) - before), 10, "the test's child processes to exit")
    except AssertionError:
        left = descendants(os.getpid()) - before
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"test left processes running: {sorted(left)}") from None


@pytest.fixture
def dealers():
    """connect(address): a raw DEALER socket to it (closed after the test): a peer speaking the protocol by hand."""
    import zmq

    ctx = zmq.Context()
    made = []

    def connect(address: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close()
    ctx.term()


@pytest.fixture
def leaf_paths(monkeypatch):
    """How each observation leaf of each reply the trainer decodes travelled: shm, rows or frame."""
    import rlay.trainer.obs_buffer as obs_buffer

    seen: list[list[str]] = []
    decode = obs_buffer.decode_leaves

    def spy(descriptors, *args, **kwargs):
        seen.append(
            ["shm" if d.get("shm") is True else "rows" if d.get("rows") is True else "frame" for d in descriptors]
        )
        return decode(descriptors, *args, **kwargs)

    monkeypatch.setattr(obs_buffer, "decode_leaves", spy)
    return seen


def own_segments() -> set[str]:
    """The shared-memory segments of trainers in this process (rlay/shm.py)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"rlay-{os.getpid()}-")}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leftover_segments():
    """Every vector env a test makes must remove its shared memory (close(), or when it is collected)."""
    before = own_segments()
    yield
    import gc

    gc.collect()
    left = own_segments() - before
    assert not left, f"test left shared-memory segments behind: {sorted(left)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Proc:
    """A CLI subprocess whose exit status the test checks."""

    def __init__(self, *args: str, command: list[str] = RLAY):
        self.args = [*command, *args]
        self.popen = subprocess.Popen(
            self.args, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str, str]:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate()
            raise AssertionError(f"{self.args} did not stop within {timeout} s after signal {sig}:\n{err}") from None
        return self.popen.returncode, out, err


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`rlay ARGS`, its output captured; ``env``: variables to set for it."""
    return subprocess.run(
        [*RLAY, *args],
        cwd=ROOT,
        env={**subprocess_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def broker_status(frontend: str, timeout: float = 5.0) -> dict:
    from rlay import protocol as P
    from rlay.client import BrokerClient

    client = BrokerClient(frontend)
    try:
        return client.request(P.STATUS, timeout, "status")
    finally:
        client.close()


def assert_remote_cartpole_equals_sync(front: str, steps: int, seed: int = 0, curve=None) -> None:
    """Lease 2 CartPole-v1 slots from the broker at ``front``; they must step exactly as SyncVectorEnv."""
    import gymnasium as gym

    from rlay import RlayVectorEnv

    envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=15, curve=curve)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    try:
        assert_steps_equal(envs, sync, seed, steps)
    finally:
        envs.close()
        sync.close()


def assert_steps_equal(envs, sync, seed: int, steps: int) -> None:
    """``envs`` reset with ``seed`` and stepped ``steps`` times with ``sync``'s random actions: the
    observations, rewards, terminations and truncations equal ``sync``'s (array-valued envs)."""
    np.testing.assert_array_equal(envs.reset(seed=seed)[0], sync.reset(seed=seed)[0])
    for _ in range(steps):
        action = sync.action_space.sample()
        for got, expected in zip(envs.step(action)[:4], sync.step(action)[:4]):
            np.testing.assert_array_equal(got, expected)


def start_deployment(front: str, back: str, worker_commands: list[list[str]], workers: int) -> list[Proc]:
    """`rlay broker` on ``front``/``back`` and one `rlay worker` per command (each gets --broker BACK);
    returns [broker, *workers] once ``workers`` worker processes have registered."""
    procs = [Proc("broker", "--frontend", front, "--backend", back)]
    try:
        for command in worker_commands:
            procs.append(Proc("worker", *command, "--broker", back))
        wait_for(lambda: len(broker_status(front)["workers"]) == workers, 60, f"{workers} workers to register")
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise
    return procs


def write_deployment(tmp_path, workers_toml: str, broker_toml: str = "") -> tuple[str, str, Path]:
    """A deployment file on fresh ports: its [broker] section the addresses and ``broker_toml`` lines,
    then ``workers_toml``. Returns (front, back, its path)."""
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "deployment.toml"
    config.write_text(f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\n{broker_toml}\n\n{workers_toml}\n')
    return front, back, config


@contextlib.contextmanager
def up_deployment(tmp_path, broker_toml: str, workers_toml: str, workers: int = 1):
    """`rlay up` of write_deployment()'s file. Yields (front, back) once ``workers`` worker processes
    have registered; afterwards `rlay up` must exit 0."""
    front, back, config = write_deployment(tmp_path, workers_toml, broker_toml)
    up = Proc("up", str(config))
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == workers, 60, f"{workers} worker(s) to register")
        yield front, back
    finally:
        code, _, err = up.stop()
        assert code == 0, err


@contextlib.contextmanager
def deployment(worker_commands: list[list[str]], workers: int, check_log=None):
    """start_deployment() on fresh ports; yields (front, back). Afterwards every process must exit 0
    (and pass ``check_log(stderr)`` when given)."""
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    procs = start_deployment(front, back, worker_commands, workers)
    try:
        yield front, back
    finally:
        results = [(proc, proc.stop()) for proc in reversed(procs)]
        for proc, (code, _, err) in results:
            assert code == 0, f"{proc.args} exited with {code}:\n{err}"
            if check_log is not None:
                check_log(err)
