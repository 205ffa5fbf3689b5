"""The batch of the envs' last observations: where every reply's observations are copied (the one
copy), what reset and step return (or copies of it), and, for large Box leaves, shared memory that
workers on this host write into directly (rlay/shm.py, protocol 3.9)."""

from __future__ import annotations

import weakref
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium.vector.utils import create_empty_array
from gymnasium.vector.vector_env import VectorEnv

from rlay.errors import BrokerError
from rlay.shm import ObsSegment, is_shared
from rlay.spaces import flatten, leaf_spaces, unflatten
from rlay.trainer.lease import row_index
from rlay.values import WireError
from rlay.wire import IN_PLACE, decode_leaves

__all__ = ["ObsBuffer", "EnvResult", "RESET_KEYS", "STEP_KEYS", "check_per_env"]

RESET_KEYS = ("info",)
STEP_KEYS = ("reward", "terminated", "truncated", "info", "final")


class EnvResult:
    """One env's step or reset result (a reset's with reward 0), as first-ready stepping hands it out.
    ``loss``: a truncation that the trainer reports because the env's worker was lost."""

    __slots__ = ("row", "obs", "reward", "terminated", "truncated", "info", "final", "loss")

    def __init__(self, row, obs, reward, terminated, truncated, info, final, loss=False):
        self.row, self.obs, self.reward, self.terminated, self.truncated = row, obs, reward, terminated, truncated
        self.info, self.final, self.loss = info, final, loss


