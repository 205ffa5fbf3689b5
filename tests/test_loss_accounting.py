"""Exact episode accounting when a worker is lost (issue 18; docs/architecture.md, "Worker failures").

A lost env's loss is reported once, by what the trainer last saw of it: a running episode ends as a
truncation (``infos["worker_lost"]``); an episode that had just ended is not reported again (NextStep:
its autoreset step comes from the new env's reset, marked ``worker_lost``; Disabled: its next reset
uses the new env and says ``worker_lost``; SameStep: the new episode the trainer saw start is the one
the loss truncates). Real worker processes are killed (SIGKILL), or their broker is killed and
restarted; each test checks the step results, a RecordEpisodeStatistics over the trainer, an episode
ledger of its own (which fails on a second end of one episode, or an episode of no step), and the
trainer's counters.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from rlay import RlayVectorEnv
from tests.conftest import Proc, free_port, start_deployment
from tests.envs import EpisodeEnv

HORIZON = 3  # EpisodeEnv's: each step pays 1, the episode terminates at its third step
NEXT, SAME, DISABLED = AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED
MODES = [NEXT, SAME, DISABLED]
F, T = False, True

pytestmark = pytest.mark.timeout(90)


class Ledger:
    """The episodes a trainer sees, counted from its results alone as the autoreset mode defines them.
    It fails on a result for an episode that had already ended (a second end: under NextStep, the step
    after an end must be the autoreset step), and so never counts an episode of no step."""

    def __init__(self, mode: AutoresetMode, num_envs: int):
        self.mode = mode
        self.running = [False] * num_envs  # an episode started and not yet ended
        self.autoreset_due = [False] * num_envs  # NextStep: its next step is the autoreset step
        self.length = [0] * num_envs
        self.ret = [0.0] * num_envs
        self.ended: list[tuple[int, int, int, float]] = []  # (step, env, length, return)

    def _start(self, row: int) -> None:
        self.running[row], self.autoreset_due[row], self.length[row], self.ret[row] = True, False, 0, 0.0

    def reset(self, rows) -> None:
        for row in rows:
            assert not (self.running[row] and self.length[row]), f"env {row}: a reset discarded a running episode"
            self._start(row)

    def step(self, step: int, rewards, terms, truncs) -> None:
        for row, (reward, term, trunc) in enumerate(zip(rewards, terms, truncs)):
            reward, done = float(reward), bool(term or trunc)
            if self.autoreset_due[row]:
                assert (reward, done) == (0.0, False), (
                    f"step {step}, env {row}: its episode had ended, so this must be its autoreset step "
                    f"(reward 0, not done); got reward {reward}, terminated {term}, truncated {trunc}"
                )
                self._start(row)
                continue
            assert self.running[row], f"step {step}, env {row}: a result for an episode that had ended"
            self.length[row] += 1
            self.ret[row] += reward
            if done:
                self.ended.append((step, row, self.length[row], self.ret[row]))
                self.running[row] = False
                if self.mode == NEXT:
                    self.autoreset_due[row] = True
                elif self.mode == SAME:  # the step's observation is the next episode's first
                    self._start(row)


class Trainer:
    """A trainer's view of a RlayVectorEnv: gymnasium's RecordEpisodeStatistics over it, and a Ledger."""

    def __init__(self, envs: RlayVectorEnv):
        self.envs, self.n = envs, envs.num_envs
        self.stats = RecordEpisodeStatistics(envs)
        self.ledger = Ledger(envs.autoreset_mode, envs.num_envs)
        self.steps = 0
        self.recorded: list[tuple[int, int, int, float]] = []  # RecordEpisodeStatistics' (step, env, length, return)

    def reset(self, seed=None, mask=None):
        if mask is None:
            out = self.stats.reset(seed=seed)
            rows = range(self.n)
        else:
            # RecordEpisodeStatistics (gymnasium 1.4) reads options["reset_mask"] after the vector env
            # popped it (as SyncVectorEnv pops it too) and would restart every env's statistics: the
            # masked reset goes past it, and the masked envs' statistics restart as it means them to.
            out = self.envs.reset(seed=seed, options={"reset_mask": np.asarray(mask, dtype=np.bool_)})
            stats, mask = self.stats, np.asarray(mask, dtype=np.bool_)
            stats.episode_returns[mask], stats.episode_lengths[mask], stats.prev_dones[mask] = 0, 0, False
            stats.episode_start_times[mask] = time.perf_counter()
            rows = np.flatnonzero(mask).tolist()
        self.ledger.reset(rows)
        return out

    def step(self, actions=None, after_send=None):
        """One step of every env (action 0 unless given); ``after_send`` runs once the step is sent."""
        actions = np.zeros(self.n, np.int64) if actions is None else np.asarray(actions, np.int64)
        if after_send is not None:
            send = self.envs.step_async

            def step_async(actions):
                send(actions)
                after_send()

            self.envs.step_async = step_async
        try:
            obs, rewards, terms, truncs, infos = self.stats.step(actions)
        finally:
            self.envs.__dict__.pop("step_async", None)
        self.steps += 1
        self.ledger.step(self.steps, rewards, terms, truncs)
        if "_episode" in infos:
            for row in np.flatnonzero(infos["_episode"]):
                episode = infos["episode"]
                self.recorded.append((self.steps, int(row), int(episode["l"][row]), float(episode["r"][row])))
        return obs, rewards, terms, truncs, infos

    def check(self, expected: list[tuple[int, int, int, float]]) -> None:
        """The episodes ended, as (step, env, length, return): the ledger's, RecordEpisodeStatistics' and
        the expected ones are the same."""
        assert self.ledger.ended == expected
        assert self.recorded == expected
        assert self.stats.episode_count == len(expected)
        assert sorted(self.stats.length_queue) == sorted(length for _, _, length, _ in expected)
        assert sorted(self.stats.return_queue) == sorted(ret for _, _, _, ret in expected)
        assert min(self.stats.length_queue) >= 1  # no zero-length episode


def lost(infos: dict, n: int = 4) -> list[bool]:
    """Which envs' infos say ``worker_lost``."""
    none = np.zeros(n, bool)
    return (np.asarray(infos.get("worker_lost", none)) & np.asarray(infos.get("_worker_lost", none))).tolist()


