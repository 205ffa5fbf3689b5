"""The broker's live metrics: what `status` reports of the calls a trainer made, and the page it
serves to Prometheus (`rlay broker --metrics`)."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from rlay import RlayVectorEnv
from tests.conftest import Proc, broker_status, deployment, free_port, wait_for

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


def test_the_metrics_page_parses_as_prometheus_text_and_counts_the_steps():
    parser = pytest.importorskip("prometheus_client.parser")
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    address = f"127.0.0.1:{free_port()}"
    broker = Proc("broker", "--frontend", front, "--backend", back, "--metrics", address)
    worker = Proc("worker", "CartPole-v1", "-k", "2", "--broker", back)
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 1, 60, "the worker to register")
        envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=30)
        try:
            envs.reset(seed=0)
            for _ in range(STEPS):
                envs.step(np.zeros(2, dtype=np.int64))
        finally:
            envs.close()

        def scraped() -> dict:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as page:
                text = page.read().decode()
            return {s.name: s for family in parser.text_string_to_metric_families(text) for s in family.samples}

        wait_for(lambda: scraped().get("rlay_env_steps_total", None) is not None, 10, "the page to be renewed")
        wait_for(lambda: scraped()["rlay_env_steps_total"].value == 2 * STEPS, 10, "the page to count the steps")
        samples = scraped()
        assert samples["rlay_workers"].value == 1
        assert samples["rlay_calls_total"].value == STEPS + 1
    finally:
        worker.stop()
        code, _, err = broker.stop()
        assert code == 0, err


def test_status_text_shows_steps_rates_and_latencies():
    """`rlay status` prints what each trainer and worker did; between two reports, env-steps/s."""
    import re

    from rlay.status_view import render
    from tests.conftest import run_cli

    with deployment([["CartPole-v1", "-k", "2"]], workers=1) as (front, _):
        envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=30)
        try:
            envs.reset(seed=0)
            first = broker_status(front)
            for _ in range(STEPS):
                envs.step(np.zeros(2, dtype=np.int64))
            second = broker_status(front)
            text = run_cli("status", "--broker", front).stdout
        finally:
            envs.close()
    (trainer,) = second["trainers"]
    assert re.search(rf"{trainer['name']}\s+CartPole-v1\s+2\s+0\s+0\s+{2 * STEPS}\s+-\s+[\d.]+\s+[\d.]+", text), text
    assert f"env steps since start: {2 * STEPS}" in text, text
    watched = render(second, first, 2.0)  # as --watch draws it: the steps of the last 2 s
    assert re.search(rf"{trainer['name']}\s+CartPole-v1\s+2\s+0\s+0\s+{2 * STEPS}\s+{STEPS}\s", watched), watched


def test_status_watch_redraws_until_ctrl_c(tmp_path):
    import signal
    import subprocess

    from tests.conftest import RLAY, ROOT, subprocess_env

    with deployment([["CartPole-v1", "-k", "2"]], workers=1) as (front, _):
        out = tmp_path / "watch.txt"
        with out.open("w") as sink:
            watch = subprocess.Popen(
                [*RLAY, "status", "--broker", front, "--watch", "0.2"], cwd=ROOT, env=subprocess_env(), stdout=sink
            )
            try:
                wait_for(lambda: out.read_text().count("rlay status --watch 0.2") >= 3, 30, "three redraws")
            finally:
                watch.send_signal(signal.SIGINT)
                code = watch.wait(15)
    assert code == 0
    assert out.read_text().count("WORKER") >= 3
