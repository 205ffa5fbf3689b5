"""The command-mode worker: hosts K envs and steps them when the broker says so.

    >>> from workers.worker import Worker
    >>> import gymnasium as gym
    >>> w = Worker([lambda: gym.make("CartPole-v1")] * 4, "tcp://127.0.0.1:5556", env_id="CartPole-v1")
    >>> w.run()  # registers, then serves until the broker disconnects it  # doctest: +SKIP

Autoreset happens here, in the mode each step request names, with the exact
semantics of gymnasium's SyncVectorEnv. An exception raised by env code is
returned to the trainer with its traceback; the worker keeps serving.
"""

from __future__ import annotations

import logging
import os
import signal
import socket as pysocket
import time
import traceback
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import zmq
from gymnasium.vector.utils import concatenate, create_empty_array

from rlay import protocol as P
from rlay.spaces import encode_space, flatten, leaf_spaces, unflatten
from rlay.values import VersionError, WireError, packb
from rlay.wire import decode_body, decode_header, decode_leaves, encode_leaves, header

__all__ = ["Worker", "RegistrationError"]

log = logging.getLogger("rlay.worker")

NEXT_STEP, SAME_STEP, DISABLED = "NextStep", "SameStep", "Disabled"


class RegistrationError(RuntimeError):
    """The broker refused this worker, or never answered its registration."""


class EnvFailure(Exception):
    """Env code raised for one env index; carries what the trainer is told."""

    def __init__(self, index: int, exc: BaseException):
        super().__init__(str(exc))
        self.report = {
            "env": index,
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }


