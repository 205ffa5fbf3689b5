"""RlayEnv: a plain gymnasium.Env over one rlay slot.

>>> from rlay import RlayEnv
>>> env = RlayEnv("CartPole-v1")  # embedded; RlayEnv("CartPole-v1", broker="tcp://...") leases remotely
>>> obs, info = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
>>> env.close()
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from rlay.vector import DEFAULT_TIMEOUT, RESET_KEYS, STEP_KEYS, RlayVectorEnv

__all__ = ["RlayEnv"]


class RlayEnv(gym.Env):
    """One env in a worker process (embedded) or behind a broker (remote).

    Args:
        env: a gymnasium env id, or (embedded only) a function returning an Env.
        broker: front-end address of a running broker; None starts a private one.
        timeout: seconds any call may take.
        env_kwargs: passed to ``gymnasium.make`` (embedded, env id only).

    Stepping before the first reset(), or after an episode ended without
    reset(), raises ``gymnasium.error.ResetNeeded``: the env is not reset
    behind your back.
    """

    def __init__(
        self,
        env: str | Callable[[], gym.Env],
        *,
        broker: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **env_kwargs: Any,
    ):
        mode = AutoresetMode.DISABLED
        if broker is None:
            fn = env if callable(env) else functools.partial(gym.make, env, **env_kwargs)
            self._vec = RlayVectorEnv([fn], autoreset_mode=mode, timeout=timeout)
        else:
            if not isinstance(env, str) or env_kwargs:
                raise TypeError("a remote RlayEnv takes the env id its workers registered, and no env kwargs")
            self._vec = RlayVectorEnv.remote(env, 1, broker, autoreset_mode=mode, timeout=timeout)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self.metadata = {k: v for k, v in self._vec.metadata.items() if k != "autoreset_mode"}
        self.render_mode = self._vec.render_mode
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._vec.reset_async(seed=[seed], options=options)
        columns, _ = self._vec._collect(None, RESET_KEYS)
        self._needs_reset = False
        return self._vec._buffer.row_obs(0), columns["info"][0]

    def step(self, action: Any):
        if self._needs_reset:
            raise gym.error.ResetNeeded(
                "call reset() before step(): this env has not been reset since it was made "
                "or since its last episode ended"
            )
        self._vec.step_async(_batch_of_one(self.action_space, action))
        c, _ = self._vec._collect(None, STEP_KEYS)
        self._needs_reset = c["terminated"][0] or c["truncated"][0]
        return self._vec._buffer.row_obs(0), c["reward"][0], c["terminated"][0], c["truncated"][0], c["info"][0]

    def render(self):
        return self._vec.call("render")[0]

    def close(self):
        self._vec.close()
        super().close()


def _batch_of_one(space: gym.Space, action: Any) -> Any:
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_batch_of_one(s, a) for s, a in zip(space.spaces, action, strict=True))
    if isinstance(space, gym.spaces.Dict):
        return {k: _batch_of_one(s, action[k]) for k, s in space.spaces.items()}
    if isinstance(space, (gym.spaces.Text, gym.spaces.Graph, gym.spaces.Sequence, gym.spaces.OneOf)):
        return (action,)  # (gymnasium batches these as a tuple of the envs' values)
    return np.expand_dims(np.asarray(action), 0)
