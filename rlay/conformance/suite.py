"""`rlay conformance -- CMD [ARGS...]`: certify a worker implementation, in any language.

The worker under test hosts the conformance env (docs/protocol.md, Appendix B). The suite first
stands in for the broker itself (a raw ROUTER on the back-end address) to check registration,
heartbeats and the answers to malformed requests; then it starts a real broker there and drives
the worker as trainers do, comparing every result bit for bit with gymnasium's SyncVectorEnv over
the Python reference env (rlay/conformance/env.py); then it stops the worker, restarts the broker
and disconnects. docs/protocol.md, section 17, lists the checks.

The suite keeps one reference env per env index of the worker, and applies to it every call the
worker is sent, so that state carried across leases and registrations (episode counters, done
flags) is compared too.
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium.logger
import numpy as np
from gymnasium.spaces import GraphInstance
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from rlay import protocol as P
from rlay.conformance import cases
from rlay.conformance.compare import assert_same
from rlay.conformance.env import ENV_ID, ConformanceEnv
from rlay.conformance.harness import BrokerProcess, CheckFailed, RawBroker, WorkerProcess, wait_until
from rlay.errors import RemoteEnvError
from rlay.spaces import encode_space, leaf_spaces, unflatten
from rlay.values import packb
from rlay.wire import decode_body, decode_leaves, header

__all__ = ["Suite", "Result", "HEARTBEAT_INTERVAL", "HEARTBEAT_LIVENESS"]

# The broker the suite runs, and the settings it announces: not the defaults, so that a worker
# that ignores the announcement (protocol 5.3) is found.
HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS = 0.2, 5
RAW_INTERVAL, RAW_LIVENESS = 0.2, 4
RETRY_AFTER = 0.3  # s the raw broker tells the first registration to wait (code `limit`)
REGISTER_TIMEOUT = 30.0  # s for the worker under test to register
CALL_TIMEOUT = 15.0  # s for a call through the broker (a push game answers at its decision points)
ANSWER_TIMEOUT = 10.0  # s for an answer to a raw request
STEPS = 60  # steps compared per autoreset mode
DISABLED_MESSAGE = (
    "env {} was stepped after its episode ended; with autoreset_mode=Disabled, "
    "reset it first (reset(options={{'reset_mask': ...}}))"
)


@dataclass
class Result:
    name: str
    passed: bool | None  # None: not run (an earlier check it needs failed)
    why: str
    seconds: float


class _NotRun(Exception):
    pass


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Suite:
    """One conformance run of ``command`` (a worker of ``mode`` "command" or "push")."""

    def __init__(
        self,
        command: list[str],
        mode: str = P.COMMAND_MODE,
        log: Callable[[str], None] = print,
        keep_logs: bool = False,
    ):
        self.mode = mode
        self.log = log
        self.keep_logs = keep_logs
        self.dir = Path(tempfile.mkdtemp(prefix="rlay-conformance-"))
        self.front, self.back = free_address(), free_address()
        self.worker = WorkerProcess(command, self.back, self.dir / "worker.log")
        self.broker = BrokerProcess(
            self.front, self.back, HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, self.dir / "broker.log"
        )
        self.results: list[Result] = []
        self.mirrors: list[ConformanceEnv] = []  # the reference of each of the worker's envs
        self.registration: dict = {}
        self.rng = random.Random(0)
        self.blocked: str | None = None  # a failed check that the following ones need

    # -- running checks -------------------------------------------------------------

    def check(self, name: str, fn: Callable[[], str | None], needed: bool = False) -> bool:
        """Run one check: pass, fail (why), or not run when a needed one failed before."""
        start = time.monotonic()
        if self.blocked is not None:
            result = Result(name, None, f"not run: {self.blocked} failed", 0.0)
        else:
            try:
                why = fn() or ""
                result = Result(name, True, why, time.monotonic() - start)
            except (CheckFailed, AssertionError) as exc:
                result = Result(name, False, _one_line(str(exc)), time.monotonic() - start)
            except Exception as exc:  # the worker made the suite's own calls fail: also a failure
                result = Result(name, False, _one_line(f"{type(exc).__name__}: {exc}"), time.monotonic() - start)
            if needed and not result.passed:
                self.blocked = name
        self.results.append(result)
        mark = {True: "PASS", False: "FAIL", None: "----"}[result.passed]
        self.log(f"  {mark}  {name:<58} {result.seconds:5.1f} s  {result.why}".rstrip())
        return bool(result.passed)

    def run(self) -> bool:
        """Every check in order; True if all passed. Everything started is stopped."""
        self.log(f"rlay conformance: {self.mode} worker `{' '.join(self.worker.command)}`")
        self.log(
            f"  broker {self.back} (announcing heartbeats every {HEARTBEAT_INTERVAL} s, liveness "
            f"{HEARTBEAT_LIVENESS}); logs in {self.dir}"
        )
        # The env errors the checks provoke are expected: the trainer's report of them through
        # gymnasium's logger would only be noise here.
        level, gymnasium.logger.min_level = gymnasium.logger.min_level, gymnasium.logger.ERROR + 1
        try:
            self._raw_phase()
            self._broker_phase()
            self._lifecycle_phase()
        finally:
            gymnasium.logger.min_level = level
            self.worker.stop()
            self.broker.kill()
        ok = all(r.passed for r in self.results)
        failed = sum(r.passed is False for r in self.results)
        skipped = sum(r.passed is None for r in self.results)
        self.log(
            f"{len(self.results)} checks: {len(self.results) - failed - skipped} passed, {failed} failed"
            + (f", {skipped} not run" if skipped else "")
        )
        if not ok:
            tail = self.worker.log_tail()
            if tail:
                self.log("the worker's last output:\n" + "\n".join("  | " + line for line in tail.splitlines()))
            self.log(f"logs kept in {self.dir}")
        elif not self.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
        return ok

    # -- phase 1: a raw broker ---------------------------------------------------------

    def _raw_phase(self) -> None:
        raw = RawBroker(self.back, RAW_INTERVAL, RAW_LIVENESS)
        raw.alive = self._alive
        try:
            self.check("registers with the conformance env's spaces", lambda: self._register(raw), needed=True)
            self.check("told to wait (limit, retry_after), registers again then", lambda: self._retry(raw), needed=True)
            self.check("pings at the interval the broker announces", lambda: self._pings(raw))
            if self.mode == P.PUSH_MODE:
                self.check("refuses a step before an agent's first reset", lambda: self._step_before_reset(raw))
            self.check("answers malformed requests with the right error", lambda: self._malformed(raw))
            self.check("never answers an error or a heartbeat answer", lambda: self._unanswered(raw))
            self.check("serves a valid request after bad ones", lambda: self._valid_reset(raw), needed=True)
            self.check("forgotten, registers again and keeps the announced interval", lambda: self._forgotten(raw))
        finally:
            raw.close()

    def _alive(self) -> None:
        code = self.worker.exited()
        if code is not None:
            raise CheckFailed(f"the worker exited with code {code}")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """wait_until, failing at once if the worker exits meanwhile."""

        def alive_and(condition=condition):
            self._alive()
            return condition()

        return wait_until(alive_and, timeout, what)

    def _register(self, raw: RawBroker) -> str:
        self.worker.start()
        head = raw.expect_register(REGISTER_TIMEOUT)
        self.registration = head
        ident = head["routing_id"]
        problems = []
        expected = {
            "env_id": ENV_ID,
            "mode": self.mode,
            "obs_space": encode_space(ConformanceEnv.observation_space),
            "act_space": encode_space(ConformanceEnv.action_space),
            "metadata": ConformanceEnv.metadata,
        }
        for key, value in expected.items():
            got = head.get(key, P.COMMAND_MODE if key == "mode" else None)
            if got != value:
                problems.append(f"{key} is {got!r:.200}, expected {value!r:.200}")
        k = head.get("num_envs")
        if type(k) is not int or k < 2:
            problems.append(f"num_envs is {k!r}: the suite needs at least 2 envs")
        for key, kind in (("host", str), ("pid", int)):
            if not isinstance(head.get(key), kind):
                problems.append(f"{key} is {head.get(key)!r}, expected a {kind.__name__}")
        if head.get("render_mode") is not None:
            problems.append(f"render_mode is {head.get('render_mode')!r}, expected nil")
        if not 1 <= len(ident) <= 252 or ident[0] == 0 or ident.endswith(b"|hb"):
            problems.append(f"routing id {ident!r} breaks protocol 8.5 (1-252 bytes, no leading 00, no '|hb' end)")
        if problems:
            raise CheckFailed("; ".join(problems))
        self.mirrors = [ConformanceEnv() for _ in range(k)]
        raw.refuse_registration(RETRY_AFTER)
        return f"{k} envs, routing id of {len(ident)} bytes"

    def _retry(self, raw: RawBroker) -> str:
        refused = time.monotonic()
        head = raw.expect_register(REGISTER_TIMEOUT)
        waited = time.monotonic() - refused
        if head["routing_id"] != self.registration["routing_id"]:
            raise CheckFailed("the registration came again from another routing id")
        if waited < RETRY_AFTER * 0.9:
            raise CheckFailed(f"registered again after {waited:.2f} s; the broker said to wait {RETRY_AFTER} s")
        raw.registered(len(self.mirrors))
        return f"after {waited:.2f} s"

    def _pings(self, raw: RawBroker) -> str:
        raw.pump(2.0)
        settled = [t for t in raw.pings if t > raw.registered_at + RAW_INTERVAL * 1.5]
        if len(settled) < 3:
            raise CheckFailed(
                f"{len(settled)} pings in {2.0 - RAW_INTERVAL * 1.5:.1f} s after `registered` "
                f"announced an interval of {RAW_INTERVAL} s"
            )
        gaps = np.diff([raw.registered_at + RAW_INTERVAL * 1.5, *settled])
        if gaps.max() > 2 * RAW_INTERVAL:
            raise CheckFailed(f"a gap of {gaps.max():.2f} s between pings; the broker announced {RAW_INTERVAL} s")
        return f"median gap {np.median(gaps):.2f} s"

    def _step_before_reset(self, raw: RawBroker) -> str:
        k = len(self.mirrors)
        frames = cases.step_frames(k, np.zeros(k, np.int64), req=1)
        head, _ = raw.ask(frames, ANSWER_TIMEOUT, "a step before any reset")
        reports = head.get("errors") or []
        if (
            head[P.TYPE] != P.ERROR
            or head.get("code") != P.E_ENV
            or len(reports) != k
            or not all(r.get("type") == "RuntimeError" for r in reports)
        ):
            raise CheckFailed(
                f"expected an env_error with {k} RuntimeError reports (protocol 10.1 (c)), got {_describe(head)}"
            )
        return ""

    def _malformed(self, raw: RawBroker) -> str:
        wrong = []
        all_cases = cases.malformed(len(self.mirrors), self.mode)
        for case in all_cases:
            head, _ = raw.ask(case.frames, ANSWER_TIMEOUT, case.name)
            if head[P.TYPE] != P.ERROR or head.get("code") not in case.codes or head.get(P.REQ) != case.req:
                wrong.append(
                    f"{case.name}: got {_describe(head)}, expected error {'/'.join(case.codes)} req {case.req!r}"
                )
        if wrong:
            raise CheckFailed(f"{len(wrong)} of {len(all_cases)} wrong: " + "; ".join(wrong[:4]))
        return f"{len(all_cases)} requests"

    def _unanswered(self, raw: RawBroker) -> str:
        raw.sock.send_multipart([raw.worker, header(P.ERROR, req=3, code=P.E_BAD_MESSAGE, message="conformance")])
        raw.silent_for(0.5, "an `error` message")
        raw.sock.send_multipart([raw.worker, header(P.HEARTBEAT, known=True)])
        raw.silent_for(0.5, "a heartbeat answer on its main socket")
        return ""

    def _forgotten(self, raw: RawBroker) -> str:
        """The raw broker answers pings `known: false` (as a restarted broker does): the worker must send
        `register` again with its routing id (8.5); answered without heartbeat settings, it must keep the
        interval announced before (5.3)."""
        raw.forget()
        head = raw.expect_register(RAW_INTERVAL * RAW_LIVENESS * 3 + 5)
        if head["routing_id"] != self.registration["routing_id"]:
            raise CheckFailed("it registered again from another routing id (protocol 8.5 keeps the id)")
        raw.registered(len(self.mirrors), announce=False)
        raw.pings.clear()
        raw.pump(2.0)
        gaps = np.diff([raw.registered_at, *raw.pings])
        if len(raw.pings) < 3 or gaps.max() > 2 * RAW_INTERVAL:
            raise CheckFailed(
                f"{len(raw.pings)} pings in 2 s after a `registered` without heartbeat settings "
                f"(largest gap {gaps.max():.2f} s): it must keep the {RAW_INTERVAL} s announced before"
            )
        return ""

    def _valid_reset(self, raw: RawBroker) -> str:
        k = len(self.mirrors)
        seeds = [11 + i for i in range(k)]
        body = {"seeds": seeds, "options": None}
        head, frames = raw.ask(
            [header(P.RESET, req=9, envs=list(range(k))), packb(body)], ANSWER_TIMEOUT, "a valid reset"
        )
        expected = [env.reset(seed=s) for env, s in zip(self.mirrors, seeds)]
        if head[P.TYPE] != P.REPLY or head.get(P.REQ) != 9:
            raise CheckFailed(f"expected a reply to req 9, got {_describe(head)}")
        reply = decode_body(frames[0])
        space = ConformanceEnv.observation_space
        leaves = decode_leaves(reply.get("obs"), frames[1:], leaf_spaces(space), k)
        obs = unflatten(space, leaves)
        for i, (obs_i, info_i) in enumerate(expected):
            for key in obs_i:
                assert_same(np.array(obs[key][i]), np.asarray(obs_i[key], space[key].dtype), f"env {i} obs[{key!r}]")
            assert_same(reply["info"][i], info_i, f"env {i} info")
        return ""

    # -- phase 2: a real broker ----------------------------------------------------------

    def _broker_phase(self) -> None:
        self.check("registers again with a new broker at its address", self._reregister_with_broker, needed=True)
        self.check("stays registered at the broker's heartbeat interval", self._stays_registered)
        self.check("leases with the reference spaces and metadata", self._lease_spaces)
        self.check("resets with seeds (64-bit and big-int) and options", self._resets)
        for mode in AutoresetMode:
            self.check(f"steps like SyncVectorEnv, autoreset {mode.value}", functools.partial(self._steps, mode))
        self.check("masked resets", self._masked_resets)
        self.check("first-ready stepping (send/recv)", self._first_ready)
        self.check("the Disabled-mode error, in full", self._disabled_error)
        if self.mode == P.COMMAND_MODE:
            self.check("env errors are reported, and the worker serves on", self._env_errors)
        self.check("call and set_attr: answered, or refused as NotImplementedError", self._calls)

    def _reregister_with_broker(self) -> str:
        self.broker.start()
        pid = self.registration["pid"]
        self.wait(
            lambda: [w["pid"] for w in self.broker.workers()] == [pid],
            REGISTER_TIMEOUT,
            "the worker to register with the broker that took the raw broker's place",
        )
        return ""

    def _stays_registered(self) -> str:
        time.sleep(2.0)  # ten intervals of idling: what is checked is that nothing happens meanwhile
        status = self.broker.status()
        if status["failures"]["workers_lost"] or len(status["workers"]) != 1:
            raise CheckFailed(f"the worker was lost while idle: {status['recent_losses'][-1:]}")
        return ""

    @contextlib.contextmanager
    def lease(self, mode: AutoresetMode = AutoresetMode.NEXT_STEP) -> Iterator[tuple[Any, SyncVectorEnv]]:
        """A lease of every env of the worker, and SyncVectorEnv over their reference envs."""
        from rlay import RlayVectorEnv

        envs = RlayVectorEnv.remote(
            ENV_ID,
            len(self.mirrors),
            broker=self.front,
            timeout=CALL_TIMEOUT,
            lease_timeout=CALL_TIMEOUT,
            autoreset_mode=mode,
        )
        sync = SyncVectorEnv([functools.partial(lambda env: env, env) for env in self.mirrors], autoreset_mode=mode)
        try:
            yield envs, sync
        finally:
            envs.close()

    def _lease_spaces(self) -> str:
        with self.lease() as (envs, sync):
            assert envs.single_observation_space == sync.single_observation_space, envs.single_observation_space
            assert envs.single_action_space == sync.single_action_space, envs.single_action_space
            metadata = {k: v for k, v in envs.metadata.items() if k != "autoreset_mode"}
            assert metadata == ConformanceEnv.metadata, f"metadata {metadata} != {ConformanceEnv.metadata}"
            assert envs.render_mode is None, f"render_mode {envs.render_mode!r}"
        return ""

    def _seeds(self) -> list[int | None]:
        base = [2**64 + 3, 2**100 + 7, 5, None, 2**63, 0]
        return [base[i % len(base)] for i in range(len(self.mirrors))]

    def _resets(self) -> str:
        # A graph (ext 5) among the options: the env ignores it, but the worker must read it (3.3).
        graph = GraphInstance(np.array([[1.5]], np.float32), np.zeros(1, np.int64), np.zeros((1, 2), np.int32))
        with self.lease() as (envs, sync):
            assert_same(
                envs.reset(seed=self._seeds(), options={"start": 3, "graph": graph}),
                sync.reset(seed=self._seeds(), options={"start": 3, "graph": graph}),
                "reset(seed=[...])",
            )
            assert_same(envs.reset(seed=123), sync.reset(seed=123), "reset(seed=123)")
            assert_same(envs.reset(), sync.reset(), "reset()")
        return ""

    def _run_steps(self, envs, sync, steps: int, what: str, masked_resets: bool = False) -> int:
        """Step both with the same random actions; returns the episodes that ended."""
        ended = 0
        for t in range(steps):
            actions = np.array([self.rng.randrange(3) for _ in self.mirrors], dtype=np.int64)
            expected = sync.step(actions)
            assert_same(envs.step(actions), expected, f"{what}, step {t}")
            done = expected[2] | expected[3]
            ended += int(done.sum())
            if masked_resets and done.any():
                options = {"reset_mask": done.copy(), "start": -1}
                assert_same(
                    envs.reset(options=dict(options)),
                    sync.reset(options=dict(options)),
                    f"{what}, masked reset after step {t}",
                )
        return ended

    def _steps(self, mode: AutoresetMode) -> str:
        with self.lease(mode) as (envs, sync):
            assert_same(envs.reset(seed=7), sync.reset(seed=7), "reset")
            ended = self._run_steps(envs, sync, STEPS, mode.value, masked_resets=mode == AutoresetMode.DISABLED)
        return f"{STEPS} steps, {ended} episodes ended"

    def _masked_resets(self) -> str:
        with self.lease() as (envs, sync):
            assert_same(envs.reset(seed=3), sync.reset(seed=3), "reset")
            self._run_steps(envs, sync, 5, "NextStep")
            for n, mask in enumerate(([True, False], [False, True])):
                full = np.array([mask[i % 2] for i in range(len(self.mirrors))])
                options = {"reset_mask": full, "start": n + 1}  # the worker receives {"start": ...} (protocol 5.9)
                assert_same(
                    envs.reset(seed=[40 + i for i in range(len(self.mirrors))], options=dict(options)),
                    sync.reset(seed=[40 + i for i in range(len(self.mirrors))], options=dict(options)),
                    f"masked reset {n}",
                )
                self._run_steps(envs, sync, 3, f"after masked reset {n}")
        return ""

    def _first_ready(self) -> str:
        k = len(self.mirrors)
        singles = [_NextStepEnv(env) for env in self.mirrors]
        expected: dict[int, tuple] = {}
        with self.lease() as (envs, _):
            envs.async_reset(seed=[60 + i for i in range(k)])
            for i, single in enumerate(singles):
                expected[i] = single.reset(seed=60 + i)
            received = len(self._receive(envs, expected, k))
            idle = list(range(k))
            for _ in range(12):
                chosen = sorted(self.rng.sample(idle, self.rng.randrange(1, len(idle) + 1))) if idle else []
                if chosen:
                    actions = np.array([self.rng.randrange(3) for _ in chosen], dtype=np.int64)
                    envs.send(actions, chosen)
                    for j, a in zip(chosen, actions):
                        expected[j] = singles[j].step(a)
                    idle = [j for j in idle if j not in chosen]
                if not expected:
                    continue
                got = self._receive(envs, expected, self.rng.randrange(1, len(expected) + 1))
                idle.extend(got)
                received += len(got)
            if expected:
                received += len(self._receive(envs, expected, len(expected)))
        return f"{received} env results"

    def _receive(self, envs, expected: dict[int, tuple], batch_size: int) -> list[int]:
        """recv(batch_size) and compare each env's result with the reference's; returns their env ids."""
        obs, rewards, terminations, truncations, infos = envs.recv(batch_size)
        ids = [int(i) for i in infos["env_id"]]
        rows = [expected.pop(j) for j in ids]
        shim = _Batch(len(ids))
        want_infos: dict = {}
        for n, row in enumerate(rows):
            want_infos = shim._add_info(want_infos, row[4], n) if row[4] else want_infos
        want_infos["env_id"] = np.array(ids, dtype=np.int32)
        space = ConformanceEnv.observation_space
        want = (
            {key: np.stack([np.asarray(row[0][key], space[key].dtype) for row in rows]) for key in obs},
            np.array([row[1] for row in rows], dtype=np.float64),
            np.array([row[2] for row in rows], dtype=np.bool_),
            np.array([row[3] for row in rows], dtype=np.bool_),
            want_infos,
        )
        assert_same((obs, rewards, terminations, truncations, infos), want, f"recv() of envs {ids}")
        return ids

    def _disabled_error(self) -> str:
        with self.lease(AutoresetMode.DISABLED) as (envs, sync):
            assert_same(envs.reset(seed=17), sync.reset(seed=17), "reset")
            for t in range(200):
                actions = np.array([self.rng.randrange(3) for _ in self.mirrors], dtype=np.int64)
                expected = sync.step(actions)
                assert_same(envs.step(actions), expected, f"step {t}")
                done = np.flatnonzero(expected[2] | expected[3])
                if done.size:
                    break
            else:
                raise CheckFailed("no episode ended in 200 steps")
            actions = np.zeros(len(self.mirrors), dtype=np.int64)
            try:
                envs.step(actions)
            except AssertionError as exc:
                caught = exc
            else:
                raise CheckFailed(f"stepping envs {done.tolist()} after their episode ended raised nothing")
            reports = {d["env"]: d for d in getattr(caught, "details", [])}
            for i in done.tolist():
                report = reports.get(i)
                if report is None or report.get("message") != DISABLED_MESSAGE.format(i):
                    raise CheckFailed(
                        f"env {i}: expected the report {DISABLED_MESSAGE.format(i)!r}, got {report!r:.300}"
                    )
            # The other envs did step (protocol 6.4): so do their reference envs.
            for i, env in enumerate(self.mirrors):
                if i not in done:
                    env.step(0)
            assert_same(envs.reset(seed=18), sync.reset(seed=18), "reset after the error")
        return f"envs {done.tolist()}"

    def _env_errors(self) -> str:
        k = len(self.mirrors)
        with self.lease() as (envs, sync):
            assert_same(envs.reset(seed=21), sync.reset(seed=21), "reset")
            mask = np.array([i == 1 for i in range(k)])
            try:
                envs.reset(options={"reset_mask": mask, "fail": True})
            except ValueError as exc:
                _expect_rows(exc, [1], "a reset that raises")
            else:
                raise CheckFailed("a reset with options {'fail': True} raised nothing")
            actions = np.array([7] + [1] * (k - 1), dtype=np.int64)
            try:
                envs.step(actions)
            except ValueError as exc:
                _expect_rows(exc, [0], "a step with an action out of the space")
            else:
                raise CheckFailed("a step with action 7 raised nothing")
            for env in self.mirrors[1:]:  # the other envs stepped (protocol 6.4)
                env.step(1)
            assert_same(envs.reset(seed=22), sync.reset(seed=22), "reset after the errors")
            self._run_steps(envs, sync, 3, "steps after the errors")
        return ""

    def _calls(self) -> str:
        k = len(self.mirrors)
        with self.lease() as (envs, sync):
            assert_same(envs.reset(seed=31), sync.reset(seed=31), "reset")
            try:
                got = envs.get_attr("episode")
            except NotImplementedError as exc:
                _expect_rows(exc, list(range(k)), "get_attr")
                try:
                    envs.set_attr("conformance_mark", list(range(k)))
                except NotImplementedError as refused:
                    _expect_rows(refused, list(range(k)), "set_attr")
                else:
                    raise CheckFailed("get_attr was refused but set_attr was not")
                outcome = "refused"
            else:
                if self.mode == P.PUSH_MODE:
                    raise CheckFailed(f"a push worker answered get_attr with {got!r}; protocol 10.1 (c) refuses it")
                assert_same(got, tuple(env.episode for env in self.mirrors), "get_attr('episode')")
                envs.set_attr("conformance_mark", list(range(k)))
                assert_same(envs.get_attr("conformance_mark"), tuple(range(k)), "get_attr after set_attr")
                outcome = "answered"
            self._run_steps(envs, sync, 3, "steps after call/set_attr")
        return outcome

    # -- phase 3: stop, restart, disconnect ----------------------------------------------

    def _lifecycle_phase(self) -> None:
        self.check("a stopped worker is lost; continued, it registers again", self._stop_and_continue)
        self.check("after a broker restart it registers again, envs intact", self._broker_restart)
        self.check("on SIGTERM it sends `disconnect` and exits 0", self._sigterm)
        self.check("the broker's `disconnect` stops it (exit 0)", self._broker_disconnect)

    def _resume(self, what: str) -> None:
        """The worker registered again with its envs as they were: a lease goes on where the last left off."""
        pid = self.registration["pid"]
        self.wait(
            lambda: [w["pid"] for w in self.broker.workers()] == [pid],
            REGISTER_TIMEOUT,
            f"the worker (pid {pid}) to register again {what}",
        )
        with self.lease() as (envs, sync):
            assert_same(
                envs.reset(seed=[70 + i for i in range(len(self.mirrors))]),
                sync.reset(seed=[70 + i for i in range(len(self.mirrors))]),
                f"reset {what}",
            )
            self._run_steps(envs, sync, 5, f"steps {what}")

    def _stop_and_continue(self) -> str:
        self.worker.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            self.wait(
                lambda: not self.broker.workers(),
                HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS + 5,
                "the broker to lose the stopped worker",
            )
            noticed = time.monotonic() - stopped
            why = self.broker.status()["recent_losses"][-1]["why"]
            assert why.startswith("no heartbeat"), f"lost for another reason: {why}"
        finally:
            self.worker.signal(signal.SIGCONT)
        self._resume("after SIGCONT")
        return f"lost after {noticed:.1f} s"

    def _broker_restart(self) -> str:
        self.broker.kill()
        self.broker.start()
        self._resume("after the broker restarted")
        return ""

    def _sigterm(self) -> str:
        name = self.broker.workers()[0]["name"]
        self.worker.signal(signal.SIGTERM)
        code = self.worker.wait_exit(15, "SIGTERM")
        loss = wait_until(
            lambda: [x for x in self.broker.status()["recent_losses"] if x["worker"] == name],
            5,
            "the broker to drop the worker",
        )
        assert loss[-1]["why"] == "it disconnected", f"the broker lost it because {loss[-1]['why']}, not a disconnect"
        assert code == 0, f"exit code {code}"
        return ""

    def _broker_disconnect(self) -> str:
        self.worker.start()
        self.wait(lambda: len(self.broker.workers()) == 1, REGISTER_TIMEOUT, "the restarted worker to register")
        self.broker.terminate()
        code = self.worker.wait_exit(15, "the broker's `disconnect`")
        assert code == 0, f"exit code {code}"
        return ""


class _Batch(VectorEnv):
    """gymnasium's info batching (VectorEnv._add_info) for a batch of ``num_envs`` envs."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs


class _NextStepEnv:
    """One env under NextStep autoreset, as a worker runs it (protocol 6.2): each result with the
    env's own info, as first-ready stepping batches them."""

    def __init__(self, env: ConformanceEnv):
        self.env, self.done = env, False

    def reset(self, seed: int | None = None) -> tuple:
        obs, info = self.env.reset(seed=seed)
        self.done = False
        return obs, 0.0, False, False, info

    def step(self, action: int) -> tuple:
        if self.done:
            return self.reset()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.done = terminated or truncated
        return obs, float(reward), bool(terminated), bool(truncated), info


def _expect_rows(exc: BaseException, rows: list[int], what: str) -> None:
    """``exc`` is an env error naming exactly ``rows`` (each env index of the worker, here equal to its row)."""
    if not isinstance(exc, RemoteEnvError):
        raise CheckFailed(f"{what}: raised {type(exc).__name__}: {exc}") from None
    named = sorted(d.get("row") for d in exc.details)
    if named != rows:
        raise CheckFailed(f"{what}: the error names envs {named}, expected {rows}")


def _describe(head: dict) -> str:
    if head.get(P.TYPE) == P.ERROR:
        return f"error {head.get('code')!r} req {head.get(P.REQ)!r} ({str(head.get('message'))[:80]})"
    return f"{head.get(P.TYPE)!r} req {head.get(P.REQ)!r}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