def embedded(mode: AutoresetMode, **env_kwargs) -> RlayVectorEnv:
    """Four EpisodeEnvs, two per local worker: envs 0 and 1 on the first, 2 and 3 on the second."""
    envs = RlayVectorEnv(
        [functools.partial(EpisodeEnv, HORIZON, **env_kwargs)] * 4,
        envs_per_worker=2,
        autoreset_mode=mode,
        on_worker_failure="replace",
        timeout=30,
    )
    assert [g.rows.tolist() for g in envs._lease.groups] == [[0, 1], [2, 3]]
    return envs


def finished(step: int, rows, length: int = HORIZON, ret: float = float(HORIZON)) -> list[tuple]:
    return [(step, row, length, ret) for row in rows]


@pytest.mark.parametrize("found_by", ["its next call", "a call before"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_loss_that_meets_an_episode_just_ended_does_not_end_it_again(mode, found_by):
    envs = embedded(mode)
    trainer = Trainer(envs)
    try:
        survivor, victim = envs._lease.groups[0].pid, envs._lease.groups[1].pid
        trainer.reset(seed=0)
        for _ in range(HORIZON):
            _, _, terms, truncs, _ = trainer.step()
        assert terms.all() and not truncs.any()  # every env's episode has just ended
        os.kill(victim, signal.SIGKILL)
        if found_by == "a call before":  # found here, run again on the new envs; reported at the next step
            assert envs.get_attr("t") == ((0, 0) if mode == SAME else (HORIZON, HORIZON)) + (0, 0)
            assert envs.envs_replaced == 2 and envs.loss_truncations == 0
        expected = finished(HORIZON, range(4))

        if mode == NEXT:
            obs, rewards, terms, truncs, infos = trainer.step()
            new = envs._lease.groups[1].pid
            # Envs 2 and 3: their autoreset step, made from the new env's reset, marked; no truncation.
            np.testing.assert_array_equal(obs, [[0, survivor, 2]] * 2 + [[0, new, 1]] * 2)
            assert rewards.tolist() == [0.0] * 4 and not terms.any() and not truncs.any()
            assert lost(infos) == [F, F, T, T]
            assert infos["pid"].tolist() == [survivor] * 2 + [new] * 2 and infos["resets"].tolist() == [2, 2, 1, 1]
            for _ in range(HORIZON):
                _, _, terms, _, infos = trainer.step()
                assert not any(lost(infos))
            assert terms.all()
            expected += finished(2 * HORIZON + 1, range(4))
            truncations = 0
        elif mode == SAME:
            obs, rewards, terms, truncs, infos = trainer.step()
            new = envs._lease.groups[1].pid
            # The step that ended each episode began the next, which the trainer saw start: that one is
            # lost, and ends once, after one step (reward 0), its first observation as the final one.
            np.testing.assert_array_equal(obs, [[1, survivor, 2]] * 2 + [[0, new, 1]] * 2)
            assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0] and not terms.any() and truncs.tolist() == [F, F, T, T]
            assert lost(infos) == [F, F, T, T] and infos["_final_obs"].tolist() == [F, F, T, T]
            np.testing.assert_array_equal(np.stack(infos["final_obs"][2:]), [[0, victim, 2]] * 2)
            assert infos["final_info"] == {}  # (the lost worker's last info is gone: each env's is {})
            assert infos["pid"][2:].tolist() == [new] * 2 and infos["_t"].tolist() == [T, T, F, F]
            for _ in range(HORIZON):
                _, _, _, _, infos = trainer.step()
                assert not any(lost(infos))
            expected += [(HORIZON + 1, 2, 1, 0.0), (HORIZON + 1, 3, 1, 0.0)]
            expected += finished(2 * HORIZON, [0, 1]) + finished(2 * HORIZON + 1, [2, 3])
            truncations = 2
        else:
            if found_by == "a call before":  # stepped before its reset: refused, as its worker would have
                with pytest.raises(AssertionError, match="env 2 was stepped after its episode ended"):
                    envs.step(np.zeros(4, np.int64))
            # The user resets the ended envs: the new envs, with no truncation reported at all.
            obs, infos = trainer.reset(seed=10, mask=terms | truncs)
            new = envs._lease.groups[1].pid
            np.testing.assert_array_equal(obs, [[0, survivor, 2]] * 2 + [[0, new, 2]] * 2)
            assert lost(infos) == [F, F, T, T] and infos["pid"].tolist() == [survivor] * 2 + [new] * 2
            for _ in range(HORIZON):
                _, _, terms, truncs, infos = trainer.step()
                assert not truncs.any() and not any(lost(infos))
            assert terms.all()
            expected += finished(2 * HORIZON, range(4))
            truncations = 0

        assert new not in (survivor, victim)
        trainer.check(expected)
        assert (envs.envs_replaced, envs.loss_truncations, envs.re_leases) == (2, truncations, 0)
    finally:
        envs.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_loss_mid_episode_ends_it_once_as_a_truncation(mode):
    envs = embedded(mode)
    trainer = Trainer(envs)
    try:
        survivor, victim = envs._lease.groups[0].pid, envs._lease.groups[1].pid
        trainer.reset(seed=0)
        last, *_ = trainer.step()  # one step into every episode
        os.kill(victim, signal.SIGKILL)
        # (Disabled: envs 0 and 1 end too, truncated by action 1, so that every env is reset below)
        obs, rewards, terms, truncs, infos = trainer.step([1, 1, 0, 0] if mode == DISABLED else None)
        new = envs._lease.groups[1].pid
        assert new not in (survivor, victim)
        assert rewards[2:].tolist() == [0.0, 0.0] and not terms[2:].any() and truncs[2:].all()
        assert lost(infos) == [F, F, T, T] and envs.loss_truncations == 2
        np.testing.assert_array_equal(last[2:], [[1, victim, 1]] * 2)
        if mode == SAME:  # the new episode's first observation now; the last one seen as the final one
            np.testing.assert_array_equal(obs[2:], [[0, new, 1]] * 2)
            np.testing.assert_array_equal(np.stack(infos["final_obs"][2:]), last[2:])
            assert infos["_final_obs"].tolist() == [F, F, T, T]
        else:  # the last observation seen
            np.testing.assert_array_equal(obs[2:], last[2:])
        expected = [(2, 2, 2, 1.0), (2, 3, 2, 1.0)]  # one real step, then the loss's (reward 0)

        if mode == NEXT:
            obs, rewards, terms, truncs, infos = trainer.step()  # the new env's reset, as an autoreset
            np.testing.assert_array_equal(obs, [[3, survivor, 1]] * 2 + [[0, new, 1]] * 2)
            assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0] and terms.tolist() == [T, T, F, F] and not truncs.any()
            assert not any(lost(infos)) and infos["resets"][2:].tolist() == [1, 1]
            for _ in range(3):
                trainer.step()
            expected += finished(3, [0, 1]) + finished(6, [2, 3])
        elif mode == SAME:
            for _ in range(4):
                _, _, _, truncs, infos = trainer.step()
                assert not truncs.any() and not any(lost(infos))
            expected += finished(3, [0, 1]) + finished(5, [2, 3]) + finished(6, [0, 1])
        else:
            expected = [(2, 0, 2, 2.0), (2, 1, 2, 2.0)] + expected
            obs, infos = trainer.reset(seed=10, mask=terms | truncs)
            np.testing.assert_array_equal(obs, [[0, survivor, 2]] * 2 + [[0, new, 2]] * 2)
            assert not any(lost(infos))  # the loss was reported, by the truncation
            for _ in range(HORIZON):
                trainer.step()
            expected += finished(5, range(4))

        trainer.check(expected)
        assert (envs.envs_replaced, envs.loss_truncations, envs.re_leases) == (2, 2, 0)
    finally:
        envs.close()


