"""on_worker_failure: "raise" names the lost envs, worker, host and cause; "replace" moves them to free
slots, resets them, and reports a truncation.

Real worker processes are killed (SIGKILL), stopped (SIGSTOP) or lose their broker (SIGKILL, then a new
broker on the same addresses); each test checks what the trainer sees, that envs on surviving workers
go on exactly as in SyncVectorEnv, and that no slot is lost or leaked.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlay import BrokerError, RlayVectorEnv, WorkerLostError
from tests.conftest import Proc, broker_status, deployment, free_port, run_cli, start_deployment, wait_for
from tests.envs import delayed_cartpole

RESET_BOUND = 0.05  # CartPole-v1 starts every state variable in [-0.05, 0.05]


def is_reset_obs(obs: np.ndarray) -> bool:
    return bool(np.all(np.abs(obs) <= RESET_BOUND))


def slot_totals(status: dict) -> tuple[int, int]:
    """(registered slots, leased slots) over all workers."""
    return sum(w["slots"] for w in status["workers"]), sum(w["leased"] for w in status["workers"])


def test_embedded_worker_killed_mid_step_raises_naming_envs_worker_host_and_cause():
    envs = RlayVectorEnv([functools.partial(delayed_cartpole, 0.02)] * 4, envs_per_worker=2, timeout=30)
    try:
        envs.reset(seed=0)
        victim = envs._lease.groups[1].pid
        envs.step_async(np.zeros(4, np.int64))
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerLostError) as caught:
            envs.step_wait()
        text = str(caught.value)
        assert re.search(
            rf"envs 2, 3 \(slots \[\d+, \d+\]\) on worker w\d+ \(host {socket.gethostname()}\): "
            rf"worker w\d+ \(pid {victim} on host \S+\) was lost: its process exited with code -9",
            text,
        ), text
        with pytest.raises(WorkerLostError, match=r"envs 2, 3 \(slots \[\d+, \d+\]\) are lost"):
            envs.step(np.zeros(4, np.int64))  # and so does every later call on them
    finally:
        envs.close()


def test_remote_worker_killed_mid_step_raises_and_no_slot_leaks():
    with deployment([["CartPole-v1", "-p", "2", "-k", "2"]], workers=2) as (front, _):  # supervised
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=30)
        try:
            envs.reset(seed=0)
            victim, rows = envs._lease.groups[1].pid, envs._lease.groups[1].rows.tolist()
            envs.step_async(np.zeros(4, np.int64))
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerLostError) as caught:
                envs.step_wait()
            text = str(caught.value)
            assert f"envs {rows[0]}, {rows[1]} (slots [" in text and f"pid {victim} on host" in text, text
            assert "no heartbeat" in text or "connection is gone" in text, text
            assert broker_status(front)["trainers"][0]["lost"] == 2
        finally:
            envs.close()
        # The LOST slots were deleted at the release; the restarted worker's are free.
        wait_for(lambda: slot_totals(broker_status(front)) == (4, 0), 15, "4 free slots after the restart")


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_embedded_worker_killed_mid_step_is_replaced(mode):
    envs = RlayVectorEnv(
        [functools.partial(delayed_cartpole, 0.02)] * 4,
        envs_per_worker=2,
        autoreset_mode=mode,
        on_worker_failure="replace",
        timeout=30,
    )
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4, autoreset_mode=mode)
    rng = np.random.default_rng(0)
    try:
        assert [g.rows.tolist() for g in envs._lease.groups] == [[0, 1], [2, 3]]
        victim = envs._lease.groups[1].pid
        prev, _ = envs.reset(seed=5)
        np.testing.assert_array_equal(prev[:2], sync.reset(seed=5)[0][:2])
        for t in range(30):
            actions = rng.integers(0, 2, 4)
            envs.step_async(actions)
            if t == 10:
                os.kill(victim, signal.SIGKILL)  # while its two envs are stepping
            obs, rewards, terms, truncs, infos = envs.step_wait()
            expected = sync.step(actions)
            for got, want in zip((obs, rewards, terms, truncs), expected[:4]):  # the surviving worker's envs
                np.testing.assert_array_equal(got[:2], want[:2])
            if t == 10:  # the lost episodes end as truncations
                assert truncs[2:].all() and not terms[2:].any() and (rewards[2:] == 0).all()
                assert infos["worker_lost"].tolist() == [False, False, True, True]
                assert infos["_worker_lost"].tolist() == [False, False, True, True]
                if mode == AutoresetMode.SAME_STEP:  # the new episode's first obs now; the last one seen as final
                    assert is_reset_obs(obs[2:])
                    assert infos["_final_obs"][2:].all()
                    np.testing.assert_array_equal(np.stack(infos["final_obs"][2:]), prev[2:])
                else:  # the last observation seen stands in for the lost episode's final one
                    np.testing.assert_array_equal(obs[2:], prev[2:])
            elif t == 11 and mode == AutoresetMode.NEXT_STEP:  # the new episode's first obs one step later
                assert is_reset_obs(obs[2:]) and (rewards[2:] == 0).all() and not (terms[2:] | truncs[2:]).any()
            elif t > 10:
                assert not infos.get("_worker_lost", np.zeros(4, bool)).any()
            mask = terms | truncs | expected[2] | expected[3]  # (envs 2 and 3 differ from Sync's once replaced)
            if mode == AutoresetMode.DISABLED and mask.any():
                obs, _ = envs.reset(options={"reset_mask": mask.copy()})
                np.testing.assert_array_equal(obs[:2], sync.reset(options={"reset_mask": mask})[0][:2])
            prev = obs
        assert envs.envs_replaced == 2
        assert envs._lease.groups[1].pid != victim  # the restarted worker holds envs 2 and 3 now
        status = envs._cluster.inline_broker.status()
        assert status["failures"]["workers_lost"] == 1 and status["failures"]["slots_replaced"] == 2
        assert status["trainers"][0]["replaced"] == 2 and status["trainers"][0]["lost"] == 0
        assert slot_totals(status) == (4, 4)  # the lost slots are gone, none leaked
    finally:
        envs.close()
        sync.close()


def test_embedded_worker_that_hangs_is_killed_restarted_and_replaced():
    """A stopped (or GIL-stuck) local worker is lost by its silence; supervision restarts only processes
    that exit, so the trainer's cluster kills it, and the replacement comes from its restart."""
    envs = RlayVectorEnv(
        [lambda: gym.make("CartPole-v1")] * 2,
        envs_per_worker=1,
        on_worker_failure="replace",
        timeout=30,
        replace_timeout=30,
    )
    try:
        envs.reset(seed=0)
        victim = envs._lease.groups[1].pid
        os.kill(victim, signal.SIGSTOP)
        _, _, _, truncated, infos = envs.step(np.zeros(2, np.int64))  # lost after ~2 s of silence
        assert truncated[1] and infos["worker_lost"].tolist() == [False, True]
        obs, *_ = envs.step(np.zeros(2, np.int64))  # the restarted worker's env, reset
        assert is_reset_obs(obs[1]) and envs._lease.groups[1].pid != victim and envs.envs_replaced == 1
        stopped = [p for _, p in envs._cluster.workers if p.pid == victim]
        assert not stopped or not stopped[0].is_alive()
    finally:
        try:
            os.kill(victim, signal.SIGCONT)  # (if it was not killed after all)
        except ProcessLookupError:
            pass
        envs.close()


