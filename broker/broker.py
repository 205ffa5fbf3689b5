"""The rlay broker: routes batched env calls from trainers to workers and back.

    >>> from broker.broker import Broker
    >>> Broker("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556").run()  # doctest: +SKIP

Two ROUTER sockets, one poll loop. Workers register env slots on the back end;
trainers lease slots on the front end and send batched calls (reset, step,
call, set_attr), each ONE message with one *part* per worker. The broker fans
the parts out, gathers the replies and answers with ONE message. It decodes
headers only: bodies and array frames are forwarded as received.

Slot states (docs/protocol.md, 7.1 "Slot states at the broker")::

    FREE --lease--> LEASED --batched call--> BUSY --reply--> LEASED
      ^               |                        (a timed-out call answers the trainer, but the
      +---release-----+                         slot stays BUSY until the worker's late reply)
                                 any state --worker lost--> LOST (until released)
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from rlay import protocol as P
from rlay.heartbeat import HEARTBEAT_SUFFIX
from rlay.values import VersionError, WireError
from rlay.wire import decode_header, describe_failures, header, send_frames

__all__ = ["Broker"]

log = logging.getLogger("rlay.broker")

DEFAULT_CALL_TIMEOUT = 60.0  # s, when a batched call names none
MAX_CALL_TIMEOUT = 24 * 3600.0
DRAIN_BATCH = 256  # messages taken from one socket before looking at the other
POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)  # (a plain int: '&' on pyzmq's enum flags costs microseconds per frame)
# What CURVE adds to each frame on the wire (a "\x07MESSAGE" command, an 8-byte nonce, a flags byte and
# a 16-byte MAC), where ZeroMQ's max_message_size applies: measured, a frame of limit - 33 bytes passes.
CURVE_FRAME_BYTES = 33
MAX_PINGING = 65536  # unknown peers remembered as pinging: bounded against a flood
NO_LEASE = "this connection holds no lease (the broker restarted, or released it when its heartbeats stopped)"
RECENT_LOSSES = 20  # worker losses `status` lists
FAILURE_COUNTS = (
    "workers_lost",
    "slots_lost",
    "slots_replaced",
    f"calls_{P.E_WORKER_LOST}",
    f"calls_{P.E_TIMEOUT}",
    f"calls_{P.E_ENV}",
    "calls_other",
)  # what `status` counts


@dataclass(eq=False)
class WorkerRecord:
    ident: bytes
    name: str
    seq: int
    host: str
    pid: int
    env_id: str
    mode: str
    rank: int
    obs_space: Any
    act_space: Any
    metadata: dict
    render_mode: Any
    slots: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"worker {self.name} (pid {self.pid} on host {self.host})"


@dataclass(eq=False)
class Slot:
    id: int
    worker: WorkerRecord
    index: int  # env index within the worker
    lease: bytes | None = None  # trainer ident
    busy: Part | None = None
    lost: str | None = None  # why the slot's worker is gone


@dataclass(eq=False)
class Trainer:
    ident: bytes
    name: str
    env_id: str
    slots: list[int]
    parts: dict[tuple, tuple] = field(default_factory=dict)  # validated slot lists -> (worker, env indices)
    replaced: int = 0  # LOST slots this lease has had replaced


class BindError(OSError):
    """The broker cannot listen on one of its addresses (in use, or not this host's)."""


class PartRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class PartLost(PartRefused):
    """A part names LOST slots: refused, or failed at once in a ``partial`` call."""

    def __init__(self, worker: WorkerRecord, slots: list[Slot], nframes: int):
        super().__init__(P.E_WORKER_LOST, f"slots [{', '.join(str(s.id) for s in slots)}] are lost: {slots[0].lost}")
        self.worker, self.slots, self.nframes = worker, slots, nframes


@dataclass(eq=False)
class Part:
    batch: Batch
    worker: WorkerRecord
    slots: list[int]
    frames: list[Any]
    envs: list[int] = field(default_factory=list)  # the slots' env indices on the worker
    slot_objects: list[Slot] = field(default_factory=list)
    reply: list[Any] | None = None
    error: dict | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


@dataclass(eq=False)
class Batch:
    id: int
    trainer: bytes
    req: Any
    kind: str
    timeout: float
    deadline: float
    gather: bool = True  # False: answer each part as it completes (first-ready stepping)
    partial: bool = False  # True: a failed part does not fail the call (the trainer replaces lost slots)
    parts: list[Part] = field(default_factory=list)
    finished: bool = False
    released: bool = False  # its trainer released its lease meanwhile: never answered (protocol 5.6)


@dataclass(eq=False)
class PendingLease:
    ident: bytes
    req: Any
    env_id: str
    num_envs: int
    timeout: float
    deadline: float
    replaces: list[int] | None = None  # a `replace`: the trainer's LOST slots the new ones stand in for


class InlineFrontEnd:
    """The front end of a broker that lives in its trainer's process (embedded mode).

    It stands in for the ROUTER socket: what the broker sends to a trainer is
    queued here, and the trainer, which calls ``process_trainer`` and ``pump``
    itself while it waits, takes it from the queue. No socket hop, no thread.
    """

    def __init__(self) -> None:
        self.outbox: dict[bytes, collections.deque] = collections.defaultdict(collections.deque)
        self._partial: list[Any] = []

    def send(self, frame: Any, flags: int = 0, copy: bool = True) -> None:
        """Like a ROUTER's send: frames gather until one comes without SNDMORE."""
        self._partial.append(frame)
        if not flags & _SNDMORE:
            frames, self._partial = self._partial, []
            self.outbox[frames[0]].append(frames[1:])

    def close(self) -> None:
        self.outbox.clear()


class Broker:
    """Routes batched env calls between trainers (front end) and workers (back end).

    ``frontend=None`` makes an inline broker for embedded mode (see InlineFrontEnd).
    """

    def __init__(
        self,
        frontend: str | None = P.DEFAULT_FRONTEND,
        backend: str = P.DEFAULT_BACKEND,
        *,
        parent_pid: int | None = None,
        max_message_size: int = -1,
        heartbeat_interval: float = P.HEARTBEAT_INTERVAL,
        heartbeat_liveness: int = P.HEARTBEAT_LIVENESS,
        curve: Any = None,
    ):
        self.frontend_addr = frontend
        self.curve = curve  # rlay.security.Curve: both sockets encrypt, and let in only authorized keys
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_liveness = heartbeat_liveness
        self.heartbeat_expiry = heartbeat_interval * heartbeat_liveness
        self.last_seen: dict[bytes, float] = {}  # peers that send heartbeats: main ident -> last sign of life
        self.pinging: dict[bytes, float] = {}  # peers that ping before we know them (before a lease or registration)
        self._next_liveness_check = 0.0
        self.backend_addr = backend
        self.parent_pid = parent_pid
        self.max_message_size = max_message_size
        self.stopping = False
        self.started = time.time()
        self.workers: dict[bytes, WorkerRecord] = {}
        self.local_pids: set[int] = set()  # embedded: pids of the workers that ever registered
        self.slots: dict[int, Slot] = {}
        self.trainers: dict[bytes, Trainer] = {}
        self.pending_leases: list[PendingLease] = []
        self.batches: dict[int, Batch] = {}
        self.inflight: dict[tuple[bytes, int], Part] = {}  # (worker ident, batch id) -> part
        self._slot_ids = itertools.count()
        self._worker_seq = itertools.count(1)
        self._trainer_seq = itertools.count(1)
        self._batch_ids = itertools.count(1)
        # What went wrong since start, for `rlay status`: counts, and the latest worker losses.
        self.failures: collections.Counter[str] = collections.Counter()
        self.recent_losses: collections.deque[dict] = collections.deque(maxlen=RECENT_LOSSES)
        self.closed = False
        self.ctx = zmq.Context()
        self.authenticator = None
        try:
            self.authenticator = curve.start_authenticator(self.ctx) if curve is not None else None
            self.back = self._router(backend)
            self.backend_addr = self.back.getsockopt_string(zmq.LAST_ENDPOINT)
            self.poller = zmq.Poller()
            self.poller.register(self.back, zmq.POLLIN)
            if frontend is None:  # inline: the trainer in this process calls process_trainer() itself
                self.front = InlineFrontEnd()
                self.frontend_addr = "inline"
            else:
                self.front = self._router(frontend)
                self.frontend_addr = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
                self.poller.register(self.front, zmq.POLLIN)
        except BaseException:  # (a bind that failed: nothing of this broker stays open)
            if self.authenticator is not None:
                self.authenticator.stop()
            self.ctx.destroy(linger=0)
            raise

    def _router(self, addr: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A peer that reconnects keeps its routing id (to register again): its new connection
        # must take the id over from the old one, which may not be torn down yet.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        if self.curve is not None:
            self.curve.secure_server(sock)
        try:
            sock.bind(addr)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise BindError(
                f"the broker cannot bind {addr}: {exc.strerror} (is another broker, or another program, using it?)"
            ) from None
        return sock

    # -- life cycle ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        """Serve until stop() or a signal; then tell every worker to disconnect."""
        log.info("broker up: trainers on %s, workers on %s", self.frontend_addr, self.backend_addr)
        try:
            while not self.stopping:
                self.pump(P.IDLE_POLL_MS)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("parent process %d is gone; stopping", self.parent_pid)
                    self.stopping = True
        finally:
            self.close()

    def pump(self, timeout_ms: float) -> None:
        """One turn of the poll loop: wait up to ``timeout_ms`` (or the next deadline), handle what came."""
        events = dict(self.poller.poll(min(timeout_ms, self._poll_timeout_ms())))
        if self.back in events:
            self._drain(self.back, self.process_worker)
        if self.front in events:
            self._drain(self.front, self.process_trainer)
        self._expire(time.monotonic())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for worker in list(self.workers.values()):
            self._send(self.back, worker.ident, [header(P.DISCONNECT, reason="broker shutting down")])
        self.front.close()
        self.back.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.ctx.term()

    def _poll_timeout_ms(self) -> int:
        deadlines = [b.deadline for b in self.batches.values()] + [p.deadline for p in self.pending_leases]
        if not deadlines:
            return P.IDLE_POLL_MS
        wait = (min(deadlines) - time.monotonic()) * 1000
        return max(0, min(P.IDLE_POLL_MS, int(wait) + 1))

    def _drain(self, sock: zmq.Socket, process) -> None:
        for _ in range(DRAIN_BATCH):
            if not sock.getsockopt(zmq.EVENTS) & POLLIN:
                return
            frames = sock.recv_multipart(copy=False)
            ident, body = frames[0].bytes, frames[1:]
            try:
                process(ident, body)
            except Exception:  # a bug must not take the broker down with it
                log.exception("unexpected error handling a message; the broker keeps serving")

    def _send(self, sock: zmq.Socket, ident: bytes, frames: list[Any]) -> zmq.ZMQError | None:
        """Send without blocking; return the error (peer gone, or its queue full) instead of raising."""
        try:
            send_frames(sock, [ident, *frames], zmq.NOBLOCK)
            return None
        except zmq.ZMQError as exc:
            log.warning("could not deliver a message to peer %s: %s", ident.hex(), exc)
            return exc

    def _decode(self, sock: zmq.Socket, ident: bytes, frames: list[Any]) -> dict | None:
        """The header of a message, or None after answering the peer with an error."""
        try:
            return decode_header(frames[0])
        except VersionError as exc:
            self._error(sock, ident, None, P.E_VERSION, str(exc), supported=list(P.SUPPORTED_VERSIONS))
        except WireError as exc:
            self._error(sock, ident, None, P.E_BAD_MESSAGE, f"unreadable header: {exc}")
        return None

    def _error(self, sock: zmq.Socket, ident: bytes, req: Any, code: str, message: str, **extra: Any) -> None:
        log.info("error to %s: [%s] %s", ident.hex(), code, message)
        self._send(sock, ident, [header(P.ERROR, req=req, code=code, message=message, **extra)])

    # -- trainers (front end) ---------------------------------------------------------

    def process_trainer(self, ident: bytes, frames: list[Any]) -> None:
        head = self._decode(self.front, ident, frames)
        if head is None:
            return
        req, kind = head.get(P.REQ), head[P.TYPE]
        if kind == P.HEARTBEAT:
            self._heartbeat(self.front, ident, self.trainers)
            return
        if ident in self.last_seen:
            self.last_seen[ident] = time.monotonic()
        if kind in P.BATCH_CALLS:
            self._dispatch(ident, head, frames[1:])
        elif kind == P.LEASE:
            self._lease(ident, head)
        elif kind == P.REPLACE:
            self._replace(ident, head)
        elif kind == P.RELEASE:
            self._release(ident)
            self._send(self.front, ident, [header(P.RELEASED, req=req)])
        elif kind == P.STATUS:
            self._send(self.front, ident, [header(P.STATUS, req=req, **self.status())])
        else:
            self._error(self.front, ident, req, P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _lease(self, ident: bytes, head: dict) -> None:
        req, env_id, num_envs = head.get(P.REQ), head.get("env_id"), head.get("num_envs")
        timeout = head.get("timeout", DEFAULT_CALL_TIMEOUT)
        if not isinstance(env_id, str) or type(num_envs) is not int or num_envs < 1:
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, "lease needs 'env_id' (str) and 'num_envs' (int >= 1)")
            return
        if not _is_timeout(timeout, zero_ok=True):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"bad lease timeout {timeout!r}")
            return
        if ident in self.trainers or any(p.ident == ident for p in self.pending_leases):
            self._error(
                self.front, ident, req, P.E_BAD_MESSAGE, "this connection already holds a lease; release it first"
            )
            return
        self.pending_leases.append(PendingLease(ident, req, env_id, num_envs, timeout, time.monotonic() + timeout))
        self._try_leases()

    def _replace(self, ident: bytes, head: dict) -> None:
        """Move LOST slots of a lease to FREE slots of its env id, waiting up to ``timeout`` for them."""
        req, lost, timeout = head.get(P.REQ), head.get("slots"), head.get("timeout", DEFAULT_CALL_TIMEOUT)
        trainer = self.trainers.get(ident)
        if trainer is None:
            self._error(self.front, ident, req, P.E_NO_LEASE, NO_LEASE)
            return
        if (
            not isinstance(lost, list)
            or not lost
            or not all(type(s) is int for s in lost)
            or len(set(lost)) != len(lost)
        ):
            self._error(
                self.front, ident, req, P.E_BAD_MESSAGE, "replace needs 'slots': a non-empty list of distinct ints"
            )
            return
        if not _is_timeout(timeout, zero_ok=True):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"bad replace timeout {timeout!r}")
            return
        for slot_id in lost:
            slot = self.slots.get(slot_id)
            if slot is None or slot.lease != ident:
                self._error(self.front, ident, req, P.E_SLOT, f"slot {slot_id} is not leased to this trainer")
                return
            if slot.lost is None:
                self._error(
                    self.front, ident, req, P.E_SLOT, f"slot {slot_id} is not lost: only LOST slots are replaced"
                )
                return
        # A new replace supersedes one still pending: its trainer stopped waiting for it (an error or
        # an interrupt ended the wait), and asks again for what is lost now. The old one gets no answer.
        self.pending_leases = [p for p in self.pending_leases if p.ident != ident]
        self.pending_leases.append(
            PendingLease(ident, req, trainer.env_id, len(lost), timeout, time.monotonic() + timeout, replaces=lost)
        )
        self._try_leases()

    def _announced(self) -> dict[str, Any]:
        """What `registered` and `leased` tell a peer of this broker's settings: the heartbeat interval
        and liveness it expects (protocol 8.5), and, if there is a limit, max_message_size: the largest
        frame a peer may hand ZeroMQ. CURVE adds CURVE_FRAME_BYTES to each frame on the wire, where
        ZeroMQ applies the limit."""
        settings = {"heartbeat_interval": self.heartbeat_interval, "heartbeat_liveness": self.heartbeat_liveness}
        if self.max_message_size >= 0:
            overhead = CURVE_FRAME_BYTES if self.curve is not None else 0
            settings["max_message_size"] = max(0, self.max_message_size - overhead)
        return settings

    def _free_slots(self, env_id: str) -> list[Slot]:
        free = [
            s
            for s in self.slots.values()
            if s.worker.env_id == env_id and s.lease is None and s.busy is None and s.lost is None
        ]
        free.sort(key=lambda s: (s.worker.rank, s.worker.seq, s.index))
        return free

    def _try_leases(self) -> None:
        # Replacements first: a running lease that lost slots goes before new leases.
        for pending in sorted(self.pending_leases, key=lambda p: p.replaces is None):
            if pending not in self.pending_leases:  # granted by a nested call (after an undone lease)
                continue
            free = self._free_slots(pending.env_id)
            if len(free) < pending.num_envs:
                continue
            self.pending_leases.remove(pending)
            granted = free[: pending.num_envs]
            if pending.replaces is not None:
                self._grant_replacement(pending, granted)
                continue
            trainer = Trainer(pending.ident, f"t{next(self._trainer_seq)}", pending.env_id, [s.id for s in granted])
            self.trainers[pending.ident] = trainer
            self._watch(pending.ident)
            for slot in granted:
                slot.lease = pending.ident
            first = granted[0].worker
            log.info("leased %d slots of %r to trainer %s", len(granted), pending.env_id, trainer.name)
            failed = self._send(
                self.front,
                pending.ident,
                [
                    header(
                        P.LEASED,
                        req=pending.req,
                        trainer=trainer.name,
                        slots=[_slot_info(s) for s in granted],
                        obs_space=first.obs_space,
                        act_space=first.act_space,
                        metadata=first.metadata,
                        render_mode=first.render_mode,
                        **self._announced(),
                    )
                ],
            )
            if failed is not None:  # the trainer is gone (it died while waiting): undo the lease
                self._release(pending.ident)

    def _grant_replacement(self, pending: PendingLease, granted: list[Slot]) -> None:
        trainer = self.trainers[pending.ident]
        position = {slot_id: n for n, slot_id in enumerate(trainer.slots)}
        for old_id, slot in zip(pending.replaces, granted):
            trainer.slots[position[old_id]] = slot.id
            slot.lease = pending.ident
            self.slots.pop(old_id, None)  # it was LOST: gone once its lease lets go of it
        trainer.parts.clear()
        trainer.replaced += len(granted)
        self.failures["slots_replaced"] += len(granted)
        log.info("trainer %s: LOST slots %s replaced by %s", trainer.name, pending.replaces, [s.id for s in granted])
        self._send(
            self.front,
            pending.ident,
            [header(P.REPLACED, req=pending.req, replaces=pending.replaces, slots=[_slot_info(s) for s in granted])],
        )

    def _lease_shortfall(self, pending: PendingLease) -> str:
        mine = [s for s in self.slots.values() if s.worker.env_id == pending.env_id and s.lost is None]
        free = self._free_slots(pending.env_id)
        hosts = sorted({s.worker.host for s in mine})
        workers = {s.worker.name for s in mine}
        others = sorted({w.env_id for w in self.workers.values()} - {pending.env_id})
        return (
            f"timed out after {pending.timeout:g} s: "
            f"found {len(free)} free of {len(mine)} registered on {len(workers)} worker(s)"
            + (f" on host(s) {', '.join(hosts)}" if hosts else "")
            + f", {len(mine) - len(free)} leased or busy"
            + (f"; other env ids registered: {', '.join(others)}" if others else "")
        )

    def _release(self, ident: bytes) -> None:
        self.pending_leases = [p for p in self.pending_leases if p.ident != ident]
        trainer = self.trainers.pop(ident, None)
        self.last_seen.pop(ident, None)
        if trainer is None:
            return
        for batch in self.batches.values():
            if batch.trainer == ident:  # (this connection may lease again before the batch ends)
                batch.released = True
        for slot_id in trainer.slots:
            slot = self.slots.get(slot_id)
            if slot is None:
                continue
            slot.lease = None
            if slot.lost is not None:
                del self.slots[slot_id]
        log.info("trainer %s released %d slots", trainer.name, len(trainer.slots))
        self._try_leases()

    def _dispatch(self, ident: bytes, head: dict, frames: list[Any]) -> None:
        """Check a batched call completely, then fan out one message per part."""
        req, kind = head.get(P.REQ), head[P.TYPE]
        timeout = head.get("timeout", DEFAULT_CALL_TIMEOUT)
        parts_spec = head.get("parts")
        if not _is_timeout(timeout, zero_ok=False):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"bad timeout {timeout!r}")
            return
        if not isinstance(parts_spec, list) or not parts_spec:
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, "a batched call needs a non-empty 'parts' list")
            return
        gather, partial = head.get("gather", True), head.get("partial", False)
        for key, flag in (("gather", gather), ("partial", partial)):
            if type(flag) is not bool:
                self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"{key!r} must be true or false, got {flag!r}")
                return
        trainer = self.trainers.get(ident)
        if trainer is None:
            self._error(self.front, ident, req, P.E_NO_LEASE, NO_LEASE)
            return
        batch = Batch(next(self._batch_ids), ident, req, kind, timeout, time.monotonic() + timeout, gather, partial)
        offset = 0
        seen_workers: set[bytes] = set()
        lost_parts: dict[Part, str] = {}  # partial: parts on LOST slots, failed once the call is checked
        try:
            for spec in parts_spec:
                try:
                    worker, envs, slots, nframes = self._resolve_part(
                        trainer, ident, spec, len(frames) - offset, seen_workers
                    )
                except PartLost as lost:
                    if not partial:
                        raise
                    worker, nframes = lost.worker, lost.nframes
                    part = Part(batch, worker, spec[0], [], [s.index for s in lost.slots], lost.slots)
                    lost_parts[part] = lost.message
                    batch.parts.append(part)
                else:
                    batch.parts.append(Part(batch, worker, spec[0], frames[offset : offset + nframes], envs, slots))
                seen_workers.add(worker.ident)
                offset += nframes
        except PartRefused as refused:
            self._error(self.front, ident, req, refused.code, refused.message)
            return
        if offset != len(frames):
            self._error(
                self.front, ident, req, P.E_BAD_MESSAGE, f"parts announce {offset} frames but {len(frames)} came"
            )
            return
        self.batches[batch.id] = batch
        for part in batch.parts:
            if part in lost_parts:
                self._part_failed(part, P.E_WORKER_LOST, lost_parts[part])
                continue
            for slot in part.slot_objects:
                slot.busy = part
            self.inflight[(part.worker.ident, batch.id)] = part
            failed = self._send(
                self.back, part.worker.ident, [header(kind, req=batch.id, envs=part.envs), *part.frames]
            )
            part.frames = []
            if failed is None:
                continue
            if failed.errno == zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: the peer's connection is gone
                self._worker_lost(part.worker, "its connection is gone")
            else:  # its queue is full (EAGAIN): it has stopped reading, and is as good as gone
                self._worker_lost(part.worker, f"a send to it failed: {failed}")

    def _resolve_part(
        self, trainer: Trainer, ident: bytes, spec: Any, frames_left: int, seen_workers: set[bytes]
    ) -> tuple[WorkerRecord, list[int], list[Slot], int]:
        """The worker, env indices, slots and frame count of one part of a batched call; raises PartRefused.

        What does not change between calls (lease, one worker, distinct slots) is
        checked once per slot list and cached on the trainer; busy is checked every call.
        """
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], list) and type(spec[1]) is int):
            raise PartRefused(P.E_BAD_MESSAGE, "each part must be [slot ids, frame count]")
        slot_ids, nframes = spec
        if not slot_ids or not 1 <= nframes <= frames_left:
            raise PartRefused(
                P.E_BAD_MESSAGE,
                f"part {spec!r} announces {nframes} frames; {frames_left} are left (a part needs its body frame)",
            )
        try:
            key = tuple(slot_ids)
            resolved = trainer.parts.get(key)
        except TypeError:  # an unhashable slot id
            raise PartRefused(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}") from None
        if resolved is None:
            resolved = self._validate_slots(ident, slot_ids, nframes)
            if len(trainer.parts) < 4096:
                trainer.parts[key] = resolved
        worker, envs, slots = resolved
        if len(set(map(type, slot_ids))) != 1 or type(slot_ids[0]) is not int:  # 1.0 and True hash as 1
            raise PartRefused(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}")
        for slot in slots:
            if slot.busy is not None:
                raise PartRefused(
                    P.E_SLOT,
                    f"slot {slot.id} is still busy with an earlier call on {worker.describe()} "
                    "(a call that timed out runs on until its worker replies)",
                )
        if worker.ident in seen_workers:
            raise PartRefused(P.E_BAD_MESSAGE, f"two parts address {worker.describe()}; put all its slots in one part")
        return worker, envs, slots, nframes

    def _validate_slots(
        self, ident: bytes, slot_ids: list[int], nframes: int
    ) -> tuple[WorkerRecord, list[int], list[Slot]]:
        if not all(type(s) is int for s in slot_ids):
            raise PartRefused(P.E_SLOT, f"slot ids must be ints, got {slot_ids!r}")
        if len(set(slot_ids)) != len(slot_ids):
            raise PartRefused(P.E_BAD_MESSAGE, f"slots {slot_ids} repeat a slot")
        worker = None
        for slot_id in slot_ids:
            slot = self.slots.get(slot_id)
            if slot is None or slot.lease != ident:
                raise PartRefused(P.E_SLOT, f"slot {slot_id!r} is not leased to this trainer")
            if worker is not None and slot.worker is not worker:
                raise PartRefused(P.E_BAD_MESSAGE, f"slots {slot_ids} of one part live on different workers")
            worker = slot.worker
        slots = [self.slots[s] for s in slot_ids]
        if slots[0].lost is not None:  # a worker's slots are lost together
            raise PartLost(worker, slots, nframes)
        return worker, [s.index for s in slots], slots

    # -- workers (back end) -----------------------------------------------------------

    def process_worker(self, ident: bytes, frames: list[Any]) -> None:
        head = self._decode(self.back, ident, frames)
        if head is None:
            return
        kind, req = head[P.TYPE], head.get(P.REQ)
        if kind == P.HEARTBEAT:
            self._heartbeat(self.back, ident, self.workers)
            return
        if ident in self.last_seen:
            self.last_seen[ident] = time.monotonic()
        if kind == P.REGISTER:
            self._register(ident, head)
        elif kind in (P.REPLY, P.ERROR):
            self._worker_reply(ident, head, frames[1:])
        elif kind == P.DISCONNECT:
            if ident in self.workers:
                self._worker_lost(self.workers[ident], "it disconnected")
        else:
            self._error(self.back, ident, req, P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _heartbeat(self, sock: zmq.Socket, ident: bytes, peers: dict) -> None:
        """Answer a ping, saying whether we know the peer (a worker or trainer we dropped or forgot
        must register or lease again). The ping keeps that peer alive: once a peer has pinged, it
        must go on pinging (see _check_liveness)."""
        main = ident[: -len(HEARTBEAT_SUFFIX)] if ident.endswith(HEARTBEAT_SUFFIX) else ident
        known = main in peers
        if known:
            self.last_seen[main] = time.monotonic()
        elif len(self.pinging) < MAX_PINGING:
            self.pinging[main] = time.monotonic()
        self._send(sock, ident, [header(P.HEARTBEAT, known=known)])

    def _watch(self, ident: bytes, always: bool = False) -> None:
        """A peer just became known (registered, or granted a lease): if it pings (a worker: always,
        heartbeats are mandatory for workers), watch it from now, not from its next ping, so that one
        dying in between is not missed, and one that never pings is expired."""
        if self.pinging.pop(ident, None) is not None or always:
            self.last_seen[ident] = time.monotonic()

    def _check_liveness(self, now: float) -> None:
        """Count as lost every peer that pinged before and has been silent for the expiry."""
        if now < self._next_liveness_check:
            return
        self._next_liveness_check = now + self.heartbeat_interval
        self.pinging = {i: t for i, t in self.pinging.items() if now - t <= self.heartbeat_expiry}
        for ident, seen in list(self.last_seen.items()):
            silence = now - seen
            if silence <= self.heartbeat_expiry:
                continue
            del self.last_seen[ident]
            why = f"no heartbeat for {silence:.1f} s"
            if ident in self.workers:
                self._worker_lost(self.workers[ident], why)
            elif ident in self.trainers:
                log.warning("trainer %s lost (%s); its slots are freed", self.trainers[ident].name, why)
                self._release(ident)

    def _register(self, ident: bytes, head: dict) -> None:
        if ident in self.workers:  # registering again: it lost us (or we it); the old slots are gone
            self._worker_lost(self.workers[ident], "it registered again")
        fields = {k: head.get(k) for k in ("env_id", "num_envs", "host", "pid", "obs_space", "act_space")}
        if not (
            isinstance(fields["env_id"], str)
            and type(fields["num_envs"]) is int
            and 1 <= fields["num_envs"] <= 1_000_000
            and isinstance(fields["host"], str)
            and type(fields["pid"]) is int
            and isinstance(fields["obs_space"], dict)
            and isinstance(fields["act_space"], dict)
        ):
            self._error(
                self.back,
                ident,
                None,
                P.E_REGISTRATION,
                "register needs env_id (str), num_envs (int), host (str), pid (int), obs_space and act_space (maps)",
            )
            return
        mode = head.get("mode", P.COMMAND_MODE)
        if mode not in P.WORKER_MODES:
            self._error(self.back, ident, None, P.E_REGISTRATION, f"unknown worker mode {mode!r}")
            return
        for other in self.workers.values():
            if other.env_id == fields["env_id"] and (
                other.obs_space != fields["obs_space"] or other.act_space != fields["act_space"]
            ):
                self._error(
                    self.back,
                    ident,
                    None,
                    P.E_REGISTRATION,
                    f"spaces differ from those of {other.describe()} for env id {other.env_id!r}",
                )
                return
        seq = next(self._worker_seq)
        rank = head.get("rank", 0)
        metadata = head.get("metadata")
        worker = WorkerRecord(
            ident=ident,
            name=f"w{seq}",
            seq=seq,
            host=fields["host"],
            pid=fields["pid"],
            env_id=fields["env_id"],
            mode=mode,
            rank=rank if type(rank) is int else 0,
            obs_space=fields["obs_space"],
            act_space=fields["act_space"],
            metadata=metadata if isinstance(metadata, dict) else {},
            render_mode=head.get("render_mode"),
        )
        for index in range(fields["num_envs"]):
            slot = Slot(next(self._slot_ids), worker, index)
            self.slots[slot.id] = slot
            worker.slots.append(slot.id)
        self.workers[ident] = worker
        if self.frontend_addr == "inline":  # (its workers are the trainer's own children: a bounded set)
            self.local_pids.add(worker.pid)
        self._watch(ident, always=True)
        log.info("registered %s: %d envs of %r", worker.describe(), len(worker.slots), worker.env_id)
        self._send(
            self.back, ident, [header(P.REGISTERED, worker=worker.name, slots=worker.slots, **self._announced())]
        )
        self._try_leases()

    def _worker_reply(self, ident: bytes, head: dict, frames: list[Any]) -> None:
        req = head.get(P.REQ)
        part = self.inflight.pop((ident, req), None) if type(req) is int else None
        if part is None:
            log.warning("dropping a %s from peer %s for unknown request %r", head[P.TYPE], ident.hex(), req)
            return
        for slot in part.slot_objects:
            if slot.busy is part:
                slot.busy = None
        if head[P.TYPE] == P.ERROR:
            errors = head.get("errors") if isinstance(head.get("errors"), list) else []
            slot_of = {self.slots[s].index: s for s in part.slots if s in self.slots}
            for err in errors:
                if (
                    isinstance(err, dict) and type(err.get("env")) is int and err["env"] in slot_of
                ):  # (a list would raise)
                    err["slot"] = slot_of[err["env"]]
            self._part_failed(part, str(head.get("code", P.E_ENV)), str(head.get("message", "")), errors)
        elif not part.done:
            part.reply = frames
            self._part_done(part)
        if self.pending_leases:  # freed slots may complete a waiting lease
            self._try_leases()

    def _part_failed(self, part: Part, code: str, message: str, errors: list | None = None) -> None:
        if part.done:
            return
        counter = f"calls_{code}"
        self.failures[counter if counter in FAILURE_COUNTS else "calls_other"] += 1  # (codes from workers: bounded)
        part.error = {
            "slots": part.slots,
            "worker": part.worker.name,
            "host": part.worker.host,
            "pid": part.worker.pid,
            "code": code,
            "message": message,
            "errors": errors or [],
        }
        self._part_done(part)

    def _part_done(self, part: Part) -> None:
        """A part has its reply or its error: answer the trainer, now (gather false) or with the last part."""
        batch = part.batch
        if not batch.gather:
            self._answer(batch, [part])
        if batch.finished or not all(p.done for p in batch.parts):
            return
        batch.finished = True
        self.batches.pop(batch.id, None)
        if batch.gather:
            self._answer(batch, batch.parts)

    def _answer(self, batch: Batch, parts: list[Part]) -> None:
        """ONE reply for ``parts``: their frames concatenated, or an error naming every failure."""
        if batch.released:
            return
        failures = [p.error for p in parts if p.error is not None]
        if failures and not batch.partial:
            code, message = describe_failures(failures)
            self._error(self.front, batch.trainer, batch.req, code, message, failures=failures)
            return
        replied = [p for p in parts if p.error is None]
        spec = [[p.slots, len(p.reply)] for p in replied]
        frames = [header(P.REPLY, req=batch.req, parts=spec, **({"failures": failures} if failures else {}))]
        for part in replied:
            frames.extend(part.reply)
            # Batch and Part refer to each other: drop the frames now, not whenever the cyclic GC
            # runs, so that large observations' memory is reused at once (no fresh pages per step).
            part.reply = []
        self._send(self.front, batch.trainer, frames)

    def _expire(self, now: float) -> None:
        if self.last_seen or self.pinging:
            self._check_liveness(now)
        for batch in [b for b in self.batches.values() if b.deadline <= now]:
            for part in batch.parts:
                if not part.done:
                    self._part_failed(
                        part,
                        P.E_TIMEOUT,
                        f"no {batch.kind} reply within {batch.timeout:g} s from {part.worker.describe()} "
                        f"for slots {part.slots}",
                    )
        for pending in [p for p in self.pending_leases if p.deadline <= now]:
            self.pending_leases.remove(pending)
            self._error(self.front, pending.ident, pending.req, P.E_LEASE_TIMEOUT, self._lease_shortfall(pending))

    def _worker_lost(self, worker: WorkerRecord, why: str) -> None:
        if self.workers.get(worker.ident) is not worker:
            return  # already handled
        reason = f"{worker.describe()} was lost: {why}"
        log.warning(reason)
        leased = sum(self.slots[s].lease is not None for s in worker.slots)
        self.failures["workers_lost"] += 1
        self.failures["slots_lost"] += leased
        self.recent_losses.append(
            {
                "time": round(time.time(), 3),
                "worker": worker.name,
                "host": worker.host,
                "pid": worker.pid,
                "env_id": worker.env_id,
                "leased": leased,
                "why": why,
            }
        )
        for trainer in self.trainers.values():
            trainer.parts.clear()  # validated parts may name its slots
        self.workers.pop(worker.ident, None)
        self.last_seen.pop(worker.ident, None)
        for slot_id in worker.slots:
            slot = self.slots[slot_id]
            if slot.lease is None:
                del self.slots[slot_id]
            else:
                slot.lost = reason
        for key in [k for k in self.inflight if k[0] == worker.ident]:
            part = self.inflight.pop(key)
            self._part_failed(part, P.E_WORKER_LOST, reason)

    def worker_exited(self, pid: int, why: str) -> bool:
        """The process of a local worker is gone (embedded mode: its parent saw it exit): lose it now,
        not after the heartbeat expiry. Returns whether a worker with that pid ever registered."""
        for worker in [w for w in self.workers.values() if w.pid == pid]:
            self._worker_lost(worker, why)
        return pid in self.local_pids

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        workers = []
        for w in self.workers.values():
            slots = [self.slots[s] for s in w.slots]
            workers.append(
                {
                    "name": w.name,
                    "host": w.host,
                    "pid": w.pid,
                    "env_id": w.env_id,
                    "mode": w.mode,
                    "slots": len(slots),
                    "leased": sum(s.lease is not None for s in slots),
                    "busy": sum(s.busy is not None for s in slots),
                }
            )
        trainers = [
            {
                "name": t.name,
                "env_id": t.env_id,
                "slots": len(t.slots),
                "lost": sum(1 for s in t.slots if s in self.slots and self.slots[s].lost),
                "replaced": t.replaced,
            }
            for t in self.trainers.values()
        ]
        return {
            "broker": {
                "pid": os.getpid(),
                "frontend": self.frontend_addr,
                "backend": self.backend_addr,
                "uptime": round(time.time() - self.started, 1),
                "version": P.PROTOCOL_VERSION,
            },
            "workers": workers,
            "trainers": trainers,
            "pending_leases": len(self.pending_leases),
            "failures": {key: self.failures[key] for key in FAILURE_COUNTS},
            "recent_losses": list(self.recent_losses),
        }


def _is_timeout(value: Any, zero_ok: bool) -> bool:
    """A timeout from the wire: an int or float (not a bool) up to a day; 0 only where waiting is optional
    (a lease or replace that must be granted at once), never for a batched call."""
    return type(value) in (int, float) and (0 <= value if zero_ok else 0 < value) and value <= MAX_CALL_TIMEOUT


def _slot_info(slot: Slot) -> dict[str, Any]:
    """A slot as `leased` and `replaced` describe it to the trainer."""
    w = slot.worker
    return {"slot": slot.id, "worker": w.name, "host": w.host, "pid": w.pid, "index": slot.index, "mode": w.mode}


def serve(
    frontend: str,
    backend: str,
    *,
    parent_pid: int | None = None,
    max_message_size: int = -1,
    heartbeat_interval: float = P.HEARTBEAT_INTERVAL,
    heartbeat_liveness: int = P.HEARTBEAT_LIVENESS,
    curve: Any = None,
    bound: Any = None,
) -> None:
    """Process entry point: run a broker until SIGTERM/SIGINT (or until ``parent_pid`` exits).

    ``bound`` (an Event) is set once both addresses are bound; BindError if one cannot be.
    """
    broker = Broker(
        frontend,
        backend,
        parent_pid=parent_pid,
        max_message_size=max_message_size,
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        curve=curve,
    )
    if bound is not None:
        bound.set()
    broker.install_signal_handlers()
    broker.run()
