"""What every worker does on the wire, whoever drives the env: command workers and push games alike.

Connect a DEALER to the broker's back end, register K env slots with their
spaces, read the broker's batched requests, and answer each with one reply:
per-env results batched into observation leaves (raw frames) and a body.
"""

from __future__ import annotations

import logging
import os
import socket as pysocket
import time
import traceback
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import zmq
from gymnasium.vector.utils import concatenate, create_empty_array

from rlay import protocol as P
from rlay.heartbeat import Heartbeat, new_identity
from rlay.shm import SegmentCache
from rlay.spaces import encode_space, flatten, leaf_spaces, split
from rlay.values import VersionError, WireError, packb
from rlay.wire import (
    announced_limit,
    check_rows,
    decode_body,
    decode_header,
    encode_leaves,
    encode_rows,
    header,
    is_large,
    oversized,
    send_frames,
)

__all__ = ["WorkerBase", "Request", "RegistrationError", "EnvFailures", "failure_report"]

log = logging.getLogger("rlay.worker")

MIN_RETRY_AFTER = 0.01  # s: a broker's retry_after of 0 must not make a worker send `register` in a busy loop


class RegistrationError(RuntimeError):
    """The broker refused this worker, or never answered its registration."""


class EnvFailures(Exception):
    """Env code failed for some envs of a request; carries what the trainer is told."""

    def __init__(self, reports: list[dict]):
        super().__init__(f"{len(reports)} env(s) failed")
        self.reports = reports


def failure_report(index: int, exc: BaseException) -> dict:
    """What the trainer learns of an exception raised for env ``index`` (call inside ``except``)."""
    return {
        "env": index,
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": traceback.format_exc(),
    }


class Request:
    """One batched call from the broker: its kind, request id, env indices, body and array frames."""

    def __init__(self, kind: str, req: Any, envs: list[int], body: dict, frames: list[Any]):
        self.kind, self.req, self.envs, self.body, self.frames = kind, req, envs, body, frames


