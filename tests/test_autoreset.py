"""The command worker's step_env and the push worker's step_plan implement the same autoreset rules."""

from __future__ import annotations

import itertools

import pytest

from workers import autoreset


class ScriptedEnv:
    """Returns a scripted step outcome; records the calls it receives."""

    def __init__(self, terminated: bool, truncated: bool):
        self.outcome = (terminated, truncated)
        self.calls: list[tuple] = []

    def reset(self, seed=None, options=None):
        self.calls.append(("reset", seed, options))
        return "reset-obs", {"reset": True}

    def step(self, action):
        self.calls.append(("step", action))
        return "step-obs", 1.5, *self.outcome, {"step": action}


CASES = list(itertools.product(autoreset.MODES, [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("mode, done, terminated, truncated", CASES)
def test_step_env_and_step_plan_agree(mode, done, terminated, truncated):
    direct_env, planned_env = ScriptedEnv(terminated, truncated), ScriptedEnv(terminated, truncated)
    try:
        direct = autoreset.step_env(direct_env, mode, done, 7, 3)
    except AssertionError as exc:
        with pytest.raises(AssertionError, match="env 3 was stepped after its episode ended") as planned_exc:
            autoreset.run(autoreset.step_plan(mode, done, 7, 3), planned_env)
        assert str(planned_exc.value) == str(exc) and mode == autoreset.DISABLED and done
        return
    planned = autoreset.run(autoreset.step_plan(mode, done, 7, 3), planned_env)
    keys = ("obs", "reward", "terminated", "truncated", "info", "final")
    assert direct == tuple(planned[k] for k in keys)
    assert direct_env.calls == planned_env.calls
