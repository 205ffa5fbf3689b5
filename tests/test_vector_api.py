"""The rest of the VectorEnv API: async calls, misuse, call/attrs/render, errors, timeouts, RlayEnv."""

from __future__ import annotations

import functools
import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import SyncVectorEnv

import rlay
from rlay import BrokerError, RemoteEnvError, RlayEnv, RlayTimeoutError, RlayVectorEnv
from rlay.values import WireError
from tests.conftest import assert_same
from tests.envs import BadObsEnv, DictEnv, EndingEnv, FailingEnv, ObjectInfoEnv, SlowEnv, ThreadReportingEnv
from workers.worker import ChunkRunner


@pytest.fixture
def cartpoles():
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 3, envs_per_worker=2)
    yield envs
    envs.close()


def test_async_calls_and_misuse_raise_gymnasium_errors(cartpoles):
    envs = cartpoles
    with pytest.raises(NoAsyncCallError):
        envs.step_wait()
    with pytest.raises(NoAsyncCallError):
        envs.reset_wait()
    with pytest.raises(NoAsyncCallError):
        envs.call_wait()
    envs.reset_async(seed=1)
    with pytest.raises(AlreadyPendingCallError):
        envs.step_async(envs.action_space.sample())
    with pytest.raises(AlreadyPendingCallError):
        envs.reset_async()
    with pytest.raises(AlreadyPendingCallError):
        envs.call_async("render")
    obs, _ = envs.reset_wait(timeout=10)
    assert obs.shape == (3, 4)
    envs.step_async(np.array([0, 1, 0]))
    obs, rewards, terminations, truncations, infos = envs.step_wait(timeout=10)
    assert rewards.dtype == np.float64 and terminations.dtype == np.bool_
    with pytest.raises(ValueError, match="length must match num_envs"):
        envs.reset(seed=[1, 2])
    with pytest.raises(TypeError, match="reset_mask"):
        envs.reset(options={"reset_mask": [True, False, True]})
    with pytest.raises(ValueError, match="at least one True"):
        envs.reset(options={"reset_mask": np.zeros(3, dtype=bool)})
    envs.close()
    envs.close()  # idempotent
    with pytest.raises(ClosedEnvironmentError):
        envs.reset()
    with pytest.raises(ClosedEnvironmentError):
        envs.step(np.array([0, 1, 0]))


def test_copy_false_returns_the_same_buffer():
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 2, copy=False)
    try:
        first, _ = envs.reset(seed=0)
        second, *_ = envs.step(np.array([0, 1]))
        assert first is second
    finally:
        envs.close()


def test_call_get_attr_set_attr_render_match_sync():
    fns = [lambda: DictEnv(render_mode="rgb_array")] * 3
    envs, sync = RlayVectorEnv(fns, envs_per_worker=2), SyncVectorEnv(fns)
    try:
        for e in (envs, sync):
            e.reset(seed=3)
            e.step(e.action_space.sample())
        assert_same(envs.get_attr("horizon"), sync.get_attr("horizon"))
        assert_same(envs.call("render"), sync.call("render"))
        assert_same(envs.render(), sync.render())
        assert envs.metadata["render_fps"] == 10 and envs.render_mode == "rgb_array"
        envs.set_attr("horizon", [5, 6, 7])
        sync.set_attr("horizon", [5, 6, 7])
        assert envs.get_attr("horizon") == (5, 6, 7)
        envs.set_attr("horizon", 9)
        assert envs.get_attr("horizon") == (9, 9, 9)
        assert envs.get_attr("np_random_seed") == sync.get_attr("np_random_seed")
        assert envs.np_random_seed == sync.np_random_seed  # (not the VectorEnv's own)
        with pytest.raises(AttributeError, match="np_random_seed gives their seeds"):
            _ = envs.np_random
        with pytest.raises(ValueError, match="Values must be a list or tuple"):
            envs.set_attr("horizon", [1, 2])
        with pytest.raises(WireError, match="cannot cross the wire"):
            envs.call("render", object())
        with pytest.raises(RemoteEnvError, match="cannot cross the wire"):
            envs.get_attr("np_random")  # a Generator is not data
        with pytest.raises(ValueError, match="use `step` directly"):
            envs.call("step", {})
        assert envs.get_attr("horizon") == (9, 9, 9), "the env keeps serving after refused calls"
    finally:
        envs.close()
        sync.close()


