"""The training examples run as their docstrings say: the CleanRL-style PPO learns CartPole on a small
budget, embedded, and both it and the SB3 example train through a running broker."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT, deployment, subprocess_env

pytest.importorskip("torch")  # (CI installs the train extra: these run there)


def run_example(script: str, *args: str, timeout: float) -> dict:
    """Run examples/``script``; it must exit 0. Returns its summary, the JSON of its last line."""
    done = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} {args} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(240)
def test_ppo_example_learns_cartpole_embedded():
    # 120 updates of 8 x 32 steps; the full run (100k steps, mean return 500) is in docs/guides/training.md
    summary = run_example("ppo_cartpole.py", "--total-timesteps", "30720", "--seed", "1", timeout=200)
    assert summary["steps"] == 30720
    assert summary["mean_return_last_20"] >= 200, summary  # a random policy scores ~22


@pytest.mark.timeout(240)
def test_examples_train_through_a_remote_broker():
    pytest.importorskip("stable_baselines3")
    with deployment([["CartPole-v1", "-p", "2", "-k", "4"]], workers=2) as (front, _):
        summary = run_example("ppo_cartpole.py", "--broker", front, "--total-timesteps", "2560", timeout=120)
        assert summary["steps"] == 2560 and summary["episodes"] > 0
        assert math.isfinite(summary["mean_return_last_20"])
        summary = run_example("sb3_ppo_cartpole.py", "--broker", front, "--total-timesteps", "2048", timeout=120)
        assert summary["steps"] == 2048 and summary["episodes"] > 0
        assert math.isfinite(summary["mean_return_last_20"])
