"""What one peer may ask of a broker is bounded: abuse gets an error at once, never a stall, and
whatever a silent peer holds is let go (protocol 5.2, 5.5, 8.5; broker/limits.py)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import zmq

from rlay import RlayVectorEnv
from rlay import protocol as P
from rlay.bench import rss_mb
from rlay.spaces import encode_space
from rlay.wire import decode_header, header
from tests.conftest import RLAY, ROOT, Proc, broker_status, deployment, free_port, run_cli, subprocess_env, wait_for

DISCRETE = encode_space(__import__("gymnasium").spaces.Discrete(2))


def register(env_id: str = "Abuse-v0", num_envs: int = 1) -> bytes:
    return header(P.REGISTER, env_id=env_id, num_envs=num_envs, host="h", pid=1, obs_space=DISCRETE, act_space=DISCRETE)


def answer(sock: zmq.Socket, timeout: float = 5.0) -> dict:
    assert sock.poll(timeout * 1000), f"no answer within {timeout} s"
    return decode_header(sock.recv_multipart()[0])


def timed_steps(envs, count: int) -> list[float]:
    action = np.zeros(envs.num_envs, np.int64)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        envs.step(action)
        times.append(time.perf_counter() - start)
    return times


def test_a_registration_of_a_million_envs_is_refused_at_once_while_a_trainer_steps(dealers):
    with deployment([["CartPole-v1", "-k", "4"]], workers=1) as (front, back):
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=10)
        try:
            envs.reset(seed=0)
            before = timed_steps(envs, 50)
            abuser = dealers(back)
            sent = time.perf_counter()
            abuser.send(register(num_envs=1_000_000))
            during = timed_steps(envs, 100)
            refusal = answer(abuser)
            assert refusal[P.TYPE] == P.ERROR and refusal["code"] == P.E_LIMIT, refusal
            assert "1000000 envs" in refusal["message"] and "max_envs_per_worker" in refusal["message"]
            assert time.perf_counter() - sent < 5
            assert max(during) < 0.1, f"a step took {max(during) * 1e3:.0f} ms (before: {max(before) * 1e3:.0f} ms)"
        finally:
            envs.close()
        status = broker_status(front)
        assert status["refusals"]["registrations_too_many_envs"] == 1
        assert [w["env_id"] for w in status["workers"]] == ["CartPole-v1"]
        shown = run_cli("status", "--broker", front).stdout
        assert "refused since start (over the broker's limits): 1 registration(s) of too many envs" in shown, shown


def test_pending_leases_that_cannot_be_met_do_not_slow_a_live_trainer(dealers):
    """Pending leases are looked at again only when slots of their env id free up, not on every reply."""
    with deployment([["CartPole-v1", "-k", "4"]], workers=1) as (front, back):
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=10)
        try:
            envs.reset(seed=0)
            timed_steps(envs, 20)
            alone = np.median(timed_steps(envs, 200))
            waiting = [dealers(front) for _ in range(100)]
            for n, sock in enumerate(waiting):
                sock.send(header(P.LEASE, req=n, env_id="CartPole-v1", num_envs=1000, timeout=60))
            wait_for(lambda: broker_status(front)["pending_leases"] == 100, 5, "100 leases to wait at the broker")
            crowded = np.median(timed_steps(envs, 200))
            assert broker_status(front)["pending_leases"] == 100  # (they ping no more than this test lasts)
        finally:
            envs.close()
        # Loosely: the same within noise (before the index, each reply rescanned every slot per lease).
        assert crowded < 2 * alone + 0.001, f"median step {alone * 1e3:.2f} ms alone, {crowded * 1e3:.2f} ms crowded"


def test_too_many_pending_leases_are_refused_and_counted(dealers, tmp_path):
    config = tmp_path / "broker.toml"
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config.write_text(f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\nmax_pending_leases = 3\n')
    broker = Proc("broker", "--config", str(config))
    try:
        wait_for(lambda: broker_status(front), 10, "the broker")
        socks = [dealers(front) for _ in range(4)]
        for n, sock in enumerate(socks):
            sock.send(header(P.LEASE, req=n, env_id="None-v0", num_envs=1, timeout=30))
        refused = wait_for(lambda: [s for s in socks if s.poll(0)], 5, "one lease request to be refused")
        assert len(refused) == 1, f"{len(refused)} refused"
        refusal = answer(refused[0])
        assert refusal["code"] == P.E_LIMIT and "max_pending_leases" in refusal["message"], refusal
        status = broker_status(front)
        assert status["pending_leases"] == 3 and status["refusals"]["leases_too_many_pending"] == 1
    finally:
        code, _, err = broker.stop()
        assert code == 0, err


def test_a_trainer_that_leaves_without_release_has_its_lease_freed(dealers):
    """A connection that leased and went away (no release, no more pings) loses its lease after the
    heartbeat expiry: its slots serve the next trainer. Its pending lease, likewise."""
    with deployment([["CartPole-v1", "-k", "2"]], workers=1) as (front, back):
        gone = dealers(front)
        gone.send(header(P.LEASE, req=1, env_id="CartPole-v1", num_envs=2))
        assert answer(gone)[P.TYPE] == P.LEASED
        waiting = dealers(front)
        waiting.send(header(P.LEASE, req=1, env_id="CartPole-v1", num_envs=2, timeout=60))
        gone.close()  # neither releases nor pings: both are let go
        waiting.close()
        wait_for(
            lambda: not broker_status(front)["trainers"] and not broker_status(front)["pending_leases"],
            P.HEARTBEAT_INTERVAL * P.HEARTBEAT_LIVENESS + 3,
            "the broker to let the silent trainers go",
        )
        envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=10, lease_timeout=5)
        envs.close()


def test_broker_memory_stays_bounded_under_a_registration_storm(dealers, tmp_path):
    """20,000 registrations of 100 envs from 200 connections that never ping: the rate limit and
    max_slots refuse most at once, and the ones taken expire; the broker's memory stays bounded and
    its refusals take a few log lines, not one each."""
    config, log = tmp_path / "broker.toml", tmp_path / "broker.log"
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config.write_text(
        f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\nmax_slots = 20000\n'
        "registrations_per_second = 500\nregistration_burst = 500\n"
    )
    with open(log, "wb") as out:  # (a file: the broker logs each registration and loss, a pipe would fill)
        broker = subprocess.Popen(
            [*RLAY, "broker", "--config", str(config)],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: broker_status(front), 10, "the broker")
        before = rss_mb(broker.pid)
        storm = [dealers(back) for _ in range(200)]
        for _ in range(100):
            for sock in storm:
                sock.send(register(env_id=f"Storm-{os.urandom(2).hex()}", num_envs=100))
            for sock in storm:  # every registration is answered, refused or not
                answer(sock, 30)
        peak = rss_mb(broker.pid)
        status = broker_status(front)
        refused = status["refusals"]
        assert refused["registrations_rate_limited"] + refused["registrations_too_many_slots"] > 15_000, refused
        assert sum(w["slots"] for w in status["workers"]) <= 20_000
        assert peak - before < 100, f"RSS grew from {before:.0f} MB to {peak:.0f} MB"
        wait_for(lambda: not broker_status(front)["workers"], 10, "the silent registrations to expire")
    finally:
        broker.terminate()
        assert broker.wait(15) == 0
    refusal_lines = [line for line in log.read_text().splitlines() if "refused a registration" in line]
    assert len(refusal_lines) < 20, f"{len(refusal_lines)} log lines for the storm's refusals"
