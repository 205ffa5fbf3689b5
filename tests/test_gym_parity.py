"""RlayVectorEnv beside gymnasium's own vector envs, the same call on both in each test:
observation_mode, the checks of the sub-envs' spaces, the warning of close() while a call is
pending, and the logging of a sub-env's error."""

from __future__ import annotations

import functools

import gymnasium as gym
import gymnasium.logger
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from rlay import RlayTimeoutError, RlayVectorEnv, SpacesMismatch
from tests.conftest import free_port, run_cli
from tests.envs import FailingEnv, delayed_cartpole
from tests.test_equivalence import MODES, compare_runs

pytestmark = pytest.mark.timeout(120)


def bounded_cartpole(high: float = 1.0, shape: tuple = (4,), actions: int = 2) -> gym.Env:
    """CartPole declaring the observation space ``Box(-high, high, shape)`` and ``Discrete(actions)``."""
    env = gym.make("CartPole-v1")
    env.observation_space = gym.spaces.Box(-high, high, shape, np.float32)
    env.action_space = gym.spaces.Discrete(actions)
    return env


def bounds(*highs: float) -> list:
    return [functools.partial(bounded_cartpole, high) for high in highs]


@pytest.mark.parametrize("envs_per_worker", [1, 3])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_different_observation_spaces_equal_sync(mode, envs_per_worker):
    """Envs whose observation bounds differ, batched as SyncVectorEnv batches them: the batched
    space, and every step and reset of a run."""
    fns = bounds(1.0, 2.0, 3.0, 4.0)
    envs = RlayVectorEnv(fns, observation_mode="different", autoreset_mode=mode, envs_per_worker=envs_per_worker)
    try:
        assert envs.observation_mode == "different"
        assert envs.observation_space.high[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
        compare_runs(envs, "CartPole-v1", mode, env_fns=fns, observation_mode="different")
    finally:
        envs.close()


def test_a_custom_observation_space_pair_is_taken_as_gymnasium_takes_it():
    """A tuple (observation_space, single_observation_space), in the order AsyncVectorEnv assigns it."""
    single = gym.spaces.Box(-5.0, 5.0, (4,), np.float32)
    custom = (gym.spaces.Box(-5.0, 5.0, (4, 4), np.float32), single)
    fns = bounds(1.0, 2.0, 3.0, 4.0)
    envs = RlayVectorEnv(fns, observation_mode=custom, envs_per_worker=2)
    try:
        compare_runs(envs, "CartPole-v1", AutoresetMode.NEXT_STEP, env_fns=fns, observation_mode=custom)
    finally:
        envs.close()


MISMATCHES = {
    # name: (env fns, observation_mode)
    "same mode, bounds differ": (bounds(1.0, 1.0, 2.0), "same"),
    "different mode, shapes differ": (
        [functools.partial(bounded_cartpole, 1.0, (4,)), functools.partial(bounded_cartpole, 1.0, (5,))],
        "different",
    ),
    "action spaces differ": (
        [functools.partial(bounded_cartpole, 1.0), functools.partial(bounded_cartpole, 1.0, actions=3)],
        "same",
    ),
    "action spaces differ, different mode": (
        [functools.partial(bounded_cartpole, 1.0), functools.partial(bounded_cartpole, 2.0, actions=3)],
        "different",
    ),
    "custom space of another shape": (
        bounds(1.0, 1.0),
        (gym.spaces.Box(-1.0, 1.0, (2, 4), np.float32), gym.spaces.Box(-1.0, 1.0, (5,), np.float32)),
    ),
    "custom pair of non-spaces": (bounds(1.0), (1, 2)),
    "invalid mode": (bounds(1.0), "bogus"),
}


def raised(make) -> BaseException:
    try:
        envs = make()
    except Exception as exc:
        return exc
    envs.close()
    raise AssertionError("no exception raised")


@pytest.mark.parametrize("envs_per_worker", [1, 2], ids=["a worker each", "envs side by side"])
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_sub_envs_whose_spaces_do_not_batch_raise_what_async_vector_env_raises(case, envs_per_worker):
    """Spaces that differ between envs of one worker or of two: the same exception class as
    AsyncVectorEnv's, and its message, then which env differs."""
    fns, mode = MISMATCHES[case]
    theirs = raised(lambda: AsyncVectorEnv(fns, observation_mode=mode))
    ours = raised(lambda: RlayVectorEnv(fns, observation_mode=mode, envs_per_worker=envs_per_worker, timeout=30))
    assert isinstance(ours, type(theirs)), (type(ours), type(theirs))
    assert str(ours).startswith(str(theirs).replace("AsyncVectorEnv", "RlayVectorEnv")), (str(ours), str(theirs))


def test_close_while_a_call_is_pending_warns_as_async_vector_env_does():
    """Each warns once, naming the pending call, and closes."""
    warned = {}
    for cls in (AsyncVectorEnv, RlayVectorEnv):
        envs = cls(bounds(1.0, 1.0))
        envs.reset(seed=0)
        envs.step_async(np.array([0, 1]))
        with pytest.warns(UserWarning) as record:
            envs.close()
        warned[cls] = [str(w.message) for w in record]
        assert envs.closed
    assert warned[RlayVectorEnv] == warned[AsyncVectorEnv]
    assert len(warned[RlayVectorEnv]) == 1 and "`step`" in warned[RlayVectorEnv][0]


def test_a_sub_env_error_is_logged_through_gymnasiums_logger_as_async_vector_env_logs_it(monkeypatch):
    """Raised to the trainer, and before that logged at error level: who raised it, its traceback,
    and that it is raised back to the main process."""
    logged: list[str] = []
    monkeypatch.setattr(gymnasium.logger, "error", lambda msg, *args, **kwargs: logged.append(str(msg) % args))
    errors = {}
    for cls in (AsyncVectorEnv, RlayVectorEnv):
        envs = cls([functools.partial(FailingEnv, 1)] * 2)
        try:
            envs.reset(seed=0)
            logged.clear()
            with pytest.raises(ValueError, match="boom at t=1") as info:
                envs.step(np.array([0, 1]))
            errors[cls] = (type(info.value), list(logged))
        finally:
            envs.close(terminate=True)
    for cls, (error_type, lines) in errors.items():
        assert issubclass(error_type, ValueError), cls
        assert len(lines) == 3, (cls, lines)
        assert lines[0].startswith("Received the following error from "), (cls, lines)
        assert "boom at t=1" in lines[1], (cls, lines)
        assert lines[2].startswith("Raising the"), (cls, lines)
    assert "env 1 " in errors[RlayVectorEnv][1][0]  # the env that raised, by its index
    assert "Traceback" not in "".join(errors[RlayVectorEnv][1])  # (it is in the exception: printed once)


class PercentEnv(FailingEnv):
    def step(self, action):
        raise ValueError("battery at 50% done")


def test_an_env_error_whose_message_holds_a_percent_sign_is_raised_as_itself():
    """The error is logged with its text as data (AsyncVectorEnv's own logging of it fails with a
    TypeError: gymnasium's logger formats its message with %)."""
    envs = RlayVectorEnv([PercentEnv] * 2)
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="battery at 50% done"):
            envs.step(np.array([0, 0]))
    finally:
        envs.close()


