"""rlay.integrations.sb3: SB3's VecEnv API over an RlayVectorEnv gives what SB3's own DummyVecEnv gives,
embedded and remote, and SB3 PPO learns CartPole through it."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from rlay import RlayVectorEnv
from tests.conftest import ROOT, deployment, subprocess_env
from tests.envs import delayed_cartpole

try:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlay.integrations.sb3 import RlayVecEnv, make_vec_env
except ImportError:  # a base install: only the test of that runs (CI installs the train extra: all run there)
    DummyVecEnv = None
needs_sb3 = pytest.mark.skipif(DummyVecEnv is None, reason="needs stable-baselines3: pip install -e '.[train]'")


class InfoEnv(gym.Env):
    """Infos of several kinds (ints, numpy scalars and arrays, nested dicts, a key only on even steps,
    the reset options echoed), episodes of random lengths that end by termination or, under a
    TimeLimit, by truncation."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"start": np.float32(self.np_random.uniform()), "options": dict(options or {})}

    def _obs(self):
        return self.np_random.uniform(-1, 1, 3).astype(np.float32)

    def step(self, action):
        self.t += 1
        obs = self._obs()
        info = {
            "t": self.t,
            "score": np.float32(obs[0] * 2),
            "arr": np.arange(2) * self.t,
            "nested": {"s": f"t{self.t}"},
        }
        if self.t % 2 == 0:
            info["even"] = True
        terminated = bool(action == 2 and obs[1] > 0.2)
        return obs, float(action) + float(obs[0]), terminated, False, info


def info_env():
    return gym.wrappers.TimeLimit(InfoEnv(), max_episode_steps=6)


def assert_same_as_dummy(ours, dummy, steps: int, seed: int) -> None:
    """Seed both, reset, and take the same random actions: every output and info must be equal."""
    ours.seed(seed), dummy.seed(seed)
    np.testing.assert_array_equal(ours.reset(), dummy.reset())
    np.testing.assert_equal(ours.reset_infos, dummy.reset_infos)
    rng = np.random.default_rng(seed)
    ends = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        actions = rng.integers(0, dummy.action_space.n, dummy.num_envs)
        obs, rewards, dones, infos = ours.step(actions)
        d_obs, d_rewards, d_dones, d_infos = dummy.step(actions)
        np.testing.assert_array_equal(obs, d_obs, err_msg=f"step {t}")
        assert obs.dtype == d_obs.dtype
        assert rewards.dtype == np.float64  # DummyVecEnv's are float32: compared at its precision
        np.testing.assert_array_equal(rewards.astype(np.float32), d_rewards, err_msg=f"step {t}")
        np.testing.assert_array_equal(dones, d_dones, err_msg=f"step {t}")
        assert dones.dtype == np.bool_
        for i, (info, d_info) in enumerate(zip(infos, d_infos)):
            assert list(info) == list(d_info), f"step {t}, env {i}: {info} != {d_info}"
            np.testing.assert_equal(info, d_info, err_msg=f"step {t}, env {i}")
            if "terminal_observation" in d_info:
                assert info["terminal_observation"].dtype == d_info["terminal_observation"].dtype
                ends["truncated" if d_info["TimeLimit.truncated"] else "terminated"] += 1
        np.testing.assert_equal(ours.reset_infos, dummy.reset_infos, err_msg=f"step {t}")
    assert ends["terminated"] and ends["truncated"], ends  # both ways of ending were compared


@needs_sb3
@pytest.mark.timeout(60)
def test_equals_dummy_vec_env_embedded():
    ours = RlayVecEnv(RlayVectorEnv([info_env] * 3, autoreset_mode=AutoresetMode.SAME_STEP, envs_per_worker=2))
    dummy = DummyVecEnv([info_env] * 3)
    try:
        assert_same_as_dummy(ours, dummy, steps=60, seed=5)
        # per-env reset options (SB3's set_options), which gymnasium's reset takes for all envs at once
        ours.set_options([{"level": 1}, {"level": 2}, {"level": 1}])
        dummy.set_options([{"level": 1}, {"level": 2}, {"level": 1}])
        ours.seed(11), dummy.seed(11)
        np.testing.assert_array_equal(ours.reset(), dummy.reset())
        np.testing.assert_equal(ours.reset_infos, dummy.reset_infos)
        assert [info["options"] for info in ours.reset_infos] == [{"level": 1}, {"level": 2}, {"level": 1}]
    finally:
        ours.close()
        dummy.close()


@needs_sb3
@pytest.mark.timeout(90)
def test_equals_dummy_vec_env_remote():
    worker = ["CartPole-v1", "-k", "3", "--env-kwargs", json.dumps({"max_episode_steps": 20})]
    with deployment([worker], workers=1) as (front, _):
        ours = make_vec_env("CartPole-v1", 3, broker=front, vector_kwargs={"timeout": 20})
        dummy = DummyVecEnv([lambda: gym.make("CartPole-v1", max_episode_steps=20)] * 3)
        try:
            assert_same_as_dummy(ours, dummy, steps=80, seed=3)
        finally:
            ours.close()
            dummy.close()


