"""What a user sees when things are slow or wrong (issue 17): lease waits that say what they wait for,
errors read in one glance, a quiet exit."""

from __future__ import annotations

import logging

import pytest

import rlay.trainer.lease
from rlay import LeaseError, RlayVectorEnv
from tests.conftest import deployment

pytestmark = pytest.mark.timeout(120)


TWO_CARTPOLE_WORKERS = '[[workers]]\nenv = "CartPole-v1"\nnum_workers = 2\nenvs_per_worker = 2'  # (for rlay up)


def test_a_lease_wait_says_what_it_waits_for(monkeypatch, caplog):
    """A typo in the env id: every few seconds a line names what is registered instead."""
    monkeypatch.setattr(rlay.trainer.lease, "LEASE_NOTE_S", 0.3)
    with deployment([["CartPole-v1", "-k", "2"]], workers=1) as (front, _):
        with caplog.at_level(logging.WARNING, logger="rlay.vector"):
            with pytest.raises(LeaseError, match="CartPol-v1"):
                RlayVectorEnv.remote("CartPol-v1", 8, broker=front, lease_timeout=1.5, timeout=10)
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for a lease")]
    assert notes, caplog.text
    assert "no worker has registered 'CartPol-v1'" in notes[0], notes
    assert "CartPole-v1 (2 slots, 2 free)" in notes[0], notes


def test_an_embedded_env_that_cannot_be_made_raises_its_own_type_once(capfd):
    """NameNotFound stays NameNotFound, with the worker's traceback in its message; the worker
    process does not print it a second time."""
    import functools

    import gymnasium as gym

    with pytest.raises(gym.error.NameNotFound, match="could not make its envs") as info:
        RlayVectorEnv([functools.partial(gym.make, "CartPol-v1")] * 2, timeout=30)
    assert "Did you mean: `CartPole`" in str(info.value) and "worker.py" in str(info.value)
    assert "Traceback" not in capfd.readouterr().err


QUIET_EXIT = """
import gymnasium as gym
from rlay import RlayVectorEnv
envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 4, envs_per_worker=2)
envs.reset(seed=0)
for _ in range(10):
    envs.step(envs.action_space.sample())
{ending}
print("done", flush=True)
"""


@pytest.mark.parametrize("ending", ["envs.close()", "pass"], ids=["closed", "not closed"])
def test_a_trainer_that_exits_on_purpose_is_quiet(ending):
    """Embedded, with or without close(): no 'lost' warning, nothing at all on stderr."""
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    done = subprocess.run(
        [sys.executable, "-c", QUIET_EXIT.format(ending=ending)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done
    assert done.stderr == "", done.stderr


def test_rlay_up_stopped_by_ctrl_c_logs_no_warning(tmp_path):
    import signal

    from tests.conftest import Proc, broker_status, wait_for, write_deployment

    front, _, config = write_deployment(tmp_path, TWO_CARTPOLE_WORKERS)
    up = Proc("up", str(config))
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 2, 60, "2 workers to register")
    finally:
        code, _, err = up.stop(signal.SIGINT)
    assert code == 0, err
    assert "WARNING" not in err and "ERROR" not in err, err


def test_the_same_error_of_many_envs_is_said_once():
    """Eight envs stepped before their reset: one line names them all, one traceback follows."""
    import gymnasium as gym
    import numpy as np

    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")] * 8, envs_per_worker=4)
    try:
        with pytest.raises(gym.error.ResetNeeded) as info:
            envs.step(np.zeros(8, dtype=np.int64))
    finally:
        envs.close()
    text = str(info.value)
    assert text.count("Traceback") == 1, text
    assert "envs 0-7 (on worker " in text and text.count("raised ResetNeeded") == 1, text
    assert len(info.value.details) == 8 and sorted(d["row"] for d in info.value.details) == list(range(8))


def test_rollout_shows_its_progress_in_plain_lines_when_not_on_a_terminal():
    """Env-steps/s, episodes, mean return, elapsed and remaining time, in a line every
    RLAY_PROGRESS_EVERY seconds (5 by default)."""
    import re
    import subprocess

    from tests.conftest import RLAY, ROOT, subprocess_env

    env = {**subprocess_env(), "RLAY_PROGRESS_EVERY": "0.05"}
    done = subprocess.run(
        [*RLAY, "rollout", "CartPole-v1", "-n", "4", "--env-steps", "6000", "-k", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("rollout: ")]
    assert lines, done.stderr
    pattern = (
        r"rollout: [\d,]+/6,000 env-steps \(\d+%\), [\d,]+ env-steps/s, episodes \d+(, mean return [\d.]+)?, "
        r"\d+:\d\d elapsed, (\d+:\d\d|\?) left"
    )
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert "6000 env-steps in" in done.stdout, done.stdout


def test_the_old_steps_flag_still_works_and_says_what_it_means():
    from tests.conftest import run_cli

    done = run_cli("rollout", "CartPole-v1", "-n", "3", "--steps", "10", "-k", "3")
    assert done.returncode == 0, done.stderr
    assert "30 env-steps in" in done.stdout
    assert "note: --steps counts vector steps, each stepping all 3 envs: this is --env-steps 30" in done.stderr


def test_cli_errors_are_one_line_with_a_hint():
    """A misspelt env id: one Error line and one hint, not a traceback; --debug shows it whole."""
    from tests.conftest import run_cli

    done = run_cli("rollout", "CartPol-v1", "-n", "2", "--env-steps", "10")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("Error: NameNotFound: ") and "Did you mean: `CartPole`?" in lines[0], lines
    assert lines[1].startswith("  hint: "), lines
    debug = run_cli("--debug", "rollout", "CartPol-v1", "-n", "2", "--env-steps", "10")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_rlay_up_says_how_its_start_goes(tmp_path):
    """Until everything it launched has registered, `rlay up` says how far it is, then that it is done."""
    import signal
    import subprocess

    from tests.conftest import RLAY, ROOT, subprocess_env, wait_for, write_deployment

    front, _, config = write_deployment(tmp_path, TWO_CARTPOLE_WORKERS)
    err = tmp_path / "up.err"
    with err.open("w") as sink:
        up = subprocess.Popen([*RLAY, "up", str(config)], cwd=ROOT, env=subprocess_env(), stderr=sink)
        try:
            wait_for(lambda: "rlay up: all registered in" in err.read_text(), 60, "rlay up to say all registered")
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(30)
    assert code == 0
    assert "2/2 worker process(es)" in err.read_text()