def test_env_exception_names_env_worker_host_and_carries_traceback():
    envs = RlayVectorEnv([FailingEnv] * 4, envs_per_worker=2)
    try:
        envs.reset(seed=0)
        envs.step(np.array([0, 0, 0, 0]))
        with pytest.raises(ValueError) as caught:  # the remote builtin type is kept
            envs.step(np.array([0, 0, 1, 0]))
        err = caught.value
        assert isinstance(err, RemoteEnvError) and err.remote_type == "ValueError"
        text = str(err)
        assert "env 2 " in text and "boom at t=2" in text and "on host" in text and "worker w" in text
        assert "Traceback (most recent call last)" in text and "tests/envs.py" in text
        assert [d["row"] for d in err.details] == [2]
        obs, *_ = envs.step(np.array([0, 0, 0, 0]))  # the worker kept serving
        assert obs.shape == (4, 2)
    finally:
        envs.close()


def test_gymnasium_exceptions_keep_their_class():
    def strict():  # a gymnasium error class, raised by env code in the worker
        env = gym.make("CartPole-v1")
        env.unwrapped.step = lambda action: (_ for _ in ()).throw(gym.error.InvalidAction(f"no action {action}"))
        return env

    envs = RlayVectorEnv([strict], timeout=30)
    try:
        envs.reset(seed=0)
        with pytest.raises(gym.error.InvalidAction, match="no action 1") as caught:
            envs.step(np.array([1]))
        assert isinstance(caught.value, RemoteEnvError) and caught.value.remote_type == "InvalidAction"
    finally:
        envs.close()


def test_object_in_info_is_refused_by_the_worker_not_pickled():
    envs = RlayVectorEnv([ObjectInfoEnv] * 2)
    try:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="info: a value of type builtins.object cannot cross the wire"):
            envs.step(np.array([0, 0]))
    finally:
        envs.close()


def test_step_timeout_names_what_was_awaited():
    envs = RlayVectorEnv([lambda: SlowEnv(delay=3.0)] * 2, envs_per_worker=1, timeout=0.5)
    try:
        envs.reset(seed=0)
        with pytest.raises(RlayTimeoutError) as caught:
            envs.step(np.array([0, 1]))
        text = str(caught.value)
        assert "step" in text and "within 0.5 s" in text and "on host" in text and "pid" in text
        assert isinstance(caught.value, TimeoutError)
        # The timed-out step runs on in the workers: the next one is refused, saying why.
        with pytest.raises(BrokerError, match=r"still busy .*a call that timed out runs on until its worker replies"):
            envs.step(np.array([0, 1]))
    finally:
        envs.close()


def test_client_side_wait_timeout_is_gymnasium_timeout():
    import multiprocessing

    envs = RlayVectorEnv([lambda: SlowEnv(delay=2.0)], timeout=30)
    try:
        envs.reset(seed=0)
        envs.step_async(np.array([0]))
        with pytest.raises(multiprocessing.TimeoutError, match="envs 0 on worker"):
            envs.step_wait(timeout=0.2)
    finally:
        envs.close()


def test_env_fn_that_raises_fails_fast_with_its_traceback():
    def broken():
        raise RuntimeError("cannot build this env")

    with pytest.raises(rlay.RlayError, match="cannot build this env"):
        RlayVectorEnv([broken] * 2, timeout=30)


def test_rlay_env_passes_check_env():
    env = RlayEnv("CartPole-v1")
    try:
        check_env(env, skip_render_check=True)
        obs, info = env.reset(seed=5)
        expected, _ = gym.make("CartPole-v1").reset(seed=5)
        assert_same(obs, expected)
    finally:
        env.close()


def test_rlay_env_asks_for_reset_before_the_first_step_and_after_an_episode():
    env = RlayEnv("CartPole-v1")
    try:
        with pytest.raises(gym.error.ResetNeeded, match="call reset"):
            env.step(0)
        env.reset(seed=1)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            done = terminated or truncated
        with pytest.raises(gym.error.ResetNeeded, match="last episode ended"):
            env.step(0)
        env.reset()
        env.step(0)  # usable again
    finally:
        env.close()


def test_metadata_reaches_the_trainer_as_plain_data():
    from tests.envs import ScalarEnv

    envs = RlayVectorEnv([ScalarEnv])
    try:
        assert envs.metadata["render_modes"] == ["rgb_array"]  # a tuple in the env
        assert envs.metadata["render_fps"] == 30 and type(envs.metadata["render_fps"]) is int  # np.int64 there
        assert "handle" not in envs.metadata  # an object has no plain form
    finally:
        envs.close()


def test_rlay_env_with_dict_spaces_passes_check_env():
    env = RlayEnv(DictEnv)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_make_vec_embedded_and_kwargs():
    envs = rlay.make_vec("Pendulum-v1", 2, g=1.62, vector_kwargs={"envs_per_worker": 2})
    try:
        assert envs.get_attr("g") == (1.62, 1.62)
    finally:
        envs.close()
    with pytest.raises(TypeError, match="--env-kwargs"):
        rlay.make_vec("Pendulum-v1", 2, broker="tcp://127.0.0.1:1", g=1.0)