def test_embedded_worker_killed_during_first_ready_stepping_is_replaced():
    envs = RlayVectorEnv(
        [functools.partial(delayed_cartpole, 0.02)] * 4, envs_per_worker=2, on_worker_failure="replace", timeout=30
    )
    try:
        victim = envs._lease.groups[1].pid
        envs.async_reset(seed=0)
        envs.recv(batch_size=4)
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        os.kill(victim, signal.SIGKILL)
        seen: dict[int, tuple] = {}
        while len(seen) < 4:
            obs, rewards, terms, truncs, infos = envs.recv(batch_size=1)
            seen[int(infos["env_id"][0])] = (truncs[0], bool(infos.get("worker_lost", [False])[0]))
        assert seen == {0: (False, False), 1: (False, False), 2: (True, True), 3: (True, True)}
        for _ in range(5):  # the run goes on: the new envs' first observations, then plain steps
            envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
            obs, rewards, terms, truncs, infos = envs.recv()
            assert sorted(infos["env_id"].tolist()) == [0, 1, 2, 3] and "worker_lost" not in infos
        assert envs.envs_replaced == 2
    finally:
        envs.close()


@pytest.fixture
def addresses():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def stop_all(procs: list[Proc]) -> list[tuple[int, str, str]]:
    """Stop the workers, then the broker; their (exit code, stdout, stderr) in the order of ``procs``."""
    return [proc.stop() for proc in reversed(procs)][::-1]


