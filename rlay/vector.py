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

import functools
import logging
import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import Env, Space, logger
from gymnasium.vector.async_vector_env import AsyncState
from gymnasium.vector.utils import batch_differing_spaces, batch_space
from gymnasium.vector.vector_env import AutoresetMode, VectorEnv

from rlay import protocol as P
from rlay.client import BrokerClient, InlineBrokerClient
from rlay.cluster import EMBEDDED_ENV_ID, Cluster, Supervision
from rlay.errors import (
    AlreadyPendingCallError,
    ClosedEnvironmentError,
    NoAsyncCallError,
    RemoteEnvError,
    log_env_error,
)
from rlay.spaces import decode_space, flatten
from rlay.trainer.first_ready import FirstReady
from rlay.trainer.gather import Gather, Parts
from rlay.trainer.lease import Lease, WorkerRows, request_lease, row_index, rows_text
from rlay.trainer.obs_buffer import RESET_KEYS, STEP_KEYS, ObsBuffer
from rlay.trainer.replace import WORKER_LOST_KEY, Replacer
from rlay.trainer.transport import Call, Settings, Transport
from rlay.values import packb
from rlay.wire import encode_leaves

__all__ = ["RlayVectorEnv", "RESET_KEYS", "STEP_KEYS", "DEFAULT_TIMEOUT", "default_envs_per_worker"]

log = logging.getLogger("rlay.vector")

DEFAULT_TIMEOUT = 60.0  # s for any call when none is given
RELEASE_TIMEOUT = 2.0
ON_WORKER_FAILURE = ("raise", "replace")


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


def _declared_spaces(observation_mode: Any, env_fns: Sequence[Callable[[], Env]]) -> tuple[str, Any]:
    """The workers' observation mode and, unless "same", the (observation_space,
    single_observation_space) the trainer declares, as AsyncVectorEnv takes ``observation_mode``."""
    if isinstance(observation_mode, tuple) and len(observation_mode) == 2:
        if not isinstance(observation_mode[0], Space) or not isinstance(observation_mode[1], Space):
            raise TypeError(
                "Expected both elements of observation_mode to be Spaces, "
                f"got {type(observation_mode[0])} and {type(observation_mode[1])}"
            )
        return "custom", observation_mode  # (in this order, as AsyncVectorEnv assigns them)
    if isinstance(observation_mode, str) and observation_mode == "same":
        return "same", None
    if isinstance(observation_mode, str) and observation_mode == "different":
        # As AsyncVectorEnv: each env is made here, once, for its space (its workers make their own).
        env_spaces = []
        for env_fn in env_fns:
            env = env_fn()
            env_spaces.append(env.observation_space)
            env.close()
        return "different", (batch_differing_spaces(env_spaces), env_spaces[0])
    raise ValueError(
        "Invalid `observation_mode`, expected: 'same' or 'different' or tuple of single and batch "
        f"observation space, actual got {observation_mode}"
    )


def _reset_rows(options: dict[str, Any] | None, num_envs: int) -> np.ndarray:
    """The rows a reset resets: all, or those of ``options["reset_mask"]`` (which it pops), checked as
    gymnasium checks it."""
    if options is None or "reset_mask" not in options:
        return np.arange(num_envs)
    reset_mask = options.pop("reset_mask")
    if not isinstance(reset_mask, np.ndarray):
        raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(reset_mask)}")
    if reset_mask.shape != (num_envs,):
        raise ValueError(f"`options['reset_mask']` must have shape `({num_envs},)`, got {reset_mask.shape}")
    if reset_mask.dtype != np.bool_:
        raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {reset_mask.dtype}")
    if not np.any(reset_mask):
        raise ValueError(
            "`options['reset_mask']` must contain a boolean array with at least one True value, "
            f"got reset_mask={reset_mask}"
        )
    return np.flatnonzero(reset_mask)


