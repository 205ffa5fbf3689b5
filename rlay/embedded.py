"""A private broker and local workers over ipc, owned by one trainer process.

The children stop when the trainer calls close(), when the interpreter exits,
and when the trainer dies (each child watches its parent's pid).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from typing import Callable, Sequence

from gymnasium.vector.utils import CloudpickleWrapper

from rlay.errors import RlayError

__all__ = ["LocalCluster"]

log = logging.getLogger("rlay.embedded")

EMBEDDED_ENV_ID = "embedded"
STOP_TIMEOUT = 5.0  # s a child gets to exit cleanly before it is killed


class LocalCluster:
    """Starts ``ceil(len(env_fns) / envs_per_worker)`` worker processes and a broker process."""

    def __init__(
        self,
        env_fns: Sequence[Callable],
        envs_per_worker: int,
        *,
        context: str | None = None,
        daemon: bool = True,
    ):
        # Imported here: rlay (the trainer's package) only launches broker and workers.
        from broker.broker import serve
        from workers.worker import worker_process

        self.ctx = multiprocessing.get_context(context)
        self.tmpdir = tempfile.mkdtemp(prefix="rlay-")
        self.frontend = f"ipc://{self.tmpdir}/trainers"
        self.backend = f"ipc://{self.tmpdir}/workers"
        self.errors = self.ctx.Queue()
        self.stopped = False
        parent = os.getpid()
        self.broker = self.ctx.Process(
            target=serve, args=(self.frontend, self.backend), kwargs={"parent_pid": parent},
            name="rlay-broker", daemon=daemon,
        )
        self.workers = []
        for rank, start in enumerate(range(0, len(env_fns), envs_per_worker)):
            fns = CloudpickleWrapper(list(env_fns[start : start + envs_per_worker]))
            self.workers.append(
                self.ctx.Process(
                    target=worker_process,
                    args=(fns, self.backend, EMBEDDED_ENV_ID, rank, parent, self.errors),
                    name=f"rlay-worker-{rank}", daemon=daemon,
                )
            )
        self.broker.start()
        for proc in self.workers:
            proc.start()

    def check(self) -> None:
        """Raise if a child died: the trainer is waiting for something that will never come."""
        if self.stopped:
            return
        for rank, proc in enumerate(self.workers):
            if proc.exitcode is not None:
                raise RlayError(f"local worker {rank} (pid {proc.pid}) exited with code {proc.exitcode}{self._reason(rank)}")
        if self.broker.exitcode is not None:
            raise RlayError(f"the private broker (pid {self.broker.pid}) exited with code {self.broker.exitcode}")

    def _reason(self, rank: int) -> str:
        reasons = []
        while not self.errors.empty():
            try:
                reasons.append(self.errors.get_nowait())
            except Exception:
                break
        text = [tb for r, tb in reasons if r == rank] or [tb for _, tb in reasons]
        return f":\n{text[0]}" if text else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child (each then exits cleanly), wait, and kill what is left."""
        if self.stopped:
            return
        self.stopped = True
        procs = [self.broker, *self.workers]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout)
        for proc in procs:
            if proc.is_alive():
                log.warning("%s (pid %s) did not stop within %g s; killing it", proc.name, proc.pid, timeout)
                proc.kill()
                proc.join(timeout)
        self.errors.close()
        self.errors.join_thread()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
