"""RLlib trains on rlay envs: ``rlay.register`` makes ``gymnasium.make_vec`` return an RlayVectorEnv,
embedded or leased, and RLlib PPO's env runners step envs leased from a broker (a bounded run: the
longer one is in docs/guides/training.md).

Ray runs in a network namespace of its own whose only interface is loopback, with usage stats off;
every Ray node's address must be 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile

import gymnasium as gym
import numpy as np
import pytest

import rlay
from rlay import RlayVectorEnv
from tests.conftest import RLAY, ROOT, Proc, assert_steps_equal, deployment, subprocess_env, wait_for


@pytest.fixture(autouse=True)
def forget_test_ids():
    """The ids a test registers leave gymnasium's registry after it."""
    yield
    for env_id in [i for i in gym.registry if i.startswith("rlay-test/")]:
        del gym.registry[env_id]


@pytest.mark.timeout(60)
def test_make_vec_of_a_registered_id_is_an_rlay_vector_env():
    rlay.register("rlay-test/CartPole-v1", env_id="CartPole-v1", vector_kwargs={"envs_per_worker": 2})
    envs = gym.make_vec("rlay-test/CartPole-v1", num_envs=3, vectorization_mode="vector_entry_point")
    sync = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    try:
        assert isinstance(envs, RlayVectorEnv) and envs.num_envs == 3
        assert envs.spec.id == "rlay-test/CartPole-v1"
        assert_steps_equal(envs, sync, seed=4, steps=30)
    finally:
        envs.close()
        sync.close()
    # make_vec's kwargs are the env's (embedded): here a time limit of 3 steps
    envs = gym.make_vec("rlay-test/CartPole-v1", num_envs=2, max_episode_steps=3)
    try:
        envs.reset(seed=0)
        truncations = [envs.step(np.zeros(2, dtype=np.int64))[3] for _ in range(3)]
        assert truncations[-1].all() and not np.any(truncations[:-1])
    finally:
        envs.close()


@pytest.mark.timeout(60)
def test_register_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="not by rlay"):
        rlay.register("CartPole-v1", env_id="CartPole-v1")  # (gymnasium's own id stays gymnasium's)
    assert gym.spec("CartPole-v1").vector_entry_point is not None  # (gymnasium's own)
    with pytest.raises(TypeError, match="envs_per_worker"):
        rlay.register(
            "rlay-test/Remote-v0",
            env_id="CartPole-v1",
            broker="tcp://127.0.0.1:1",
            vector_kwargs={"envs_per_worker": 2},
        )
    with pytest.raises(TypeError, match="workers make them"):
        rlay.register("rlay-test/Remote-v0", env_id="CartPole-v1", broker="tcp://127.0.0.1:1", gravity=3.0)
    assert "rlay-test/Remote-v0" not in gym.registry


@pytest.mark.timeout(90)
def test_make_vec_of_a_registered_id_leases_from_the_broker():
    with deployment([["CartPole-v1", "-k", "2"]], workers=1) as (front, _):
        rlay.register("rlay-test/Leased-v1", env_id="CartPole-v1", broker=front, vector_kwargs={"timeout": 20})
        envs = gym.make_vec("rlay-test/Leased-v1", 2, vectorization_mode="vector_entry_point")
        try:
            assert isinstance(envs, RlayVectorEnv) and envs.broker_address == front
            sync = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
            np.testing.assert_array_equal(envs.reset(seed=1)[0], sync.reset(seed=1)[0])
            sync.close()
            with pytest.raises(TypeError, match="workers make them"):
                gym.make_vec("rlay-test/Leased-v1", 2, max_episode_steps=3)
        finally:
            envs.close()


def in_namespace(namespace: str) -> set[int]:
    """The processes whose network namespace is ``namespace`` (a /proc/PID/ns/net link)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/net") == namespace:
                    pids.add(int(entry))
    return pids


@contextlib.contextmanager
def loopback_namespace():
    """A network namespace whose only interface is loopback, up: yields the command prefix that runs a
    program in it. A process holds it open; at the end nothing else may be left in it."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec sleep 3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    namespace, left = None, set()
    try:
        ready = holder.stdout.readline().strip()
        assert ready == "ready", f"cannot make a network namespace (unshare --net, as root): {holder.stderr.read()}"
        namespace = os.readlink(f"/proc/{holder.pid}/ns/net")
        yield ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
    finally:
        if namespace is not None:
            with contextlib.suppress(AssertionError):
                wait_for(lambda: in_namespace(namespace) == {holder.pid}, 15, "the namespace's processes to exit")
            left = in_namespace(namespace) - {holder.pid}
            for pid in left:  # (ours alone: the namespace was made for this test)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        holder.kill()
        holder.wait()
    assert not left, f"left running in the namespace: {sorted(left)}"


@pytest.mark.timeout(420)
def test_rllib_ppo_trains_on_envs_leased_from_a_broker():
    """Two training iterations of 1000 steps of RLlib PPO, one env runner actor leasing 8 CartPole envs
    from `rlay up configs/cartpole-local.toml`, all in a namespace with only loopback."""
    pytest.importorskip("ray.rllib")
    pytest.importorskip("torch")
    # (Ray's own temp dir, short: its socket paths live there; no other Ray instance is found through it)
    with tempfile.TemporaryDirectory(prefix="rlay-rllib-", dir="/tmp") as ray_tmp, loopback_namespace() as netns:
        links = subprocess.run([*netns, "ip", "-o", "link"], capture_output=True, text=True, timeout=10)
        assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"], links.stdout
        up = Proc("up", "configs/cartpole-local.toml", command=[*netns, *RLAY])  # (its ports are the namespace's)
        try:
            done = subprocess.run(
                [*netns, sys.executable, "examples/rllib_ppo_cartpole.py", "--broker", "tcp://127.0.0.1:5555"]
                + ["--iterations", "2", "--batch-size", "1000", "--target-return", "inf"],
                cwd=ROOT,
                env={**subprocess_env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp},
                capture_output=True,
                text=True,
                timeout=360,
            )
        finally:
            code, _, err = up.stop()
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert code == 0, err
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ray_nodes"] == ["127.0.0.1"], summary  # Ray never left loopback
    # the env runner actor's vector env is rlay's, leased from the broker
    assert summary["envs"] == ["RlayVectorEnv(CartPole-v1, num_envs=8, broker=tcp://127.0.0.1:5555)"], summary
    assert summary["iterations"] == 2 and summary["steps"] >= 2000, summary
    assert math.isfinite(summary["mean_return"]), summary