class ObsBuffer:
    """The observations of ``num_envs`` envs of ``space``, leaf by leaf (protocol 4.2)."""

    def __init__(self, space: Any, num_envs: int, shared_memory: bool):
        self.space = space
        self.leaf_spaces = leaf_spaces(space)
        self.observations = create_empty_array(space, n=num_envs, fn=np.zeros)
        self.leaves = [list(x) if isinstance(x, tuple) else x for x in flatten(space, self.observations)]
        self.segment: ObsSegment | None = None
        self.in_place: frozenset[int] = frozenset()  # the leaves kept in shared memory
        self._finalizer: weakref.finalize | None = None
        if shared_memory:  # large observations: workers on this host write them straight into the buffer
            self.segment = ObsSegment.create([(i, s) for i, s in enumerate(self.leaf_spaces) if is_shared(s)], num_envs)
        if self.segment is not None:
            self._finalizer = weakref.finalize(self, self.segment.close)
            for index, array in self.segment.arrays.items():
                self.leaves[index] = array
            self.in_place = frozenset(self.segment.arrays)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def offer(self, rows: list[int]) -> dict | None:
        """The shared-memory offer for a reset or step of ``rows`` (protocol 3.9), if there is a segment."""
        return None if self.segment is None else self.segment.offer(rows)

    def renew_token(self) -> None:
        """Refuse writes meant for envs that are gone (a lost worker that still runs)."""
        if self.segment is not None:
            self.segment.renew_token()

    def decode(self, descriptors: Any, frames: list[Any], count: int, in_place: bool = True) -> list[Any]:
        """A part's observation leaves, checked against the space; ``in_place``: a leaf a worker wrote
        into shared memory is accepted (as IN_PLACE)."""
        return decode_leaves(descriptors, frames, self.leaf_spaces, count, in_place=self.in_place if in_place else ())

    def store(self, rows: list[int], leaves: list[Any]) -> slice | np.ndarray:
        """Copy a part's decoded observation leaves into the batch at ``rows`` (the one copy), and
        return the rows' index."""
        index = row_index(rows)
        for buffer, leaf in zip(self.leaves, leaves):
            if leaf is IN_PLACE:  # the worker wrote it into the buffer (shared memory)
                continue
            if isinstance(buffer, list) or isinstance(leaf, list):  # Text or value leaf, or one frame per row
                for row, value in zip(rows, leaf):
                    buffer[row] = value
            else:
                buffer[index] = leaf
        return index

    def row(self, row: int) -> list[Any]:
        """One env's leaves, each its own copy (a Text leaf's str is immutable; a value leaf's
        value, a Graph, Sequence or OneOf, is copied whole)."""
        return [
            (b[row] if isinstance(b[row], str) else deepcopy(b[row])) if isinstance(b, list) else np.array(b[row])
            for b in self.leaves
        ]

    def set_row(self, row: int, leaves: list[Any]) -> None:
        for buffer, value in zip(self.leaves, leaves):
            buffer[row] = value

    def row_obs(self, row: int) -> Any:
        """One env's observation, copied out of the batch."""
        return deepcopy(unflatten(self.space, [leaf[row] for leaf in self.leaves]))

    def out(self, copy: bool) -> Any:
        """The batch as reset and step return it: the buffer itself, or a copy."""
        obs = unflatten(self.space, [tuple(x) if isinstance(x, list) else x for x in self.leaves])
        self.observations = obs
        return deepcopy(obs) if copy else obs

    def results(self, rows: list[int], body: dict, frames: list[Any], keep: bool) -> list[EnvResult]:
        """One part's results env by env, each with its own copy of its observation. ``keep``: the
        results of first-ready stepping, whose observations go into the batch, which holds each env's
        last observation (a masked reset returns it, and a lost env's truncation); a worker may have
        written them there already (shared memory). Without it (new envs replacing lost ones) the
        batch is left as it is."""
        try:
            leaves = self.decode(body["obs"], frames, len(rows), in_place=keep)
            if keep:
                self.store(rows, leaves)
            stepped = "reward" in body
            check_per_env(body, STEP_KEYS if stepped else RESET_KEYS, len(rows))
            results = []
            for n, row in enumerate(rows):
                if keep:
                    obs = self.row(row)
                else:
                    obs = [leaf[n] if isinstance(leaf, tuple) else np.array(leaf[n]) for leaf in leaves]
                if stepped:
                    reward, terminated, truncated = body["reward"][n], body["terminated"][n], body["truncated"][n]
                    results.append(
                        EnvResult(
                            row,
                            obs,
                            float(reward),
                            bool(terminated),
                            bool(truncated),
                            body["info"][n],
                            body["final"][n],
                        )
                    )
                else:
                    results.append(EnvResult(row, obs, 0.0, False, False, body["info"][n], None))
            return results
        except (WireError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise BrokerError(f"malformed reply from a worker: {exc}") from None

    def batch(self, results: list[EnvResult]) -> tuple:
        """(obs, rewards, terminations, truncations, infos) batched over ``results``, in their order; infos
        batched as gymnasium batches them, over this batch, with ``env_id`` saying whose each row is."""
        n = len(results)
        batch = create_empty_array(self.space, n=n, fn=np.zeros)
        out = [list(x) if isinstance(x, tuple) else x for x in flatten(self.space, batch)]
        for k, result in enumerate(results):
            for buffer, value in zip(out, result.obs):
                buffer[k] = value
        obs = unflatten(self.space, [tuple(x) if isinstance(x, list) else x for x in out])
        infos: dict[str, Any] = {}
        batched = _BatchInfos(n)  # info arrays as long as this batch, like obs and rewards
        for k, result in enumerate(results):
            if result.final is not None:
                infos = batched._add_info(infos, {"final_obs": result.final[0], "final_info": result.final[1]}, k)
            if result.info:
                infos = batched._add_info(infos, result.info, k)
        infos["env_id"] = np.array([r.row for r in results], dtype=np.int32)
        return (
            obs,
            np.array([r.reward for r in results], dtype=np.float64),
            np.array([r.terminated for r in results], dtype=np.bool_),
            np.array([r.truncated for r in results], dtype=np.bool_),
            infos,
        )


class _BatchInfos:
    """gymnasium's own info batching (``VectorEnv._add_info``) over a batch of ``num_envs`` results."""

    _add_info = VectorEnv._add_info

    def __init__(self, num_envs: int):
        self.num_envs = num_envs


def check_per_env(body: dict, keys: tuple[str, ...], count: int) -> None:
    """A reset or step reply lists one value per env under each key, and every info is a map
    (protocol 5.9); raises WireError otherwise."""
    for key in keys:
        values = body[key]
        if type(values) is not list or len(values) != count:
            raise WireError(f"{key!r} must list one value per env")
    for info in body["info"]:
        if type(info) is not dict:
            raise WireError(f"an info must be a map, got {type(info).__name__}")
