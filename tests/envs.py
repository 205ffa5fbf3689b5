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


class SpacesEnv(gym.Env):
    """Every kind of space of protocol 4.1 and its edge cases, deterministic: the Python twin of
    `rlay_example_command --env spaces` ("rlay/Spaces-v0", workers/cpp/examples/spaces_env.hpp),
    which must agree with it bit for bit. ``index`` is the env's index in its worker. Integer
    arithmetic only; the floats are exact (multiples of 1/8, float32 doubled or negated). Each
    step puts the action it received into its info. (gymnasium refuses an infinite bound for an
    unsigned Box, so "huge" spells out uint64's maximum.)"""

    OBS_CHARSET = "zabcxyé"  # unsorted, with a 2-byte UTF-8 character
    ACT_CHARSET = "ba01"

    def __init__(self, index: int = 0):
        self.index = index
        self.observation_space = spaces.Dict(
            {
                "bits": spaces.MultiBinary(4),
                "bits_2d": spaces.MultiBinary([2, 3]),
                "choice": spaces.Discrete(5, start=-2),
                "choice_i32": spaces.Discrete(3, start=10, dtype=np.int32),
                "extremes": spaces.Box(-np.inf, np.inf, (2,), np.int16),  # bounds: int16's limits
                "flag": spaces.Box(0, 1, (2,), np.bool_),
                "grid": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [1, 2]])),
                "half": spaces.Box(-2.0, 2.0, (2,), np.float16),
                "huge": spaces.Box(0, np.iinfo(np.uint64).max, (1,), np.uint64),
                "image": spaces.Box(0, 255, (2, 3), np.uint8),
                "nested": spaces.Dict(
                    {
                        "deeper": spaces.Dict({"env": spaces.Discrete(8), "seed": spaces.Box(0, 999, (1,), np.int64)}),
                        "t": spaces.Discrete(50),
                        "trail": spaces.Tuple(
                            (
                                spaces.Discrete(2),
                                spaces.Tuple((spaces.MultiBinary(2), spaces.Text(3, min_length=0, charset="ab"))),
                            )
                        ),
                    }
                ),
                "pair": spaces.Tuple((spaces.Box(0, 100, (2,), np.int32), spaces.Discrete(7, start=3))),
                "real": spaces.Box(-10.0, 10.0, (), np.float64),
                "small": spaces.Box(
                    np.array([-1000, -5, 0], np.int16), np.array([1000, 5, 7], np.int16), dtype=np.int16
                ),
                "swapped": spaces.Box(-1.0, 1.0, (2,), np.dtype(">f4")),  # big-endian
                "text": spaces.Text(6, min_length=1, charset=self.OBS_CHARSET),
                "tiny": spaces.Box(-np.inf, np.inf, (), np.int8),  # bounds: int8's limits
                "unbounded": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            }
        )
        self.action_space = spaces.Dict(
            {
                "choice": spaces.Discrete(3, start=-1),
                "flip": spaces.Box(0, 1, (2,), np.bool_),
                "label": spaces.Text(4, min_length=0, charset=self.ACT_CHARSET),
                "level": spaces.Box(-1.0, 1.0, (), np.float64),
                "move": spaces.Box(-1.0, 1.0, (2,), np.float32),
                "multi": spaces.MultiDiscrete(
                    np.array([[3], [4]], np.int32), dtype=np.int32, start=np.array([[1], [-1]], np.int32)
                ),
                "pick": spaces.Discrete(4, start=5, dtype=np.int32),
                "switches": spaces.MultiBinary([2, 2]),
            }
        )
        self.s = self.t = self.score = 0
        self.move = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.s = seed % 1000
        k = (options or {}).get("k", 0)
        self.t = self.score = 0
        self.move = np.zeros(2, np.float32)
        return self._obs(), {"seed": self.s, "k": k if type(k) is int else 0}

    def step(self, action):
        choice = int(action["choice"])
        pick = int(action["pick"])
        flip = np.array(action["flip"], np.bool_)
        level = np.array(action["level"], np.float64)
        move = np.array(action["move"], np.float32)
        multi = np.array(action["multi"], np.int32)
        switches = np.array(action["switches"], np.int8)
        label = str(action["label"])
        self.t += 1
        self.score += (
            3 * choice
            + int(multi[0, 0])
            - 2 * int(multi[1, 0])
            + 5 * int(switches.sum())
            + 7 * int(flip[0])
            + pick
            + len(label)
        )
        self.move = move
        info = {
            "t": self.t,
            "score": self.score,
            "half": self.score / 2,
            "action": {
                "choice": choice,
                "flip": flip,
                "label": label,
                "level": level,
                "move": move,
                "multi": multi,
                "pick": pick,
                "switches": switches,
            },
        }
        terminated = self.t >= 2 and (self.score + self.index) % 3 == 0
        return self._obs(), self.score / 4 + self.t, terminated, self.t >= 4, info

    def _obs(self):
        u = (self.s + 7 * self.index + 13 * self.t + 31 * self.score) % 65536
        text = "".join(self.OBS_CHARSET[(u + 3 * j + self.index) % 7] for j in range(1 + u % 6))
        return {
            "bits": np.array([(u >> j) & 1 for j in range(4)], np.int8),
            "bits_2d": np.array([((u >> (j + 1)) + self.index) & 1 for j in range(6)], np.int8).reshape(2, 3),
            "choice": u % 5 - 2,
            "choice_i32": 10 + (u // 5) % 3,
            "extremes": np.array([-32768 + u % 7, 32767 - self.index], np.int16),
            "flag": np.array([u % 2 == 0, self.t % 2 == 1], np.bool_),
            "grid": np.array([[-1 + u % 2, (u + 1) % 3], [1 + (u + 2) % 4, 2 + (u + 3) % 5]], np.int64),
            "half": np.array([(u % 16) / 8 - 1, -self.t / 4], np.float16),
            "huge": np.array([2**64 - 1 - u], np.uint64),
            "image": np.array([(u + 37 * j + self.index) % 256 for j in range(6)], np.uint8).reshape(2, 3),
            "nested": {
                "deeper": {"env": self.index, "seed": np.array([self.s], np.int64)},
                "t": self.t,
                "trail": (self.t % 2, (np.array([u & 1, (u >> 1) & 1], np.int8), "ab"[u % 2] * (self.t % 4))),
            },
            "pair": (np.array([self.score % 101, self.t], np.int32), 3 + u % 7),
            "real": np.array((u % 160) / 8 - 10, np.float64),
            "small": np.array([u % 2001 - 1000, u % 11 - 5, u % 8], np.int16),
            "swapped": np.array([(u % 8) / 8, -1.0], np.dtype(">f4")),
            "text": text,
            "tiny": np.array(-128 + u % 256, np.int8),
            "unbounded": (
                np.array([np.inf, -np.inf], np.float32)
                if self.t == 0
                else np.array([self.move[0] * 2, -self.move[1]], np.float32)
            ),
        }


def sampled_spaces(kind: str) -> tuple[spaces.Space, spaces.Space]:
    """The (observation, action) spaces of SampledSpacesEnv(kind): Graph, Sequence and OneOf alone,
    holding Dict and Tuple, and nested in Dict and Tuple."""
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    if kind == "graph":
        return (
            spaces.Graph(node_space=spaces.Box(-10, 10, (3,), np.float32), edge_space=spaces.Discrete(4)),
            spaces.Graph(node_space=spaces.Discrete(5), edge_space=None),
        )
    if kind == "graph_nested":  # Dict and Tuple node and edge spaces
        return (
            spaces.Graph(
                node_space=spaces.Dict({"kind": spaces.Discrete(3), "pos": box}),
                edge_space=spaces.Tuple((spaces.Box(0, 5, (), np.int32), spaces.Text(3, charset="ab"))),
            ),
            spaces.Graph(
                node_space=spaces.Tuple((spaces.MultiBinary(2), spaces.Discrete(2))),
                edge_space=spaces.Dict({"w": box}),
            ),
        )
    if kind == "sequence":
        return (
            spaces.Sequence(spaces.Tuple((spaces.Discrete(3), box))),
            spaces.Sequence(spaces.Dict({"a": spaces.Discrete(2), "b": spaces.MultiDiscrete([2, 3])}), stack=True),
        )
    if kind == "sequence_stack":
        return (
            spaces.Sequence(
                spaces.Dict({"g": spaces.Graph(box, None), "x": spaces.Box(0, 9, (2,), np.int16)}), stack=True
            ),
            spaces.Sequence(spaces.Graph(spaces.Discrete(3), spaces.Discrete(2))),
        )
    if kind == "oneof":
        return (
            spaces.OneOf(
                (
                    spaces.Discrete(4),
                    box,
                    spaces.Dict({"s": spaces.Sequence(spaces.Discrete(2))}),
                    spaces.Text(4, charset="xyz"),
                )
            ),
            spaces.OneOf((spaces.Discrete(3), spaces.Tuple((box, spaces.Discrete(2))))),
        )
    if kind == "nested":
        return (
            spaces.Dict(
                {
                    "a": spaces.Box(-5, 5, (2,), np.float64),
                    "g": spaces.Graph(spaces.Box(0, 1, (2,), np.float32), spaces.Box(-1, 1, (1,), np.float32)),
                    "s": spaces.Sequence(spaces.Graph(spaces.Discrete(2), None), stack=True),
                    "t": spaces.Tuple(
                        (
                            spaces.Sequence(spaces.Discrete(5), stack=True),
                            spaces.OneOf((box, spaces.MultiBinary(3))),
                            spaces.Discrete(2),
                        )
                    ),
                }
            ),
            spaces.Tuple(
                (
                    spaces.Discrete(3),
                    spaces.Dict(
                        {
                            "one": spaces.OneOf((spaces.Discrete(2), spaces.Text(2, charset="ab"))),
                            "seq": spaces.Sequence(box),
                        }
                    ),
                )
            ),
        )
    raise ValueError(f"unknown kind {kind!r}")


SAMPLED_KINDS = ["graph", "graph_nested", "sequence", "sequence_stack", "oneof", "nested"]


class SampledSpacesEnv(gym.Env):
    """Graph, Sequence and OneOf spaces (``kind``: sampled_spaces), each observation sampled from the
    space with the env's own np_random, so it varies with the seed: graphs of 10 nodes and 0 to 89
    edges (none at all with 0), sequences of any length, every OneOf choice. Each step puts the action
    it received into its info (in a tuple: gymnasium batches it as an object)."""

    def __init__(self, kind: str = "graph"):
        self.observation_space, self.action_space = sampled_spaces(kind)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"t": 0}

    def step(self, action):
        self.t += 1
        terminated = bool(self.np_random.random() < 0.2)
        return self._obs(), float(self.t), terminated, self.t >= 6, {"t": self.t, "action": (action,)}

    def _obs(self):
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        return self.observation_space.sample()


