"""What a trainer does when a worker holding some of its envs is lost (protocol 5.13, 5.15;
docs/architecture.md, "Worker failures").

Under ``on_worker_failure="raise"`` a lost worker's failure is raised. Under ``"replace"`` the lost
rows move to free slots of the env id (or, from a broker that forgot the trainer, every row is leased
anew), the new envs are reset, and each row owes its trainer results that no worker will send. What
it owes depends on the autoreset mode and on whether the episode the trainer last saw of the row was
still running or had just ended (``done``: the last step result handed out was terminated or
truncated, and no reset came since), decided when the result is handed out, so that an episode is
never reported ended twice:

- ``owed_loss``: the loss is not reported yet (the new env's reset result waits here). At the row's
  next step: the truncation of its running episode (NextStep, Disabled), or of the new episode that a
  SameStep autoreset started; under NextStep, after an episode that had ended, the autoreset step
  itself, made from the new env's reset and marked ``worker_lost``; under Disabled, after an episode
  that had ended, nothing (the row's next reset uses the new env, and says ``worker_lost``).
- ``owed_reset``: under NextStep, at the step after a loss's truncation, the new env's reset result.

Rows on new slots whose new env has not been reset yet are ``awaiting_reset``: a replacement that an
error interrupted is finished before the next call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from gymnasium.vector.vector_env import AutoresetMode

from rlay import protocol as P
from rlay.errors import BrokerError, BrokerLostError, LeaseError, WorkerLostError, error_from_reply
from rlay.trainer.lease import rows_text
from rlay.trainer.obs_buffer import EnvResult
from rlay.trainer.transport import REPLY_GRACE, Transport
from rlay.wire import describe_failures

__all__ = ["Replacer", "WORKER_LOST_KEY"]

log = logging.getLogger("rlay.vector")

WORKER_LOST_KEY = "worker_lost"  # the info key that marks an env replaced after its worker was lost


class Replacer:
    """The worker-loss policy of one trainer (``settings.replace``: ``on_worker_failure == "replace"``)."""

    def __init__(self, transport: Transport):
        self.transport, self.lease, self.buffer = transport, transport.lease, transport.buffer
        self.settings = transport.settings
        self.owed_loss: dict[int, EnvResult] = {}
        self.owed_reset: dict[int, EnvResult] = {}
        self.awaiting_reset: set[int] = set()
        # Per row: the last step result handed to the user ended its episode, and no reset came since.
        self.done = np.zeros(len(self.lease.slots), dtype=np.bool_)
        # Over the trainer's life:
        self.envs_replaced = 0
        self.re_leases = 0  # times every row was leased anew from a broker that forgot the trainer

    @property
    def loss_truncations(self) -> int:
        """Truncations handed to the user because of a loss, over the trainer's life (kept by the
        transport, which reports it to the broker on the next call: protocol 5.8)."""
        return self.transport.loss_truncations

    @loss_truncations.setter
    def loss_truncations(self, count: int) -> None:
        self.transport.loss_truncations = count

    # -- the rows' debt -----------------------------------------------------------------

    def owes(self, row: int) -> bool:
        """Whether ``row``'s next step result is made here rather than by a worker."""
        return row in self.owed_loss or row in self.owed_reset

    def owed_rows(self) -> list[int]:
        return [*self.owed_reset, *self.owed_loss]

    def new_episode(self, row: int) -> bool:
        """``row`` was reset: nothing is left to report of an episode a lost worker ended. Returns
        whether a loss of the row was not reported yet (the reset then says ``worker_lost``)."""
        self.done[row] = False
        self.owed_reset.pop(row, None)
        return self.owed_loss.pop(row, None) is not None

    def check_steppable(self, rows: list[int]) -> None:
        """Under Disabled, refuse (as the lost worker would have, and SyncVectorEnv does) to step a row
        whose episode had ended when its worker was lost: its next reset uses the new env."""
        if self.settings.autoreset_mode != AutoresetMode.DISABLED:
            return
        ended = [r for r in rows if r in self.owed_loss and self.done[r]]
        if ended:
            raise AssertionError(
                f"env {ended[0]} was stepped after its episode ended; with autoreset_mode=Disabled, "
                "reset it first (reset(options={'reset_mask': ...})); its worker was lost meanwhile, and "
                "the reset uses the new env"
            )

    def handed_out(self, results: list[EnvResult]) -> None:
        """``results`` go to the user now (first-ready stepping): each row's episode ended or not,
        and the truncations reported because of a loss are counted."""
        for result in results:
            self.done[result.row] = result.terminated or result.truncated
            self.loss_truncations += result.loss

    def result(self, row: int) -> EnvResult:
        """The step result ``row`` is owed (the module's docstring). Its observation goes into the
        batch, which holds each env's last observation."""
        mode = self.settings.autoreset_mode
        if row in self.owed_reset:  # NextStep, the step after the loss's truncation: the new env's reset
            new = self.owed_reset.pop(row)
            result = EnvResult(row, new.obs, 0.0, False, False, new.info, None)
        else:
            new = self.owed_loss.pop(row)
            marker = {WORKER_LOST_KEY: True}
            if mode == AutoresetMode.SAME_STEP:
                # The episode running, or the one the step that ended the last began, is truncated. The
                # last observation seen stands in for the final one.
                result = EnvResult(
                    row, new.obs, 0.0, False, True, {**new.info, **marker}, (self.buffer.row_obs(row), {}), loss=True
                )
            elif mode == AutoresetMode.NEXT_STEP and self.done[row]:
                # Its episode had ended: this step is its autoreset, made from the new env's reset.
                result = EnvResult(row, new.obs, 0.0, False, False, {**new.info, **marker}, None)
            else:
                # (Disabled, ended: only if it was stepped against the rules while its worker was lost.)
                if mode == AutoresetMode.NEXT_STEP:
                    self.owed_reset[row] = new
                result = EnvResult(row, self.buffer.row(row), 0.0, False, True, marker, None, loss=True)
        self.buffer.set_row(row, result.obs)
        return result

    # -- losses -------------------------------------------------------------------------

    def lost_rows(self, head: dict, what: str) -> tuple[list[int], str]:
        """The rows of an answer's failed parts, and why, if every failure is a lost worker and lost
        envs are replaced; any other failure raises."""
        failures = head.get("failures") or []
        if not failures:
            return [], ""
        code, message = describe_failures(failures)
        if not self.settings.replace or any(f.get("code") != P.E_WORKER_LOST for f in failures):
            raise error_from_reply({**head, "code": code, "message": message}, what, self.lease)
        return self.lease.rows_of([s for f in failures for s in f.get("slots") or []]), self.lease.name_rows(message)

    def finish_interrupted(self) -> None:
        """Before a new call: finish a replacement that an error interrupted (its new envs not reset)."""
        if self.awaiting_reset:
            self.recover([], "an earlier replacement was interrupted")

    def recover(self, rows: list[int], cause: str, relet: bool = False) -> set[int]:
        """Give ``rows`` new envs after their worker was lost, and reset them; returns the rows reset.

        The broker moves the rows' LOST slots to free slots of the env id, waiting up to
        ``replace_timeout`` for some (a restarted worker registering). ``relet``: the broker
        restarted or forgot this trainer, so every row is leased anew. The reset results wait in
        ``owed_loss`` until each row's next step reports the loss (the module's docstring).
        """
        deadline = time.monotonic() + self.settings.replace_timeout
        replaced: set[int] = set()
        rows, first = sorted(rows), True
        while rows or relet or self.awaiting_reset:
            try:
                if rows or relet:
                    if not first and time.monotonic() >= deadline:
                        raise WorkerLostError(
                            f"envs {rows_text(rows)} could not be replaced within "
                            f"{self.settings.replace_timeout:g} s (replace_timeout): {cause}"
                        )
                    first = False
                    # A lost worker may still run: it must not write into the rows that hold its envs'
                    # last observations.
                    self.buffer.renew_token()
                    log.warning(
                        "replacing envs %s (waiting up to %.0f s for free slots) after: %s",
                        f"0-{len(self.lease.slots) - 1}" if relet else rows_text(rows),
                        deadline - time.monotonic(),
                        cause,
                    )
                    if relet:
                        self._lease_again(deadline, cause)
                    else:
                        self._move_slots(rows, deadline, cause)
                    rows, relet = [], False
                head, frames, what = self._reset_new_envs()
            except BrokerLostError as exc:
                if time.monotonic() >= deadline:
                    raise
                relet, cause = True, str(exc)
                continue
            for part_rows, body, part_frames in self.transport.split(head, frames, what):
                for result in self.buffer.results(part_rows, body, part_frames, keep=False):
                    row = result.row
                    self.awaiting_reset.discard(row)
                    # (lost again after its truncation was reported: that episode has ended, and
                    # this loss is reported as the loss of an ended episode)
                    self.owed_reset.pop(row, None)
                    self.owed_loss[row] = result
                    replaced.add(row)
            rows, cause = self.lost_rows(head, what)  # a new env lost in turn is replaced again
        self.envs_replaced += len(replaced)
        return replaced

    def _reset_new_envs(self) -> tuple[dict, list[Any], str]:
        rows = sorted(self.awaiting_reset)
        what = f"the reset of the new envs {rows_text(rows)}, replacing lost ones"
        # (as frames: the batch holds the lost envs' last observations, which their truncation reports)
        call = self.transport.send(
            P.RESET, np.asarray(rows), lambda g, r: ({"seeds": [None] * len(r), "options": None}, []), shared=False
        )
        head, frames = self.transport.await_answer(call.req, self.settings.timeout + REPLY_GRACE, what)
        if head[P.TYPE] == P.ERROR:
            raise error_from_reply(head, what, self.lease)
        return head, frames, what

    def _move_slots(self, rows: list[int], deadline: float, cause: str) -> None:
        """Ask the broker for free slots in place of the rows' LOST ones (`replace`, protocol 5.15)."""
        remaining = max(0.0, deadline - time.monotonic())
        what = f"free slots of {self.lease.env_id!r} to replace envs {rows_text(rows)}"
        req = self.transport.client.send(P.REPLACE, slots=[self.lease.slots[r] for r in rows], timeout=remaining)
        head, _ = self.transport.await_answer(req, remaining + REPLY_GRACE, what)
        if head[P.TYPE] == P.ERROR:
            if head.get("code") == P.E_LEASE_TIMEOUT:
                raise WorkerLostError(
                    f"no replacement came within {self.settings.replace_timeout:g} s (replace_timeout) for "
                    f"envs {rows_text(rows)}, lost with their worker: {cause}. "
                    f"The broker: {head.get('message')}"
                )
            raise error_from_reply(head, what, self.lease)  # (no_lease: a BrokerLostError, and a new lease)
        self.awaiting_reset.update(self.lease.move(head["replaces"], head["slots"]))

    def _lease_again(self, deadline: float, cause: str) -> None:
        """Lease every row anew from a broker that no longer knows this trainer (it restarted)."""
        client, num_envs = self.transport.client, len(self.lease.slots)
        remaining = max(0.0, deadline - time.monotonic())
        what = f"a new lease of {num_envs} slots of {self.lease.env_id!r} (the old lease is gone: {cause})"
        client.reconnect()  # (a new main connection: protocol 8.5)
        client.send(P.RELEASE)  # in case the broker still holds the old lease (answer dropped)
        req = client.send(P.LEASE, env_id=self.lease.env_id, num_envs=num_envs, timeout=remaining)
        # The broker may still be away: wait for it rather than fail on its silence.
        head, _ = client.wait(req, remaining + REPLY_GRACE, what, check_broker=False)
        if head[P.TYPE] == P.ERROR:
            raise LeaseError(f"{cause}; and the broker refused {what}: {head.get('message')}")
        if (head["obs_space"], head["act_space"]) != self.lease.spaces:
            raise BrokerError(f"{what}: the new slots' spaces differ from the old ones")
        client.leased(head)
        if client.heartbeat is not None:
            client.heartbeat.reset()
        self.transport.stash.clear()  # answers of the old lease: their envs are gone
        self.lease.renew(head["slots"])
        self.re_leases += 1
        self.awaiting_reset = set(range(num_envs))
