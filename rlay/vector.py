"""RlayVectorEnv: a gymnasium VectorEnv whose envs live in rlay workers.

Example (embedded: a private broker and local workers, nothing to launch)::

    >>> import gymnasium as gym
    >>> from rlay import RlayVectorEnv
    >>> envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 4, envs_per_worker=2)
    >>> obs, infos = envs.reset(seed=42)
    >>> obs.shape
    (4, 4)
    >>> obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    >>> envs.close()

Remote (a broker and workers started with ``rlay up`` or ``rlay broker`` / ``rlay worker``)::

    >>> envs = RlayVectorEnv.remote("CartPole-v1", 64, broker="tcp://127.0.0.1:5555")  # doctest: +SKIP

Results equal gymnasium's SyncVectorEnv bit for bit, in every AutoresetMode.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import Env, logger
from gymnasium.vector.async_vector_env import AsyncState
from gymnasium.vector.utils import batch_space, create_empty_array
from gymnasium.vector.vector_env import AutoresetMode, VectorEnv

from rlay import protocol as P
from rlay.client import BrokerClient, InlineBrokerClient
from rlay.cluster import EMBEDDED_ENV_ID, Cluster, Supervision
from rlay.errors import (
    AlreadyPendingCallError,
    BrokerError,
    BrokerLostError,
    ClosedEnvironmentError,
    LeaseError,
    NoAsyncCallError,
    RlayTimeoutError,
    WorkerLostError,
    remote_env_error,
)
from rlay.shm import ObsSegment, is_shared
from rlay.spaces import decode_space, flatten, leaf_spaces, unflatten
from rlay.values import WireError, packb
from rlay.wire import IN_PLACE, decode_body, decode_leaves, describe_failures, encode_leaves

__all__ = ["RlayVectorEnv"]

log = logging.getLogger("rlay.vector")

RESET_KEYS = ("info",)
STEP_KEYS = ("reward", "terminated", "truncated", "info", "final")

DEFAULT_TIMEOUT = 60.0  # s for any call when none is given
REPLY_GRACE = 5.0  # s the trainer waits past the broker's own deadline (the broker's error is more precise)
RELEASE_TIMEOUT = 2.0
ON_WORKER_FAILURE = ("raise", "replace")
WORKER_LOST_KEY = "worker_lost"  # the info key that marks an env replaced after its worker was lost


class _Group:
    """The trainer's envs that live on one worker: one part of every batched call."""

    def __init__(self, worker: str, host: str, pid: int, rows: list[int], slots: list[int]):
        self.worker, self.host, self.pid = worker, host, pid
        self.rows = np.asarray(rows)
        self.slots = slots
        self.index = _row_index(rows)

    def describe(self) -> str:
        return f"worker {self.worker} (pid {self.pid} on host {self.host})"


@dataclass(eq=False)
class _Call:
    """A batched call sent to the broker: ``make_body`` builds each worker's part (and again on a retry)."""

    kind: str
    rows: list[int]
    make_body: Callable[[_Group, list[int]], tuple[dict, list]]
    req: int | None = None  # None: nothing was sent (every row's result is made by the trainer)
    groups: list[_Group] = field(default_factory=list)


class _EnvResult:
    """One env's step or reset result, waiting in recv()'s queue."""

    __slots__ = ("row", "obs", "reward", "terminated", "truncated", "info", "final")

    def __init__(self, row, obs, reward, terminated, truncated, info, final):
        self.row, self.obs, self.reward, self.terminated, self.truncated = row, obs, reward, terminated, truncated
        self.info, self.final = info, final


def _stop_embedded(client: InlineBrokerClient, cluster: Cluster) -> None:
    """Stop the broker's idle pumper, then the broker and the workers (also at exit, via weakref.finalize)."""
    client.close()
    cluster.stop()


def _seed_list(seed: int | list[int | None] | None, num_envs: int) -> list[int | None]:
    """Per-env seeds as SyncVectorEnv derives them."""
    if seed is None:
        seed = [None for _ in range(num_envs)]
    elif isinstance(seed, int):
        seed = [seed + i for i in range(num_envs)]
    if len(seed) != num_envs:
        raise ValueError(
            f"If seeds are passed as a list the length must match num_envs={num_envs} but got length={len(seed)}."
        )
    return [None if s is None else int(s) for s in seed]


