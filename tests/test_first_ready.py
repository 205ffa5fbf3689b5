"""envpool-style stepping: send(actions, env_ids) / recv() returns the envs that finish first."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import AlreadyPendingCallError
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from rlay import RlayVectorEnv
from tests.envs import delayed_cartpole

DELAYS = [0.0, 0.0, 0.2, 0.2]  # two fast envs, two slow ones, each in its own worker


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda m: m.value)
def test_fast_envs_come_first_and_each_env_equals_sync(mode):
    envs = RlayVectorEnv(
        [functools.partial(delayed_cartpole, d) for d in DELAYS], envs_per_worker=1, autoreset_mode=mode, timeout=30
    )
    # The reference: each env alone in a SyncVectorEnv, stepped with the same actions.
    refs = [SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=mode) for _ in DELAYS]
    rng = np.random.default_rng(0)
    sent: dict[int, int] = {}  # env id -> the action in flight

    def send(ids) -> None:
        actions = rng.integers(0, 2, len(ids))
        sent.update(zip(ids, actions.tolist()))
        envs.send(actions, ids)

    try:
        envs.async_reset(seed=5)
        obs, rewards, _, _, infos = envs.recv()
        assert sorted(infos["env_id"]) == [0, 1, 2, 3] and (rewards == 0).all()
        for k, env_id in enumerate(infos["env_id"].tolist()):
            expected, _ = refs[env_id].reset(seed=5 + env_id)
            np.testing.assert_array_equal(obs[k], expected[0])

        send([0, 1, 2, 3])
        rounds, slow_results = [], 0
        while slow_results < 4 and len(rounds) < 5000:
            obs, rewards, terminations, truncations, infos = envs.recv(batch_size=2)
            ids = infos["env_id"].tolist()
            rounds.append(ids)
            slow_results += sum(i >= 2 for i in ids)
            for k, env_id in enumerate(ids):
                expected = refs[env_id].step(np.array([sent.pop(env_id)]))
                got = (obs[k : k + 1], rewards[k : k + 1], terminations[k : k + 1], truncations[k : k + 1])
                for g, e in zip(got, expected[:4]):
                    np.testing.assert_array_equal(g, e)
                if "final_obs" in expected[4]:
                    np.testing.assert_array_equal(infos["final_obs"][k], expected[4]["final_obs"][0])
            send(ids)
        # A slow env takes 0.2 s a step: the fast envs' results come back many times meanwhile.
        assert all(sorted(r) == [0, 1] for r in rounds[:5]), rounds[:5]
        assert slow_results >= 4 and len(rounds) > 10, f"{len(rounds)} rounds"

        with pytest.raises(AlreadyPendingCallError, match="recv"):
            envs.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(AlreadyPendingCallError, match="still stepping"):
            envs.send(np.zeros(1, dtype=np.int64), [rounds[-1][0]])
        with pytest.raises(ValueError, match="env result"):
            envs.recv(batch_size=5)
        envs.recv()  # drain: afterwards the synchronous API works again
        assert envs.step(np.zeros(4, dtype=np.int64))[0].shape == (4, 4)
    finally:
        envs.close()
        for ref in refs:
            ref.close()


def test_results_a_recv_kept_back_still_count_as_pending():
    """One worker's reply holds both envs' results; recv(batch_size=1) hands back one, the other waits
    here. Until it is received, nothing may reset, step or send that env."""
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 2, envs_per_worker=2, timeout=10)
    try:
        envs.async_reset(seed=0)
        envs.recv(timeout=10)
        envs.send(np.array([0, 0]), [0, 1])
        *_, infos = envs.recv(batch_size=1, timeout=10)
        held = 1 - int(infos["env_id"][0])
        for call in (
            lambda: envs.async_reset(seed=1),
            lambda: envs.step(np.array([1, 1])),
            lambda: envs.reset(),
            lambda: envs.send(np.array([0]), [held]),
        ):
            with pytest.raises(AlreadyPendingCallError, match="not yet received"):
                call()
        *_, infos = envs.recv(timeout=10)
        assert infos["env_id"].tolist() == [held]
        assert envs.step(np.array([1, 1]))[0].shape == (2, 4)  # nothing pending: usable again
    finally:
        envs.close()


def test_recv_batches_infos_over_the_envs_it_returns():
    from tests.envs import DictEnv  # infos of many kinds, nested ones too, at every step

    envs = RlayVectorEnv([DictEnv] * 4, envs_per_worker=1, autoreset_mode=AutoresetMode.SAME_STEP, timeout=30)

    def lengths(infos: dict) -> set[int]:
        return {n for value in infos.values() for n in (lengths(value) if isinstance(value, dict) else {len(value)})}

    try:
        envs.async_reset(seed=0)
        envs.recv(timeout=30)
        seen_final = False
        for _ in range(40):
            envs.send(envs.action_space.sample(), [0, 1, 2, 3])
            for size in (2, 2):
                _, rewards, _, _, infos = envs.recv(batch_size=size, timeout=30)
                assert lengths(infos) == {size} and len(rewards) == size, {k: np.shape(v) for k, v in infos.items()}
                seen_final |= "final_obs" in infos
        assert seen_final, "the run must cover episode ends (final_obs, final_info)"
    finally:
        envs.close()
