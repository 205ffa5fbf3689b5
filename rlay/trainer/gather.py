"""The synchronous API's calls (reset, step, call, set_attr): each answered in one gathered reply,
every part in, with the envs of a lost worker replaced on the way under ``on_worker_failure="replace"``
(a reset, call or set_attr is then sent again to the new envs; a step's lost envs owe their truncation,
rlay/trainer/replace.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlay import protocol as P
from rlay.errors import BrokerError, BrokerLostError, error_from_reply
from rlay.trainer.lease import rows_text
from rlay.trainer.obs_buffer import check_per_env
from rlay.trainer.replace import Replacer
from rlay.trainer.transport import REPLY_GRACE, Call, Transport
from rlay.values import WireError

__all__ = ["Gather", "Parts"]

Parts = list[tuple[list[int], dict, list[Any]]]  # a gathered answer: (rows, body, array frames) per part


class Gather:
    """Waits for the gathered calls of one trainer over ``transport``."""

    def __init__(self, transport: Transport, replacer: Replacer):
        self.transport, self.replacer, self.lease, self.buffer = transport, replacer, transport.lease, transport.buffer
        self.settings = transport.settings

    def finish(self, call: Call, timeout: float | None) -> tuple[Parts, set[int]]:
        """Wait for a gathered call's answer: [(rows, body, array frames) per part], and the rows
        whose envs were replaced meanwhile (a call other than step then ran again on them)."""
        if call.req is None:
            return [], set()
        what = f"the {call.kind} of envs {rows_text(sorted(call.rows))} on " + ", ".join(
            g.describe() for g in call.groups
        )
        wait = self.settings.timeout + REPLY_GRACE if timeout is None else timeout
        replacer, generation = self.replacer, self.lease.generation
        try:
            head, frames = self.transport.await_answer(call.req, wait, what)
            if head[P.TYPE] == P.ERROR:
                raise error_from_reply(head, what, self.lease)
        except BrokerLostError as exc:
            if not self.settings.replace:
                raise
            replies, lost = [], call.rows  # the old broker's answer will never come
            replaced = replacer.recover([], str(exc), relet=True)
        else:
            replies = self.transport.split(head, frames, what)
            lost, cause = replacer.lost_rows(head, what)
            replaced = replacer.recover(lost, cause) if lost else set()
        if self.lease.generation != generation and call.kind != P.STEP:
            replies, lost = [], call.rows  # a new lease replaced the envs that answered too
        if lost and call.kind != P.STEP:  # reset, call, set_attr: again, on the new envs
            try:
                resent = self.transport.send(call.kind, np.asarray(lost), call.make_body)
            except BrokerError as exc:  # (the new envs' rows may share one worker, and one larger frame)
                raise BrokerError(
                    f"{what} reached the other envs but could not be sent to the new envs {rows_text(lost)}, "
                    f"which replaced lost ones: {exc}"
                ) from None
            more, again = self.finish(resent, timeout)
            replies += more
            replaced |= again
        return replies, replaced

    def collect(self, call: Call, timeout: float | None, keys: tuple[str, ...]) -> tuple[dict[str, list], set[int]]:
        """Wait for a reset or step and copy observations into the batch (the one copy).

        Returns the body's other ``keys`` as columns indexed by env row (None
        where the call did not include that row), and the rows replaced meanwhile.
        """
        replies, replaced = self.finish(call, timeout)
        columns = {key: [None] * len(self.lease.slots) for key in keys}
        try:
            for rows, body, frames in replies:
                index = self.buffer.store(rows, self.buffer.decode(body["obs"], frames, len(rows)))
                check_per_env(body, keys, len(rows))
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