def test_a_worker_lost_during_an_autoreset_step_reports_that_step_from_the_new_env():
    """NextStep: the worker dies while it runs the autoreset step (each reset after an env's first takes
    1 s), so that step's result comes from the new env's reset."""
    envs = embedded(NEXT, reset_delay=1.0)
    trainer = Trainer(envs)
    try:
        survivor, victim = envs._lease.groups[0].pid, envs._lease.groups[1].pid
        trainer.reset(seed=0)
        for _ in range(HORIZON):
            _, _, terms, _, _ = trainer.step()
        assert terms.all()
        obs, rewards, terms, truncs, infos = trainer.step(after_send=lambda: os.kill(victim, signal.SIGKILL))
        new = envs._lease.groups[1].pid
        assert new not in (survivor, victim)
        np.testing.assert_array_equal(obs, [[0, survivor, 2]] * 2 + [[0, new, 1]] * 2)
        assert rewards.tolist() == [0.0] * 4 and not terms.any() and not truncs.any()
        assert lost(infos) == [F, F, T, T]
        for _ in range(HORIZON):
            trainer.step()
        trainer.check(finished(HORIZON, range(4)) + finished(2 * HORIZON + 1, range(4)))
        assert (envs.envs_replaced, envs.loss_truncations, envs.re_leases) == (2, 0, 0)
    finally:
        envs.close()