class VarSpacesEnv(gym.Env):
    """Graph, Sequence and OneOf values of every shape the wire accepts, deterministic: the Python
    twin of `rlay_example_command --env var-spaces` ("rlay/VarSpaces-v0",
    workers/cpp/examples/var_spaces_env.hpp), which must agree with it bit for bit. Beside what a
    space samples, it returns what gymnasium's spaces contain but do not sample: lists for Sequences
    and OneOfs, Python ints and numpy integers, float64 nodes for a float32 node space, int64 or
    int32 edge links, graphs of no nodes, graphs with an edge space but no edges, empty sequences.
    Each step puts the action it received into its info, in a tuple. Integer arithmetic only; the
    floats are exact (multiples of 1/8)."""

    def __init__(self, index: int = 0):
        self.index = index
        f32, f64 = np.float32, np.float64
        self.observation_space = spaces.Dict(
            {
                "graph": spaces.Graph(spaces.Box(-100, 100, (2,), f32), spaces.Discrete(3)),
                "graph_plain": spaces.Graph(spaces.Discrete(4), None),
                "graph_rich": spaces.Graph(
                    spaces.Dict({"kind": spaces.Discrete(3), "pos": spaces.Box(-1, 1, (2,), f64)}),
                    spaces.Tuple((spaces.Box(0, 10, (), np.int32), spaces.Text(3, min_length=0, charset="ab"))),
                ),
                "one": spaces.OneOf(
                    (
                        spaces.Discrete(4),
                        spaces.Box(-1, 1, (2,), f32),
                        spaces.Dict({"n": spaces.Discrete(2), "s": spaces.Sequence(spaces.Discrete(3))}),
                    )
                ),
                "pair": spaces.Tuple(
                    (
                        spaces.Sequence(spaces.Discrete(9), stack=True),
                        spaces.OneOf((spaces.Text(2, min_length=0, charset="xy"), spaces.MultiBinary(3))),
                    )
                ),
                "seq": spaces.Sequence(spaces.Box(0, 255, (2,), np.uint8)),
                "seq_graphs": spaces.Sequence(spaces.Graph(spaces.Box(-1, 1, (1,), f32), None), stack=True),
                "seq_stack": spaces.Sequence(
                    spaces.Dict({"id": spaces.Discrete(5), "v": spaces.Box(-1, 1, (3,), f32)}), stack=True
                ),
                "seq_tuple": spaces.Sequence(
                    spaces.Tuple((spaces.Discrete(2), spaces.Text(3, min_length=0, charset="ab")))
                ),
                "t": spaces.Discrete(50),
            }
        )
        self.action_space = spaces.Dict(
            {
                "graph": spaces.Graph(spaces.Box(-1, 1, (2,), f32), spaces.Discrete(2)),
                "one": spaces.OneOf((spaces.Discrete(3), spaces.Box(-1, 1, (1,), f32))),
                "seq": spaces.Sequence(spaces.Discrete(5)),
                "stack": spaces.Sequence(spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (2,), f32))), stack=True),
            }
        )
        self.s = self.t = self.score = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.s = seed % 1000
        self.t = self.score = 0
        return self._obs(), {"seed": self.s}

    def step(self, action):
        graph, (index, _), seq, stack = action["graph"], action["one"], action["seq"], action["stack"]
        edges = 0 if graph.edges is None else len(graph.edges)
        self.t += 1
        self.score += len(graph.nodes) + 2 * edges + 3 * int(index) + len(seq) + sum(int(x) for x in seq)
        self.score += 5 * len(stack[0])
        terminated = self.t >= 2 and (self.score + self.index) % 3 == 0
        info = {"t": self.t, "score": self.score, "action": (action,)}
        return self._obs(), self.score / 4 + self.t, terminated, self.t >= 4, info

    def _obs(self):
        u = (self.s + 7 * self.index + 13 * self.t + 31 * self.score) % 65536
        t, n, m = self.t, 1 + u % 4, u % 3
        links = np.int64 if u % 2 == 0 else np.int32
        graph = spaces.GraphInstance(
            np.array([[j - u % 5, u % 7] for j in range(n)], np.float64 if t % 2 else np.float32),
            np.array([(u + j) % 3 for j in range(m)], np.int64) if m else None,
            np.array([[j % n, (j + 1) % n] for j in range(m)], links).reshape(m, 2) if m else None,
        )
        plain = spaces.GraphInstance(np.array([(u + j) % 4 for j in range(u % 3)], np.int64), None, None)
        rich = spaces.GraphInstance(
            {
                "kind": np.array([(u + j) % 3 for j in range(n)], np.int64),
                "pos": np.array([[j / 8, -(u % 8) / 8] for j in range(n)], np.float64).reshape(n, 2),
            },
            (np.array([(u + j) % 11 for j in range(m)], np.int32), tuple("ab"[(u + j) % 2] * j for j in range(m)))
            if m
            else None,
            np.array([[0, j % n] for j in range(m)], np.int64).reshape(m, 2) if m else None,
        )
        if u % 3 == 0:
            one = (0, u % 4)
        elif u % 3 == 1:
            one = (np.int64(1), np.array([(u % 8) / 8, -1.0], np.float32))
        else:
            one = [2, {"n": np.int64(u % 2), "s": tuple((u + j) % 3 for j in range(t % 3))}]
        choice = (0, "xy"[u % 2] * (t % 3)) if u % 2 else (1, np.array([1, 0, u % 2], np.int8))
        items = [np.array([(u + j) % 256, j], np.uint8) for j in range(u % 3)]
        L = u % 3
        return {
            "graph": graph,
            "graph_plain": plain,
            "graph_rich": rich,
            "one": one,
            "pair": (np.array([(u + j) % 9 for j in range(t % 3)], np.int64), choice),
            "seq": items if t % 2 else tuple(items),
            "seq_graphs": tuple(
                spaces.GraphInstance(np.array([[(u % 8) / 8 - j / 2]], np.float32), None, None)
                for j in range(1 + t % 2)
            ),
            "seq_stack": {
                "id": np.array([(u + j) % 5 for j in range(L)], np.int64),
                "v": np.array([[j / 8, 0.5, -0.25] for j in range(L)], np.float32).reshape(L, 3),
            },
            "seq_tuple": tuple((j % 2, "ab"[u % 2] * j) for j in range(t % 3)),
            "t": t,
        }