@needs_sb3
@pytest.mark.timeout(60)
def test_a_lost_worker_ends_its_envs_episodes_as_truncations():
    """With on_worker_failure="replace", SB3 sees the lost envs' episodes end: truncated, with the last
    observation seen as terminal_observation, and ``worker_lost`` in the info."""
    venv = RlayVectorEnv(
        [functools.partial(delayed_cartpole, 0.02)] * 4,
        envs_per_worker=2,
        autoreset_mode=AutoresetMode.SAME_STEP,
        on_worker_failure="replace",
        timeout=30,
    )
    env = RlayVecEnv(venv)
    try:
        lost = venv._lease.groups[1].rows.tolist()
        prev = env.reset()
        os.kill(venv._lease.groups[1].pid, signal.SIGKILL)
        for _ in range(5):  # (the loss shows at the first call that reaches the killed worker)
            obs, _, dones, infos = env.step(np.zeros(4, dtype=np.int64))
            if any(info.get("worker_lost") for info in infos):
                break
            prev = obs
        for i, info in enumerate(infos):
            if i in lost:
                assert dones[i] and info["worker_lost"] and info["TimeLimit.truncated"], info
                np.testing.assert_array_equal(info["terminal_observation"], prev[i])
            else:
                assert "worker_lost" not in info and "worker_lost" not in env.reset_infos[i]
    finally:
        env.close()


@needs_sb3
@pytest.mark.timeout(60)
def test_attributes_and_methods_reach_the_envs():
    env = make_vec_env("CartPole-v1", 3, vector_kwargs={"envs_per_worker": 2})
    try:
        assert env.render_mode is None and env.get_attr("render_mode") == [None, None, None]
        env.set_attr("level", 4)
        assert env.get_attr("level") == [4, 4, 4]
        env.set_attr("level", [1, 2])  # one value for every env, as DummyVecEnv: a list is not per-env values
        assert env.get_attr("level", indices=[0, 2]) == [[1, 2], [1, 2]]
        assert env.get_attr("level", indices=1) == [[1, 2]]
        assert env.has_attr("level") and not env.has_attr("no_such_attribute")
        env.seed(7)
        env.reset()
        assert env.env_method("get_wrapper_attr", "np_random_seed") == [7, 8, 9]
        assert env.env_is_wrapped(gym.Wrapper) == [False, False, False]
        with pytest.raises(NotImplementedError, match="indices"):
            env.env_method("close", indices=[0])
        with pytest.raises(NotImplementedError, match="indices"):
            env.set_attr("level", 5, indices=[1, 2])
        assert env.get_attr("level") == [[1, 2]] * 3  # the refused calls touched nothing
        with pytest.warns(UserWarning, match="rgb_array"):
            assert env.get_images() == [None, None, None]
    finally:
        env.close()


@needs_sb3
@pytest.mark.timeout(60)
def test_refuses_what_sb3_cannot_use():
    for mode in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
        venv = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=mode)
        try:
            with pytest.raises(ValueError, match="SAME_STEP"):
                RlayVecEnv(venv)
        finally:
            venv.close()
    with pytest.raises(ValueError, match="SAME_STEP"):
        make_vec_env("CartPole-v1", 2, vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP})
    venv = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    try:
        with pytest.raises(ValueError, match="copy=True"):
            RlayVecEnv(venv)
    finally:
        venv.close()


@pytest.mark.timeout(60)
def test_rlay_imports_without_sb3_and_the_adapter_says_what_to_install():
    script = (
        "import sys\n"
        "sys.modules['stable_baselines3'] = None  # as if it were not installed\n"
        "import rlay, rlay.integrations\n"
        "assert not {'torch', 'ray'} & set(sys.modules)\n"
        "try:\n"
        "    import rlay.integrations.sb3\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'rlay[sb3]'" in done.stdout, done.stdout


@needs_sb3
@pytest.mark.timeout(120)
def test_sb3_ppo_learns_cartpole():
    """RL Zoo's PPO settings for CartPole-v1, on a budget of 30k steps (the full run: docs/guides/training.md)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    torch.set_num_threads(1)
    env = VecMonitor(make_vec_env("CartPole-v1", 8))
    try:
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=lambda remaining: remaining * 1e-3,
            clip_range=lambda remaining: remaining * 0.2,
            seed=1,
            device="cpu",
        )
        model.learn(30_000)
    finally:
        env.close()
    returns = [episode["r"] for episode in model.ep_info_buffer][-20:]
    assert len(returns) == 20 and np.mean(returns) >= 200, returns  # a random policy scores ~22
