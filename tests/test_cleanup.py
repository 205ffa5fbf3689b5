"""Embedded mode leaves nothing running: after close(), at interpreter exit, and when the trainer dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env, wait_for

TRAINER = """
import os, signal, sys, multiprocessing
import gymnasium as gym
from rlay import RlayVectorEnv
envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 4, envs_per_worker=2)
envs.reset(seed=0)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), envs._cluster.tmpdir, flush=True)
how = sys.argv[1]
if how == "close":
    envs.close()
elif how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif how == "exception":
    raise RuntimeError("the training script crashed")
# "exit": fall off the end without close()
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["close", "exit", "exception", "kill"])
def test_embedded_children_stop_with_the_trainer(how):
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, how], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    expected = {"close": 0, "exit": 0, "exception": 1, "kill": -9}[how]
    assert proc.returncode == expected, proc.stderr
    *pids, tmpdir = proc.stdout.split()
    children = [int(p) for p in pids]
    assert len(children) == 2, f"expected 2 workers (the broker runs in the trainer), got {proc.stdout!r}"
    wait_for(lambda: not any(alive(p) for p in children), 15, f"children {children} to exit after the trainer's {how}")
    # Nor its ipc directory: a killed trainer cannot remove it, so its orphaned workers do.
    wait_for(lambda: not os.path.exists(tmpdir), 15, f"the ipc directory {tmpdir} to be removed")


def test_no_ipc_directories_are_left_behind(tmp_path, monkeypatch):
    """The trainer's ipc directory goes at close. It is made under a temporary root of this test's
    own, which nothing else on the machine writes into."""
    import tempfile

    import gymnasium as gym

    from rlay import RlayVectorEnv

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")])
    made = os.listdir(tmp_path)
    envs.close()
    assert [d for d in made if d.startswith("rlay-")], f"the trainer made no ipc directory in {tmp_path}: {made}"
    assert os.listdir(tmp_path) == []
