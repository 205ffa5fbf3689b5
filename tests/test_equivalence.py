"""RlayVectorEnv equals SyncVectorEnv bit for bit: every autoreset mode, embedded and remote."""

from __future__ import annotations

import functools
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import tests.envs
from rlay import RlayVectorEnv
from tests.conftest import assert_same, broker_status, deployment

NUM_ENVS = 4
STEPS = 60

# name -> (ENV argument of `rlay worker`, env kwargs)
ENVS = {
    "CartPole-v1": ("CartPole-v1", {}),
    "Pendulum-v1": ("Pendulum-v1", {"max_episode_steps": 25}),  # truncations within STEPS
    "FrozenLake-v1": ("FrozenLake-v1", {}),  # Discrete observations, int-then-float info
    "Blackjack-v1": ("Blackjack-v1", {}),  # Tuple observations
    "DictEnv": ("tests.envs:DictEnv", {}),  # Dict spaces with every leaf kind
    "ReusedInfoEnv": (
        "tests.envs:ReusedInfoEnv",
        {},
    ),  # one info dict, reused and shared, changing after it is returned
    "ScalarEnv": ("tests.envs:ScalarEnv", {}),  # 0-d spaces
}
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def make_fn(name: str):
    if name == "ImageDictEnv":
        from tests.envs import ImageDictEnv

        return ImageDictEnv
    spec, kwargs = ENVS[name]
    if spec.startswith("tests.envs:"):
        return functools.partial(getattr(tests.envs, spec.split(":")[1]), **kwargs)
    return functools.partial(gym.make, spec, **kwargs)


def compare_runs(
    rlay_env: RlayVectorEnv,
    name: str,
    mode: AutoresetMode,
    seed: int = 7,
    num_envs: int = NUM_ENVS,
    env_fns: list | None = None,
    **sync_kwargs,
) -> None:
    """Step ``rlay_env`` and a SyncVectorEnv of ``env_fns`` (default: ``num_envs`` of ENVS[name])
    side by side, with the same seeds and actions; ``sync_kwargs`` go to SyncVectorEnv."""
    sync = SyncVectorEnv(env_fns or [make_fn(name)] * num_envs, autoreset_mode=mode, **sync_kwargs)
    try:
        assert rlay_env.observation_space == sync.observation_space
        assert rlay_env.single_observation_space == sync.single_observation_space
        assert rlay_env.single_action_space == sync.single_action_space
        assert rlay_env.metadata["autoreset_mode"] == mode
        assert_same(rlay_env.reset(seed=seed), sync.reset(seed=seed), "reset")
        actions = sync.action_space
        actions.seed(seed)
        episodes_ended = 0
        for t in range(STEPS):
            action = actions.sample()
            expected = sync.step(action)
            got = rlay_env.step(action)
            assert_same(got, expected, f"step {t}")
            done = expected[2] | expected[3]
            episodes_ended += int(done.sum())
            if mode == AutoresetMode.DISABLED and done.any():
                seeds = [seed * 1000 + t * num_envs + i for i in range(num_envs)]
                assert_same(
                    rlay_env.reset(seed=seeds, options={"reset_mask": done.copy()}),
                    sync.reset(seed=seeds, options={"reset_mask": done.copy()}),
                    f"masked reset at {t}",
                )
            if t == STEPS // 2:  # a partial reset mid-run, with options, in every mode
                mask = np.array([i % 2 == 0 for i in range(num_envs)])
                assert_same(
                    rlay_env.reset(seed=seed + t, options={"reset_mask": mask.copy(), "k": 1}),
                    sync.reset(seed=seed + t, options={"reset_mask": mask.copy(), "k": 1}),
                    f"partial reset at {t}",
                )
        assert episodes_ended > 0, "the run must cover episode ends for the test to mean anything"
    finally:
        sync.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", list(ENVS))
@pytest.mark.parametrize("envs_per_worker", [1, 3])
def test_embedded_equals_sync(name, mode, envs_per_worker):
    envs = RlayVectorEnv([make_fn(name)] * NUM_ENVS, autoreset_mode=mode, envs_per_worker=envs_per_worker)
    try:
        compare_runs(envs, name, mode)
    finally:
        envs.close()


@pytest.fixture(scope="module")
def cli_deployment():
    """`rlay broker` plus one `rlay worker` per env kind, as real subprocesses."""
    commands = [
        [
            spec,
            "--num-workers",
            "2",
            "--envs-per-worker",
            "2",
            *(["--env-kwargs", json.dumps(kwargs)] if kwargs else []),
        ]
        for spec, kwargs in ENVS.values()
    ]
    with deployment(commands, workers=2 * len(ENVS)) as (front, _):
        yield front


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", list(ENVS))
def test_remote_equals_sync(cli_deployment, name, mode):
    env_id = ENVS[name][0]
    envs = RlayVectorEnv.remote(env_id, NUM_ENVS, broker=cli_deployment, autoreset_mode=mode, timeout=30)
    try:
        assert len({g.worker for g in envs._lease.groups}) == 2, "the lease must span both worker processes"
        compare_runs(envs, name, mode)
    finally:
        envs.close()
    status = broker_status(cli_deployment)
    assert all(w["leased"] == 0 for w in status["workers"]), "close() must release the slots"