def _logs_env_errors(method: Callable) -> Callable:
    """Env errors that ``method`` raises are logged first, as AsyncVectorEnv logs them."""

    @functools.wraps(method)
    def logged(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RemoteEnvError as exc:
            log_env_error(exc)
            raise

    return logged


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
            local worker), reset them, and report each running episode as a
            truncation: ``truncated=True``, ``infos["worker_lost"]=True``, and
            the new episode's first observation where the autoreset mode places
            it. An episode that had already ended is not reported again: under
            NextStep its autoreset step comes from the new env's reset, marked
            ``worker_lost`` (docs/architecture.md, "Worker failures").
        replace_timeout: seconds a replacement may wait for a free slot [default: timeout].
        shared_memory: keep the batch buffer of large observations (Box leaves
            of 8 KiB or more per env) in shared memory, which the workers on
            this host write straight into (default True, as AsyncVectorEnv).
            Workers elsewhere send them as frames. With ``copy=False`` the
            returned arrays are that buffer: the next step overwrites them.
        worker: AsyncVectorEnv's custom worker loop; rlay runs its own, so it raises.
        observation_mode: as AsyncVectorEnv's: ``"same"`` (every env has the same observation space),
            ``"different"`` (their bounds may differ, not their shapes and dtypes; each env is made once
            in this process to read its space, as AsyncVectorEnv does, and closed), or a tuple
            ``(observation_space, single_observation_space)``. Remote envs are always "same": the
            workers of one env id register one space.
    """

    env_fns: Sequence[Callable[[], Env]] | None  # None for remote envs
    env_id: str
    num_envs: int
    broker_address: str
    copy: bool
    shared_memory: bool
    closed: bool

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
        observation_mode: str | tuple[Space, Space] = "same",
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
        mode, self._declared = _declared_spaces(observation_mode, env_fns)
        # Under "replace" a local worker killed by a signal is restarted, and its envs move to it.
        supervision = Supervision() if self.on_worker_failure == "replace" else None
        self._cluster = Cluster.embedded(
            env_fns,
            envs_per_worker,
            env_threads,
            observation_mode=mode,
            observation_space=self._declared[1] if self._declared else None,
            context=context,
            daemon=daemon,
            supervision=supervision,
        )
        client = InlineBrokerClient(self._cluster.inline_broker, health_check=self._cluster.check)
        self._finalizer = weakref.finalize(self, _stop_embedded, client, self._cluster)
        try:
            self._connect(client, EMBEDDED_ENV_ID, len(env_fns), lease_timeout)
        except BaseException:
            self._finalizer()  # (the broker and workers are gone: nothing is left to release)
            self._client, self.closed = None, True
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
        (waiting up to ``replace_timeout``) and reports every env's loss (a truncation of
        each running episode). ``shared_memory`` is as for the constructor: workers on this
        host write large observations into the trainer's memory, the others send them as
        frames. So are ``timeout`` (each call's, enforced by the broker), ``lease_timeout``
        (here: how long to wait for ``num_envs`` free slots of ``env_id``), ``autoreset_mode``
        and ``copy``."""
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
        if on_worker_failure not in ON_WORKER_FAILURE:
            raise ValueError(f"on_worker_failure must be one of {ON_WORKER_FAILURE}, got {on_worker_failure!r}")
        self._settings = Settings(
            timeout=float(timeout),
            replace_timeout=float(timeout if replace_timeout is None else replace_timeout),
            autoreset_mode=autoreset_mode
            if isinstance(autoreset_mode, AutoresetMode)
            else AutoresetMode(autoreset_mode),
            replace=on_worker_failure == "replace",
        )
        self.copy = copy
        self.observation_mode = observation_mode
        self._state = AsyncState.DEFAULT
        self._pending: Call | None = None  # the synchronous API's call in flight
        # (set before anything can fail: close() needs them)
        self._client: BrokerClient | None = None
        self._declared: tuple[Space, Space] | None = None  # (observation_space, single) when not "same"
        self._cluster: Cluster | None = None
        self._finalizer: weakref.finalize | None = None
        self._buffer: ObsBuffer | None = None
        self._first_ready: FirstReady | None = None
        self._replacer: Replacer | None = None
        self.closed = False

    def _connect(self, client: BrokerClient, env_id: str, num_envs: int, lease_timeout: float) -> None:
        if type(num_envs) is not int or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        lease_timeout = self.timeout if lease_timeout is None else float(lease_timeout)
        self.broker_address = client.address
        self.env_id = env_id
        self.num_envs = num_envs
        self._client = client
        lease = request_lease(client, env_id, num_envs, lease_timeout)
        client.leased(lease)
        self._lease = Lease(env_id, lease["slots"], (lease["obs_space"], lease["act_space"]))

        self.single_observation_space = decode_space(lease["obs_space"])
        self.single_action_space = decode_space(lease["act_space"])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        if self._declared is not None:  # observation_mode "different" or custom: as the trainer declared them
            self.observation_space, self.single_observation_space = self._declared
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(lease.get("metadata") or {})
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = lease.get("render_mode")
        self._buffer = ObsBuffer(self.single_observation_space, num_envs, self.shared_memory)
        self._transport = Transport(client, self._lease, self._buffer, self._settings)
        self._replacer = Replacer(self._transport)
        self._gather = Gather(self._transport, self._replacer)
        self._first_ready = FirstReady(self._transport, self._replacer, self.single_action_space)

    # (the settings the collaborators read at each call: rlay/trainer/transport.py, Settings)

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._settings.timeout = float(value)

    @property
    def replace_timeout(self) -> float:
        return self._settings.replace_timeout

    @replace_timeout.setter
    def replace_timeout(self, value: float) -> None:
        self._settings.replace_timeout = float(value)

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self._settings.autoreset_mode

    @autoreset_mode.setter
    def autoreset_mode(self, value: str | AutoresetMode) -> None:
        self._settings.autoreset_mode = AutoresetMode(value)

    @property
    def on_worker_failure(self) -> str:
        return "replace" if self._settings.replace else "raise"

    @on_worker_failure.setter
    def on_worker_failure(self, value: str) -> None:
        if value not in ON_WORKER_FAILURE:
            raise ValueError(f"on_worker_failure must be one of {ON_WORKER_FAILURE}, got {value!r}")
        self._settings.replace = value == "replace"

    @property
    def slots(self) -> list[int]:
        """The broker's slot id of each env, by index."""
        return self._lease.slots

    @property
    def envs_replaced(self) -> int:
        """Envs replaced after their worker was lost, over this vector env's life."""
        return 0 if self._replacer is None else self._replacer.envs_replaced

    @property
    def loss_truncations(self) -> int:
        """Truncations reported (``infos["worker_lost"]``) because an env's worker was lost, over this
        vector env's life: one per episode a loss ended, none for an episode that had ended already."""
        return 0 if self._replacer is None else self._replacer.loss_truncations

    @property
    def re_leases(self) -> int:
        """Times every env was leased anew from a broker that no longer knew this trainer (it restarted)."""
        return 0 if self._replacer is None else self._replacer.re_leases

    # -- gymnasium API ------------------------------------------------------------

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        self._assert_is_running()
        seeds = _seed_list(seed, self.num_envs)
        self._assert_idle("reset_async")
        rows = _reset_rows(options, self.num_envs)
        self._replacer.finish_interrupted()
        self._pending = self._transport.send(
            P.RESET, rows, lambda g, r: ({"seeds": [seeds[i] for i in r], "options": options}, [])
        )
        self._state = AsyncState.WAITING_RESET

    @_logs_env_errors
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
            if self._replacer.new_episode(row) or row in replaced:  # (a loss not yet reported says so here)
                info = {**info, WORKER_LOST_KEY: True}
            if info:
                infos = self._add_info(infos, info, row)
        return self._buffer.out(self.copy), infos

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

        def body(group: WorkerRows, rows: list[int]):
            index = group.index if len(rows) == len(group.rows) else row_index(rows)
            descriptors, frames = encode_leaves(leaves, index)
            return {"autoreset": mode, "actions": descriptors}, frames

        self._replacer.finish_interrupted()
        rows = np.arange(self.num_envs)
        owed = self._replacer.owed_rows()
        if owed:  # replaced envs: their results are made in step_wait
            self._replacer.check_steppable(owed)
            rows = np.asarray([r for r in rows if not self._replacer.owes(r)])
        self._pending = self._transport.send(P.STEP, rows, body)
        self._state = AsyncState.WAITING_STEP

    @_logs_env_errors
    def step_wait(self, timeout: float | None = None):
        self._assert_is_running()
        if self._state != AsyncState.WAITING_STEP:
            raise NoAsyncCallError(
                "Calling `step_wait` without any prior call to `step_async`.", AsyncState.WAITING_STEP.value
            )
        columns, _ = self._collect(timeout, STEP_KEYS)
        for row in self._replacer.owed_rows():
            if columns["reward"][row] is not None:
                continue  # it stepped before a new lease replaced every env: its loss is reported next step
            result = self._replacer.result(row)
            self._replacer.loss_truncations += result.loss
            columns["reward"][row], columns["terminated"][row] = result.reward, result.terminated
            columns["truncated"][row], columns["info"][row], columns["final"][row] = (
                result.truncated,
                result.info,
                result.final,
            )
        rewards = np.array(columns["reward"], dtype=np.float64)
        terminations = np.array(columns["terminated"], dtype=np.bool_)
        truncations = np.array(columns["truncated"], dtype=np.bool_)
        np.logical_or(terminations, truncations, out=self._replacer.done)  # (what a later loss reports)
        infos: dict[str, Any] = {}
        for row, (info, final) in enumerate(zip(columns["info"], columns["final"])):
            if final is not None:  # SameStep: batched first, as SyncVectorEnv does
                final_obs, final_info = final
                infos = self._add_info(infos, {"final_obs": final_obs, "final_info": final_info}, row)
            if info:
                infos = self._add_info(infos, info, row)
        return self._buffer.out(self.copy), rewards, terminations, truncations, infos

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self.call_async(name, *args, **kwargs)
        return self.call_wait()

    def call_async(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        self._assert_is_running()
        self._assert_idle("call_async")
        if name in P.RESERVED_CALLS:
            raise ValueError(f"Trying to call function `{name}` with `call`, use `{name}` directly instead.")
        packb([list(args), kwargs])  # refuse non-data arguments here, with a clear error
        self._replacer.finish_interrupted()
        self._pending = self._transport.send(
            P.CALL, np.arange(self.num_envs), lambda g, r: ({"name": name, "args": list(args), "kwargs": kwargs}, [])
        )
        self._state = AsyncState.WAITING_CALL

    @_logs_env_errors
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

    @_logs_env_errors
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
        self._replacer.finish_interrupted()
        self._pending = self._transport.send(
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
                # (embedded, the private broker may have been stopped at exit already: nothing to release)
                if self._finalizer is None or self._finalizer.alive:
                    try:
                        self._client.request(P.RELEASE, RELEASE_TIMEOUT, "the release of this trainer's slots")
                    except Exception:
                        pass  # the broker may be gone already: nothing left to release
                self._client.close()
                self._client = None
        finally:
            if self._finalizer is not None:
                self._finalizer()
            if self._buffer is not None:
                self._buffer.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and hasattr(self, "_state"):
            self.close(terminate=True)

    def __repr__(self) -> str:
        where = "embedded" if getattr(self, "_cluster", None) is not None else getattr(self, "broker_address", "?")
        return (
            f"RlayVectorEnv({getattr(self, 'env_id', '?')}, num_envs={getattr(self, 'num_envs', '?')}, broker={where})"
        )

    # -- first-ready stepping (envpool style): rlay/trainer/first_ready.py ---------------

    def async_reset(self, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Reset every env; the results arrive through :meth:`recv` (reward 0), worker by worker."""
        self._assert_is_running()
        self._assert_idle("async_reset")
        self._first_ready.async_reset(_seed_list(seed, self.num_envs), options)

    def send(self, actions: Any, env_ids: Any) -> None:
        """Step the envs ``env_ids`` with ``actions`` (a batch with one row per id, in that order).

        Returns at once; :meth:`recv` returns results as the envs finish, fastest
        first, so the trainer never waits for the slowest env. Autoreset follows
        ``autoreset_mode`` exactly as for :meth:`step`.
        """
        self._assert_is_running()
        self._assert_idle("send")
        self._first_ready.send(actions, env_ids)

    @_logs_env_errors
    def recv(self, batch_size: int | None = None, timeout: float | None = None):
        """The results of the first ``batch_size`` envs to finish since :meth:`send` / :meth:`async_reset`.

        Returns ``(obs, rewards, terminations, truncations, infos)`` batched over
        those envs in the order they finished; ``infos["env_id"]`` says which.
        ``batch_size`` defaults to every env in flight. ``timeout`` bounds the whole wait
        [default: the constructor's ``timeout`` + 5 s].
        """
        self._assert_is_running()
        return self._first_ready.recv(batch_size, timeout)

    # -- the synchronous API's calls ------------------------------------------------

    def _assert_is_running(self) -> None:
        if self.closed:
            raise ClosedEnvironmentError(f"Trying to operate on `{type(self).__name__}`, after a call to `close()`.")

    def _assert_idle(self, method: str) -> None:
        if self._state != AsyncState.DEFAULT:
            raise AlreadyPendingCallError(
                f"Calling `{method}` while waiting for a pending call to `{self._state.value}` to complete.",
                str(self._state.value),
            )
        if method not in ("send", "async_reset") and self._first_ready.busy:
            raise AlreadyPendingCallError(
                f"Calling `{method}` while envs {rows_text(sorted(self._first_ready.unreceived))} are stepping "
                "after send() or have results not yet received; recv() them first",
                "send",
            )

    def _wait(self, timeout: float | None) -> tuple[Parts, set[int]]:
        """Wait for the pending call: see Gather.finish."""
        call = self._pending
        self._state, self._pending = AsyncState.DEFAULT, None
        return self._gather.finish(call, timeout)

    def _collect(self, timeout: float | None, keys: tuple[str, ...]) -> tuple[dict[str, list], set[int]]:
        """Wait for the pending reset or step: see Gather.collect."""
        call = self._pending
        self._state, self._pending = AsyncState.DEFAULT, None
        return self._gather.collect(call, timeout, keys)


MIN_ENVS_PER_WORKER = 16  # below this, a cheap env's per-message cost outweighs a core's help


def default_envs_per_worker(num_envs: int) -> int:
    """One worker process per core, but at least 16 envs per worker.

    Each worker message costs ~100-200 us (docs/performance.md); a CartPole step
    ~5 us. Splitting 8 cheap envs over two workers is slower than one worker
    (measured: 353 vs 268 us per step); 64 over two is faster than one (586 vs
    657 us). Slow or blocking envs want fewer per worker: set envs_per_worker.
    """
    per_core = math.ceil(num_envs / (os.cpu_count() or 1))
    return max(1, per_core, min(num_envs, MIN_ENVS_PER_WORKER))
