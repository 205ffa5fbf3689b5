"""First-ready stepping (envpool's send/recv): envs are stepped by id, and results come back as each
worker's part completes, fastest first, so a trainer never waits for the slowest env.

Each row is either idle, ``in_flight`` (sent, under the request id that carries it) or ``ready``
(its result received here, not yet handed out by recv()). Under ``on_worker_failure="replace"`` the
calls in flight are kept by request id: a reset lost with its worker is sent again to the new env.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from rlay import protocol as P
from rlay.errors import AlreadyPendingCallError, BrokerError, BrokerLostError, error_from_reply
from rlay.spaces import flatten
from rlay.trainer.lease import WorkerRows, rows_text
from rlay.trainer.obs_buffer import EnvResult
from rlay.trainer.replace import WORKER_LOST_KEY, Replacer
from rlay.trainer.transport import REPLY_GRACE, Call, Transport
from rlay.wire import encode_leaves

__all__ = ["FirstReady"]


class FirstReady:
    """The first-ready calls of one trainer over ``transport``."""

    def __init__(self, transport: Transport, replacer: Replacer, action_space: Any):
        self.transport, self.replacer, self.lease = transport, replacer, transport.lease
        self.settings = transport.settings
        self.action_space = action_space
        self.in_flight = transport.in_flight  # row -> the request id that carries it (the transport's own dict)
        self.ready: collections.deque[EnvResult] = collections.deque()
        self.calls: dict[int, Call] = {}  # under "replace": request id -> its call
        self.marked: set[int] = set()  # rows whose next reset result gets infos["worker_lost"]

    @property
    def busy(self) -> bool:
        """Whether some env is stepping or has a result not yet received (the hot path: no set)."""
        return bool(self.in_flight or self.ready)

    @property
    def unreceived(self) -> set[int]:
        """Envs sent and not yet handed back by recv(): still stepping, or with a result waiting here
        (a worker's reply can bring more results than one recv() returns)."""
        return set(self.in_flight).union(result.row for result in self.ready)

    def async_reset(self, seeds: list[int | None], options: dict[str, Any] | None) -> None:
        if self.busy:
            raise AlreadyPendingCallError(
                f"async_reset() while envs {rows_text(sorted(self.unreceived))} are "
                "stepping or have results not yet received: recv() them first",
                "send",
            )
        rows = np.arange(len(self.lease.slots))
        self.replacer.finish_interrupted()
        self._send(P.RESET, rows, lambda g, r: ({"seeds": [seeds[i] for i in r], "options": options}, []))

    def send(self, actions: Any, env_ids: Any) -> None:
        num_envs = len(self.lease.slots)
        ids = np.asarray(env_ids, dtype=np.int64).ravel()
        if len(set(ids.tolist())) != len(ids) or (len(ids) and (ids.min() < 0 or ids.max() >= num_envs)):
            raise ValueError(f"env_ids must be distinct env indices below {num_envs}, got {ids.tolist()}")
        busy = sorted(set(ids.tolist()) & self.unreceived)
        if busy:
            raise AlreadyPendingCallError(
                f"envs {busy} are still stepping or have a result not yet received: recv() it first", "send"
            )
        leaves = flatten(self.action_space, actions)
        for leaf in leaves:
            if len(leaf) != len(ids):
                raise ValueError(f"send() got {len(ids)} env ids but {len(leaf)} actions")
        position = {int(row): k for k, row in enumerate(ids)}
        mode = self.settings.autoreset_mode.value

        def body(group: WorkerRows, rows: list[int]):
            descriptors, frames = encode_leaves(leaves, np.asarray([position[r] for r in rows]))
            return {"autoreset": mode, "actions": descriptors}, frames

        self.replacer.finish_interrupted()
        # Replaced envs: their results are made here, once the others' request is sent (a request
        # that cannot be sent raises, and leaves every env as it was).
        owed = [r for r in ids.tolist() if self.replacer.owes(r)]
        if owed:
            self.replacer.check_steppable(owed)
            ids = np.asarray([r for r in ids.tolist() if r not in owed], dtype=np.int64)
        self._send(P.STEP, ids, body)
        self.ready.extend(self.replacer.result(r) for r in owed)

    def recv(self, batch_size: int | None, timeout: float | None) -> tuple:
        available = len(self.ready) + len(self.in_flight)
        batch_size = available if batch_size is None else batch_size
        if not 0 < batch_size <= available:
            raise ValueError(f"recv(batch_size={batch_size}) but {available} env result(s) are pending; send() first")
        wait = self.settings.timeout + REPLY_GRACE if timeout is None else timeout
        deadline = time.monotonic() + wait
        while len(self.ready) < batch_size:
            what = f"the first {batch_size} of envs {rows_text(sorted(self.in_flight))} to finish"
            try:
                head, frames = self.transport.next_first_ready(
                    set(self.in_flight.values()), max(0.0, deadline - time.monotonic()), what
                )
                failures = head.get("failures") or []
                if head[P.TYPE] == P.ERROR and not failures:  # the whole call was refused
                    error = error_from_reply(head, what, self.lease)
                    if not (isinstance(error, BrokerLostError) and self.settings.replace):  # (survived below)
                        req = head.get(P.REQ)
                        for row in [r for r, q in self.in_flight.items() if req is None or q == req]:
                            del self.in_flight[row]  # none of its envs is stepping
                    raise error
            except BrokerLostError as exc:
                if not self.settings.replace:
                    raise
                self._replace_in_flight([], str(exc), relet=True)
                continue
            if head[P.TYPE] == P.REPLY:
                self._take(head, frames)
            try:
                lost, cause = self.replacer.lost_rows(head, what)
            except Exception:  # failed envs are not stepping any more
                for failure in failures:
                    for slot in failure.get("slots", []):
                        self.in_flight.pop(self.lease.row_of_slot.get(slot), None)
                raise
            if lost:
                self._replace_in_flight(lost, cause)
        if self.calls:
            live = set(self.in_flight.values())
            self.calls = {req: call for req, call in self.calls.items() if req in live}
        results = [self.ready.popleft() for _ in range(batch_size)]
        self.replacer.handed_out(results)
        return self.transport.buffer.batch(results)

    def _send(self, kind: str, rows: np.ndarray, make_body) -> None:
        call = self.transport.send(kind, rows, make_body, gather=False)
        if call.req is None:
            return
        if self.settings.replace:
            self.calls[call.req] = call
        self.in_flight.update(dict.fromkeys(call.rows, call.req))

    def _take(self, head: dict, frames: list[Any]) -> None:
        for rows, body, part_frames in self.transport.split(head, frames, "a first-ready answer"):
            try:
                results = self.transport.buffer.results(rows, body, part_frames, keep=True)
            except BrokerError:  # a malformed reply is still an answer: these envs are not stepping
                for row in rows:
                    self.in_flight.pop(row, None)
                raise
            for result in results:
                self.in_flight.pop(result.row, None)
                self.ready.append(result)
                if self.settings.replace and "reward" not in body:  # a reset: a new episode
                    lost = self.replacer.new_episode(result.row)  # (a loss not yet reported says so here)
                    if result.row in self.marked:
                        self.marked.discard(result.row)
                        lost = True
                    if lost:
                        result.info = {**result.info, WORKER_LOST_KEY: True}

    def _replace_in_flight(self, rows: list[int], cause: str, relet: bool = False) -> None:
        """Replace envs lost while in flight. A lost step is reported as a truncation through recv();
        a lost reset is sent again to the new env."""
        calls = {row: self.calls.get(self.in_flight.pop(row, None)) for row in rows}
        generation = self.lease.generation
        try:
            self.replacer.recover(rows, cause, relet)
        finally:
            if self.lease.generation != generation:  # a new lease: every env in flight went with the old one
                calls.update({row: self.calls.get(req) for row, req in self.in_flight.items()})
                self.in_flight.clear()
        again: dict[int, list[int]] = {}
        for row, call in calls.items():
            if call is not None and call.kind == P.RESET:
                again.setdefault(id(call), []).append(row)
            else:
                self.ready.append(self.replacer.result(row))
        for resets in again.values():
            self._send(P.RESET, np.asarray(resets), calls[resets[0]].make_body)
            self.marked.update(resets)