class RlayVectorEnv(VectorEnv):
    """A drop-in for ``gymnasium.vector.AsyncVectorEnv`` whose envs run in rlay workers.

    Args:
        env_fns: functions that create the envs (lambdas are fine: they are
            cloudpickled to the local worker processes, as AsyncVectorEnv does).
        autoreset_mode: one of gymnasium's AutoresetMode values.
        envs_per_worker: envs hosted by each local worker process. The default
            gives one worker per core but at least 16 envs per worker: right for
            cheap envs (CartPole, MuJoCo), whose cost is per message, and, with
            the default ``env_threads``, for envs that block too.
        env_threads: threads per worker stepping its envs concurrently. The
            default (None) times each worker's first steps: envs that wait more
            than they compute (sleep, I/O, a game waiting on its frame: their steps
            take over twice their CPU time) are then stepped one thread each,
            overlapping their waits; the others in turn. 1 always steps them in
            turn; N > 1 in N concurrent chunks.
        copy: return copies of the observations (as AsyncVectorEnv).
        context: multiprocessing start method for the local processes.
        daemon: daemon flag of the local processes.
        timeout: seconds any wait may take when the call names no timeout
            (``step_wait(timeout=None)`` waits this long, not forever).
        lease_timeout: seconds to wait for enough workers to register [default: timeout].
        on_worker_failure: what a call does when a worker holding some envs is
            lost (killed, hung, cut off): ``"raise"`` a WorkerLostError naming
            the envs, slots, worker, host and cause; or ``"replace"`` the lost
            envs with free slots of the same env id (here: restart the dead
            local worker), reset them, and report each as a truncation:
            ``truncated=True``, ``infos["worker_lost"]=True``, and the new
            episode's first observation where the autoreset mode places it
            (docs/architecture.md, "Worker failures").
        replace_timeout: seconds a replacement may wait for a free slot [default: timeout].
        shared_memory: keep the batch buffer of large observations (Box leaves
            of 8 KiB or more per env) in shared memory, which the workers on
            this host write straight into (default True, as AsyncVectorEnv).
            Workers elsewhere send them as frames. With ``copy=False`` the
            returned arrays are that buffer: the next step overwrites them.
        worker: AsyncVectorEnv's custom worker loop; rlay runs its own, so it raises.
        observation_mode: only ``"same"`` is supported (all envs share one space).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Env]],
        *,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        envs_per_worker: int | None = None,
        env_threads: int | None = None,
        copy: bool = True,
        context: str | None = None,
        daemon: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        lease_timeout: float | None = None,
        shared_memory: bool = True,
        observation_mode: str = "same",
        worker: Callable | None = None,
        on_worker_failure: str = "raise",
        replace_timeout: float | None = None,
    ):
        if worker is not None:
            raise TypeError("RlayVectorEnv runs rlay's own worker loop; a custom `worker` function is not supported")
        if envs_per_worker is None:
            envs_per_worker = default_envs_per_worker(len(env_fns))
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        if not env_fns:
            raise ValueError("env_fns is empty")
        self.env_fns = env_fns
        self.shared_memory = shared_memory
        self.context = context
        self.daemon = daemon
        self.envs_per_worker = envs_per_worker
        self._setup(autoreset_mode, copy, timeout, observation_mode, on_worker_failure, replace_timeout)
        if env_threads is not None and env_threads < 1:
            raise ValueError(f"env_threads must be None (auto) or >= 1, got {env_threads}")
        # Under "replace" a local worker killed by a signal is restarted, and its envs move to it.
        supervision = Supervision() if self.on_worker_failure == "replace" else None
        self._cluster = Cluster.embedded(
            env_fns, envs_per_worker, env_threads, context=context, daemon=daemon, supervision=supervision
        )
        client = InlineBrokerClient(self._cluster.inline_broker, health_check=self._cluster.check)
        self._finalizer = weakref.finalize(self, _stop_embedded, client, self._cluster)
        try:
            self._connect(client, EMBEDDED_ENV_ID, len(env_fns), lease_timeout)
        except BaseException:
            self._finalizer()
            raise

    @classmethod
    def remote(
        cls,
        env_id: str,
        num_envs: int,
        broker: str = P.DEFAULT_FRONTEND,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        lease_timeout: float | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        heartbeat_interval: float = P.HEARTBEAT_INTERVAL,
        curve: Any = None,
        on_worker_failure: str = "raise",
        replace_timeout: float | None = None,
        shared_memory: bool = True,
    ) -> RlayVectorEnv:
        """Lease ``num_envs`` slots of ``env_id`` from a running broker.

        The trainer pings the broker from a thread: every ``heartbeat_interval`` seconds while
        it waits for its lease, then as often as the broker says in the lease (protocol 5.5).
        The broker frees the slots of a trainer that stops pinging, and a call fails with
        BrokerLostError soon after the broker stops answering. ``curve``
        (``rlay.security.Curve.from_dir(KEYDIR, "client")``) encrypts and authenticates
        the connection to a broker started with ``--curve``. ``on_worker_failure`` and
        ``replace_timeout`` are as for the constructor; under ``"replace"`` a broker that
        restarts is also survived: the trainer leases ``num_envs`` slots from it again
        (waiting up to ``replace_timeout``) and reports every env as truncated.
        ``shared_memory`` is as for the constructor: workers on this host write large
        observations into the trainer's memory, the others send them as frames. So are
        ``timeout`` (each call's, enforced by the broker), ``lease_timeout`` (here: how long to
        wait for ``num_envs`` free slots of ``env_id``), ``autoreset_mode`` and ``copy``."""
        if type(heartbeat_interval) not in (int, float) or not heartbeat_interval > 0:
            raise ValueError(
                f"heartbeat_interval must be a positive number of seconds, got {heartbeat_interval!r}: "
                "a trainer must ping while it waits for or holds a lease (protocol 8.5)"
            )
        self = cls.__new__(cls)
        self.env_fns = None
        self.shared_memory = shared_memory
        self._setup(autoreset_mode, copy, timeout, "same", on_worker_failure, replace_timeout)
        client = BrokerClient(broker, heartbeat_interval=heartbeat_interval, curve=curve)
        try:
            self._connect(client, env_id, num_envs, lease_timeout)
        except BaseException:
            client.close()  # its heartbeat thread and socket must not outlive a failed lease
            self.closed = True
            raise
        return self

    # -- set up -------------------------------------------------------------------

    def _setup(
        self,
        autoreset_mode,
        copy: bool,
        timeout: float,
        observation_mode: str,
        on_worker_failure: str,
        replace_timeout: float | None,
    ) -> None:
        if observation_mode != "same":
            raise NotImplementedError("RlayVectorEnv supports observation_mode='same' only")
        if on_worker_failure not in ON_WORKER_FAILURE:
            raise ValueError(f"on_worker_failure must be one of {ON_WORKER_FAILURE}, got {on_worker_failure!r}")
        self.on_worker_failure = on_worker_failure
        self.replace_timeout = float(timeout if replace_timeout is None else replace_timeout)
        self.envs_replaced = 0  # envs replaced after their worker was lost, over this vector env's life
        # Envs replaced but not yet reported: the truncation to report at their next step (with the
        # new env's reset result), then under NextStep the reset result itself at the step after.
        self._truncate_next: dict[int, _EnvResult] = {}
        self._autoreset_next: dict[int, _EnvResult] = {}
        self._unreset: set[int] = set()  # rows moved to new slots whose new env has not been reset yet
        self._relets = 0  # leases taken anew from a broker that forgot this trainer
        self._marked: set[int] = set()  # first-ready: rows whose next reset result gets infos["worker_lost"]
        self.autoreset_mode = (
            autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(autoreset_mode)
        )
        self.copy = copy
        self.timeout = float(timeout)
        self.observation_mode = observation_mode
        self._state = AsyncState.DEFAULT
        self._pending: _Call | None = None
        self._in_flight: dict[int, int] = {}  # first-ready stepping: env row -> request id
        self._calls: dict[int, _Call] = {}  # first-ready stepping under "replace": request id -> its call
        self._stash: collections.deque = collections.deque()  # first-ready answers that came during another wait
        self._ready: collections.deque[_EnvResult] = collections.deque()
        self._client: BrokerClient | None = None
        self._cluster: Cluster | None = None
        self._finalizer: weakref.finalize | None = None  # (set before anything can fail: close() needs them)
        self._segment: ObsSegment | None = None  # shared memory for large observations (rlay/shm.py)
        self._segment_finalizer: weakref.finalize | None = None
        self._in_place: frozenset[int] = frozenset()  # the observation leaves kept in it
        self.closed = False

    def _connect(self, client: BrokerClient, env_id: str, num_envs: int, lease_timeout: float) -> None:
        if type(num_envs) is not int or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        lease_timeout = self.timeout if lease_timeout is None else float(lease_timeout)
        self.broker_address = client.address
        self.env_id = env_id
        self.num_envs = num_envs
        self._client = client
        lease = self._client.request(
            P.LEASE,
            lease_timeout + REPLY_GRACE,
            f"a lease of {num_envs} slots of {env_id!r}",
            error=LeaseError,
            env_id=env_id,
            num_envs=num_envs,
            timeout=lease_timeout,
        )
        client.leased(lease)
        self._lease_spaces = (lease["obs_space"], lease["act_space"])
        self._adopt_slots(lease["slots"])

        self.single_observation_space = decode_space(lease["obs_space"])
        self.single_action_space = decode_space(lease["act_space"])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(lease.get("metadata") or {})
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = lease.get("render_mode")
        self._obs_leaf_spaces = leaf_spaces(self.single_observation_space)
        self._observations = create_empty_array(self.single_observation_space, n=num_envs, fn=np.zeros)
        self._obs_leaves = [
            list(x) if isinstance(x, tuple) else x for x in flatten(self.single_observation_space, self._observations)
        ]
        if self.shared_memory:  # large observations: workers on this host write them straight into the buffer
            self._segment = ObsSegment.create(
                [(i, s) for i, s in enumerate(self._obs_leaf_spaces) if is_shared(s)], num_envs
            )
        if self._segment is not None:
            self._segment_finalizer = weakref.finalize(self, self._segment.close)
            for index, array in self._segment.arrays.items():
                self._obs_leaves[index] = array
            self._in_place = frozenset(self._segment.arrays)

    def _adopt_slots(self, slots: list[dict]) -> None:
        """Take the slots of a lease (row r is ``slots[r]``) and group the rows by worker."""
        self.slots = [s["slot"] for s in slots]
        self._slot_info = {s["slot"]: s for s in slots}
        self._regroup()

    def _regroup(self) -> None:
        by_worker: dict[str, list[int]] = {}
        for row, slot in enumerate(self.slots):
            by_worker.setdefault(self._slot_info[slot]["worker"], []).append(row)
        self._groups = []
        for rows in by_worker.values():
            info = self._slot_info[self.slots[rows[0]]]
            self._groups.append(_Group(info["worker"], info["host"], info["pid"], rows, [self.slots[r] for r in rows]))
        self._row_of_slot = {slot: row for row, slot in enumerate(self.slots)}

    # -- gymnasium API ------------------------------------------------------------

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        self._assert_is_running()
        seeds = _seed_list(seed, self.num_envs)
        self._assert_idle("reset_async")
        rows = np.arange(self.num_envs)
        if options is not None and "reset_mask" in options:
            reset_mask = options.pop("reset_mask")
            if not isinstance(reset_mask, np.ndarray):
                raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(reset_mask)}")
            if reset_mask.shape != (self.num_envs,):
                raise ValueError(
                    f"`options['reset_mask']` must have shape `({self.num_envs},)`, got {reset_mask.shape}"
                )
            if reset_mask.dtype != np.bool_:
                raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {reset_mask.dtype}")
            if not np.any(reset_mask):
                raise ValueError(
                    "`options['reset_mask']` must contain a boolean array with at least one True value, "
                    f"got reset_mask={reset_mask}"
                )
            rows = np.flatnonzero(reset_mask)
        self._settle()
        self._pending = self._send(
            P.RESET, rows, lambda g, r: ({"seeds": [seeds[i] for i in r], "options": options}, [])
        )
        self._state = AsyncState.WAITING_RESET

    def reset_wait(self, timeout: float | None = None):
        self._assert_is_running()
        if self._state != AsyncState.WAITING_RESET:
            raise NoAsyncCallError(
                "Calling `reset_wait` without any prior call to `reset_async`.", AsyncState.WAITING_RESET.value
            )
        columns, replaced = self._collect(timeout, RESET_KEYS)
        infos: dict[str, Any] = {}
        for row, info in enumerate(columns["info"]):
            if info is None:  # a row the reset did not touch
                continue
            # A new episode: nothing is left to report of one a lost worker ended.
            self._truncate_next.pop(row, None)
            self._autoreset_next.pop(row, None)
            if row in replaced:
                info = {**info, WORKER_LOST_KEY: True}
            if info:
                infos = self._add_info(infos, info, row)
        return self._obs_out(), infos

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        self._assert_is_running()
        self._assert_idle("step_async")
        leaves = flatten(self.single_action_space, actions)
        for leaf in leaves:
            if len(leaf) != self.num_envs:
                raise ValueError(f"expected a batch of {self.num_envs} actions, got {len(leaf)} in {actions!r:.200}")
        mode = self.autoreset_mode.value

        def body(group: _Group, rows: list[int]):
            index = group.index if len(rows) == len(group.rows) else _row_index(rows)
            descriptors, frames = encode_leaves(leaves, index)
            return {"autoreset": mode, "actions": descriptors}, frames

        self._settle()
        rows = np.arange(self.num_envs)
        if self._truncate_next or self._autoreset_next:  # replaced envs: their results are made in step_wait
            rows = np.asarray([r for r in rows if r not in self._truncate_next and r not in self._autoreset_next])
        self._pending = self._send(P.STEP, rows, body)
        self._state = AsyncState.WAITING_STEP

    def step_wait(self, timeout: float | None = None):
        self._assert_is_running()
        if self._state != AsyncState.WAITING_STEP:
            raise NoAsyncCallError(
                "Calling `step_wait` without any prior call to `step_async`.", AsyncState.WAITING_STEP.value
            )
        columns, _ = self._collect(timeout, STEP_KEYS)
        for row in [*self._autoreset_next, *self._truncate_next]:
            if columns["reward"][row] is not None:
                continue  # it stepped before a new lease replaced every env: its truncation comes next step
            result = self._replaced_result(row)
            columns["reward"][row], columns["terminated"][row] = result.reward, result.terminated
            columns["truncated"][row], columns["info"][row], columns["final"][row] = (
                result.truncated,
                result.info,
                result.final,
            )
        rewards = np.array(columns["reward"], dtype=np.float64)
        terminations = np.array(columns["terminated"], dtype=np.bool_)
        truncations = np.array(columns["truncated"], dtype=np.bool_)
        infos: dict[str, Any] = {}
        for row, (info, final) in enumerate(zip(columns["info"], columns["final"])):
            if final is not None:  # SameStep: batched first, as SyncVectorEnv does
                final_obs, final_info = final
                infos = self._add_info(infos, {"final_obs": final_obs, "final_info": final_info}, row)
            if info:
                infos = self._add_info(infos, info, row)
        return self._obs_out(), rewards, terminations, truncations, infos

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self.call_async(name, *args, **kwargs)
        return self.call_wait()

    def call_async(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        self._assert_is_running()
        self._assert_idle("call_async")
        if name in P.RESERVED_CALLS:
            raise ValueError(f"Trying to call function `{name}` with `call`, use `{name}` directly instead.")
        packb([list(args), kwargs])  # refuse non-data arguments here, with a clear error
        self._settle()
        self._pending = self._send(
            P.CALL, np.arange(self.num_envs), lambda g, r: ({"name": name, "args": list(args), "kwargs": kwargs}, [])
        )
        self._state = AsyncState.WAITING_CALL

    def call_wait(self, timeout: float | None = None) -> tuple[Any, ...]:
        self._assert_is_running()
        if self._state != AsyncState.WAITING_CALL:
            raise NoAsyncCallError(
                "Calling `call_wait` without any prior call to `call_async`.", AsyncState.WAITING_CALL.value
            )
        results: list[Any] = [None] * self.num_envs
        for rows, body, _ in self._wait(timeout)[0]:
            for n, row in enumerate(rows):
                results[row] = body["results"][n]
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    @property
    def np_random_seed(self) -> tuple[int, ...]:
        """The seed of each env's ``np_random``, as SyncVectorEnv and AsyncVectorEnv give it."""
        return self.get_attr("np_random_seed")

    @property
    def np_random(self) -> Any:
        # SyncVectorEnv gives the envs' generators; these live in the worker processes, and a
        # Generator is not data that can cross the wire. The VectorEnv's own would be a wrong answer.
        raise AttributeError(
            "the envs' np_random generators live in their worker processes and cannot cross the "
            "wire; np_random_seed gives their seeds"
        )

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        self._assert_is_running()
        if not isinstance(values, (list, tuple)):
            values = [values for _ in range(self.num_envs)]
        if len(values) != self.num_envs:
            raise ValueError(
                "Values must be a list or tuple with length equal to the number of environments. "
                f"Got `{len(values)}` values for {self.num_envs} environments."
            )
        self._assert_idle("set_attr")
        packb(list(values))
        self._settle()
        self._pending = self._send(
            P.SET_ATTR, np.arange(self.num_envs), lambda g, r: ({"name": name, "values": [values[i] for i in r]}, [])
        )
        self._state = AsyncState.WAITING_CALL  # set_attr is synchronous; reuse the call state while it runs
        self._wait(None)

    def render(self) -> tuple[Any, ...] | None:
        return self.call("render")

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        """Release the slots and, when embedded, stop the private broker and workers."""
        try:
            if self._state != AsyncState.DEFAULT and not terminate:
                logger.warn(f"Calling `close` while waiting for a pending call to `{self._state.value}` to complete.")
                try:
                    self._wait(timeout if timeout is not None else self.timeout)
                except Exception:
                    pass
            if self._client is not None:
                try:
                    self._client.request(P.RELEASE, RELEASE_TIMEOUT, "the release of this trainer's slots")
                except Exception:
                    pass  # the broker may be gone already: nothing left to release
                self._client.close()
                self._client = None
        finally:
            if self._finalizer is not None:
                self._finalizer()
            if self._segment_finalizer is not None:
                self._segment_finalizer()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and hasattr(self, "_state"):
            self.close(terminate=True)

    def __repr__(self) -> str:
        where = "embedded" if getattr(self, "_cluster", None) is not None else getattr(self, "broker_address", "?")
        return (
            f"RlayVectorEnv({getattr(self, 'env_id', '?')}, num_envs={getattr(self, 'num_envs', '?')}, broker={where})"
        )

    # -- first-ready stepping (envpool style) --------------------------------------

    def async_reset(self, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Reset every env; the results arrive through :meth:`recv` (reward 0), worker by worker."""
        self._assert_is_running()
        self._assert_idle("async_reset")
        if self._unreceived:
            raise AlreadyPendingCallError(
                f"async_reset() while envs {_rows_text(sorted(self._unreceived))} are "
                "stepping or have results not yet received: recv() them first",
                "send",
            )
        seeds = _seed_list(seed, self.num_envs)
        rows = np.arange(self.num_envs)
        self._settle()
        call = self._send(
            P.RESET, rows, lambda g, r: ({"seeds": [seeds[i] for i in r], "options": options}, []), gather=False
        )
        self._in_flight.update(dict.fromkeys(rows.tolist(), call.req))

    def send(self, actions: Any, env_ids: Any) -> None:
        """Step the envs ``env_ids`` with ``actions`` (a batch with one row per id, in that order).

        Returns at once; :meth:`recv` returns results as the envs finish, fastest
        first, so the trainer never waits for the slowest env. Autoreset follows
        ``autoreset_mode`` exactly as for :meth:`step`.
        """
        self._assert_is_running()
        self._assert_idle("send")
        ids = np.asarray(env_ids, dtype=np.int64).ravel()
        if len(set(ids.tolist())) != len(ids) or (len(ids) and (ids.min() < 0 or ids.max() >= self.num_envs)):
            raise ValueError(f"env_ids must be distinct env indices below {self.num_envs}, got {ids.tolist()}")
        busy = sorted(set(ids.tolist()) & self._unreceived)
        if busy:
            raise AlreadyPendingCallError(
                f"envs {busy} are still stepping or have a result not yet received: recv() it first", "send"
            )
        leaves = flatten(self.single_action_space, actions)
        for leaf in leaves:
            if len(leaf) != len(ids):
                raise ValueError(f"send() got {len(ids)} env ids but {len(leaf)} actions")
        position = {int(row): k for k, row in enumerate(ids)}
        mode = self.autoreset_mode.value

        def body(group: _Group, rows: list[int]):
            descriptors, frames = encode_leaves(leaves, np.asarray([position[r] for r in rows]))
            return {"autoreset": mode, "actions": descriptors}, frames

        self._settle()
        # Replaced envs: their results are made here, once the others' request is sent (a request
        # that cannot be sent raises, and leaves every env as it was).
        replaced = []
        if self._truncate_next or self._autoreset_next:
            replaced = [r for r in ids.tolist() if r in self._truncate_next or r in self._autoreset_next]
            ids = np.asarray([r for r in ids.tolist() if r not in replaced], dtype=np.int64)
        call = self._send(P.STEP, ids, body, gather=False)
        self._in_flight.update(dict.fromkeys(ids.tolist(), call.req))
        self._ready.extend(self._replaced_result(r) for r in replaced)

    def recv(self, batch_size: int | None = None, timeout: float | None = None):
        """The results of the first ``batch_size`` envs to finish since :meth:`send` / :meth:`async_reset`.

        Returns ``(obs, rewards, terminations, truncations, infos)`` batched over
        those envs in the order they finished; ``infos["env_id"]`` says which.
        ``batch_size`` defaults to every env in flight. ``timeout`` bounds the whole wait
        [default: the constructor's ``timeout`` + 5 s].
        """
        self._assert_is_running()
        available = len(self._ready) + len(self._in_flight)
        batch_size = available if batch_size is None else batch_size
        if not 0 < batch_size <= available:
            raise ValueError(f"recv(batch_size={batch_size}) but {available} env result(s) are pending; send() first")
        wait = self.timeout + REPLY_GRACE if timeout is None else timeout
        deadline = time.monotonic() + wait
        while len(self._ready) < batch_size:
            what = f"the first {batch_size} of envs {_rows_text(sorted(self._in_flight))} to finish"
            try:
                head, frames = (
                    self._stash.popleft()
                    if self._stash
                    else self._client.wait(set(self._in_flight.values()), max(0.0, deadline - time.monotonic()), what)
                )
                failures = head.get("failures") or []
                if head[P.TYPE] == P.ERROR and not failures:  # the whole call was refused
                    error = self._error_from(head, what)
                    if not (isinstance(error, BrokerLostError) and self._replacing):  # (survived below)
                        req = head.get(P.REQ)
                        for row in [r for r, q in self._in_flight.items() if req is None or q == req]:
                            del self._in_flight[row]  # none of its envs is stepping
                    raise error
            except BrokerLostError as exc:
                if not self._replacing:
                    raise
                self._replace_in_flight([], str(exc), relet=True)
                continue
            if head[P.TYPE] == P.REPLY:
                self._take_results(head, frames)
            try:
                lost, cause = self._lost_rows(head, what)
            except Exception:  # failed envs are not stepping any more
                for failure in failures:
                    for slot in failure.get("slots", []):
                        self._in_flight.pop(self._row_of_slot.get(slot), None)
                raise
            if lost:
                self._replace_in_flight(lost, cause)
        if self._calls:
            live = set(self._in_flight.values())
            self._calls = {req: call for req, call in self._calls.items() if req in live}
        results = [self._ready.popleft() for _ in range(batch_size)]
        return self._batch_results(results)

    def _take_results(self, head: dict, frames: list[Any]) -> None:
        for rows, body, part_frames in self._split_reply(head, frames, "a first-ready answer"):
            try:
                results = self._row_results(rows, body, part_frames, keep=True)
            except BrokerError:  # a malformed reply is still an answer: these envs are not stepping
                for row in rows:
                    self._in_flight.pop(row, None)
                raise
            for result in results:
                self._in_flight.pop(result.row, None)
                self._ready.append(result)
                if self._replacing:
                    if "reward" not in body:  # a reset: a new episode
                        self._truncate_next.pop(result.row, None)
                        self._autoreset_next.pop(result.row, None)
                        if result.row in self._marked:
                            self._marked.discard(result.row)
                            result.info = {**result.info, WORKER_LOST_KEY: True}

    def _row_results(self, rows: list[int], body: dict, frames: list[Any], keep: bool) -> list[_EnvResult]:
        """One part's results env by env (a reset's with reward 0), each with its own copy of its
        observation. ``keep``: the results of first-ready stepping, whose observations go into the
        batch buffer, which holds each env's last observation (a masked reset returns it, and a
        lost env's truncation); a worker may have written them there already (shared memory).
        Without it (new envs replacing lost ones) the buffer is left as it is."""
        try:
            leaves = decode_leaves(
                body["obs"], frames, self._obs_leaf_spaces, len(rows), in_place=self._in_place if keep else ()
            )
            if keep:
                self._store_obs(rows, leaves)
            stepped = "reward" in body
            _check_per_env(body, STEP_KEYS if stepped else RESET_KEYS, len(rows))
            results = []
            for n, row in enumerate(rows):
                if keep:
                    obs = [b[row] if isinstance(b, list) else np.array(b[row]) for b in self._obs_leaves]
                else:
                    obs = [leaf[n] if isinstance(leaf, tuple) else np.array(leaf[n]) for leaf in leaves]
                if stepped:
                    results.append(
                        _EnvResult(
                            row,
                            obs,
                            float(body["reward"][n]),
                            bool(body["terminated"][n]),
                            bool(body["truncated"][n]),
                            body["info"][n],
                            body["final"][n],
                        )
                    )
                else:
                    results.append(_EnvResult(row, obs, 0.0, False, False, body["info"][n], None))
            return results
        except (WireError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise BrokerError(f"malformed reply from a worker: {exc}") from None

    def _batch_results(self, results: list[_EnvResult]):
        n = len(results)
        batch = create_empty_array(self.single_observation_space, n=n, fn=np.zeros)
        out = [list(x) if isinstance(x, tuple) else x for x in flatten(self.single_observation_space, batch)]
        for k, result in enumerate(results):
            for buffer, value in zip(out, result.obs):
                buffer[k] = value
        obs = unflatten(self.single_observation_space, [tuple(x) if isinstance(x, list) else x for x in out])
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

    # -- worker failures (on_worker_failure="replace") -------------------------------

    @property
    def _replacing(self) -> bool:
        return self.on_worker_failure == "replace"

    def _lost_rows(self, head: dict, what: str) -> tuple[list[int], str]:
        """The rows of an answer's failed parts, and why, if every failure is a lost worker and
        this env replaces lost envs; any other failure raises."""
        failures = head.get("failures") or []
        if not failures:
            return [], ""
        code, message = describe_failures(failures)
        if not self._replacing or any(f.get("code") != P.E_WORKER_LOST for f in failures):
            raise self._error_from({**head, "code": code, "message": message}, what)
        rows = sorted(self._row_of_slot[s] for f in failures for s in f.get("slots") or [] if s in self._row_of_slot)
        return rows, re.sub(r"slots \[([0-9, ]*)\]", self._name_rows, message)

    def _replace_envs(self, rows: list[int], cause: str, relet: bool = False) -> set[int]:
        """Give ``rows`` new envs after their worker was lost, and reset them; returns the rows reset.

        The broker moves the rows' LOST slots to free slots of the env id, waiting
        up to ``replace_timeout`` for some (a restarted worker registering).
        ``relet``: the broker restarted or forgot this trainer, so every row is
        leased anew. Rows on new slots stay in ``_unreset`` until their reset
        returns; the reset results wait in ``_truncate_next`` until each row's
        next step reports the lost episode as truncated.
        """
        deadline = time.monotonic() + self.replace_timeout
        replaced: set[int] = set()
        rows, first = sorted(rows), True
        while rows or relet or self._unreset:
            try:
                if rows or relet:
                    if not first and time.monotonic() >= deadline:
                        raise WorkerLostError(
                            f"envs {_rows_text(rows)} could not be replaced within "
                            f"{self.replace_timeout:g} s (replace_timeout): {cause}"
                        )
                    first = False
                    if self._segment is not None:  # a lost worker may still run: it must not write into
                        self._segment.renew_token()  # the rows that hold its envs' last observations
                    log.warning(
                        "replacing envs %s (waiting up to %.0f s for free slots) after: %s",
                        f"0-{self.num_envs - 1}" if relet else _rows_text(rows),
                        deadline - time.monotonic(),
                        cause,
                    )
                    if relet:
                        self._lease_again(deadline, cause)
                    else:
                        self._move_slots(rows, deadline, cause)
                    rows, relet = [], False
                unreset = sorted(self._unreset)
                what = f"the reset of the new envs {_rows_text(unreset)}, replacing lost ones"
                # (as frames: the buffer holds the lost envs' last observations, which their truncation reports)
                call = self._send(
                    P.RESET,
                    np.asarray(unreset),
                    lambda g, r: ({"seeds": [None] * len(r), "options": None}, []),
                    shared=False,
                )
                head, frames = self._await(call.req, self.timeout + REPLY_GRACE, what)
                if head[P.TYPE] == P.ERROR:
                    raise self._error_from(head, what)
            except BrokerLostError as exc:
                if time.monotonic() >= deadline:
                    raise
                relet, cause = True, str(exc)
                continue
            for part_rows, body, part_frames in self._split_reply(head, frames, what):
                for result in self._row_results(part_rows, body, part_frames, keep=False):
                    row = result.row
                    self._unreset.discard(row)
                    if row in self._autoreset_next:  # its lost episode was reported already: owe only the reset
                        self._autoreset_next[row] = result
                    else:
                        self._truncate_next[row] = result
                    replaced.add(row)
            rows, cause = self._lost_rows(head, what)  # a new env lost in turn is replaced again
        self.envs_replaced += len(replaced)
        return replaced

    def _settle(self) -> None:
        """Before a new call: finish a replacement that an error interrupted (its new envs unreset)."""
        if self._unreset:
            self._replace_envs([], "an earlier replacement was interrupted")

    def _move_slots(self, rows: list[int], deadline: float, cause: str) -> None:
        """Ask the broker for free slots in place of the rows' LOST ones (`replace`, protocol 5.15)."""
        remaining = max(0.0, deadline - time.monotonic())
        what = f"free slots of {self.env_id!r} to replace envs {_rows_text(rows)}"
        req = self._client.send(P.REPLACE, slots=[self.slots[r] for r in rows], timeout=remaining)
        head, _ = self._await(req, remaining + REPLY_GRACE, what)
        if head[P.TYPE] == P.ERROR:
            if head.get("code") == P.E_LEASE_TIMEOUT:
                raise WorkerLostError(
                    f"no replacement came within {self.replace_timeout:g} s (replace_timeout) for "
                    f"envs {_rows_text(rows)}, lost with their worker: {cause}. "
                    f"The broker: {head.get('message')}"
                )
            raise self._error_from(head, what)  # (no_lease: a BrokerLostError, and a new lease)
        for old, info in zip(head["replaces"], head["slots"]):
            row = self._row_of_slot[old]
            self.slots[row] = info["slot"]
            del self._slot_info[old]
            self._slot_info[info["slot"]] = info
        self._regroup()
        self._unreset.update(rows)

    def _lease_again(self, deadline: float, cause: str) -> None:
        """Lease every row anew from a broker that no longer knows this trainer (it restarted)."""
        remaining = max(0.0, deadline - time.monotonic())
        what = f"a new lease of {self.num_envs} slots of {self.env_id!r} (the old lease is gone: {cause})"
        self._client.send(P.RELEASE)  # in case the broker still holds the old lease (answer dropped)
        req = self._client.send(P.LEASE, env_id=self.env_id, num_envs=self.num_envs, timeout=remaining)
        # The broker may still be away: wait for it rather than fail on its silence.
        head, _ = self._client.wait(req, remaining + REPLY_GRACE, what, check_broker=False)
        if head[P.TYPE] == P.ERROR:
            raise LeaseError(f"{cause}; and the broker refused {what}: {head.get('message')}")
        if (head["obs_space"], head["act_space"]) != self._lease_spaces:
            raise BrokerError(f"{what}: the new slots' spaces differ from the old ones")
        self._client.leased(head)
        if self._client.heartbeat is not None:
            self._client.heartbeat.reset()
        self._stash.clear()  # answers of the old lease: their envs are gone
        self._adopt_slots(head["slots"])
        self._unreset = set(range(self.num_envs))
        self._relets += 1

    def _replaced_result(self, row: int) -> _EnvResult:
        """The step result of a replaced env, made by the trainer: the truncation of the episode its lost
        worker ended or, under NextStep, at the step after it, the new env's reset. Its observation
        goes into the batch buffer, which holds each env's last observation."""
        if row in self._autoreset_next:
            new = self._autoreset_next.pop(row)
            result = _EnvResult(row, new.obs, 0.0, False, False, new.info, None)
        else:
            new = self._truncate_next.pop(row)
            marker = {WORKER_LOST_KEY: True}
            if self.autoreset_mode == AutoresetMode.SAME_STEP:  # the last observation seen stands in for the final one
                result = _EnvResult(row, new.obs, 0.0, False, True, {**new.info, **marker}, (self._row_obs(row), {}))
            else:
                if self.autoreset_mode == AutoresetMode.NEXT_STEP:
                    self._autoreset_next[row] = new
                last = [leaf[row] if isinstance(leaf, list) else np.array(leaf[row]) for leaf in self._obs_leaves]
                result = _EnvResult(row, last, 0.0, False, True, marker, None)
        for buffer, value in zip(self._obs_leaves, result.obs):
            buffer[row] = value
        return result

    def _replace_in_flight(self, rows: list[int], cause: str, relet: bool = False) -> None:
        """First-ready stepping: replace envs lost while in flight. A lost step is reported as a
        truncation through recv(); a lost reset is sent again to the new env."""
        calls = {row: self._calls.get(self._in_flight.pop(row, None)) for row in rows}
        relets = self._relets
        try:
            self._replace_envs(rows, cause, relet)
        finally:
            if self._relets != relets:  # a new lease: every env in flight went with the old one
                calls.update({row: self._calls.get(req) for row, req in self._in_flight.items()})
                self._in_flight.clear()
        again: dict[int, list[int]] = {}
        for row, call in calls.items():
            if call is not None and call.kind == P.RESET:
                again.setdefault(id(call), []).append(row)
            else:
                self._ready.append(self._replaced_result(row))
        for resets in again.values():
            call = self._send(P.RESET, np.asarray(resets), calls[resets[0]].make_body, gather=False)
            self._in_flight.update(dict.fromkeys(resets, call.req))
            self._marked.update(resets)

    # -- plumbing -----------------------------------------------------------------

    def _assert_is_running(self) -> None:
        if self.closed:
            raise ClosedEnvironmentError(f"Trying to operate on `{type(self).__name__}`, after a call to `close()`.")

    def _assert_idle(self, method: str) -> None:
        if self._state != AsyncState.DEFAULT:
            raise AlreadyPendingCallError(
                f"Calling `{method}` while waiting for a pending call to `{self._state.value}` to complete.",
                str(self._state.value),
            )
        if method not in ("send", "async_reset") and (self._in_flight or self._ready):  # (the hot path: no set)
            raise AlreadyPendingCallError(
                f"Calling `{method}` while envs {_rows_text(sorted(self._unreceived))} are stepping after send() or "
                "have results not yet received; recv() them first",
                "send",
            )

    @property
    def _unreceived(self) -> set[int]:
        """Envs sent and not yet handed back by recv(): still stepping, or with a result waiting here
        (a worker's reply can bring more results than one recv() returns)."""
        return set(self._in_flight).union(result.row for result in self._ready)

    def _send(
        self,
        kind: str,
        rows: np.ndarray,
        make_body: Callable[[_Group, list[int]], tuple[dict, list]],
        gather: bool = True,
        shared: bool = True,
    ) -> _Call:
        """Send one batched call: one part per worker that hosts some of ``rows``.

        ``gather`` (the synchronous API) waits for every part in one reply; without
        it each part is answered as it completes (first-ready stepping). Under
        "replace" the call is ``partial``: a part whose worker is lost fails alone.
        ``shared``: offer the shared-memory buffer for the observations of a reset or step.
        """
        call = _Call(kind, rows.tolist(), make_body)
        wanted = set(call.rows)
        parts, frames = [], []
        for group in self._groups:
            picked = [r for r in group.rows.tolist() if r in wanted]
            if not picked:
                continue
            body, arrays = make_body(group, picked)
            if shared and self._segment is not None and kind in (P.RESET, P.STEP):
                body["shm"] = self._segment.offer(picked)
            parts.append([[self.slots[r] for r in picked], 1 + len(arrays)])
            frames.append(packb(body))
            frames.extend(arrays)
            call.groups.append(group)
        if not parts:
            return call
        flags = {"partial": True} if self._replacing else {}
        if not gather:
            flags["gather"] = False
        call.req = self._client.send(kind, frames, parts=parts, timeout=self.timeout, **flags)
        if not gather and self._replacing:
            self._calls[call.req] = call
        return call

    def _await(self, req: int, wait_s: float, what: str) -> tuple[dict, list[Any]]:
        """Wait for the answer to ``req``, keeping first-ready answers that come meanwhile for recv()."""
        others = set(self._in_flight.values())
        if not others:
            return self._client.wait(req, wait_s, what)
        deadline = time.monotonic() + wait_s
        while True:
            head, frames = self._client.wait(others | {req}, max(0.0, deadline - time.monotonic()), what)
            if head.get(P.REQ) in (req, None):
                return head, frames
            self._stash.append((head, frames))

    def _wait(self, timeout: float | None) -> tuple[list[tuple[list[int], dict, list[Any]]], set[int]]:
        """Wait for the pending call (the synchronous API): see _finish."""
        call = self._pending
        self._state, self._pending = AsyncState.DEFAULT, None
        return self._finish(call, timeout)

    def _finish(self, call: _Call, timeout: float | None) -> tuple[list[tuple[list[int], dict, list[Any]]], set[int]]:
        """Wait for a gathered call's answer: [(rows, body, array frames) per part], and the rows
        whose envs were replaced meanwhile (a call other than step then ran again on them)."""
        if call.req is None:
            return [], set()
        what = f"the {call.kind} of envs {_rows_text(sorted(call.rows))} on " + ", ".join(
            g.describe() for g in call.groups
        )
        wait = self.timeout + REPLY_GRACE if timeout is None else timeout
        relets = self._relets
        try:
            head, frames = self._await(call.req, wait, what)
            if head[P.TYPE] == P.ERROR:
                raise self._error_from(head, what)
        except BrokerLostError as exc:
            if not self._replacing:
                raise
            replies, lost = [], call.rows  # the old broker's answer will never come
            replaced = self._replace_envs([], str(exc), relet=True)
        else:
            replies = self._split_reply(head, frames, what)
            lost, cause = self._lost_rows(head, what)
            replaced = self._replace_envs(lost, cause) if lost else set()
        if self._relets != relets and call.kind != P.STEP:
            replies, lost = [], call.rows  # a new lease replaced the envs that answered too
        if lost and call.kind != P.STEP:  # reset, call, set_attr: again, on the new envs
            try:
                resent = self._send(call.kind, np.asarray(lost), call.make_body)
            except BrokerError as exc:  # (the new envs' rows may share one worker, and one larger frame)
                raise BrokerError(
                    f"{what} reached the other envs but could not be sent to the new envs {_rows_text(lost)}, "
                    f"which replaced lost ones: {exc}"
                ) from None
            more, again = self._finish(resent, timeout)
            replies += more
            replaced |= again
        return replies, replaced

    def _split_reply(self, head: dict, frames: list[Any], what: str) -> list[tuple[list[int], dict, list[Any]]]:
        try:
            out, offset = [], 0
            for slots, nframes in head["parts"]:
                rows = [self._row_of_slot[s] for s in slots]
                body = decode_body(frames[offset])
                out.append((rows, body, frames[offset + 1 : offset + nframes]))
                offset += nframes
            return out
        except (WireError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise BrokerError(f"malformed reply to {what}: {exc}") from None

    def _collect(self, timeout: float | None, keys: tuple[str, ...]) -> tuple[dict[str, list], set[int]]:
        """Wait for a reset or step and copy observations into the batch buffer (the one copy).

        Returns the body's other ``keys`` as columns indexed by env row (None
        where the call did not include that row), and the rows replaced meanwhile.
        """
        replies, replaced = self._wait(timeout)
        columns = {key: [None] * self.num_envs for key in keys}
        try:
            for rows, body, frames in replies:
                leaves = decode_leaves(body["obs"], frames, self._obs_leaf_spaces, len(rows), in_place=self._in_place)
                index = self._store_obs(rows, leaves)
                _check_per_env(body, keys, len(rows))
                for key, column in columns.items():
                    values = body[key]
                    if type(index) is slice:
                        column[index] = values
                    else:
                        for row, value in zip(rows, values):
                            column[row] = value
        except (WireError, KeyError, TypeError, ValueError) as exc:
            raise BrokerError(f"malformed reply from a worker: {exc}") from None
        return columns, replaced

    def _store_obs(self, rows: list[int], leaves: list[Any]) -> slice | np.ndarray:
        """Copy a part's decoded observation leaves into the batch buffer at ``rows`` (the one
        copy), and return the rows' index."""
        index = _row_index(rows)
        for buffer, leaf in zip(self._obs_leaves, leaves):
            if leaf is IN_PLACE:  # the worker wrote it into the buffer (shared memory)
                continue
            if isinstance(buffer, list) or isinstance(leaf, list):  # Text, or one frame per row
                for row, value in zip(rows, leaf):
                    buffer[row] = value
            else:
                buffer[index] = leaf
        return index

    def _name_rows(self, match: re.Match) -> str:
        """'slots [7, 8]' in a broker message -> 'envs 2, 3 (slots [7, 8])': the trainer's own indices."""
        slots = [int(s) for s in match.group(1).split(",") if s.strip()]
        return f"envs {_rows_text([self._row_of_slot.get(s) for s in slots])} ({match.group(0)})"

    def _row_obs(self, row: int) -> Any:
        """One env's observation, copied out of the batch buffer."""
        return deepcopy(unflatten(self.single_observation_space, [leaf[row] for leaf in self._obs_leaves]))

    def _obs_out(self):
        leaves = [tuple(x) if isinstance(x, list) else x for x in self._obs_leaves]
        obs = unflatten(self.single_observation_space, leaves)
        self._observations = obs
        return deepcopy(obs) if self.copy else obs

    def _error_from(self, head: dict, what: str) -> Exception:
        code, message = head.get("code"), str(head.get("message", ""))
        failures = head.get("failures") or []
        if code == P.E_ENV:
            details, lines = [], []
            for failure in failures:
                for err in failure.get("errors") or []:
                    row = self._row_of_slot.get(err.get("slot"))
                    details.append({**err, "row": row, "worker": failure.get("worker"), "host": failure.get("host")})
                    lines.append(
                        f"env {row} (slot {err.get('slot')}, env {err.get('env')} of worker {failure.get('worker')}, "
                        f"pid {failure.get('pid')} on host {failure.get('host')}) raised "
                        f"{err.get('type')}: {err.get('message')}\n--- remote traceback ---\n{err.get('traceback', '')}"
                    )
            type_name = details[0]["type"] if details else "Exception"
            module = details[0].get("module") if details else None
            return remote_env_error(
                str(type_name),
                f"during {what}:\n" + "\n".join(lines or [message]),
                details,
                module if isinstance(module, str) else None,
            )
        message = re.sub(r"slots \[([0-9, ]*)\]", self._name_rows, message)
        if code == P.E_TIMEOUT:
            return RlayTimeoutError(f"timed out during {what}: {message}")
        if code == P.E_WORKER_LOST:
            return WorkerLostError(f"during {what}: {message}")
        if code == P.E_NO_LEASE:
            return BrokerLostError(f"during {what}: {message}")
        return BrokerError(f"the broker refused {what}: [{code}] {message}")


MIN_ENVS_PER_WORKER = 16  # below this, a cheap env's per-message cost outweighs a core's help


class _BatchInfos:
    """gymnasium's own info batching (``VectorEnv._add_info``) over a batch of ``num_envs`` results."""

    _add_info = VectorEnv._add_info

    def __init__(self, num_envs: int):
        self.num_envs = num_envs


def default_envs_per_worker(num_envs: int) -> int:
    """One worker process per core, but at least 16 envs per worker.

    Each worker message costs ~100-200 us (docs/performance.md); a CartPole step
    ~5 us. Splitting 8 cheap envs over two workers is slower than one worker
    (measured: 353 vs 268 us per step); 64 over two is faster than one (586 vs
    657 us). Slow or blocking envs want fewer per worker: set envs_per_worker.
    """
    per_core = math.ceil(num_envs / (os.cpu_count() or 1))
    return max(1, per_core, min(num_envs, MIN_ENVS_PER_WORKER))


def _check_per_env(body: dict, keys: tuple[str, ...], count: int) -> None:
    """A reset or step reply lists one value per env under each key, and every info is a map
    (protocol 5.9); raises WireError otherwise."""
    for key in keys:
        values = body[key]
        if type(values) is not list or len(values) != count:
            raise WireError(f"{key!r} must list one value per env")
    for info in body["info"]:
        if type(info) is not dict:
            raise WireError(f"an info must be a map, got {type(info).__name__}")


def _row_index(rows: list[int]) -> slice | np.ndarray:
    """A slice for contiguous rows (views, no fancy-index copy), else an index array."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return np.asarray(rows)


def _rows_text(rows: list) -> str:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))) and len(rows) > 2:
        return f"{rows[0]}-{rows[-1]}"
    return ", ".join(str(r) for r in rows)