def first_ready_step(envs: RlayVectorEnv, ledger: Ledger, step: int, actions=None):
    """send() every env, recv() them all; the results in env order, counted by ``ledger``."""
    envs.send(np.zeros(4, np.int64) if actions is None else np.asarray(actions, np.int64), [0, 1, 2, 3])
    obs, rewards, terms, truncs, infos = envs.recv()
    order = np.argsort(infos["env_id"])
    infos = {k: v[order] if isinstance(v, np.ndarray) and len(v) == 4 else v for k, v in infos.items()}
    obs, rewards, terms, truncs = obs[order], rewards[order], terms[order], truncs[order]
    ledger.step(step, rewards, terms, truncs)
    return obs, rewards, terms, truncs, infos


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_first_ready_losses_end_each_episode_once(mode):
    """send/recv: a loss that meets an episode just ended, then one mid-episode (of the new worker)."""
    envs = embedded(mode)
    ledger = Ledger(mode, 4)
    try:
        survivor, victim = envs._lease.groups[0].pid, envs._lease.groups[1].pid
        envs.async_reset(seed=0)
        envs.recv()
        ledger.reset(range(4))
        for step in range(1, HORIZON + 1):
            _, _, terms, _, _ = first_ready_step(envs, ledger, step)
        assert terms.all()
        expected = finished(HORIZON, range(4))
        os.kill(victim, signal.SIGKILL)

        if mode == DISABLED:  # the user resets the ended envs: the new ones, marked
            envs.async_reset(seed=10)
            obs, _, _, _, infos = envs.recv()
            order = np.argsort(infos["env_id"])
            ledger.reset(range(4))
            new = envs._lease.groups[1].pid
            np.testing.assert_array_equal(obs[order], [[0, survivor, 2]] * 2 + [[0, new, 2]] * 2)
            assert (infos["worker_lost"] & infos["_worker_lost"])[order].tolist() == [F, F, T, T]
            step = HORIZON
        else:
            obs, rewards, terms, truncs, infos = first_ready_step(envs, ledger, HORIZON + 1)
            new = envs._lease.groups[1].pid
            assert lost(infos) == [F, F, T, T]
            if mode == NEXT:  # the autoreset step, from the new env
                np.testing.assert_array_equal(obs, [[0, survivor, 2]] * 2 + [[0, new, 1]] * 2)
                assert rewards.tolist() == [0.0] * 4 and not (terms | truncs).any()
            else:  # the episode the trainer saw start is truncated
                np.testing.assert_array_equal(obs, [[1, survivor, 2]] * 2 + [[0, new, 1]] * 2)
                assert truncs.tolist() == [F, F, T, T] and rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
                np.testing.assert_array_equal(np.stack(infos["final_obs"][2:]), [[0, victim, 2]] * 2)
                expected += [(HORIZON + 1, 2, 1, 0.0), (HORIZON + 1, 3, 1, 0.0)]
            step = HORIZON + 1
        assert new not in (survivor, victim)

        # Every episode runs to its end, then to one step into the next.
        for _ in range({NEXT: HORIZON + 2, SAME: HORIZON + 1, DISABLED: HORIZON}[mode]):
            step += 1
            obs, _, _, _, infos = first_ready_step(envs, ledger, step)
            assert not any(lost(infos))
        if mode == NEXT:
            expected += finished(7, range(4))
        elif mode == SAME:
            expected += finished(6, [0, 1]) + finished(7, [2, 3])
        else:
            expected += finished(6, range(4))
            envs.async_reset(seed=20)
            envs.recv()
            ledger.reset(range(4))
            obs, *_ = first_ready_step(envs, ledger, step := step + 1)
        last = obs[2:]
        np.testing.assert_array_equal(last[:, :2], [[1, new]] * 2)

        # A loss mid-episode: each of the new worker's envs is one step into an episode.
        os.kill(new, signal.SIGKILL)
        obs, rewards, terms, truncs, infos = first_ready_step(envs, ledger, step := step + 1)
        assert truncs[2:].all() and not terms[2:].any() and rewards[2:].tolist() == [0.0, 0.0]
        assert lost(infos) == [F, F, T, T]
        if mode == SAME:  # the last observation seen as the final one; the third worker's reset obs
            np.testing.assert_array_equal(np.stack(infos["final_obs"][2:]), last)
            np.testing.assert_array_equal(obs[2:], [[0, envs._lease.groups[1].pid, 1]] * 2)
            expected += finished(step, [0, 1]) + [(step, 2, 2, 1.0), (step, 3, 2, 1.0)]
        else:  # the last observation seen
            np.testing.assert_array_equal(obs[2:], last)
            expected += [(step, 2, 2, 1.0), (step, 3, 2, 1.0)]

        assert ledger.ended == expected
        truncations = {NEXT: 2, SAME: 4, DISABLED: 2}[mode]
        assert (envs.envs_replaced, envs.loss_truncations, envs.re_leases) == (4, truncations, 0)
    finally:
        envs.close()