def test_remote_worker_killed_mid_step_is_replaced_and_counted_in_status():
    logs: list[str] = []
    with deployment([["CartPole-v1", "-p", "2", "-k", "2"]], workers=2, check_log=logs.append) as (front, _):
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=30, on_worker_failure="replace")
        try:
            envs.reset(seed=0)
            victim, lost_rows = envs._lease.groups[1].pid, envs._lease.groups[1].rows.tolist()
            envs.step_async(np.zeros(4, np.int64))
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            _, rewards, _, truncs, infos = envs.step_wait()
            assert truncs[lost_rows].all() and infos["_worker_lost"][lost_rows].all()
            assert time.monotonic() - killed < 10  # the restarted worker came in time: no timeout
            for _ in range(20):
                assert envs.step(np.zeros(4, np.int64))[0].shape == (4, 4)
            assert envs._lease.groups[1].pid != victim

            report = json.loads(run_cli("status", "--broker", front, "--json").stdout)
            assert report["failures"]["workers_lost"] == 1 and report["failures"]["slots_replaced"] == 2
            assert report["recent_losses"][0]["pid"] == victim and report["recent_losses"][0]["leased"] == 2
            assert report["trainers"][0]["replaced"] == 2 and report["trainers"][0]["lost"] == 0
            assert slot_totals(report) == (4, 4)
            text = run_cli("status", "--broker", front).stdout
            assert "1 worker(s) lost (2 leased slots), 2 slot(s) replaced" in text and f"pid {victim}" in text
        finally:
            envs.close()
        wait_for(lambda: slot_totals(broker_status(front)) == (4, 0), 10, "the slots to be free after close")
    assert any("restarting it in" in log for log in logs)  # the `rlay worker` supervisor's


def test_remote_stopped_worker_is_replaced_by_a_spare_and_comes_back():
    with deployment([["CartPole-v1", "-p", "3"]], workers=3) as (front, _):
        envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=30, on_worker_failure="replace")
        try:
            envs.reset(seed=0)
            victim = envs._lease.groups[1].pid
            os.kill(victim, signal.SIGSTOP)  # hung: it will not reply to the step, nor ping
            try:
                stopped = time.monotonic()
                envs.step_async(np.zeros(2, np.int64))
                _, _, _, truncs, infos = envs.step_wait()
                waited = time.monotonic() - stopped
            finally:
                os.kill(victim, signal.SIGCONT)
            assert truncs.tolist() == [False, True] and infos["worker_lost"].tolist() == [False, True]
            assert waited < 5, f"replaced after {waited:.1f} s"
            assert envs._lease.groups[1].pid not in (victim, envs._lease.groups[0].pid)  # the spare
            # The continued worker registers again, with new free slots: nothing lost, nothing leaked.
            wait_for(
                lambda: victim in [w["pid"] for w in broker_status(front)["workers"]],
                15,
                "the continued worker to register again",
            )
            assert slot_totals(broker_status(front)) == (3, 2)
            for _ in range(10):
                envs.step(np.zeros(2, np.int64))
        finally:
            envs.close()


def test_remote_replacement_that_never_comes_raises_after_replace_timeout(addresses):
    front, back = addresses
    procs = start_deployment(front, back, [["CartPole-v1", "--no-restart"]] * 2, workers=2)
    try:
        envs = RlayVectorEnv.remote(
            "CartPole-v1", 2, broker=front, timeout=30, on_worker_failure="replace", replace_timeout=1.0
        )
        try:
            envs.reset(seed=0)
            victim = envs._lease.groups[1].pid
            os.kill(victim, signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(WorkerLostError) as caught:
                for _ in range(100):  # the loss shows at the next send, or by heartbeat
                    envs.step(np.zeros(2, np.int64))
            waited = time.monotonic() - start
            text = str(caught.value)
            assert f"pid {victim}" in text and "no replacement came" in text and "within 1 s" in text, text
            assert waited < 1 + 3 + 1, f"raised after {waited:.1f} s"
        finally:
            envs.close()
    finally:
        results = stop_all(procs)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 0, 1], results  # the `rlay worker` whose only worker was killed exits 1
    assert any("exited with code -9" in err for _, _, err in results)


