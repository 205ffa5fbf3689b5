"""The broker's live metrics: what `status` reports of the calls a trainer made."""

from __future__ import annotations

import numpy as np
import pytest

from rlay import RlayVectorEnv
from tests.conftest import broker_status, deployment

pytestmark = pytest.mark.timeout(120)

STEPS = 25


def test_status_counts_what_a_trainer_did():
    """Env-steps and calls per trainer and per worker, latency quantiles, slots by env id; a trainer
    that leaves stays in the totals and among the departed."""
    with deployment([["CartPole-v1", "-k", "2"], ["CartPole-v1", "-k", "2"]], workers=2) as (front, _):
        envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=30)
        try:
            envs.reset(seed=0)
            for _ in range(STEPS):
                envs.step(np.zeros(4, dtype=np.int64))
            status = broker_status(front)
            metrics = status["metrics"]
            (name,) = metrics["trainers"]
            mine = metrics["trainers"][name]
            assert mine["env_steps"] == 4 * STEPS and mine["calls"] == STEPS + 1  # (and the reset)
            assert mine["failed_calls"] == 0
            assert 0 < mine["latency_ms_p50"] <= mine["latency_ms_p99"]
            assert 0 <= mine["slowest_wait_ms_p50"] <= mine["slowest_wait_ms_p99"] <= mine["latency_ms_p99"]
            workers = metrics["workers"]
            assert sorted(w["env_steps"] for w in workers.values()) == [2 * STEPS, 2 * STEPS]
            assert all(w["calls"] == STEPS + 1 for w in workers.values())
            assert status["slots_by_env"] == {"CartPole-v1": {"free": 0, "leased": 4, "busy": 0, "lost": 0}}
        finally:
            envs.close()
        after = broker_status(front)
        assert after["metrics"]["env_steps"] == 4 * STEPS
        assert after["metrics"]["departed_trainers"][name]["env_steps"] == 4 * STEPS
        assert after["slots_by_env"]["CartPole-v1"]["free"] == 4
