"""The command-mode worker: hosts K envs and steps them when the broker says so.

    >>> from workers.worker import Worker
    >>> import gymnasium as gym
    >>> w = Worker([lambda: gym.make("CartPole-v1")] * 4, "tcp://127.0.0.1:5556", env_id="CartPole-v1")
    >>> w.run()  # registers, then serves until the broker disconnects it  # doctest: +SKIP

Autoreset happens here (workers/autoreset.py), in the mode each step request
names, with the exact semantics of gymnasium's SyncVectorEnv. An exception
raised by env code is returned to the trainer with its traceback; the worker
keeps serving.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import zmq
from gymnasium.spaces.utils import is_space_dtype_shape_equiv

from rlay import protocol as P
from rlay.shm import remove_stale
from rlay.spaces import encode_space, unflatten
from rlay.values import WireError
from rlay.wire import decode_leaves
from workers import autoreset
from workers.base import EnvFailures, RegistrationError, Request, WorkerBase, each, failure_report

__all__ = ["Worker", "RegistrationError", "SpacesDiffer", "check_spaces", "worker_process"]

log = logging.getLogger("rlay.worker")


class SpacesDiffer(RegistrationError):
    """Envs of one worker whose spaces do not batch together: ``which`` ("observation" or "action")
    space of env ``env`` (this worker's index)."""

    def __init__(self, message: str, which: str, env: int, expected: str, actual: str):
        super().__init__(message)
        self.which, self.env = which, env
        self.expected, self.actual = expected, actual  # (as text: what env 0 has, and what env ``env`` has)


def check_spaces(envs: Sequence[gym.Env], observation_mode: str = "same", observation_space: Any = None) -> gym.Space:
    """The observation space the worker registers, once its envs' spaces are found to batch as
    gymnasium's vector envs check them (AsyncVectorEnv._check_spaces): every action space equals env
    0's; under ``observation_mode="same"`` every observation space equals env 0's, otherwise (the
    trainer's "different" or custom space, ``observation_space``: the single space it declares) each
    has its shape and dtype. Raises SpacesDiffer."""
    first = envs[0]
    wanted = first.observation_space if observation_space is None else observation_space
    for i, env in enumerate(envs):
        if observation_mode == "same":
            # Exactly, as the broker compares the spaces of two workers (their wire form): gymnasium's
            # == takes Box bounds within np.allclose as equal.
            name = "observation_space"
            fits = encode_space(env.observation_space, name) == encode_space(wanted, name)
        else:
            fits = is_space_dtype_shape_equiv(env.observation_space, wanted)
        if not fits:
            raise SpacesDiffer(
                f"env {i} of this worker has the observation space {env.observation_space}, which does not "
                f"batch with {wanted} (observation_mode={observation_mode!r})",
                "observation",
                i,
                str(wanted),
                str(env.observation_space),
            )
        if env.action_space != first.action_space:
            raise SpacesDiffer(
                f"env {i} of this worker has the action space {env.action_space}; env 0 has {first.action_space}",
                "action",
                i,
                str(first.action_space),
                str(env.action_space),
            )
    return wanted


class Worker(WorkerBase):
    """Hosts ``len(env_fns)`` envs and serves the broker's batched calls on them."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        broker: str,
        *,
        env_id: str,
        threads: int | None = None,
        observation_mode: str = "same",
        observation_space: gym.Space | None = None,
        **kwargs: Any,
    ):
        """``threads`` > 1 steps the envs of one request concurrently, in that many chunks: for envs
        that block (sleep, I/O, a game waiting on its frame) and release the GIL. None (auto) decides
        by timing the envs' first steps (StepTiming). ``observation_mode`` and ``observation_space``:
        see check_spaces."""
        self.envs = [fn() for fn in env_fns]
        self.pool: ChunkRunner | None = None
        self.threads = 1
        self.timing = StepTiming() if threads is None and len(self.envs) > 1 else None
        if threads is not None and threads > 1:
            self._use_threads(threads)
        first = self.envs[0]
        super().__init__(
            broker,
            env_id=env_id,
            observation_space=check_spaces(self.envs, observation_mode, observation_space),
            action_space=first.action_space,
            num_envs=len(self.envs),
            metadata=first.metadata,
            render_mode=first.render_mode,
            **kwargs,
        )
        self.done = [False] * len(self.envs)  # per env: its last step ended the episode

    def run(self) -> None:
        """Register, serve until disconnected or stopped, then close the envs."""
        try:
            self.connect()
            self.serve()
        finally:
            self.disconnect()
            if self.pool is not None:
                self.pool.close()
            for env in self.envs:
                try:
                    env.close()
                except Exception:
                    traceback.print_exc()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def serve(self) -> None:
        timed = None  # the socket whose receives time out (a new one after registering again)
        while not self.stopping:
            lost = self.broker_lost()
            if lost:
                self.register_again(lost)
            if self.sock is not timed:  # one blocking receive per message, not a poll and a receive
                self.sock.setsockopt(zmq.RCVTIMEO, P.IDLE_POLL_MS)
                timed = self.sock
            try:
                frames = self.sock.recv_multipart(copy=False)
            except zmq.Again:
                self.check_parent()
                continue
            self.heartbeat.received()
            reply = self.handle(frames)
            if reply is not None:
                self.send_to_broker(reply)

    def handle(self, frames: list[Any]) -> list[Any] | None:
        """Answer one message from the broker. Never raises."""
        request = self.read(frames)
        if not isinstance(request, Request):
            return request
        try:
            handler = {P.RESET: self.reset, P.STEP: self.step, P.CALL: self.call, P.SET_ATTR: self.set_attr}
            return handler[request.kind](request)
        except EnvFailures as failures:
            return self.env_error(request.req, failures.reports)
        except (WireError, KeyError, TypeError, ValueError) as exc:
            return self.bad_message(request.req, exc)
        except Exception as exc:  # a bug here must not stop the worker
            return self.internal_error(request.req, exc)

    def reset(self, request: Request) -> list[Any]:
        seeds, options = request.body.get("seeds"), request.body.get("options")
        if not autoreset.valid_seeds(seeds, len(request.envs)):
            raise WireError("reset needs 'seeds', one int or nil per env")

        def reset_range(positions: range) -> tuple[list, ...]:
            obs, infos, failures = [], [], []
            for n in positions:
                i = request.envs[n]
                try:
                    o, info = self.envs[i].reset(seed=seeds[n], options=options)
                except Exception as exc:
                    failures.append(failure_report(i, exc))
                    continue
                self.done[i] = False
                obs.append(o)
                infos.append(autoreset.snapshot(info))
            return obs, infos, failures

        obs, infos, failures = self._in_chunks(len(request.envs), reset_range)
        if failures:
            raise EnvFailures(failures)
        return self.reply(request, obs, {"info": infos})

    def step(self, request: Request) -> list[Any]:
        mode = request.body.get("autoreset")
        if mode not in autoreset.MODES:
            raise WireError(f"unknown autoreset mode {mode!r}")
        envs = request.envs
        leaves = decode_leaves(
            request.body.get("actions"), request.frames, self.act_leaves, len(envs), check_dtype=False
        )
        if self.act_leaves[0] is self.act_space:  # one leaf: its rows are the actions
            actions = leaves[0]
        else:
            actions = [unflatten(self.act_space, [leaf[n] for leaf in leaves]) for n in range(len(envs))]

        def step_range(positions: range) -> tuple[list, ...]:
            # The hot loop: as little per env as SyncVectorEnv's own.
            obs, rewards, terminations, truncations, infos, finals, failures = [], [], [], [], [], [], []
            step_env, done, env_objects = autoreset.step_env, self.done, self.envs
            for n in positions:
                i = envs[n]
                try:
                    o, reward, terminated, truncated, info, final = step_env(
                        env_objects[i], mode, done[i], actions[n], i
                    )
                except Exception as exc:
                    failures.append(failure_report(i, exc))
                    continue
                done[i] = terminated or truncated
                obs.append(o)
                rewards.append(reward)
                terminations.append(terminated)
                truncations.append(truncated)
                infos.append(info)
                finals.append(final)
            return obs, rewards, terminations, truncations, infos, finals, failures

        if self.timing is None:
            obs, rewards, terminations, truncations, infos, finals, failures = self._in_chunks(len(envs), step_range)
        else:  # (still in turn: deciding whether the envs wait more than they compute)
            with self.timing:
                obs, rewards, terminations, truncations, infos, finals, failures = step_range(range(len(envs)))
            if self.timing.decided:
                if self.timing.waits:
                    log.info(
                        "worker %s: its envs wait %.0f%% of their step time: stepping them on %d threads",
                        self.name,
                        100 * self.timing.waiting_share,
                        len(self.envs),
                    )
                    self._use_threads(len(self.envs))
                self.timing = None
        if failures:
            raise EnvFailures(failures)
        return self.reply(
            request,
            obs,
            {"reward": rewards, "terminated": terminations, "truncated": truncations, "info": infos, "final": finals},
        )

    def _use_threads(self, threads: int) -> None:
        self.threads = threads
        self.pool = ChunkRunner(threads)

    def _in_chunks(self, count: int, run: Callable[[range], tuple[list, ...]]) -> tuple[list, ...]:
        """``run(range(count))``, or with threads: contiguous chunks concurrently, joined in order."""
        if self.pool is None or count < 2:
            return run(range(count))
        size = -(-count // self.threads)
        parts = self.pool.map(run, [range(start, min(start + size, count)) for start in range(0, count, size)])
        return tuple([item for part in parts for item in part[k]] for k in range(len(parts[0])))

    def call(self, request: Request) -> list[Any]:
        body = request.body
        name, args, kwargs = body.get("name"), body.get("args", []), body.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise WireError("call needs 'name' (str), 'args' (list) and 'kwargs' (map)")
        if name in P.RESERVED_CALLS:
            raise WireError(f"`{name}` cannot be called with call(); use `{name}` directly")

        def call_one(i: int, n: int):
            attr = self.envs[i].get_wrapper_attr(name)
            return attr(*args, **kwargs) if callable(attr) else attr

        return self.plain_reply(request, {"results": each(request.envs, call_one)})

    def set_attr(self, request: Request) -> list[Any]:
        name, values = request.body.get("name"), request.body.get("values")
        if not isinstance(name, str) or not isinstance(values, list) or len(values) != len(request.envs):
            raise WireError("set_attr needs 'name' (str) and 'values', one per env")
        each(request.envs, lambda i, n: self.envs[i].set_wrapper_attr(name, values[n]))
        return self.plain_reply(request, {})


class StepTiming:
    """Whether a worker's envs wait more than they compute, from their first PROBE step requests:
    their steps, in turn, take more than WAITING times the CPU time the stepping thread used
    (time.sleep, I/O, a game waiting on its frame release the CPU, and the GIL). Such envs are
    then stepped one thread each; envs that compute (CartPole, MuJoCo) stay in turn, where threads
    would only contend for the GIL."""

    PROBE = 16  # step requests timed before deciding
    WAITING = 2.0  # wall time over CPU time above which the envs count as waiting

    def __init__(self) -> None:
        self.requests = 0
        self.wall = self.cpu = 0.0
        self._start = (0.0, 0.0)

    def __enter__(self) -> None:
        self._start = (time.perf_counter(), time.thread_time())

    def __exit__(self, *exc: Any) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.thread_time() - self._start[1]
        self.requests += 1

    @property
    def decided(self) -> bool:
        return self.requests >= self.PROBE

    @property
    def waits(self) -> bool:
        return self.wall > self.WAITING * self.cpu

    @property
    def waiting_share(self) -> float:
        return 1.0 - self.cpu / self.wall if self.wall > 0 else 0.0


class ChunkRunner:
    """Runs the chunks of one request concurrently: the calling thread runs the first chunk,
    each other chunk runs on a thread of its own.

    Waking threads is what a round of blocking envs costs on a small machine
    (docs/performance.md), so each side is woken once: the idle threads wait in a read
    on one pipe, and a single write of n bytes releases n of them (the kernel wakes them,
    the caller does not switch to each in turn, as it does with a queue per thread); the
    chunks count down under a lock and only the last one wakes the caller.
    """

    def __init__(self, threads: int):
        self._gate_r, self._gate_w = os.pipe()  # one byte per chunk to start
        self._lock = threading.Lock()
        self._all_done = threading.Lock()  # held while a request's chunks run
        self._all_done.acquire()
        self._fn: Callable | None = None  # None: the threads return
        self._args: list = []
        self._next = 1  # the chunk the next woken thread takes
        self._left = 0
        self._results: list = []  # per chunk: (value, exception)
        self.threads = [
            threading.Thread(target=self._serve, name=f"rlay-env-{k}", daemon=True) for k in range(1, threads)
        ]
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        while True:
            os.read(self._gate_r, 1)
            if self._fn is None:
                return
            with self._lock:
                index, self._next = self._next, self._next + 1
            self._run(index)
            if self._count_down():
                self._all_done.release()

    def _run(self, index: int) -> None:
        try:
            self._results[index] = (self._fn(self._args[index]), None)
        except BaseException as exc:  # handed back to the caller
            self._results[index] = (None, exc)

    def _count_down(self) -> bool:
        """One chunk is done; True for the last one of the request."""
        with self._lock:
            self._left -= 1
            return self._left == 0

    def map(self, fn: Callable, args: list) -> list:
        """``[fn(a) for a in args]``, one arg per chunk (at most ``threads`` args)."""
        if len(args) > len(self.threads) + 1:
            raise ValueError(f"{len(args)} chunks for {len(self.threads) + 1} threads")
        self._fn, self._args = fn, args
        self._results = [None] * len(args)
        self._left, self._next = len(args), 1
        if len(args) > 1:
            os.write(self._gate_w, bytes(len(args) - 1))
        self._run(0)
        if not self._count_down():
            self._all_done.acquire()  # the last chunk's thread releases it
        self._fn, self._args = None, []
        for _, exc in self._results:
            if exc is not None:
                raise exc
        return [value for value, _ in self._results]

    def close(self) -> None:
        self._fn = None
        os.write(self._gate_w, bytes(len(self.threads)))
        for thread in self.threads:
            thread.join(5)
        if not any(thread.is_alive() for thread in self.threads):  # (one stuck in an env may still read)
            os.close(self._gate_r)
            os.close(self._gate_w)


def worker_process(
    env_fns: Any,
    broker: str,
    env_id: str,
    rank: int = 0,
    parent_pid: int | None = None,
    error_queue: Any = None,
    register_timeout: float = 60.0,
    threads: int | None = None,
    curve: Any = None,
    parent_tmpdir: str | None = None,
    observation_mode: str = "same",
    observation_space: gym.Space | None = None,
    parent_raises: bool = False,
) -> None:
    """Process entry point for one worker; ``env_fns`` may be cloudpickle-wrapped.

    A failure before or while serving is put on ``error_queue`` as ``("ENV_ID#RANK", traceback
    text, details)`` so that the parent can say what went wrong: details are ``{"which", "env",
    "expected", "actual"}`` for envs whose spaces differ (SpacesDiffer), the ``obs_space`` and
    ``act_space`` it registered (encoded) when the broker refused it, ``{"type", "module",
    "message"}`` of the exception that making its envs raised, else empty. ``parent_tmpdir`` (embedded: the directory of
    the ipc sockets) is removed by the worker if it stops because its parent died, which could not
    remove it. ``parent_raises`` (embedded): the parent raises the error of envs that cannot be made or
    whose spaces differ, so the worker exits without printing it a second time.
    """
    fns = getattr(env_fns, "fn", env_fns)
    worker = None
    try:
        worker = Worker(
            fns,
            broker,
            env_id=env_id,
            rank=rank,
            parent_pid=parent_pid,
            register_timeout=register_timeout,
            threads=threads,
            curve=curve,
            observation_mode=observation_mode,
            observation_space=observation_space,
        )
        worker.install_signal_handlers()
        worker.run()
        if parent_tmpdir is not None and parent_pid is not None and os.getppid() != parent_pid:
            shutil.rmtree(parent_tmpdir, ignore_errors=True)  # (its sibling workers may race to it)
            remove_stale(parent_pid)  # and its shared memory
    except BaseException as exc:
        if error_queue is not None:
            details: dict[str, Any] = {}
            if isinstance(exc, SpacesDiffer):
                details = {"which": exc.which, "env": exc.env, "expected": exc.expected, "actual": exc.actual}
            elif isinstance(exc, RegistrationError) and worker is not None:
                details = {"obs_space": encode_space(worker.obs_space), "act_space": encode_space(worker.act_space)}
            elif worker is None and isinstance(exc, Exception):  # making its envs failed
                details = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
            error_queue.put((f"{env_id}#{rank}", traceback.format_exc(), details))
            if parent_raises and ("which" in details or "type" in details):  # (the parent raises it, once)
                raise SystemExit(1) from None
        raise
