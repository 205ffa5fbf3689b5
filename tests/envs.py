"""Envs the tests host in workers (importable as ``tests.envs:NAME`` by ``rlay worker``)."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DictEnv(gym.Env):
    """Dict observations and actions covering every supported leaf kind, and infos of many types."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, horizon: int = 15):
        self.render_mode = render_mode
        self.horizon = horizon
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-1.0, 1.0, (3,), np.float32),
                "count": spaces.Discrete(10),
                "flags": spaces.MultiBinary(4),
                "grid": spaces.MultiDiscrete([3, 4]),
                "pair": spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 255, (2, 2), np.uint8))),
                "label": spaces.Text(6, min_length=1, charset="abcxyz"),
            }
        )
        self.action_space = spaces.Dict({"move": spaces.Box(-1.0, 1.0, (2,), np.float32), "pick": spaces.Discrete(3)})
        self.t = 0

    def _obs(self):
        r = self.np_random
        return {
            "pos": r.uniform(-1, 1, 3).astype(np.float32),
            "count": int(r.integers(0, 10)),
            "flags": r.integers(0, 2, 4).astype(np.int8),
            "grid": np.array([r.integers(0, 3), r.integers(0, 4)], dtype=np.int64),
            "pair": (int(r.integers(0, 2)), r.integers(0, 256, (2, 2)).astype(np.uint8)),
            "label": "".join(r.choice(list("abcxyz"), int(r.integers(1, 7)))),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        info = {"start": np.float32(self.np_random.uniform()), "options": dict(options or {})}
        return self._obs(), info

    def step(self, action):
        self.t += 1
        obs = self._obs()
        reward = float(np.sum(action["move"])) + int(action["pick"])
        terminated = obs.get("count") == 9
        truncated = self.t >= self.horizon
        info = {
            "np_float": np.float32(reward / 2),
            "py_int": self.t,
            "arr": np.arange(2, dtype=np.int16) * self.t,
            "nested": {"s": f"t{self.t}", "tup": (self.t, 2.5)},
        }
        if self.t % 2 == 0:
            info["even"] = True
        return obs, reward, terminated, truncated, info

    def render(self):
        return np.full((4, 5, 3), self.t, dtype=np.uint8)


class FailingEnv(gym.Env):
    """CartPole-like spaces; step raises ValueError on action 1 once ``t >= fail_at``."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, fail_at: int = 2):
        self.fail_at = fail_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if action == 1 and self.t >= self.fail_at:
            raise ValueError(f"boom at t={self.t}")
        return np.zeros(2, np.float32), 1.0, False, False, {}


class SlowEnv(gym.Env):
    """Each step takes ``delay`` seconds (a game waiting on its frame)."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: float = 1.0):
        self.delay = delay

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        time.sleep(self.delay)
        return np.zeros(2, np.float32), 0.0, False, False, {}


class ObjectInfoEnv(FailingEnv):
    """Puts a non-data object in its step info: the worker must refuse to send it."""

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(0)
        return obs, reward, terminated, truncated, {"handle": object()}


class EndingEnv(FailingEnv):
    """Every step ends the episode with reward 1; action 1 raises instead."""

    def step(self, action):
        if action == 1:
            raise ValueError("refusing action 1")
        return np.ones(2, np.float32), 1.0, True, False, {}


class BadObsEnv(FailingEnv):
    """Steps return an observation of the wrong shape."""

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class ImageDictEnv(DictEnv):
    """A Dict observation with a 64 KiB image (sent as one frame per env) beside small leaves."""

    def __init__(self, horizon: int = 7):
        super().__init__(horizon=horizon)
        self.observation_space = spaces.Dict(
            {"image": spaces.Box(0, 255, (128, 128, 4), np.uint8), "pos": spaces.Box(-1.0, 1.0, (3,), np.float32)}
        )

    def _obs(self):
        return {
            "image": self.np_random.integers(0, 256, (128, 128, 4), dtype=np.uint8),
            "pos": self.np_random.uniform(-1, 1, 3).astype(np.float32),
        }

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, bool(obs["pos"][0] > 0.8), truncated, info


def delayed_cartpole(delay: float) -> gym.Env:
    """CartPole-v1 whose steps take ``delay`` seconds longer: a game instance on a slow host."""

    class Delayed(gym.Wrapper):
        def step(self, action):
            time.sleep(delay)
            return self.env.step(action)

    return Delayed(gym.make("CartPole-v1"))


def broken_factory() -> gym.Env:
    """A worker built with this dies at start-up: what supervision must not restart forever."""
    raise RuntimeError("this env cannot be built")


SHARED_INFO: dict = {}  # one dict for every env of a process, as a module-level cache would be


class ReusedInfoEnv(gym.Env):
    """Returns the same info dict at every step (cleared on reset), holding a dict that every env of
    the process shares: what an env reported must stay what it was when returned, as in SyncVectorEnv."""

    observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, horizon: int = 6):
        self.horizon = horizon
        self.info: dict = {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(2, self.horizon + 1))
        self.info.clear()
        self.info["t"] = 0
        return np.zeros(1, np.float32), self.info

    def step(self, action):
        self.t += 1
        SHARED_INFO["t"] = self.t
        self.info.update(t=self.t, score=10.0 * self.t + int(action), shared=SHARED_INFO)
        return np.full(1, self.t, np.float32), 1.0, self.t >= self.length, False, self.info


class ScalarEnv(gym.Env):
    """0-d spaces: a scalar Box observation and a 0-d MultiDiscrete action; metadata with values that
    a header carries only once made plain (a tuple, a numpy int) or not at all (an object)."""

    metadata = {"render_modes": ("rgb_array",), "render_fps": np.int64(30), "handle": object()}
    observation_space = spaces.Box(-10.0, 10.0, (), np.float32)
    action_space = spaces.MultiDiscrete(np.array(3))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.float32(self.np_random.uniform(-1, 1))
        return np.array(self.x, np.float32), {}

    def step(self, action):
        self.x = np.float32(self.x + int(action) - 1)
        done = abs(float(self.x)) >= 3
        return np.array(self.x, np.float32), float(action), done, False, {"x": float(self.x)}


class SlowImageEnv(gym.Env):
    """A 64 KiB image, new every step, from a step slow enough to be interrupted (0.3 s)."""

    observation_space = spaces.Box(0, 255, (128, 128, 4), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._image(), {}

    def _image(self):
        return self.np_random.integers(0, 256, (128, 128, 4), dtype=np.uint8)

    def step(self, action):
        time.sleep(0.3)
        return self._image(), 0.0, False, False, {}


class ThreadReportingEnv(gym.Env):
    """Says in each step's info which thread stepped it; each step sleeps ``delay`` s (an env that
    waits), or with ``spin`` computes for as long (an env that computes)."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: float = 0.002, spin: bool = False):
        self.delay, self.spin = delay, spin

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        import threading

        if self.spin:
            end = time.perf_counter() + self.delay
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(self.delay)
        return np.zeros(2, np.float32), 0.0, False, False, {"thread": threading.get_ident()}