def test_broker_restarted_mid_run_every_env_is_replaced(addresses):
    front, back = addresses
    procs = start_deployment(front, back, [["CartPole-v1", "-p", "2", "-k", "2"]], workers=2)
    try:
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=30, on_worker_failure="replace")
        try:
            envs.reset(seed=0)
            for _ in range(5):
                envs.step(np.zeros(4, np.int64))
            procs[0].stop(signal.SIGKILL)
            procs[0] = Proc("broker", "--frontend", front, "--backend", back)
            _, rewards, terms, truncs, infos = envs.step(np.zeros(4, np.int64))
            assert truncs.all() and not terms.any() and infos["worker_lost"].all()
            for _ in range(10):
                _, _, _, truncs, infos = envs.step(np.zeros(4, np.int64))
                assert "worker_lost" not in infos
            assert envs.envs_replaced == 4
            status = broker_status(front)
            assert slot_totals(status) == (4, 4) and status["trainers"][0]["slots"] == 4
        finally:
            envs.close()
    finally:
        results = stop_all(procs)
    assert all(code == 0 for code, _, _ in results), results


def test_after_a_broker_restart_the_trainer_takes_the_new_brokers_max_message_size(addresses, tmp_path):
    """The limit comes with each lease: a broker restarted without one must not be held to the old one."""
    front, back = addresses
    limited = tmp_path / "limited.toml"
    limited.write_text(f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\nmax_message_size = 12000\n')
    procs = [Proc("broker", "--config", str(limited)), Proc("worker", "CartPole-v1", "-k", "2", "--broker", back)]
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 1, 60, "the worker to register")
        envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=30, on_worker_failure="replace")
        try:
            envs.reset(seed=0)
            with pytest.raises(BrokerError, match="over the broker's max_message_size of 12000; nothing was sent"):
                envs.set_attr("note", "x" * 20_000)
            procs[0].stop(signal.SIGKILL)
            procs[0] = Proc("broker", "--frontend", front, "--backend", back)  # no limit
            _, _, _, truncs, _ = envs.step(np.zeros(2, np.int64))
            assert truncs.all() and envs.envs_replaced == 2
            envs.set_attr("note", "x" * 20_000)
            assert envs.get_attr("note") == ("x" * 20_000,) * 2
        finally:
            envs.close()
    finally:
        results = stop_all(procs)
    assert all(code == 0 for code, _, _ in results), results


def test_embedded_worker_killed_while_the_trainer_computes_raises_naming_it():
    """Found by heartbeat (the idle pumper) before the trainer's next call: the same clear error."""
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 4, envs_per_worker=2, timeout=10)
    try:
        envs.reset(seed=0)
        victim = envs._lease.groups[1].pid
        os.kill(victim, signal.SIGKILL)
        broker = envs._cluster.inline_broker
        wait_for(
            lambda: all(w.pid != victim for w in list(broker.workers.values())),
            10,
            "the idle pumper to lose the silent worker",
        )
        with pytest.raises(WorkerLostError, match=rf"envs 2, 3 \(slots \[\d+, \d+\]\) are lost: .*pid {victim}"):
            envs.step(np.zeros(4, np.int64))
    finally:
        envs.close()


def test_first_ready_second_loss_reports_the_last_observation_seen():
    envs = RlayVectorEnv(
        [functools.partial(delayed_cartpole, 0.02)] * 4, envs_per_worker=2, on_worker_failure="replace", timeout=30
    )

    def step_all():
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        obs, _, _, truncs, infos = envs.recv()
        order = np.argsort(infos["env_id"])
        return obs[order], truncs[order]

    try:
        envs.async_reset(seed=0)
        envs.recv()
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        os.kill(envs._lease.groups[1].pid, signal.SIGKILL)
        envs.recv()  # the first loss: envs 2, 3 truncated
        seen, _ = step_all()  # NextStep: the new episodes' first observations
        assert is_reset_obs(seen[2:])
        os.kill(envs._lease.groups[1].pid, signal.SIGKILL)
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        obs = []
        while len(obs) < 4:
            o, _, _, t, infos = envs.recv(batch_size=1)
            obs.append((int(infos["env_id"][0]), o[0], t[0]))
        lost = {row: o for row, o, t in obs if t}
        assert sorted(lost) == [2, 3]
        np.testing.assert_array_equal(np.stack([lost[2], lost[3]]), seen[2:])  # not the first lost episode's
        assert envs.envs_replaced == 4
    finally:
        envs.close()


