"""Local processes of an rlay deployment: an optional broker and groups of workers.

One mechanism serves the three ways rlay starts processes: embedded mode
(``RlayVectorEnv(env_fns)``: a private broker and workers over ipc),
``rlay up`` (a broker and the workers a config lists) and ``rlay worker``
(workers for a broker elsewhere). Every child stops on stop(), when the
interpreter exits, and when this process dies (children watch their parent).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gymnasium.vector.utils import CloudpickleWrapper

from rlay.errors import BrokerError, RlayError, RlayTimeoutError, SpacesMismatch, WorkerLostError, remote_env_error
from rlay.spaces import decode_space

__all__ = ["Cluster", "WorkerGroup", "Supervision", "EMBEDDED_ENV_ID"]

log = logging.getLogger("rlay.cluster")

EMBEDDED_ENV_ID = "embedded"
STOP_TIMEOUT = 5.0  # s a child gets to exit cleanly before it is killed
BROKER_START_TIMEOUT = 30.0  # s for a local broker process to bind its addresses
REPORT_WAIT = 0.5  # s to wait for a dead worker's report of why (it is sent before it exits)


@dataclass
class Supervision:
    """How ``rlay worker`` and ``rlay up`` restart workers that die: after ``delay`` s, doubling
    up to ``max_delay``, and at most ``max_restarts`` times per ``window`` s before giving up."""

    max_restarts: int = 5
    window: float = 60.0
    delay: float = 0.5
    max_delay: float = 30.0


class Restarts:
    """When to start again what died, under a Supervision policy: after ``delay`` s, doubling with each
    restart in the window up to ``max_delay``, at most ``max_restarts`` per ``window`` s; after that the
    label is given up on. Labels name what is supervised ("CartPole-v1#0", "arena#3")."""

    def __init__(self, policy: Supervision):
        self.policy = policy
        self.times: dict[str, list[float]] = {}  # label -> when it was restarted
        self.due: dict[str, float] = {}  # label -> when to restart it
        self.gave_up: set[str] = set()

    def died(self, label: str, now: float) -> float | None:
        """``label`` died: when to restart it (seconds from now), or None if it is given up on now."""
        policy = self.policy
        recent = [t for t in self.times.get(label, []) if now - t < policy.window]
        self.times[label] = recent
        if len(recent) >= policy.max_restarts:
            self.gave_up.add(label)
            return None
        delay = min(policy.max_delay, policy.delay * 2 ** len(recent))
        self.due[label] = now + delay
        return delay

    def ready(self, label: str, now: float) -> bool:
        """Whether ``label`` is due to start again now (it then counts as restarted)."""
        if label not in self.due or now < self.due[label]:
            return False
        del self.due[label]
        self.times.setdefault(label, []).append(now)
        return True

    def waiting(self, label: str) -> bool:
        return label in self.due

    def count(self, label: str) -> int:
        """Restarts of ``label`` within the window."""
        return len(self.times.get(label, []))

    @property
    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)


@dataclass
class WorkerGroup:
    """``len(env_fns)`` envs of one env id, ``envs_per_worker`` to a worker process."""

    env_id: str
    env_fns: Sequence[Callable]
    envs_per_worker: int = 1
    threads: int | None = None  # per worker, to step blocking envs concurrently (None: decided by timing them)
    # How the workers check their envs' observation spaces (workers.worker.check_spaces): "same", or
    # "different" / "custom" with the single space the trainer declares, which they register.
    observation_mode: str = "same"
    observation_space: Any = None


class Cluster:
    """Start a broker (when ``frontend`` is given) and worker processes for ``groups``."""

    def __init__(
        self,
        backend: str,
        groups: Sequence[WorkerGroup],
        *,
        frontend: str | None = None,
        inline_broker: bool = False,
        context: str | None = None,
        daemon: bool = True,
        register_timeout: float = 60.0,
        tmpdir: str | None = None,
        supervision: Supervision | None = None,
        broker_kwargs: dict | None = None,
        curve: Any = None,
        fleet: Any = None,
    ):
        """``fleet``: an rlay.fleet.Fleet of programs, started once the broker is up, tended while
        waiting and stopped first."""
        # Imported here: rlay (the trainer's package) only launches broker and workers.
        from workers.worker import worker_process

        self.frontend, self.backend, self.tmpdir = frontend, backend, tmpdir
        self.supervision = supervision  # None: a worker that dies stays dead (the embedded trainer raises)
        self.daemon = daemon
        self._worker_target = worker_process
        self._worker_args: dict[str, tuple] = {}
        self._first_env: dict[str, int] = {}  # per worker: the index of its first env in its group
        self._reports: dict[str, list] = {}  # per worker: what it reported when it died (see _reason)
        self.observation_mode = "same"  # (embedded: the trainer's, for the messages of SpacesMismatch)
        self.restarts = Restarts(supervision or Supervision())
        self._reported: set = set()  # dead worker processes the inline broker has been told of
        self.ctx = multiprocessing.get_context(context)
        self.errors = self.ctx.Queue()
        self.stopped = False
        parent = os.getpid()
        self.broker = None
        self._broker_bound = self.ctx.Event() if frontend is not None else None
        if frontend is not None:
            self.broker = self.ctx.Process(
                target=_broker_process,
                args=(frontend, backend, self._broker_bound, self.errors),
                kwargs={"parent_pid": parent, **(broker_kwargs or {})},
                name="rlay-broker",
                daemon=daemon,
            )
        self.workers: list[tuple[str, multiprocessing.Process]] = []
        for group in groups:
            for rank, start in enumerate(range(0, len(group.env_fns), group.envs_per_worker)):
                fns = CloudpickleWrapper(list(group.env_fns[start : start + group.envs_per_worker]))
                label = f"{group.env_id}#{rank}"
                self._worker_args[label] = (
                    fns,
                    backend,
                    group.env_id,
                    rank,
                    parent,
                    self.errors,
                    register_timeout,
                    group.threads,
                    curve,
                    tmpdir,
                    group.observation_mode,
                    group.observation_space,
                    inline_broker,  # (an embedded trainer raises the spaces errors its workers report)
                )
                self._first_env[label] = start
                self.workers.append((label, self._new_worker(label)))
        self.inline_broker = None  # embedded: a broker object the trainer's thread runs (rlay.client)
        self.fleet = fleet
        try:
            if self.broker is not None:
                self.broker.start()
                self._await_broker(frontend, backend)  # workers must not find another broker there
            for _, proc in self.workers:
                proc.start()
            if self.fleet is not None:
                self.fleet.start()
            if inline_broker:
                from broker.broker import Broker
                from broker.limits import Limits

                # Its workers are the trainer's own: as many envs as it was given, whatever the defaults.
                count = sum(len(group.env_fns) for group in groups)
                limits = Limits(
                    max_envs_per_worker=max(Limits.max_envs_per_worker, count), max_slots=max(Limits.max_slots, count)
                )
                self.inline_broker = Broker(None, backend, limits=limits)
        except BaseException:
            self.stop()
            raise

    def _await_broker(self, frontend: str, backend: str) -> None:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while not self._broker_bound.wait(0.05):
            if self.broker.exitcode is not None:
                try:
                    why = self.errors.get(timeout=2)[1]
                except Exception:
                    why = f"it exited with code {self.broker.exitcode}"
                raise BrokerError(f"the broker did not start: {why}")
            if time.monotonic() > deadline:
                raise RlayTimeoutError(
                    f"the broker did not bind {frontend} and {backend} within {BROKER_START_TIMEOUT:g} s"
                )

    def _new_worker(self, label: str) -> multiprocessing.Process:
        return self.ctx.Process(
            target=self._worker_target, args=self._worker_args[label], name=f"rlay-worker-{label}", daemon=self.daemon
        )

    @classmethod
    def embedded(
        cls,
        env_fns: Sequence[Callable],
        envs_per_worker: int,
        threads: int | None = None,
        observation_mode: str = "same",
        observation_space: Any = None,
        **kwargs,
    ) -> Cluster:
        """A private broker run by the trainer's own thread (no hop between them), and local
        worker processes over ipc sockets in a fresh temporary directory. ``observation_mode``:
        "same", or "different" / "custom" with ``observation_space``, the single space the trainer
        declares (WorkerGroup)."""
        tmpdir = tempfile.mkdtemp(prefix="rlay-")
        group = WorkerGroup(EMBEDDED_ENV_ID, env_fns, envs_per_worker, threads, observation_mode, observation_space)
        try:
            cluster = cls(f"ipc://{tmpdir}/workers", [group], inline_broker=True, tmpdir=tmpdir, **kwargs)
            cluster.observation_mode = observation_mode
            return cluster
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    @property
    def processes(self) -> list[multiprocessing.Process]:
        return ([self.broker] if self.broker is not None else []) + [p for _, p in self.workers]

    def check(self) -> None:
        """Raise if a child died: whoever waits on it would wait for nothing.

        Embedded, a worker that had registered is reported to the inline broker, which
        fails its calls at once with ``worker_lost`` (naming its envs, host and exit code):
        the trainer's ``on_worker_failure`` decides what follows. Under supervision
        (``on_worker_failure="replace"``) it is restarted. One that dies before it
        registers raises here, with its traceback (an env_fn that raises would only fail
        again), unless a signal killed it under supervision.
        """
        if self.stopped:
            return
        if self.supervision is not None and self.inline_broker is not None:
            self._kill_lost_workers()
        for label, proc in self.workers:
            if proc.exitcode is None or proc in self._reported:
                continue
            why = f"its process exited with code {proc.exitcode}"
            if self.inline_broker is not None and self.inline_broker.worker_exited(proc.pid, why):
                self._reported.add(proc)
            elif self.supervision is None or proc.exitcode >= 0 or label in self.restarts.gave_up:
                why, details = self._reason(label)
                mismatch = self._spaces_mismatch(label, details)
                if mismatch is not None:
                    raise mismatch
                if "type" in details:  # making its envs raised: that exception's own type, and where
                    raise remote_env_error(
                        str(details["type"]),
                        f"local worker {label} (pid {proc.pid}) could not make its envs: {details.get('message')}"
                        f"\n--- the worker's traceback ---{why[1:]}",
                        [{**details, "worker": label, "pid": proc.pid}],
                        str(details.get("module")),
                    )
                raise RlayError(f"local worker {label} (pid {proc.pid}) exited with code {proc.exitcode}{why}")
        if self.supervision is not None:
            self._supervise(time.monotonic())
            if self.restarts.gave_up:
                raise WorkerLostError(
                    f"local worker(s) {', '.join(sorted(self.restarts.gave_up))} died too often; not restarted again"
                )
        if self.broker is not None and self.broker.exitcode is not None:
            raise RlayError(f"the local broker (pid {self.broker.pid}) exited with code {self.broker.exitcode}")

    def _kill_lost_workers(self) -> None:
        """Embedded, under supervision: a worker that the inline broker counted lost while its process
        lives on (stopped, or stuck in C code holding the GIL so that it cannot even ping) will never
        serve again, and supervision restarts only processes that exit: kill it, so that it does."""
        registered = {worker.pid for worker in self.inline_broker.workers.values()}
        for label, proc in self.workers:
            if proc.exitcode is None and proc.pid in self.inline_broker.local_pids and proc.pid not in registered:
                log.warning(
                    "local worker %s (pid %s) was lost but its process lives on; killing it, to restart it",
                    label,
                    proc.pid,
                )
                proc.kill()

    def _reason(self, label: str) -> tuple[str, dict]:
        """What worker ``label`` reported before it died (workers.worker.worker_process): its traceback,
        as text to append to an error, and its details. Only its own report: the others wait for theirs."""
        deadline = time.monotonic() + REPORT_WAIT
        while True:
            try:
                who, *report = self.errors.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # (queue.Empty: none came in time)
                break
            self._reports.setdefault(who, report)
            if who == label:
                break
        report = self._reports.get(label)
        if report is None:
            proc = dict(self.workers).get(label)
            code = proc.exitcode if proc is not None else None
            why = f"killed by signal {-code}" if code is not None and code < 0 else "it reported nothing"
            return f" ({why})", {}
        return f":\n{report[0]}", (report[1] if len(report) > 1 else {})

    def _spaces_mismatch(self, label: str, details: dict) -> SpacesMismatch | None:
        """gymnasium's error for envs whose spaces do not batch, if that is why worker ``label`` died:
        its own envs differ (it says which), or the inline broker refused its registration because its
        spaces differ from those of a worker registered before it. As gymnasium does, the env named is
        one whose space differs from env 0's, where env 0's (its worker's) are known."""
        first = self._first_env.get(label, 0)
        if "which" in details:  # (compared with its own first env)
            env = first + int(details["env"])
            expected, actual = str(details["expected"]), str(details["actual"])
            return SpacesMismatch(details["which"], env, expected, actual, self.observation_mode, first)
        if "obs_space" not in details or self.inline_broker is None:
            return None
        group, rank = label.rsplit("#", 1)
        other = self.inline_broker.table.conflicting(group, details["obs_space"], details["act_space"])
        if other is None:
            return None
        theirs = {"obs_space": other.obs_space, "act_space": other.act_space}
        worker_0 = next((w for w in self.inline_broker.table.workers_of(group) if w.rank == 0), None)
        others_first = self._first_env.get(f"{group}#{other.rank}", first)
        if int(rank) == 0:
            reference, reference_env = details, 0
        elif worker_0 is not None:
            reference, reference_env = {"obs_space": worker_0.obs_space, "act_space": worker_0.act_space}, 0
        else:  # (env 0's worker has not registered yet: the one that did stands in for it)
            reference, reference_env = theirs, others_first
        if (details["obs_space"], details["act_space"]) != (reference["obs_space"], reference["act_space"]):
            odd, spaces = first, details
        else:
            odd, spaces = others_first, theirs
        key = "obs_space" if spaces["obs_space"] != reference["obs_space"] else "act_space"
        return SpacesMismatch(
            "observation" if key == "obs_space" else "action",
            odd,
            str(decode_space(reference[key])),
            str(decode_space(spaces[key])),
            self.observation_mode,
            reference_env,
        )

    def wait(self, should_stop: Callable[[], bool], poll: float = 0.25) -> int:
        """Block until ``should_stop()`` or every worker has exited; log children that die.

        Returns 0, or 1 if a child exited with an error.
        """
        reported: set[int] = set()

        def report() -> None:
            for proc in self.processes:
                if proc.exitcode not in (None, 0) and proc.pid not in reported:
                    reported.add(proc.pid)
                    log.error("%s (pid %s) exited with code %s", proc.name, proc.pid, proc.exitcode)

        while not should_stop():
            report()
            if self.broker is not None and self.broker.exitcode is not None:
                break
            if self.supervision is not None:
                self._supervise(time.monotonic())
            if self.fleet is not None:
                self.fleet.tend(time.monotonic())
            # Done when every worker and every program instance is down for good (exited unsupervised, or
            # given up on under supervision): nothing this command launched runs, and nothing will again.
            if (
                (self.workers or self.fleet is not None)
                and not self.restarts.due
                and all(
                    p.exitcode is not None and (self.supervision is None or label in self.restarts.gave_up)
                    for label, p in self.workers
                )
                and (self.fleet is None or self.fleet.down)
            ):
                break
            live = [p.sentinel for p in self.processes if p.exitcode is None]
            due = self.restarts.next_due
            wait = poll if due is None else max(0.0, min(poll, due - time.monotonic()))
            multiprocessing.connection.wait(live, timeout=wait)
        report()  # a child may have exited since the last look
        # Under supervision a worker that died and was restarted is not a failure; giving up is.
        failed = self.restarts.gave_up if self.supervision is not None else reported
        if self.fleet is not None:
            failed = failed | self.fleet.failed
        return 1 if failed else 0

    def _supervise(self, now: float) -> None:
        """Restart workers that died, after a growing delay, at most max_restarts per window."""
        for n, (label, proc) in enumerate(self.workers):
            if proc.exitcode is None or label in self.restarts.gave_up:
                continue
            if not self.restarts.waiting(label):
                delay = self.restarts.died(label, now)
                if delay is None:
                    log.error(
                        "worker %s died %d times in %g s; not restarting it again",
                        label,
                        self.restarts.count(label) + 1,
                        self.restarts.policy.window,
                    )
                else:
                    log.warning(
                        "worker %s (pid %s) exited with code %s; restarting it in %.1f s",
                        label,
                        proc.pid,
                        proc.exitcode,
                        delay,
                    )
            elif self.restarts.ready(label, now):
                replacement = self._new_worker(label)
                replacement.start()
                self.workers[n] = (label, replacement)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child (each then exits cleanly), wait, and kill what is left."""
        if self.stopped:
            return
        self.stopped = True
        if self.fleet is not None:  # (first: while the broker is up, its instances leave it cleanly)
            self.fleet.stop(timeout)
        if self.inline_broker is not None:
            self.inline_broker.close()  # tells its workers to disconnect
        procs = [p for p in self.processes if p.pid is not None]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                log.warning("%s (pid %s) did not stop within %g s; killing it", proc.name, proc.pid, timeout)
                proc.kill()
                proc.join(timeout)
        self.errors.close()
        self.errors.join_thread()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _broker_process(frontend: str, backend: str, bound: Any, errors: Any, **kwargs: Any) -> None:
    """A local broker process: serve(); an address it cannot bind goes to ``errors`` as one line."""
    import sys

    from broker.broker import BindError, serve

    try:
        serve(frontend, backend, bound=bound, **kwargs)
    except BindError as exc:
        errors.put(("broker", str(exc)))
        sys.exit(1)
