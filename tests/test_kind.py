"""What a user sees when things are slow or wrong (issue 17): lease waits that say what they wait for,
errors read in one glance, a quiet exit."""

from __future__ import annotations

import logging

import pytest

import rlay.trainer.lease
from rlay import LeaseError, RlayVectorEnv
from tests.conftest import deployment

pytestmark = pytest.mark.timeout(120)


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

    from tests.conftest import Proc, broker_status, free_port, wait_for

    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "up.toml"
    config.write_text(
        f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\n\n'
        '[[workers]]\nenv = "CartPole-v1"\nnum_workers = 2\nenvs_per_worker = 2\n'
    )
    up = Proc("up", str(config))
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 2, 60, "2 workers to register")
    finally:
        code, _, err = up.stop(signal.SIGINT)
    assert code == 0, err
    assert "WARNING" not in err and "ERROR" not in err, err
