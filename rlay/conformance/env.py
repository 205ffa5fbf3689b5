"""The conformance env, ``rlay/Conformance-v0``: the env every worker under test hosts.

docs/protocol.md, Appendix B, is its definition; this is the reference. Its dynamics use only
64-bit unsigned integer arithmetic (wrapping) and float64 operations whose IEEE results are
exact or correctly rounded, so an implementation in any language reproduces every observation,
reward and info bit for bit. ``rlay conformance`` compares what a worker under test returns
with SyncVectorEnv over this class.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ConformanceEnv", "ENV_ID", "M61", "splitmix64"]

ENV_ID = "rlay/Conformance-v0"
M61 = 2**61 - 1  # seeds are reduced modulo this prime: every byte of a big-int seed counts
MASK64 = 2**64 - 1
T_MAX = 8  # steps in an episode before truncation
POS_LIMIT = 4.0  # |pos[0]| at which an episode terminates
MAX_START = 2**53  # options["start"] is exact as a float64 up to this size


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: (new state, output), both uint64."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class ConformanceEnv(gym.Env):
    """A small deterministic env over three observation leaves (float64, int64, float32)."""

    metadata = {"render_modes": [], "render_fps": 30}

    observation_space = spaces.Dict(
        {
            "pos": spaces.Box(-1e6, 1e6, (2,), np.float64),
            "t": spaces.Discrete(T_MAX + 1),
            "vel": spaces.Box(-4.0, 4.0, (2,), np.float32),
        }
    )
    action_space = spaces.Discrete(3)

    def __init__(self) -> None:
        self.rng = 0  # uint64 SplitMix64 state; 0 until the first seeded reset
        self.episode = 0  # resets since the env was made
        self.t = 0
        self.pos = [0.0, 0.0]
        self.vel = [0.0, 0.0]

    def _uniform(self) -> float:
        """A float64 in [0, 1): the top 53 bits of the next output, times 2**-53 (exact)."""
        self.rng, out = splitmix64(self.rng)
        return (out >> 11) * 2.0**-53

    def _obs(self) -> dict[str, Any]:
        return {"pos": np.array(self.pos, np.float64), "t": self.t, "vel": np.array(self.vel, np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = {} if options is None else options
        if seed is not None and seed < 0:
            raise ValueError(f"the conformance env takes seeds >= 0, got {seed}")
        if not isinstance(options, dict):
            raise ValueError(f"options must be a map or nil, got {type(options).__name__}")
        if options.get("fail") is True:
            raise ValueError("reset failed on request (options['fail'])")
        start = options.get("start", 0)
        if type(start) is not int or abs(start) > MAX_START:
            raise ValueError(f"options['start'] must be an int from -2**53 to 2**53, got {start!r}")
        if seed is not None:
            self.rng = seed % M61
        self.episode += 1
        self.t = 0
        self.pos = [float(start), self._uniform() - 0.5]
        self.vel = [0.0, 0.0]
        return self._obs(), {"episode": self.episode, "seeded": seed is not None}

    def step(self, action: Any):
        a = int(action)
        if not 0 <= a <= 2:
            raise ValueError(f"action {a} is not in Discrete(3)")
        u = self._uniform()
        self.vel = [self.vel[0] * 0.5 + (a - 1), u - 0.5]
        self.pos = [self.pos[0] + self.vel[0], self.pos[1] * 0.5 + self.vel[1]]
        self.t += 1
        reward = 1.0 - 0.125 * abs(self.pos[0])
        terminated = abs(self.pos[0]) >= POS_LIMIT
        truncated = self.t >= T_MAX
        info = {
            "t": self.t,
            "u": u,
            "tag": "even" if self.t % 2 == 0 else "odd",
            "pos32": np.array(self.pos, np.float32),
            "a8": np.int8(a),
            "pair": (self.t, terminated),
            "sub": {"even": self.t % 2 == 0},
        }
        return self._obs(), reward, terminated, truncated, info