@pytest.fixture
def addresses():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_new_lease_of_every_env_reports_each_loss_once(mode, addresses):
    """The broker restarts: every env is leased anew. Env 0's episode has just ended (truncated by
    action 1), env 1's runs: only env 1's is truncated."""
    front, back = addresses
    procs = start_deployment(front, back, [["tests.envs:EpisodeEnv", "--name", "Episode-v0", "-k", "2"]], workers=1)
    try:
        envs = RlayVectorEnv.remote(
            "Episode-v0", 2, broker=front, timeout=30, autoreset_mode=mode, on_worker_failure="replace"
        )
        trainer = Trainer(envs)
        try:
            pid = envs._lease.groups[0].pid
            trainer.reset(seed=0)
            last, _, _, truncs, _ = trainer.step([1, 0])
            assert truncs.tolist() == [T, F]
            procs[0].stop(signal.SIGKILL)
            procs[0] = Proc("broker", "--frontend", front, "--backend", back)

            if mode == DISABLED:
                obs, infos = trainer.reset(seed=10, mask=[T, F])  # finds the new broker: a new lease
                assert lost(infos, 2) == [T, F]
                np.testing.assert_array_equal(obs[1], last[1])
                obs, rewards, terms, truncs, infos = trainer.step()  # env 1's running episode ends
                assert rewards.tolist() == [1.0, 0.0] and truncs.tolist() == [F, T] and not terms.any()
                assert lost(infos, 2) == [F, T]
                np.testing.assert_array_equal(obs[1], last[1])
                assert envs.loss_truncations == 1
                obs, infos = trainer.reset(seed=11, mask=[F, T])
                assert not any(lost(infos, 2)) and obs[1][0] == 0
                for _ in range(2):
                    trainer.step()
                expected = [(1, 0, 1, 1.0), (2, 1, 2, 1.0), (4, 0, 3, 3.0)]
                truncations = 1
            else:
                obs, rewards, terms, truncs, infos = trainer.step()  # finds the new broker: a new lease
                assert rewards.tolist() == [0.0, 0.0] and not terms.any() and lost(infos, 2) == [T, T]
                assert obs[0][0] == 0 and obs[0][1] == pid  # env 0: the new env's reset observation
                if mode == NEXT:  # env 0: its autoreset step, from the new env; env 1: truncated
                    assert truncs.tolist() == [F, T]
                    np.testing.assert_array_equal(obs[1], last[1])  # the last observation seen
                    assert infos["_pid"].tolist() == [T, F] and infos["pid"][0] == pid
                    assert infos["resets"][0] == obs[0][2]
                    obs, rewards, _, truncs, infos = trainer.step()  # env 1: the new env's reset
                    assert rewards.tolist() == [1.0, 0.0] and obs[1][0] == 0 and not truncs.any()
                    assert not any(lost(infos, 2))
                    for _ in range(3):
                        trainer.step()
                    expected = [(1, 0, 1, 1.0), (2, 1, 2, 1.0), (5, 0, 3, 3.0), (6, 1, 3, 3.0)]
                    truncations = 1
                else:  # both truncated: env 0's new episode (begun by the step that ended its last) too
                    assert truncs.tolist() == [T, T] and obs[1][0] == 0 and obs[1][1] == pid
                    np.testing.assert_array_equal(np.stack(infos["final_obs"]), last)
                    for _ in range(3):
                        trainer.step()
                    expected = [(1, 0, 1, 1.0), (2, 0, 1, 0.0), (2, 1, 2, 1.0), (5, 0, 3, 3.0), (5, 1, 3, 3.0)]
                    truncations = 2
            trainer.check(expected)
            assert (envs.envs_replaced, envs.loss_truncations, envs.re_leases) == (2, truncations, 1)
        finally:
            envs.close()
    finally:
        results = [proc.stop() for proc in reversed(procs)]
    assert all(code == 0 for code, _, _ in results), results
