"""The rlay broker: routes batched env calls from trainers to workers and back.

    >>> from broker.broker import Broker
    >>> Broker("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556").run()  # doctest: +SKIP

Two ROUTER sockets, one poll loop (the Majordomo broker of the ZeroMQ guide is the model). Workers
register env slots on the back end; trainers lease slots on the front end and send batched calls
(reset, step, call, set_attr), each ONE message with one *part* per worker. The broker fans the
parts out, gathers the replies and answers with ONE message. It decodes headers only: bodies and
array frames are forwarded as received.

The state lives in three collaborators: the slot table (broker/leases.py: slots, leases, pending
leases), the call book (broker/calls.py: the checks of a call, and the calls in flight) and
liveness (broker/liveness.py). This module owns the sockets and turns the loop: each handler reads
one message, asks its collaborators, and sends what they decide.

Slot states (docs/protocol.md, 7.1 "Slot states at the broker")::

    FREE --lease--> LEASED --batched call--> BUSY --reply--> LEASED
      ^               |                        (a timed-out call answers the trainer, but the
      +---release-----+                         slot stays BUSY until the worker's late reply)
                                 any state --worker lost--> LOST (until released)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import time
from dataclasses import asdict
from typing import Any

import zmq

from broker.calls import DEFAULT_CALL_TIMEOUT, NO_LEASE, CallBook, check_timeout
from broker.inline import INLINE, InlineFrontEnd
from broker.leases import SlotTable, check_registration
from broker.limits import Limits, TokenBucket
from broker.liveness import Liveness
from broker.metrics import Metrics, MetricsServer, prometheus_text, slots_by_env
from broker.records import Batch, Part, PendingLease, Refusal, WorkerRecord, slot_info
from broker.status import FailureLog, FleetReports, LogLimiter, table_report
from rlay import protocol as P
from rlay.heartbeat import HEARTBEAT_SUFFIX
from rlay.values import VersionError, WireError
from rlay.wire import decode_header, describe_failures, header, send_frames

__all__ = ["Broker", "BindError", "serve"]

log = logging.getLogger("rlay.broker")

DRAIN_BATCH = 256  # messages taken from one socket before looking at the other
POLLIN = int(zmq.POLLIN)
# What CURVE adds to each frame on the wire (a "\x07MESSAGE" command, an 8-byte nonce, a flags byte and
# a 16-byte MAC), where ZeroMQ's max_message_size applies: measured, a frame of limit - 33 bytes passes.
CURVE_FRAME_BYTES = 33
ALREADY_LEASED = "this connection already holds a lease; release it first"
REPLACE_SLOTS = "replace needs 'slots': a non-empty list of distinct ints"


class BindError(OSError):
    """The broker cannot listen on one of its addresses (in use, or not this host's)."""


class Broker:
    """Routes batched env calls between trainers (front end) and workers (back end).

    ``frontend=None`` makes an inline broker for embedded mode (see broker/inline.py).
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
        limits: Limits = Limits(),
        metrics: bool = True,
        metrics_address: str | None = None,
    ):
        """``metrics``: measure the calls routed (broker/metrics.py; off only to measure their cost);
        ``metrics_address`` (HOST:PORT): serve them to Prometheus there."""
        self.curve = curve  # rlay.security.Curve: both sockets encrypt, and let in only authorized keys
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_liveness = heartbeat_liveness
        self.parent_pid = parent_pid
        self.max_message_size = max_message_size
        self.limits = limits
        self.inline = frontend is None
        self.stopping = False
        self.closed = False
        self.started = time.time()
        self.table = SlotTable()
        self.calls = CallBook(self.table)
        self.liveness = Liveness(self.heartbeat_interval, heartbeat_liveness)
        self.failures = FailureLog()
        self.metrics = Metrics(metrics)
        self.metrics_server: MetricsServer | None = None
        self.fleet = FleetReports()
        self.limited_log = LogLimiter(log)
        self.registrations = TokenBucket(limits.registrations_per_second, limits.registration_burst)
        self.local_pids: set[int] = set()  # embedded: pids of the workers that ever registered
        self._deadlines: list[tuple[float, int, Batch | PendingLease]] = []  # a heap; finished entries stay
        self._deadline_seq = itertools.count()
        self.ctx = zmq.Context()
        self.authenticator = None
        try:
            self.authenticator = curve.start_authenticator(self.ctx) if curve is not None else None
            self.back = self._router(backend)
            self.backend_addr = self.back.getsockopt_string(zmq.LAST_ENDPOINT)
            self.poller = zmq.Poller()
            self.poller.register(self.back, zmq.POLLIN)
            if self.inline:  # the trainer in this process calls process_trainer() itself
                self.front = InlineFrontEnd()
                self.frontend_addr = INLINE
            else:
                self.front = self._router(frontend)
                self.frontend_addr = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
                self.poller.register(self.front, zmq.POLLIN)
            if metrics_address is not None:
                try:
                    self.metrics_server = MetricsServer(metrics_address)
                except OSError as exc:
                    raise BindError(f"cannot serve metrics on {metrics_address}: {exc}") from None
        except BaseException:  # (a bind that failed: nothing of this broker stays open)
            if self.authenticator is not None:
                self.authenticator.stop()
            self.ctx.destroy(linger=0)
            raise

    # The state, as the tests and the embedded trainer look at it.
    slots = property(lambda self: self.table.slots)
    workers = property(lambda self: self.table.workers)
    trainers = property(lambda self: self.table.trainers)
    recent_losses = property(lambda self: self.failures.recent_losses)

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

    # -- the loop ---------------------------------------------------------------------

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
        now = time.monotonic()
        self._expire(now)
        if self.metrics_server is not None and self.metrics_server.due(now):
            self.metrics_server.update(prometheus_text(self.status()), now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for worker in list(self.table.workers.values()):
            try:  # (quietly: a worker stopped with us, by the same Ctrl-C, may be gone already)
                send_frames(self.back, [worker.ident, header(P.DISCONNECT, reason="broker shutting down")], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("no disconnect for %s: %s", worker.describe(), exc)
        self.front.close()
        self.back.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.ctx.term()

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
            self.limited_log(
                "undeliverable", logging.WARNING, "could not deliver a message to peer %s: %s", ident.hex(), exc
            )
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
        log.debug("error to %s: [%s] %s", ident.hex(), code, message)
        self._send(sock, ident, [header(P.ERROR, req=req, code=code, message=message, **extra)])

    def _heartbeat(self, sock: zmq.Socket, ident: bytes, peers: dict) -> None:
        """Answer a ping, saying whether we know the peer (a worker or trainer we dropped or forgot must
        register or lease again)."""
        main = ident[: -len(HEARTBEAT_SUFFIX)] if ident.endswith(HEARTBEAT_SUFFIX) else ident
        self.liveness.ping(ident, main)
        try:  # (quietly: a ping connection the peer replaced, after a cut, is gone by the time we answer)
            send_frames(sock, [ident, header(P.HEARTBEAT, known=main in peers)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not answer a ping from %s: %s", ident.hex(), exc)

    def _poll_timeout_ms(self) -> int:
        while self._deadlines and not self._live(self._deadlines[0][2]):
            heapq.heappop(self._deadlines)
        if not self._deadlines:
            return P.IDLE_POLL_MS
        wait = (self._deadlines[0][0] - time.monotonic()) * 1000
        return max(0, min(P.IDLE_POLL_MS, int(wait) + 1))

    def _live(self, waiting: Batch | PendingLease) -> bool:
        if isinstance(waiting, Batch):
            return self.calls.batches.get(waiting.id) is waiting
        return self.table.pending.get(waiting.ident) is waiting

    def _expire(self, now: float) -> None:
        lost, probe = self.liveness.silent(now)
        whys = [(ident, f"no heartbeat for {silence:.1f} s") for ident, silence in lost]
        whys += [  # past the expiry: gone (its connection closed) or only cut off?
            (ident, f"no heartbeat for {silence:.1f} s, and its connection is gone")
            for ident, pinged_from, silence in probe
            if self._connection_gone(ident, pinged_from)
        ]
        for ident, why in whys:  # (each handler stops watching the peer)
            if ident in self.table.workers:
                self._worker_lost(self.table.workers[ident], why)
            elif ident in self.table.trainers or ident in self.table.pending:
                self._trainer_lost(ident, why)
        while self._deadlines and self._deadlines[0][0] <= now:
            waiting = heapq.heappop(self._deadlines)[2]
            if not self._live(waiting):
                continue
            if isinstance(waiting, Batch):
                for part in waiting.parts:
                    if not part.done:
                        self._part_failed(
                            part,
                            P.E_TIMEOUT,
                            f"no {waiting.kind} reply within {waiting.timeout:g} s "
                            f"from {part.worker.describe()} for slots {part.slots}",
                        )
            else:
                del self.table.pending[waiting.ident]
                self._error(self.front, waiting.ident, waiting.req, P.E_LEASE_TIMEOUT, self.table.shortfall(waiting))

    def _connection_gone(self, ident: bytes, pinged_from: bytes) -> bool:
        """Probe peer ``ident`` with an unasked answer at the socket it pings from (`known` as a ping would
        get it): ROUTER_MANDATORY makes the send fail with EHOSTUNREACH if ZeroMQ saw that connection close."""
        sock, peers = (
            (self.back, self.table.workers) if ident in self.table.workers else (self.front, self.table.trainers)
        )
        try:
            send_frames(sock, [pinged_from, header(P.HEARTBEAT, known=ident in peers)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno == zmq.EHOSTUNREACH
        return False

    def _until(self, waiting: Batch | PendingLease) -> None:
        heapq.heappush(self._deadlines, (waiting.deadline, next(self._deadline_seq), waiting))

    # -- trainers (front end) -----------------------------------------------------------

    def process_trainer(self, ident: bytes, frames: list[Any]) -> None:
        head = self._decode(self.front, ident, frames)
        if head is None:
            return
        kind = head[P.TYPE]
        if kind == P.HEARTBEAT:
            self._heartbeat(self.front, ident, self.table.trainers)
            return
        self.liveness.seen(ident)
        if kind in P.BATCH_CALLS:
            self._call(ident, head, frames[1:])
        elif kind == P.LEASE:
            self._lease(ident, head)
        elif kind == P.REPLACE:
            self._replace(ident, head)
        elif kind == P.RELEASE:
            self._release(ident)
            self._send(self.front, ident, [header(P.RELEASED, req=head.get(P.REQ))])
        elif kind == P.FLEET:
            self._fleet(ident, head)
        elif kind == P.STATUS:
            self._send(self.front, ident, [header(P.STATUS, req=head.get(P.REQ), **self.status())])
        else:
            self._error(self.front, ident, head.get(P.REQ), P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _fleet(self, ident: bytes, head: dict) -> None:
        """A supervisor's report of the programs it runs (rlay up): kept for `status`."""
        programs = FleetReports.check(head.get("programs"))
        if programs is None:
            self._error(
                self.front,
                ident,
                head.get(P.REQ),
                P.E_BAD_MESSAGE,
                "fleet needs 'programs': a list of maps with a str name and int counts (count, running, "
                "restarts, unregistered, given_up)",
            )
            return
        self.fleet.report(ident, programs)
        self._send(self.front, ident, [header(P.FLEET, req=head.get(P.REQ))])

    def _lease(self, ident: bytes, head: dict) -> None:
        req, env_id, num_envs = head.get(P.REQ), head.get("env_id"), head.get("num_envs")
        timeout = head.get("timeout", DEFAULT_CALL_TIMEOUT)
        if not isinstance(env_id, str) or type(num_envs) is not int or num_envs < 1:
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, "lease needs 'env_id' (str) and 'num_envs' (int >= 1)")
        elif not check_timeout(timeout, zero_ok=True):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"bad lease timeout {timeout!r}")
        elif ident in self.table.trainers or ident in self.table.pending:
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, ALREADY_LEASED)
        elif self._pending_refused(ident, req):
            return
        else:
            self._wait(PendingLease(ident, req, env_id, num_envs, timeout, time.monotonic() + timeout))

    def _replace(self, ident: bytes, head: dict) -> None:
        """Move LOST slots of a lease to FREE slots of its env id, waiting up to ``timeout`` for them."""
        req, lost, timeout = head.get(P.REQ), head.get("slots"), head.get("timeout", DEFAULT_CALL_TIMEOUT)
        trainer = self.table.trainers.get(ident)
        if trainer is None:
            self._error(self.front, ident, req, P.E_NO_LEASE, NO_LEASE)
            return
        if (
            not isinstance(lost, list)
            or not lost
            or not all(type(s) is int for s in lost)
            or len(set(lost)) != len(lost)
        ):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, REPLACE_SLOTS)
            return
        if not check_timeout(timeout, zero_ok=True):
            self._error(self.front, ident, req, P.E_BAD_MESSAGE, f"bad replace timeout {timeout!r}")
            return
        for slot_id in lost:
            slot = self.table.slots.get(slot_id)
            if slot is None or slot.lease != ident:
                self._error(self.front, ident, req, P.E_SLOT, f"slot {slot_id} is not leased to this trainer")
                return
            if slot.lost is None:
                self._error(
                    self.front, ident, req, P.E_SLOT, f"slot {slot_id} is not lost: only LOST slots are replaced"
                )
                return
        if ident not in self.table.pending and self._pending_refused(ident, req):
            return
        # A new replace supersedes one still pending: its trainer stopped waiting for it (an error or
        # an interrupt ended the wait), and asks again for what is lost now. The old one gets no answer.
        self._wait(PendingLease(ident, req, trainer.env_id, len(lost), timeout, time.monotonic() + timeout, lost))

    def _pending_refused(self, ident: bytes, req: Any) -> bool:
        if len(self.table.pending) < self.limits.max_pending_leases:
            return False
        self.failures.refusals["leases_too_many_pending"] += 1
        message = f"the broker already has {len(self.table.pending)} lease requests waiting (its max_pending_leases)"
        self.limited_log("pending", logging.WARNING, "refused a lease request: %s", message)
        self._error(self.front, ident, req, P.E_LIMIT, message)
        return True

    def _wait(self, pending: PendingLease) -> None:
        self.table.wait(pending)
        self._until(pending)
        if not self.inline:  # a trainer must ping while it waits for its lease and holds it
            self.liveness.watch(pending.ident)
        self._grant(pending.env_id)

    def _grant(self, env_id: str) -> None:
        """Grant what free slots of ``env_id`` can; a `leased` that cannot be delivered (its trainer died
        while waiting) is undone, which frees the slots for the next request."""
        while grants := self.table.grant_ready(env_id):
            undone = False
            for pending, granted in grants:
                if pending.replaces is not None:
                    self._replaced(pending, granted)
                    continue
                trainer = self.table.trainers[pending.ident]
                log.info("leased %d slots of %r to trainer %s", len(granted), env_id, trainer.name)
                first = granted[0].worker
                failed = self._send(
                    self.front,
                    pending.ident,
                    [
                        header(
                            P.LEASED,
                            req=pending.req,
                            trainer=trainer.name,
                            slots=[slot_info(s) for s in granted],
                            obs_space=first.obs_space,
                            act_space=first.act_space,
                            metadata=first.metadata,
                            render_mode=first.render_mode,
                            **self.announced(),
                        )
                    ],
                )
                if failed is not None:
                    self.table.release(pending.ident, undo=True)
                    self.liveness.forget(pending.ident)
                    undone = True
                    continue
                if trainer.re_leases:  # (each grant makes a new record: counted once per lease)
                    self.failures.counts["re_leases"] += 1
                    self.metrics.trainer_back(trainer.name)
                if not self.inline:
                    self.liveness.watch(pending.ident)
            if not undone:
                return

    def _replaced(self, pending: PendingLease, granted: list) -> None:
        trainer = self.table.trainers[pending.ident]
        self.calls.forget_parts(pending.ident)
        self.failures.counts["slots_replaced"] += len(granted)
        log.info("trainer %s: LOST slots %s replaced by %s", trainer.name, pending.replaces, [s.id for s in granted])
        self._send(
            self.front,
            pending.ident,
            [header(P.REPLACED, req=pending.req, replaces=pending.replaces, slots=[slot_info(s) for s in granted])],
        )

    def announced(self) -> dict[str, Any]:
        """What `registered` and `leased` tell a peer of this broker's settings: the heartbeat interval
        and liveness it expects (protocol 8.5), and, if there is a limit, max_message_size: the largest
        frame a peer may hand ZeroMQ (CURVE adds CURVE_FRAME_BYTES to each frame on the wire, where
        ZeroMQ applies the limit)."""
        settings = {"heartbeat_interval": self.heartbeat_interval, "heartbeat_liveness": self.heartbeat_liveness}
        if self.max_message_size >= 0:
            overhead = CURVE_FRAME_BYTES if self.curve is not None else 0
            settings["max_message_size"] = max(0, self.max_message_size - overhead)
        return settings

    def _trainer_lost(self, ident: bytes, why: str) -> None:
        """A trainer fell silent past the window: its lease (or pending lease) goes as by `release`."""
        trainer = self.table.trainers.get(ident)
        log.warning("trainer %s lost (%s); its slots are freed", trainer.name if trainer else ident.hex(), why)
        self.failures.counts["trainers_timed_out"] += 1
        if trainer is not None:
            trainer.timed_out += 1
        self._release(ident)

    def _release(self, ident: bytes) -> None:
        trainer = self.table.release(ident)
        self.liveness.forget(ident)
        if trainer is None:
            return
        self.calls.release(ident)
        self.metrics.trainer_left(trainer.name)
        log.info("trainer %s released %d slots", trainer.name, len(trainer.slots))
        self._grant(trainer.env_id)

    def _call(self, ident: bytes, head: dict, frames: list[Any]) -> None:
        """Check a batched call completely, then fan out one message per part."""
        try:
            batch, lost = self.calls.check(ident, head, frames, time.monotonic())
        except Refusal as refused:
            self._error(self.front, ident, head.get(P.REQ), refused.code, refused.message)
            return
        self.calls.open(batch)
        self._until(batch)
        for part in batch.parts:
            if part in lost:
                self._part_failed(part, P.E_WORKER_LOST, lost[part])
                continue
            self.calls.sent(part)
            failed = self._send(
                self.back, part.worker.ident, [header(batch.kind, req=batch.id, envs=part.envs), *part.frames]
            )
            part.frames = []
            if failed is None:
                continue
            if failed.errno == zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: the peer's connection is gone
                self._worker_lost(part.worker, "its connection is gone")
            else:  # its queue is full (EAGAIN): it has stopped reading, and is as good as gone
                self._worker_lost(part.worker, f"a send to it failed: {failed}")

    def _part_failed(self, part: Part, code: str, message: str, errors: list | None = None) -> None:
        if part.done:
            return
        self.failures.call_failed(code)
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
        finished = self.calls.finish(part)
        if finished and batch.gather:
            self._answer(batch, batch.parts)
        if self.metrics.enabled:  # (after the answer: the trainer need not wait for it)
            self._measure(part, finished)

    def _measure(self, part: Part, finished: bool) -> None:
        batch, now = part.batch, time.monotonic()
        step = batch.kind == P.STEP
        self.metrics.part_done(part.worker.name, step, len(part.slots), part.error is not None, now - batch.opened)
        if batch.first_done is None:
            batch.first_done = now
        trainer = self.table.trainers.get(batch.trainer)
        if finished and trainer is not None:
            replied = [p for p in batch.parts if p.error is None]
            self.metrics.batch_done(
                trainer.name,
                sum(len(p.slots) for p in replied) if step else 0,
                len(replied) < len(batch.parts),
                now - batch.opened,
                now - batch.first_done,
            )

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

    # -- workers (back end) -------------------------------------------------------------

    def process_worker(self, ident: bytes, frames: list[Any]) -> None:
        head = self._decode(self.back, ident, frames)
        if head is None:
            return
        kind = head[P.TYPE]
        if kind == P.HEARTBEAT:
            self._heartbeat(self.back, ident, self.table.workers)
            return
        self.liveness.seen(ident)
        if kind in (P.REPLY, P.ERROR):
            self._worker_reply(ident, head, frames[1:])
        elif kind == P.REGISTER:
            self._register(ident, head)
        elif kind == P.DISCONNECT:
            if ident in self.table.workers:
                self._worker_lost(self.table.workers[ident], "it disconnected")
        else:
            self._error(self.back, ident, head.get(P.REQ), P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _register(self, ident: bytes, head: dict) -> None:
        wait = self.registrations.take()
        if wait:
            rate = self.limits.registrations_per_second
            refused = Refusal(
                P.E_LIMIT,
                f"too many registrations: the broker takes {rate:g} a second; try again in {wait:.2f} s",
                "registrations_rate_limited",
                retry_after=round(wait, 3),
            )
            self._refuse_registration(ident, refused)
            return
        if ident in self.table.workers:  # registering again: it lost us (or we it); the old slots are gone
            self._worker_lost(self.table.workers[ident], "it registered again")
        try:
            fields = check_registration(head, self.limits, self.table)
        except Refusal as refused:
            self._refuse_registration(ident, refused)
            return
        again = ident in self.table.past_workers
        worker = self.table.register(ident, **fields)
        if again:  # a recovery: after a restart of ours, a loss, or a network cut (protocol 8.5)
            self.failures.counts["re_registrations"] += 1
        if self.inline:  # (its workers are the trainer's own children: a bounded set)
            self.local_pids.add(worker.pid)
        self.liveness.watch(ident)  # heartbeats are mandatory for workers
        log.info("registered %s: %d envs of %r", worker.describe(), len(worker.slots), worker.env_id)
        self._send(self.back, ident, [header(P.REGISTERED, worker=worker.name, slots=worker.slots, **self.announced())])
        self._grant(worker.env_id)

    def _refuse_registration(self, ident: bytes, refused: Refusal) -> None:
        if refused.counter is not None:  # over a limit: counted, and logged at most so often
            self.failures.refusals[refused.counter] += 1
            self.limited_log(refused.counter, logging.WARNING, "refused a registration: %s", refused.message)
        self._error(self.back, ident, None, refused.code, refused.message, **refused.extra)

    def _worker_reply(self, ident: bytes, head: dict, frames: list[Any]) -> None:
        req = head.get(P.REQ)
        part = self.calls.answered(ident, req)
        if part is None:
            self.limited_log(
                "unknown reply",
                logging.WARNING,
                "dropping a %s from peer %s for unknown request %r",
                head[P.TYPE],
                ident.hex(),
                req,
            )
            return
        if head[P.TYPE] == P.ERROR:
            errors = head.get("errors") if isinstance(head.get("errors"), list) else []
            slot_of = dict(zip(part.envs, part.slots))
            for err in errors:
                if (
                    isinstance(err, dict) and type(err.get("env")) is int and err["env"] in slot_of
                ):  # (a list would raise)
                    err["slot"] = slot_of[err["env"]]
            self._part_failed(part, str(head.get("code", P.E_ENV)), str(head.get("message", "")), errors)
        elif not part.done:
            part.reply = frames
            self._part_done(part)
        if any(slot.lease is None and slot.lost is None for slot in part.slot_objects):  # released meanwhile: FREE
            self._grant(part.worker.env_id)

    def _worker_lost(self, worker: WorkerRecord, why: str) -> None:
        if self.table.workers.get(worker.ident) is not worker:
            return  # already handled
        reason = f"{worker.describe()} was lost: {why}"
        leased = self.table.lose_worker(worker, reason)
        # A worker that leaves while no trainer holds its envs (rlay up stopping, a fleet shrinking)
        # is news, not trouble.
        log.log(logging.WARNING if leased else logging.INFO, reason)
        self.failures.worker_lost(worker, leased, why)
        self.metrics.worker_left(worker.name)
        self.calls.forget_parts()  # remembered parts may name its slots
        self.liveness.forget(worker.ident)
        for part in self.calls.in_flight_on(worker.ident):
            self._part_failed(part, P.E_WORKER_LOST, reason)

    def worker_exited(self, pid: int, why: str) -> bool:
        """The process of a local worker is gone (embedded mode: its parent saw it exit): lose it now,
        not after the heartbeat expiry. Returns whether a worker with that pid ever registered."""
        for worker in [w for w in self.table.workers.values() if w.pid == pid]:
            self._worker_lost(worker, why)
        return pid in self.local_pids

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `status` answer (protocol 5.7)."""
        broker = {
            "pid": os.getpid(),
            "frontend": self.frontend_addr,
            "backend": self.backend_addr,
            "uptime": round(time.time() - self.started, 1),
            "version": P.PROTOCOL_VERSION,
            "limits": asdict(self.limits),
        }
        return {
            "broker": broker,
            **table_report(self.table),
            "programs": self.fleet.status(self.table.workers.values()),
            **self.failures.report(),
            "metrics": self.metrics.report(),
            "slots_by_env": slots_by_env(self.table),
        }


def serve(frontend: str, backend: str, *, bound: Any = None, **kwargs: Any) -> None:
    """Process entry point: run a broker until SIGTERM/SIGINT (or until ``parent_pid`` exits).

    ``kwargs`` are Broker's. ``bound`` (an Event) is set once both addresses are bound; BindError if
    one cannot be.
    """
    broker = Broker(frontend, backend, **kwargs)
    if bound is not None:
        bound.set()
    broker.install_signal_handlers()
    broker.run()