def test_a_first_ready_send_that_cannot_be_sent_leaves_the_replaced_envs_as_they_were(monkeypatch):
    """Under NextStep, the step after a loss resets the replaced envs in the trainer. A send that
    raises before anything went out (here: a request the broker's max_message_size would refuse)
    must not use that up: the same send afterwards gives the same results as if it had not failed."""
    envs = RlayVectorEnv(
        [functools.partial(delayed_cartpole, 0.02)] * 4, envs_per_worker=2, on_worker_failure="replace", timeout=30
    )
    try:
        envs.async_reset(seed=0)
        envs.recv()
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        os.kill(envs._lease.groups[1].pid, signal.SIGKILL)
        _, _, _, truncs, infos = envs.recv()
        assert sorted(infos["env_id"][truncs].tolist()) == [2, 3]

        def refuse(*args, **kwargs):
            raise BrokerError("cannot send a step: a frame of 99999 bytes is over the broker's max_message_size")

        with monkeypatch.context() as patch:
            patch.setattr(envs._client, "send", refuse)
            with pytest.raises(BrokerError, match="over the broker's max_message_size"):
                envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])
        envs.send(np.zeros(4, np.int64), [0, 1, 2, 3])  # not AlreadyPendingCallError: nothing was pending
        obs, rewards, _, truncs, infos = envs.recv()
        assert sorted(infos["env_id"].tolist()) == [0, 1, 2, 3] and not truncs.any()
        new = np.isin(infos["env_id"], [2, 3])
        assert is_reset_obs(obs[new]) and (rewards[new] == 0).all()  # NextStep: the new episodes' reset
        assert (rewards[~new] == 1).all()
    finally:
        envs.close()


def test_a_worker_whose_queue_is_full_is_lost_and_replaced():
    """A send the broker cannot make (EAGAIN: the worker stopped reading) loses the worker, so that
    its LOST slots can be replaced (protocol 5.8 leg 2)."""
    import zmq

    envs = RlayVectorEnv(
        [lambda: gym.make("CartPole-v1")] * 4, envs_per_worker=2, on_worker_failure="replace", timeout=10
    )
    try:
        envs.reset(seed=0)
        broker = envs._cluster.inline_broker
        stuck = broker.slots[envs.slots[2]].worker.ident
        send, refused = broker._send, []

        def full_queue(sock, ident, frames):
            if sock is broker.back and ident == stuck and not refused:
                refused.append(ident)
                return zmq.Again()
            return send(sock, ident, frames)

        broker._send = full_queue
        _, _, _, truncs, infos = envs.step(np.zeros(4, np.int64))
        assert refused and truncs.tolist() == [False, False, True, True] and infos["_worker_lost"][2:].all()
        assert "a send to it failed" in broker.recent_losses[-1]["why"]
        envs.step(np.zeros(4, np.int64))
    finally:
        envs.close()


def test_broker_restarted_while_a_replacement_waits_during_first_ready_stepping(addresses):
    """A worker is lost, its replacement waits (no spare), the broker restarts, a spare host joins: the
    trainer leases anew, and every env in flight comes back from recv() as a truncation."""
    import threading

    front, back = addresses
    slow = ["tests.envs:delayed_cartpole", "--env-kwargs", '{"delay": 5}', "--name", "Slow-v0", "--no-restart"]
    procs = start_deployment(front, back, [[*slow, "-p", "2"]], workers=2)
    envs = None
    try:
        envs = RlayVectorEnv.remote(
            "Slow-v0", 2, broker=front, timeout=15, on_worker_failure="replace", replace_timeout=40
        )
        envs.async_reset(seed=0)
        envs.recv()
        victim = envs._lease.groups[1].pid
        envs.send(np.zeros(2, np.int64), [0, 1])  # env 0 steps for 5 s
        os.kill(victim, signal.SIGKILL)
        failures: list[BaseException] = []

        def operator():
            try:
                wait_for(lambda: broker_status(front)["pending_leases"] == 1, 10, "the replacement to wait")
                procs[0].stop(signal.SIGKILL)
                procs[0] = Proc("broker", "--frontend", front, "--backend", back)
                procs.append(Proc("worker", *slow, "-p", "1", "--broker", back))
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=operator)
        thread.start()
        try:
            _, _, _, truncs, infos = envs.recv()
        finally:
            thread.join(30)
        assert not failures, failures
        assert sorted(infos["env_id"].tolist()) == [0, 1] and truncs.all() and infos["worker_lost"].all()
        assert envs._first_ready.in_flight == {}
        envs.send(np.zeros(2, np.int64), [0, 1])  # NextStep: the new envs' first observations
        assert "worker_lost" not in envs.recv()[4]
    finally:
        if envs is not None:
            envs.close()
        stop_all(procs)