class SubclassSpaceEnv(gym.Env):
    """An env whose observation space is not gymnasium's own (``kind``): rlay must refuse it."""

    class WideBox(spaces.Box):
        """A Box subclass: its meaning could be anything the subclass's code says."""

    class Anything(spaces.Space):
        """A custom Space."""

        def contains(self, x):
            return True

        def __eq__(self, other):
            return type(other) is type(self)

    def __init__(self, kind: str = "box"):
        inner = {
            "box": lambda: self.WideBox(-1, 1, (2,), np.float32),
            "custom": lambda: self.Anything(),
            "nested": lambda: spaces.Dict(
                {"ok": spaces.Discrete(2), "seq": spaces.Sequence(self.WideBox(0, 1, (1,), np.float32))}
            ),
        }[kind]()
        self.observation_space = inner
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class BadGraphEnv(gym.Env):
    """A Graph observation; with ``bad``, its nodes are a list, not an array: it does not fit the space."""

    def __init__(self, bad: bool = False):
        self.bad = bad
        self.observation_space = spaces.Graph(spaces.Box(-1, 1, (2,), np.float32), None)
        self.action_space = spaces.Discrete(2)

    def _obs(self):
        nodes = [[0.0, 0.5]] if self.bad else np.array([[0.0, 0.5]], np.float32)
        return spaces.GraphInstance(nodes, None, None)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return spaces.GraphInstance(np.zeros((1, 2), np.float32), None, None), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {}