class Worker:
    """Hosts ``len(env_fns)`` envs and serves the broker's batched calls on them."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        broker: str,
        *,
        env_id: str,
        rank: int = 0,
        host: str | None = None,
        register_timeout: float = 60.0,
        parent_pid: int | None = None,
    ):
        self.env_fns = list(env_fns)
        self.broker = broker
        self.env_id = env_id
        self.rank = rank
        self.host = host or pysocket.gethostname()
        self.register_timeout = register_timeout
        self.parent_pid = parent_pid
        self.stopping = False
        self.envs: list[gym.Env] = []
        self.done: list[bool] = []  # per env: last step ended its episode (SyncVectorEnv's _autoreset_envs)

    # -- life cycle ---------------------------------------------------------------

    def run(self) -> None:
        """Build the envs, register, serve until disconnected or stopped, then close the envs."""
        self.envs = [fn() for fn in self.env_fns]
        self.done = [False] * len(self.envs)
        self.obs_space = self.envs[0].observation_space
        self.act_space = self.envs[0].action_space
        for i, env in enumerate(self.envs):
            if env.observation_space != self.obs_space or env.action_space != self.act_space:
                raise RegistrationError(
                    f"env {i} of this worker has spaces {env.observation_space}, {env.action_space}; "
                    f"env 0 has {self.obs_space}, {self.act_space}: one worker hosts envs of one kind"
                )
        self.obs_leaves = leaf_spaces(self.obs_space)
        self.act_leaves = leaf_spaces(self.act_space)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.broker)
        try:
            self._register(sock)
            self._serve(sock)
        finally:
            try:
                sock.send(header(P.DISCONNECT), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close()
            ctx.term()
            for env in self.envs:
                try:
                    env.close()
                except Exception:
                    log.exception("closing an env failed")

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _register(self, sock: zmq.Socket) -> None:
        env = self.envs[0]
        metadata = {k: v for k, v in env.metadata.items() if _is_data(v)}
        sock.send(
            header(
                P.REGISTER,
                mode=P.COMMAND_MODE,
                env_id=self.env_id,
                num_envs=len(self.envs),
                host=self.host,
                pid=os.getpid(),
                rank=self.rank,
                obs_space=encode_space(self.obs_space),
                act_space=encode_space(self.act_space),
                metadata=metadata,
                render_mode=env.render_mode,
            )
        )
        deadline = time.monotonic() + self.register_timeout
        while not self.stopping:
            if time.monotonic() > deadline:
                raise RegistrationError(
                    f"no broker answered the registration of {self.env_id!r} at {self.broker} "
                    f"within {self.register_timeout:g} s"
                )
            self._check_parent()
            if not sock.poll(P.IDLE_POLL_MS):
                continue
            frames = sock.recv_multipart()
            head = decode_header(frames[0])
            if head[P.TYPE] == P.REGISTERED:
                self.name = head.get("worker", "?")
                log.info("registered as %s with slots %s", self.name, head.get("slots"))
                return
            if head[P.TYPE] == P.ERROR:
                raise RegistrationError(f"broker refused registration: {head.get('message')}")
            log.warning("ignoring %r before registration", head[P.TYPE])

    def _check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("parent process %d is gone; stopping", self.parent_pid)
            self.stopping = True

    def _serve(self, sock: zmq.Socket) -> None:
        while not self.stopping:
            if not sock.poll(P.IDLE_POLL_MS):
                self._check_parent()
                continue
            frames = sock.recv_multipart(copy=False)
            reply = self.handle(frames)
            if reply is not None:
                sock.send_multipart(reply, copy=False)

    # -- messages -----------------------------------------------------------------

    def handle(self, frames: list[Any]) -> list[Any] | None:
        """Answer one message from the broker. Never raises on bad input."""
        req = None
        try:
            head = decode_header(frames[0])
            req = head.get(P.REQ)
            kind = head[P.TYPE]
            if kind == P.DISCONNECT:
                log.info("broker disconnected this worker: %s", head.get("reason", ""))
                self.stopping = True
                return None
            if kind == P.ERROR:
                log.error("broker reports: %s", head.get("message"))
                return None
            if kind not in P.BATCH_CALLS:
                return [header(P.ERROR, req=req, code=P.E_UNKNOWN_TYPE, message=f"unknown message type {kind!r}")]
            envs = head.get("envs")
            if (
                not isinstance(envs, list)
                or not envs
                or not all(type(i) is int and 0 <= i < len(self.envs) for i in envs)
            ):
                raise WireError(f"'envs' must be a non-empty list of env indices below {len(self.envs)}")
            if len(frames) < 2:
                raise WireError(f"a {kind} message needs a body frame")
            body = decode_body(frames[1])
            handler = {P.RESET: self.reset, P.STEP: self.step, P.CALL: self.call, P.SET_ATTR: self.set_attr}[kind]
            reply_body, arrays = handler(envs, body, frames[2:])
            return [header(P.REPLY, req=req), _pack_reply(envs, reply_body), *arrays]
        except EnvFailures as failures:
            return [
                header(
                    P.ERROR,
                    req=req,
                    code=P.E_ENV,
                    message=f"env code raised in worker {getattr(self, 'name', '?')} on host {self.host}",
                    errors=failures.reports,
                )
            ]
        except VersionError as exc:
            return [header(P.ERROR, req=req, code=P.E_VERSION, message=str(exc), supported=list(P.SUPPORTED_VERSIONS))]
        except (WireError, KeyError, TypeError, ValueError) as exc:
            log.warning("bad message from broker: %s", exc)
            return [header(P.ERROR, req=req, code=P.E_BAD_MESSAGE, message=f"worker could not read the message: {exc}")]
        except Exception as exc:  # a bug here must not stop the worker
            log.exception("unexpected error answering the broker")
            return [header(P.ERROR, req=req, code=P.E_INTERNAL, message=f"worker internal error: {type(exc).__name__}: {exc}")]

    def reset(self, envs: list[int], body: dict, frames: Sequence[Any]) -> tuple[dict, list]:
        seeds = body.get("seeds")
        if not isinstance(seeds, list) or len(seeds) != len(envs):
            raise WireError("reset needs 'seeds', one int or nil per env")
        options = body.get("options")

        def reset_one(i: int, n: int):
            result = self.envs[i].reset(seed=seeds[n], options=options)
            self.done[i] = False
            return result

        results = _each(envs, reset_one)
        obs = [r[0] for r in results]
        infos = [r[1] for r in results]
        descriptors, arrays = self._encode_obs(envs, obs)
        return {"obs": descriptors, "info": infos}, arrays

    def step(self, envs: list[int], body: dict, frames: Sequence[Any]) -> tuple[dict, list]:
        mode = body.get("autoreset")
        if mode not in (NEXT_STEP, SAME_STEP, DISABLED):
            raise WireError(f"unknown autoreset mode {mode!r}")
        leaves = decode_leaves(body.get("actions"), frames, self.act_leaves, len(envs), check_dtype=False)
        actions = [unflatten(self.act_space, [leaf[n] for leaf in leaves]) for n in range(len(envs))]

        def step_one(i: int, n: int):
            env = self.envs[i]
            final = None
            if mode == NEXT_STEP and self.done[i]:
                obs, info = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                if mode == DISABLED and self.done[i]:  # SyncVectorEnv asserts this too
                    raise AssertionError(
                        f"env {i} was stepped after its episode ended; with autoreset_mode=Disabled, "
                        "reset it first (reset(options={'reset_mask': ...}))"
                    )
                obs, reward, terminated, truncated, info = env.step(actions[n])
                if mode == SAME_STEP and (terminated or truncated):
                    final = [obs, info]
                    obs, info = env.reset()
            self.done[i] = bool(terminated or truncated)
            return obs, float(reward), bool(terminated), bool(truncated), info, final

        results = _each(envs, step_one)
        descriptors, arrays = self._encode_obs(envs, [r[0] for r in results])
        reply = {
            "obs": descriptors,
            "reward": [r[1] for r in results],
            "terminated": [r[2] for r in results],
            "truncated": [r[3] for r in results],
            "info": [r[4] for r in results],
            "final": [r[5] for r in results],
        }
        return reply, arrays

    def call(self, envs: list[int], body: dict, frames: Sequence[Any]) -> tuple[dict, list]:
        name, args, kwargs = body.get("name"), body.get("args", []), body.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise WireError("call needs 'name' (str), 'args' (list) and 'kwargs' (map)")
        if name in P.RESERVED_CALLS:
            raise WireError(f"`{name}` cannot be called with call(); use `{name}` directly")

        def call_one(i: int, n: int):
            attr = self.envs[i].get_wrapper_attr(name)
            return attr(*args, **kwargs) if callable(attr) else attr

        results = _each(envs, call_one)
        return {"results": results}, []

    def set_attr(self, envs: list[int], body: dict, frames: Sequence[Any]) -> tuple[dict, list]:
        name, values = body.get("name"), body.get("values")
        if not isinstance(name, str) or not isinstance(values, list) or len(values) != len(envs):
            raise WireError("set_attr needs 'name' (str) and 'values', one per env")
        _each(envs, lambda i, n: self.envs[i].set_wrapper_attr(name, values[n]))
        return {}, []

    # -- encoding -----------------------------------------------------------------

    def _encode_obs(self, envs: list[int], obs: list[Any]) -> tuple[list[dict], list[np.ndarray]]:
        """Batch the observations into leaves; an observation that does not fit the space is the env's error."""
        try:
            # concatenate() casts exactly as SyncVectorEnv's batching does.
            batch = concatenate(self.obs_space, obs, create_empty_array(self.obs_space, n=len(obs), fn=np.empty))
            return encode_leaves(flatten(self.obs_space, batch))
        except Exception:
            def check_one(i: int, n: int):
                single = create_empty_array(self.obs_space, n=1, fn=np.empty)
                encode_leaves(flatten(self.obs_space, concatenate(self.obs_space, [obs[n]], single)))

            _each(envs, check_one)  # raises EnvFailures naming the envs whose observation does not fit
            raise


