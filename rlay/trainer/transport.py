"""Batched calls to the broker (protocol 5.8): one part per worker that hosts some of the rows, the
parts' bodies made per worker, and the answers, split back into rows."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.vector.vector_env import AutoresetMode

from rlay import protocol as P
from rlay.errors import BrokerError
from rlay.trainer.lease import Lease, WorkerRows
from rlay.trainer.obs_buffer import ObsBuffer
from rlay.values import WireError, packb
from rlay.wire import decode_body

__all__ = ["Call", "Settings", "Transport", "REPLY_GRACE"]

REPLY_GRACE = 5.0  # s the trainer waits past the broker's own deadline (the broker's error is more precise)

MakeBody = Callable[[WorkerRows, list[int]], tuple[dict, list]]


@dataclass(eq=False)
class Call:
    """A batched call sent to the broker: ``make_body`` builds each worker's part (and again on a retry)."""

    kind: str
    rows: list[int]
    make_body: MakeBody
    req: int | None = None  # None: nothing was sent (every row's result is made by the trainer)
    groups: list[WorkerRows] = field(default_factory=list)


@dataclass
class Settings:
    """The settings of a trainer that its collaborators read at each call: RlayVectorEnv's attributes
    of the same names (which may change between calls)."""

    timeout: float  # s, each call's, enforced by the broker
    replace_timeout: float  # s a replacement may wait for free slots
    autoreset_mode: AutoresetMode
    replace: bool  # on_worker_failure == "replace": lost envs are replaced, so calls are partial


class Transport:
    """A trainer's calls over its broker connection ``client``, for the rows of ``lease``."""

    def __init__(self, client: Any, lease: Lease, buffer: ObsBuffer, settings: Settings):
        self.client, self.lease, self.buffer, self.settings = client, lease, buffer, settings
        self.stash: collections.deque = collections.deque()  # first-ready answers that came during another wait
        self.in_flight: dict[int, int] = {}  # first-ready stepping: row -> the request id that carries it
        self.loss_truncations = 0  # truncations handed to the user because of a loss (rlay/trainer/replace.py)

    def send(self, kind: str, rows: np.ndarray, make_body: MakeBody, gather: bool = True, shared: bool = True) -> Call:
        """Send one batched call: one part per worker that hosts some of ``rows``.

        ``gather`` (the synchronous API) waits for every part in one reply; without it each
        part is answered as it completes (first-ready stepping). ``shared``: offer the
        shared-memory buffer for the observations of a reset or step.
        """
        call = Call(kind, rows.tolist(), make_body)
        wanted = set(call.rows)
        parts, frames = [], []
        for group in self.lease.groups:
            picked = [r for r in group.rows.tolist() if r in wanted]
            if not picked:
                continue
            body, arrays = make_body(group, picked)
            if shared and kind in (P.RESET, P.STEP):
                offer = self.buffer.offer(picked)
                if offer is not None:
                    body["shm"] = offer
            parts.append([[self.lease.slots[r] for r in picked], 1 + len(arrays)])
            frames.append(packb(body))
            frames.extend(arrays)
            call.groups.append(group)
        if not parts:
            return call
        flags = {"partial": True} if self.settings.replace else {}  # a failed part does not fail the call
        if not gather:
            flags["gather"] = False
        if self.loss_truncations:  # for the broker's status (on every call: a refused one does not count)
            flags["loss_truncations"] = self.loss_truncations
        call.req = self.client.send(kind, frames, parts=parts, timeout=self.settings.timeout, **flags)
        return call

    def await_answer(self, req: int, wait_s: float, what: str) -> tuple[dict, list[Any]]:
        """Wait for the answer to ``req``, keeping first-ready answers that come meanwhile for recv()."""
        others = set(self.in_flight.values())
        if not others:
            return self.client.wait(req, wait_s, what)
        deadline = time.monotonic() + wait_s
        while True:
            head, frames = self.client.wait(others | {req}, max(0.0, deadline - time.monotonic()), what)
            if head.get(P.REQ) in (req, None):
                return head, frames
            self.stash.append((head, frames))

    def next_first_ready(self, reqs: set[int], wait_s: float, what: str) -> tuple[dict, list[Any]]:
        """The next answer to a first-ready call: one that came during another wait, or a new one."""
        if self.stash:
            return self.stash.popleft()
        return self.client.wait(reqs, wait_s, what)

    def split(self, head: dict, frames: list[Any], what: str) -> list[tuple[list[int], dict, list[Any]]]:
        """An answer's parts: (rows, body, array frames) each."""
        try:
            out, offset = [], 0
            for slots, nframes in head["parts"]:
                rows = [self.lease.row_of_slot[s] for s in slots]
                body = decode_body(frames[offset])
                out.append((rows, body, frames[offset + 1 : offset + nframes]))
                offset += nframes
            return out
        except (WireError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise BrokerError(f"malformed reply to {what}: {exc}") from None