class ImageTextGraphEnv(gym.Env):
    """A 64 KiB image (sent row by row, or written into shared memory) beside a Text and a Graph:
    the path that splits each observation into its leaves, env by env."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "graph": spaces.Graph(spaces.Discrete(3), None),
                "image": spaces.Box(0, 255, (128, 128, 4), np.uint8),
                "label": spaces.Text(4, charset="ab"),
            }
        )
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        r = self.np_random
        return {
            "graph": spaces.GraphInstance(r.integers(0, 3, int(r.integers(0, 4))), None, None),
            "image": r.integers(0, 256, (128, 128, 4), dtype=np.uint8),
            "label": "ab"[int(r.integers(0, 2))] * int(r.integers(1, 5)),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), bool(self.np_random.random() < 0.2), self.t >= 5, {}


_made_alternating = 0


def alternating_bounds_cartpole() -> gym.Env:
    """CartPole whose observation bounds alternate between 1 and 2 at each call in a process: envs of
    one worker whose spaces differ."""
    global _made_alternating
    _made_alternating += 1
    env = gym.make("CartPole-v1")
    high = float(1 + _made_alternating % 2)
    env.observation_space = spaces.Box(-high, high, (4,), np.float32)
    return env


def as_the_cpp_sdk_hands_it(space: spaces.Space, value):
    """An action of ``space`` as the C++ SDK hands it to env code (workers/cpp/README.md): every
    array in its space's dtype, edge links as int64, each Discrete value and OneOf index a plain
    int; lists stay lists and tuples tuples."""
    if isinstance(space, spaces.Dict):
        return {key: as_the_cpp_sdk_hands_it(space[key], item) for key, item in value.items()}
    if isinstance(space, spaces.Tuple):
        return type(value)(as_the_cpp_sdk_hands_it(s, item) for s, item in zip(space.spaces, value))
    if isinstance(space, spaces.Discrete):
        return int(value)
    if isinstance(space, spaces.Graph):
        nodes = _cpp_batch(space.node_space, value.nodes)
        if value.edges is None:
            return spaces.GraphInstance(nodes, None, None)
        return spaces.GraphInstance(nodes, _cpp_batch(space.edge_space, value.edges), value.edge_links.astype(np.int64))
    if isinstance(space, spaces.Sequence):
        if space.stack:
            return _cpp_batch(space.feature_space, value)
        return type(value)(as_the_cpp_sdk_hands_it(space.feature_space, item) for item in value)
    if isinstance(space, spaces.OneOf):
        index, item = value
        return type(value)((int(index), as_the_cpp_sdk_hands_it(space.spaces[int(index)], item)))
    if isinstance(space, spaces.Text):
        return value
    return np.asarray(value).astype(space.dtype)


def _cpp_batch(space: spaces.Space, value):
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return np.asarray(value).astype(space.dtype)
    if isinstance(space, spaces.Tuple):
        return type(value)(_cpp_batch(s, item) for s, item in zip(space.spaces, value))
    if isinstance(space, spaces.Dict):
        return {key: _cpp_batch(space[key], item) for key, item in value.items()}
    return type(value)(as_the_cpp_sdk_hands_it(space, item) for item in value)


class VarSpacesCppTwin(VarSpacesEnv):
    """VarSpacesEnv stepped with its action as the C++ SDK hands it over (converted to the spaces'
    dtypes, protocol 3.6 and 3.8.1): the twin whose echoed actions `rlay_example_command --env
    var-spaces` must equal."""

    def step(self, action):
        return super().step(as_the_cpp_sdk_hands_it(self.action_space, action))


class EpisodeEnv(gym.Env):
    """Episodes of a known length, for episode accounting: each step pays 1 and the episode terminates
    at step ``horizon`` (action 1 truncates it at once). The observation is (steps into the episode,
    this process's pid, resets so far), so a result shows which env made it, and after which reset;
    the reset info says the same. ``reset_delay``: seconds every reset after the first takes (an
    autoreset to lose a worker in)."""

    observation_space = spaces.Box(0.0, 2.0**32, (3,), np.float64)
    action_space = spaces.Discrete(2)

    def __init__(self, horizon: int = 3, reset_delay: float = 0.0):
        self.horizon, self.reset_delay = horizon, reset_delay
        self.t = self.resets = 0

    def _obs(self) -> np.ndarray:
        import os

        return np.array([self.t, os.getpid(), self.resets], np.float64)

    def reset(self, *, seed=None, options=None):
        import os

        super().reset(seed=seed)
        if self.resets and self.reset_delay:
            time.sleep(self.reset_delay)
        self.t, self.resets = 0, self.resets + 1
        return self._obs(), {"pid": os.getpid(), "resets": self.resets}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= self.horizon, bool(action == 1), {"t": self.t}