@pytest.mark.parametrize(
    "highs, envs_per_worker, odd",
    [((1.0, 2.0, 1.0), 1, 1), ((1.0, 1.0, 1.0, 2.0), 2, 3), ((2.0, 1.0), 1, 1)],
    ids=["a worker each", "the second worker's second env", "env 0 alone"],
)
def test_a_spaces_mismatch_names_an_env_that_differs_and_both_spaces(highs, envs_per_worker, odd):
    """Whichever worker registers first, the error names an env whose space differs, the space it
    has, and the env whose space it was held against."""
    error = raised(lambda: RlayVectorEnv(bounds(*highs), envs_per_worker=envs_per_worker, timeout=30))
    assert isinstance(error, SpacesMismatch), error
    assert error.which == "observation"
    assert highs[error.env] != highs[error.reference], (error.env, error.reference, str(error))
    assert {error.env, error.reference} & {odd}, str(error)
    assert f"Box(-{highs[error.env]}, {highs[error.env]}" in error.actual
    assert f"Box(-{highs[error.reference]}, {highs[error.reference]}" in error.expected


def test_settings_changed_after_construction_apply_to_the_next_call():
    """timeout and autoreset_mode are read at each call, as attributes of a gymnasium vector env are."""
    envs = RlayVectorEnv([functools.partial(delayed_cartpole, 1.0)] * 2, envs_per_worker=2)
    try:
        envs.reset(seed=0)
        envs.timeout = 0.2
        with pytest.raises(RlayTimeoutError):
            envs.step(np.array([0, 0]))
    finally:
        envs.close(terminate=True)


def test_a_cli_worker_whose_envs_spaces_differ_says_why_it_exits():
    """Outside embedded mode nobody raises the worker's error for it: it prints it, and exits."""
    done = run_cli(
        "worker",
        "tests.envs:alternating_bounds_cartpole",
        "-k",
        "2",
        "--no-restart",
        "--broker",
        f"tcp://127.0.0.1:{free_port()}",
        timeout=60,
    )
    assert done.returncode != 0
    assert "SpacesDiffer" in done.stderr and "observation space" in done.stderr, done.stderr[-2000:]