class WorkerBase:
    """Registration, request parsing and reply encoding shared by every worker kind."""

    mode = P.COMMAND_MODE

    def __init__(
        self,
        broker: str,
        *,
        env_id: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_envs: int,
        rank: int = 0,
        host: str | None = None,
        metadata: dict | None = None,
        render_mode: str | None = None,
        register_timeout: float = 60.0,
        parent_pid: int | None = None,
        curve: Any = None,
    ):
        self.broker = broker
        self.curve = curve  # rlay.security.Curve, or None for plain sockets
        self.identity = new_identity()
        self.heartbeat: Heartbeat | None = None
        self.env_id = env_id
        self.obs_space = observation_space
        self.act_space = action_space
        # At once: a space that cannot cross the wire (a subclass, a custom Space) stops the worker here.
        self.space_maps = (
            encode_space(observation_space, "observation_space"),
            encode_space(action_space, "action_space"),
        )
        self.num_envs = num_envs
        self.rank = rank
        self.host = host or pysocket.gethostname()
        self.metadata = _plain_metadata(metadata or {})
        self.render_mode = render_mode
        self.register_timeout = register_timeout
        self.parent_pid = parent_pid
        self.obs_leaves = leaf_spaces(observation_space)
        self.segments = SegmentCache()  # the trainers' shared memory this worker writes observations into
        self.act_leaves = leaf_spaces(action_space)
        self.name = "?"
        self.max_frame: int | None = None  # the broker's max_message_size, from `registered`
        self._refusal = ""  # the broker's last refusal to retry after (its rate limit), for the timeout's error
        self.stopping = False
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None

    # -- connection ---------------------------------------------------------------

    def connect(self) -> None:
        """Connect and register; returns once the broker accepted this worker's slots."""
        self.ctx = self.ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDTIMEO, int(P.SEND_TIMEOUT * 1000))
        self.sock.setsockopt(zmq.ROUTING_ID, self.identity)
        if self.curve is not None:
            self.curve.secure_client(self.sock)
        self.sock.connect(self.broker)
        # Ping from before registering (the broker expires a worker that does not ping, and expects
        # the first ping within its expiry of the registration).
        if self.heartbeat is None:
            # (at the default interval until `registered` says the broker's: Heartbeat.adopt)
            self.heartbeat = Heartbeat(self.broker, self.identity, context=self.ctx, curve=self.curve)
        registration = header(
            P.REGISTER,
            mode=self.mode,
            env_id=self.env_id,
            num_envs=self.num_envs,
            host=self.host,
            pid=os.getpid(),
            rank=self.rank,
            obs_space=self.space_maps[0],
            act_space=self.space_maps[1],
            metadata=self.metadata,
            render_mode=self.render_mode,
            **launched_as(),
        )
        try:
            self._await_registration(registration)
        except BaseException:
            self.disconnect()
            raise
        if self.heartbeat is not None:
            self.heartbeat.reset()
        self.registered_at = time.monotonic()

    def broker_lost(self) -> str | None:
        """Why this worker must register again (the broker went silent, or forgot it), or None."""
        hb = self.heartbeat
        if hb is None:
            return None
        if hb.lost:
            return f"the broker has not answered heartbeats for {hb.silence:.1f} s"
        if hb.forgotten_since(self.registered_at):
            return "the broker no longer knows this worker (it restarted, or counted it lost)"
        return None

    def register_again(self, why: str) -> None:
        """Drop the connection and register anew, keeping the envs: for a restarted broker."""
        log.warning("%s: registering again with %s", why, self.broker)
        self.sock.close(linger=0)
        self.sock = None
        self.connect()

    def _await_registration(self, registration: bytes) -> None:
        deadline = time.monotonic() + self.register_timeout
        while not self.stopping:
            self._send_registration(registration, deadline)
            retry_after = self._registration_answer(registration, deadline)
            if retry_after is None:
                return
            # The broker takes only so many registrations a second (a fleet starting, a broker restart):
            # try again when it says, within the registration timeout.
            log.info("the broker asks to register again in %.2f s: %s", retry_after, self._refusal)
            until = min(deadline, time.monotonic() + retry_after)
            while time.monotonic() < until and not self.stopping:
                self.check_parent()
                time.sleep(min(P.IDLE_POLL_MS / 1000, max(0.0, until - time.monotonic())))

    def _send_registration(self, registration: bytes, deadline: float) -> None:
        # ZeroMQ queues the registration until the broker is there, unless the connection was
        # refused outright (a CURVE key the broker does not know): then the send itself must wait.
        while not self.stopping:
            if time.monotonic() > deadline:
                if self._refusal:
                    raise RegistrationError(
                        f"the broker kept refusing the registration of {self.env_id!r} for "
                        f"{self.register_timeout:g} s: {self._refusal}"
                    )
                raise RegistrationError(
                    f"could not send the registration of {self.env_id!r} to {self.broker} within "
                    f"{self.register_timeout:g} s: no connection"
                    + (" (is this worker's CURVE key among the broker's authorized keys?)" if self.curve else "")
                )
            self.check_parent()
            if self.sock.poll(P.IDLE_POLL_MS, zmq.POLLOUT):
                try:
                    self.sock.send(registration, zmq.NOBLOCK)
                    return
                except zmq.Again:  # the connection went between poll and send (a CURVE handshake that failed)
                    continue

    def _registration_answer(self, registration: bytes, deadline: float) -> float | None:
        """Wait for `registered` (None) or a refusal to retry after so many seconds; raise on any other."""
        while not self.stopping:
            if time.monotonic() > deadline:
                if self._refusal:
                    raise RegistrationError(
                        f"the broker kept refusing the registration of {self.env_id!r} for "
                        f"{self.register_timeout:g} s: {self._refusal}"
                    )
                raise RegistrationError(
                    f"no broker answered the registration of {self.env_id!r} at {self.broker} "
                    f"within {self.register_timeout:g} s (the registration was {len(registration)} bytes: a broker "
                    "drops one over its max_message_size unseen)"
                )
            self.check_parent()
            if not self.sock.poll(P.IDLE_POLL_MS):
                continue
            try:
                head = decode_header(self.sock.recv_multipart()[0])
            except WireError as exc:
                if isinstance(exc, VersionError) and type(exc.version) is int:  # another version: no use waiting
                    raise RegistrationError(
                        f"the broker at {self.broker} answered the registration in another protocol version: {exc}"
                    ) from None
                log.warning("ignoring an unreadable message before registration: %s", exc)
                continue
            if head[P.TYPE] == P.REGISTERED:
                self.name = head.get("worker", "?")
                self.max_frame = announced_limit(head)
                self.heartbeat.adopt(head)
                self._refusal = ""
                log.info("registered as %s with slots %s", self.name, head.get("slots"))
                return None
            if head[P.TYPE] == P.ERROR:
                retry_after = head.get("retry_after")
                if head.get("code") == P.E_LIMIT and type(retry_after) in (int, float) and 0 <= retry_after <= 60:
                    self._refusal = str(head.get("message"))
                    return max(float(retry_after), MIN_RETRY_AFTER)
                raise RegistrationError(f"broker refused registration: {head.get('message')}")
            log.warning("ignoring %r before registration", head[P.TYPE])
        return None

    def disconnect(self) -> None:
        """Tell the broker this worker is leaving, and close the socket."""
        self.segments.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.sock is None:
            if self.ctx is not None:
                self.ctx.term()
                self.ctx = None
            return
        try:
            self.sock.send(header(P.DISCONNECT), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.close(linger=100)  # a courtesy: a broker that is gone gets no longer wait
        self.ctx.term()
        self.sock = self.ctx = None

    def send_to_broker(self, frames: list[Any]) -> None:
        """Send a reply; one that ZeroMQ cannot take within SEND_TIMEOUT (no connection to the broker)
        is dropped with a log line: the broker counts that part lost or timed out, never this worker.

        A frame over the broker's ``max_message_size`` would cost this worker its connection and the
        reply (ZeroMQ cuts the sender): an error goes instead, saying so."""
        largest = oversized(frames, self.max_frame)
        if largest is not None:
            req = decode_header(frames[0]).get(P.REQ)
            frames = [
                header(
                    P.ERROR,
                    req=req,
                    code=P.E_BAD_MESSAGE,
                    message=f"worker {self.name} on host {self.host} cannot send its reply: a frame of "
                    f"{largest} bytes is over the broker's max_message_size of {self.max_frame}",
                )
            ]
        try:
            send_frames(self.sock, frames)
            self.heartbeat.sent()
        except zmq.Again:
            log.warning(
                "could not send a reply to %s within %g s (no connection); dropped it", self.broker, P.SEND_TIMEOUT
            )

    def check_parent(self) -> None:
        """The idle tick: stop if the parent (an embedded trainer) is gone; let go of removed segments."""
        self.segments.prune()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("parent process %d is gone; stopping", self.parent_pid)
            self.stopping = True

    def stop(self, *_: Any) -> None:
        self.stopping = True

    # -- requests -----------------------------------------------------------------

    def read(self, frames: list[Any]) -> Request | list[Any] | None:
        """Parse a message from the broker into a Request.

        Returns a reply to send instead when the message is bad, None when it
        needs no answer (disconnect, errors). Never raises on bad input.
        """
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
            if kind in (P.HEARTBEAT, P.REGISTERED):  # answers are never answered (protocol 5.14)
                log.debug("ignoring a %r on the main socket", kind)
                return None
            if kind not in P.BATCH_CALLS:
                return [header(P.ERROR, req=req, code=P.E_UNKNOWN_TYPE, message=f"unknown message type {kind!r}")]
            envs = head.get("envs")
            if (
                not isinstance(envs, list)
                or not envs
                or not all(type(i) is int and 0 <= i < self.num_envs for i in envs)
                or len(set(envs)) != len(envs)
            ):
                raise WireError(f"'envs' must be a non-empty list of distinct env indices below {self.num_envs}")
            if len(frames) < 2:
                raise WireError(f"a {kind} message needs a body frame")
            return Request(kind, req, envs, decode_body(frames[1]), frames[2:])
        except VersionError as exc:
            return [header(P.ERROR, req=req, code=P.E_VERSION, message=str(exc), supported=list(P.SUPPORTED_VERSIONS))]
        except (WireError, KeyError, TypeError, ValueError) as exc:
            return self.bad_message(req, exc)

    def bad_message(self, req: Any, exc: Exception) -> list[Any]:
        log.warning("bad message from broker: %s", exc)
        return [header(P.ERROR, req=req, code=P.E_BAD_MESSAGE, message=f"worker could not read the message: {exc}")]

    def internal_error(self, req: Any, exc: Exception) -> list[Any]:
        log.exception("unexpected error answering the broker")
        return [
            header(P.ERROR, req=req, code=P.E_INTERNAL, message=f"worker internal error: {type(exc).__name__}: {exc}")
        ]

    def env_error(self, req: Any, reports: list[dict]) -> list[Any]:
        message = f"env code raised in worker {self.name} on host {self.host}"
        return [header(P.ERROR, req=req, code=P.E_ENV, message=message, errors=reports)]

    def reply(self, request: Request, obs: list[Any], columns: dict[str, list]) -> list[Any]:
        """The reply to a reset or step: observations batched into leaves, the rest in the body.

        ``columns`` holds one list per body key, one entry per env: "info", and for
        a step "reward", "terminated", "truncated" and "final". Large observations
        go into the trainer's shared memory when the request offers it and this
        worker can use it (rlay/shm.py), else into frames. Raises EnvFailures
        naming the envs whose observation does not fit the space or whose values
        cannot cross the wire.
        """
        envs = request.envs
        infos = list(enumerate(columns.get("info", [])))
        infos += [(n, final[1]) for n, final in enumerate(columns.get("final", [])) if final is not None]
        wrong = [
            {
                "env": envs[n],
                "type": "TypeError",
                "traceback": "",
                "message": f"info: an env's info must be a dict, got {type(info).__name__}",
            }
            for n, info in infos
            if not isinstance(info, dict)
        ]
        if wrong:
            raise EnvFailures(wrong)
        offer = request.body.get("shm")
        placed = None if offer is None else self.segments.place(offer, self.obs_leaves, len(envs))
        descriptors, arrays, writes = self._encode_obs(envs, obs, placed)
        body = _pack_reply(envs, {"obs": descriptors, **columns})
        for array, target in writes:  # only now: a reply that fails writes nothing (protocol 3.9)
            np.copyto(target, array, casting="same_kind")
        return [header(P.REPLY, req=request.req), body, *arrays]

    def plain_reply(self, request: Request, body: dict) -> list[Any]:
        """The reply to a call or set_attr: a body of per-env values, no array frames."""
        return [header(P.REPLY, req=request.req), _pack_reply(request.envs, body)]

    def _encode_obs(
        self, envs: list[int], obs: list[Any], placed: dict | None
    ) -> tuple[list[dict], list[np.ndarray], list]:
        try:
            return _obs_leaves(self.obs_space, obs, placed)
        except Exception:
            failures = []
            for i, one in zip(envs, obs):
                try:
                    _obs_leaves(self.obs_space, [one])
                except Exception as exc:
                    failures.append(failure_report(i, exc))
            raise EnvFailures(
                failures
                or [
                    {"env": envs[0], "type": "ValueError", "message": "observations cannot be batched", "traceback": ""}
                ]
            ) from None


def _obs_leaves(
    space: gym.Space, obs: list[Any], placed: dict | None = None
) -> tuple[list[dict], list[np.ndarray], list]:
    """Descriptors and frames of a part's observations, and the writes still to make:
    ``placed`` (leaf index -> one target array per env) holds the leaves that go into the
    trainer's shared memory instead, as (array, target) pairs once every leaf fits."""
    leaf_spaces_ = leaf_spaces(space)
    big = [is_large(s) for s in leaf_spaces_]
    if not any(big) and not placed:
        # concatenate() casts exactly as SyncVectorEnv's batching does.
        batch = concatenate(space, obs, create_empty_array(space, n=len(obs), fn=np.empty))
        return (*encode_leaves(flatten(space, batch), check_dtype=True), [])
    per_env = [split(space, o) for o in obs]  # each observation's leaves, by reference
    descriptors, frames, writes = [], [], []
    for n, (leaf_space, is_big) in enumerate(zip(leaf_spaces_, big)):
        items = [leaves[n] for leaves in per_env]
        if placed and n in placed:  # straight into the trainer's batch buffer, once every leaf fits
            writes.extend(zip(check_rows(items, leaf_space), placed[n]))
            desc = {"dtype": leaf_space.dtype.str, "shape": [len(items), *leaf_space.shape], "shm": True}
            arrays = []
        elif is_big:  # no batch copy: the envs' own arrays go out as frames
            desc, arrays = encode_rows(items, leaf_space)
        else:
            batch = concatenate(leaf_space, items, create_empty_array(leaf_space, n=len(items), fn=np.empty))
            (desc,), arrays = encode_leaves(flatten(leaf_space, batch), check_dtype=True)
        descriptors.append(desc)
        frames.extend(arrays)
    return descriptors, frames, writes


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
        raise EnvFailures(
            failures or [{"env": envs[0], "type": "TypeError", "message": "reply cannot be encoded", "traceback": ""}]
        ) from None


def launched_as() -> dict[str, Any]:
    """`program` and `instance` for `register`, when a launcher (rlay up) says which instance of which
    program this process is (RLAY_PROGRAM, RLAY_INSTANCE): the broker counts its registered instances."""
    program, instance = os.environ.get(P.PROGRAM_ENV), os.environ.get(P.INSTANCE_ENV, "")
    if not program or not instance.isdigit():
        return {}
    return {"program": program, "instance": int(instance)}


def _is_plain(value: Any) -> bool:
    """Whether ``value`` is plain msgpack (no numpy, no tuples): what a header may carry."""
    try:
        msgpack.packb(value, strict_types=True)
        return True
    except (TypeError, ValueError, OverflowError):
        return False


_NO_PLAIN_FORM = object()


def _plain_metadata(metadata: dict) -> dict:
    """The env's metadata as a header may carry it: tuples and sets become lists, numpy values Python
    ones (``render_modes``, ``render_fps = np.int64(30)``). An entry with no such form is left out."""
    plain = {}
    for key, value in metadata.items():
        converted = _plain(value)
        if converted is _NO_PLAIN_FORM or not isinstance(key, str):
            log.info("metadata entry %r cannot go in a header; the trainer will not see it", key)
            continue
        plain[key] = converted
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=repr)
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return _NO_PLAIN_FORM if any(item is _NO_PLAIN_FORM for item in items) else items
    if isinstance(value, dict):
        items = {key: _plain(item) for key, item in value.items()}
        bad = any(item is _NO_PLAIN_FORM for item in items.values()) or not all(_is_plain(key) for key in items)
        return _NO_PLAIN_FORM if bad else items
    return value if _is_plain(value) else _NO_PLAIN_FORM


def each(envs: list[int], fn: Callable[[int, int], Any]) -> list[Any]:
    """Run ``fn(env_index, position)`` for every env; collect every failure, not just the first."""
    results, failures = [], []
    for n, i in enumerate(envs):
        try:
            results.append(fn(i, n))
        except Exception as exc:
            failures.append(failure_report(i, exc))
    if failures:
        raise EnvFailures(failures)
    return results