def test_unsupported_space_fails_at_registration_naming_it():
    class OwnBox(gym.spaces.Box):  # not gymnasium's own class: its meaning is its code (tests/test_spaces.py)
        pass

    class OwnBoxEnv(gym.Env):
        observation_space = OwnBox(0, 1, (2,))
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(
        rlay.RlayError, match="cannot carry observation_space = Box.*a subclass of gymnasium.spaces.Box"
    ):
        RlayVectorEnv([OwnBoxEnv], timeout=30)


def test_a_failing_env_does_not_corrupt_its_neighbours_autoreset():
    envs = RlayVectorEnv([EndingEnv] * 2, envs_per_worker=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="refusing action 1"):
            envs.step(np.array([0, 1]))  # env 0 ends its episode while env 1 raises
        obs, rewards, terminations, *_ = envs.step(np.array([0, 0]))
        assert rewards[0] == 0.0 and not terminations[0], "env 0 must be autoreset, not stepped"
        np.testing.assert_array_equal(obs[0], np.zeros(2, np.float32))
        assert rewards[1] == 1.0 and terminations[1]
    finally:
        envs.close()


def test_observation_outside_the_space_is_the_envs_error():
    envs = RlayVectorEnv([FailingEnv, BadObsEnv], envs_per_worker=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError) as caught:
            envs.step(np.array([0, 0]))
        assert [d["row"] for d in caught.value.details] == [1]
        assert "env 1 " in str(caught.value)
    finally:
        envs.close()


def test_env_threads_step_blocking_envs_concurrently_with_the_same_results():
    fns = [DictEnv] * 6
    envs, sync = RlayVectorEnv(fns, envs_per_worker=3, env_threads=3), SyncVectorEnv(fns)
    try:
        assert_same(envs.reset(seed=4), sync.reset(seed=4))
        space = sync.action_space
        space.seed(4)
        for _ in range(20):
            action = space.sample()
            assert_same(envs.step(action), sync.step(action))
    finally:
        envs.close()
        sync.close()
    with pytest.raises(ValueError, match=r"env_threads must be None \(auto\) or >= 1"):
        RlayVectorEnv(fns, env_threads=0)


def test_chunk_runner_runs_chunks_at_once_in_order_and_hands_back_errors():
    runner = ChunkRunner(4)
    try:
        # Each chunk waits for all four: run one after another, they would time out.
        barrier = threading.Barrier(4, timeout=10)
        assert runner.map(lambda k: (barrier.wait(), k * 10)[1], [0, 1, 2, 3]) == [0, 10, 20, 30]
        assert runner.map(lambda k: -k, [5, 6]) == [-5, -6]  # fewer chunks than threads
        assert runner.map(lambda k: k + 1, [7]) == [8]  # one chunk: the caller alone
        with pytest.raises(ValueError, match="5 chunks for 4 threads"):
            runner.map(abs, [1, 2, 3, 4, 5])

        def fail_on_two(k):
            if k == 2:
                raise KeyError("chunk two")
            return k

        for _ in range(2):  # an error leaves the runner usable
            with pytest.raises(KeyError, match="chunk two"):
                runner.map(fail_on_two, [1, 2, 3])
            assert runner.map(fail_on_two, [1, 3]) == [1, 3]
    finally:
        runner.close()
    assert not any(thread.is_alive() for thread in runner.threads)


@pytest.mark.parametrize("spin, threaded", [(False, True), (True, False)], ids=["waiting", "computing"])
def test_by_default_a_worker_steps_envs_that_wait_on_threads_and_envs_that_compute_in_turn(spin, threaded):
    """env_threads=None (the default): a worker times its envs' first steps (StepTiming), then
    steps envs that wait one thread each, and envs that compute in turn (threads would only
    contend for the GIL)."""
    from workers.worker import StepTiming

    envs = RlayVectorEnv([functools.partial(ThreadReportingEnv, 0.002, spin)] * 4, envs_per_worker=4)
    try:
        envs.reset(seed=0)
        action = np.zeros(4, np.int64)
        first = envs.step(action)[4]["thread"]
        for _ in range(StepTiming.PROBE):
            envs.step(action)
        later = envs.step(action)[4]["thread"]
    finally:
        envs.close()
    assert len(set(first.tolist())) == 1  # in turn while deciding
    assert len(set(later.tolist())) == (4 if threaded else 1)