class EnvFailures(Exception):
    def __init__(self, reports: list[dict]):
        super().__init__(f"{len(reports)} env(s) failed")
        self.reports = reports


def _pack_reply(envs: list[int], body: dict) -> bytes:
    """Pack a reply body; if some env's value cannot cross the wire, say which env and key."""
    try:
        return packb(body)
    except WireError:
        failures = []
        for key, values in body.items():
            for n, value in enumerate(values if isinstance(values, list) else []):
                try:
                    packb(value)
                except WireError as exc:
                    failures.append({"env": envs[n], "type": "TypeError", "message": f"{key}: {exc}", "traceback": ""})
        raise EnvFailures(failures or [{"env": envs[0], "type": "TypeError", "message": "reply cannot be encoded", "traceback": ""}])


def _each(envs: list[int], fn: Callable[[int, int], Any]) -> list[Any]:
    """Run ``fn(env_index, position)`` for every env; collect every failure, not just the first."""
    results, failures = [], []
    for n, i in enumerate(envs):
        try:
            results.append(fn(i, n))
        except Exception as exc:
            failures.append(EnvFailure(i, exc).report)
    if failures:
        raise EnvFailures(failures)
    return results


def _is_data(value: Any) -> bool:
    try:
        packb(value)
        return True
    except WireError:
        return False


def worker_process(
    env_fns: Any,
    broker: str,
    env_id: str,
    rank: int = 0,
    parent_pid: int | None = None,
    error_queue: Any = None,
    register_timeout: float = 60.0,
) -> None:
    """Process entry point for one worker; ``env_fns`` may be cloudpickle-wrapped.

    A failure before or while serving is put on ``error_queue`` as
    ``("ENV_ID#RANK", traceback text)`` so that the parent can say what went wrong.
    """
    fns = getattr(env_fns, "fn", env_fns)
    worker = Worker(fns, broker, env_id=env_id, rank=rank, parent_pid=parent_pid, register_timeout=register_timeout)
    worker.install_signal_handlers()
    try:
        worker.run()
    except BaseException:
        if error_queue is not None:
            error_queue.put((f"{env_id}#{rank}", traceback.format_exc()))
        raise
