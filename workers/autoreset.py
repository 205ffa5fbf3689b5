"""Autoreset, written once for every kind of worker.

``step_env`` is the command worker's hot path: a plain function, as tight as
SyncVectorEnv's own loop. A *plan* expresses the same rules for workers that
cannot call the env directly (push workers: the game runs the env); it is a
generator that yields env commands and receives their results:

- ``("reset", seed, options)`` receives ``(obs, info)``;
- ``("step", action)`` receives ``(obs, reward, terminated, truncated, info)``;

and returns the per-env result a worker sends back. A command worker runs a
plan against its env at once (:func:`run`); a push worker runs it across the
game's decision points, handing each command to the game and feeding back
the state the game reports next. Either way the results follow gymnasium's
SyncVectorEnv exactly.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

NEXT_STEP, SAME_STEP, DISABLED = "NextStep", "SameStep", "Disabled"
MODES = (NEXT_STEP, SAME_STEP, DISABLED)

Plan = Generator[tuple, Any, dict]

__all__ = [
    "MODES",
    "NEXT_STEP",
    "SAME_STEP",
    "DISABLED",
    "Plan",
    "reset_plan",
    "step_plan",
    "run",
    "step_env",
    "snapshot",
]


def valid_seeds(seeds: Any, count: int) -> bool:
    """A reset's seeds (protocol 5.9): a list of ``count`` ints (not bools) or nils."""
    return isinstance(seeds, list) and len(seeds) == count and all(s is None or type(s) is int for s in seeds)


def snapshot(info: Any) -> Any:
    """``info`` as SyncVectorEnv keeps it: it batches an info the moment the env returns it, so an env
    that reuses its info dict (clearing it on reset), or shares one between envs, cannot change what
    was reported. Dicts are copied, nested ones too; other values are kept as they are, as there."""
    if not isinstance(info, dict):
        return info  # (refused later, with its own error)
    return {key: snapshot(value) if isinstance(value, dict) else value for key, value in info.items()}


def step_env(env: Any, mode: str, done: bool, action: Any, env_index: int) -> tuple:
    """Step ``env`` now, autoresetting as ``mode`` says; the same rules as :func:`step_plan`.

    Returns (obs, reward, terminated, truncated, info, final). tests/test_autoreset.py
    checks that this and the plan agree in every case.
    """
    if done:
        if mode == NEXT_STEP:
            obs, info = env.reset()
            return obs, 0.0, False, False, snapshot(info), None
        if mode == DISABLED:
            raise AssertionError(_DISABLED_MESSAGE.format(env_index))
    obs, reward, terminated, truncated, info = env.step(action)
    if mode == SAME_STEP and (terminated or truncated):
        final = [obs, snapshot(info)]
        obs, info = env.reset()
        return obs, float(reward), bool(terminated), bool(truncated), snapshot(info), final
    return obs, float(reward), bool(terminated), bool(truncated), snapshot(info), None


_DISABLED_MESSAGE = (
    "env {} was stepped after its episode ended; with autoreset_mode=Disabled, "
    "reset it first (reset(options={{'reset_mask': ...}}))"
)


def reset_plan(seed: int | None, options: Any) -> Plan:
    """Reset one env; returns {"obs", "info"}."""
    obs, info = yield ("reset", seed, options)
    return {"obs": obs, "info": snapshot(info)}


def step_plan(mode: str, done: bool, action: Any, env_index: int) -> Plan:
    """Step one env whose last episode ended iff ``done``, autoresetting as ``mode`` says.

    Returns {"obs", "reward", "terminated", "truncated", "info", "final"}, where
    ``final`` is ``[final_obs, final_info]`` when SameStep reset a finished episode.
    """
    if mode == NEXT_STEP and done:
        obs, info = yield ("reset", None, None)
        return {
            "obs": obs,
            "reward": 0.0,
            "terminated": False,
            "truncated": False,
            "info": snapshot(info),
            "final": None,
        }
    if mode == DISABLED and done:  # SyncVectorEnv asserts this too
        raise AssertionError(_DISABLED_MESSAGE.format(env_index))
    obs, reward, terminated, truncated, info = yield ("step", action)
    final = None
    if mode == SAME_STEP and (terminated or truncated):
        final = [obs, snapshot(info)]
        obs, info = yield ("reset", None, None)
    return {
        "obs": obs,
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": snapshot(info),
        "final": final,
    }


def run(plan: Plan, env: Any) -> dict:
    """Carry out a plan against a gymnasium env right away."""
    try:
        command = next(plan)
        while True:
            if command[0] == "reset":
                result = env.reset(seed=command[1], options=command[2])
            else:
                result = env.step(command[1])
            command = plan.send(result)
    except StopIteration as stop:
        return stop.value
