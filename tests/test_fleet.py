"""Fleets: `rlay up` launches and supervises the [[programs]] of a deployment file (rlay/fleet.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import gymnasium as gym
from gymnasium.vector import SyncVectorEnv

import rlay  # noqa: F401  (registers rlay/Conformance-v0)
from rlay import RlayVectorEnv
from tests.conftest import Proc, assert_same, broker_status, free_port, run_cli, wait_for

GAME = [sys.executable, "-m", "workers.examples.tick_game", "rlay/Conformance-v0", "--agents", "2", "--every", "2"]


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


@contextlib.contextmanager
def fleet(tmp_path, programs: str, up_args: tuple[str, ...] = (), exit_code: int = 0):
    """`rlay up` of a deployment file of ``programs`` on fresh ports; yields (front, the up Proc). It must
    stop within its timeout and exit with ``exit_code`` (1: something was given up on)."""
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "fleet.toml"
    config.write_text(f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\n\n[fleet]\nlog_dir = "logs"\n\n{programs}')
    up = Proc("up", str(config), *up_args)
    try:
        yield front, up
    finally:
        code, out, err = up.stop()
        assert code == exit_code, err


def programs_of(front: str) -> dict[str, dict]:
    return {p["name"]: p for p in broker_status(front).get("programs", [])}


def test_a_fleet_of_games_registers_steps_like_sync_and_comes_back_when_killed(tmp_path):
    programs = f'[[programs]]\nname = "game"\ncommand = {toml_list([*GAME, "--broker", "{broker}"])}\ncount = 2\n'
    with fleet(tmp_path, programs) as (front, _):
        wait_for(lambda: programs_of(front).get("game", {}).get("registered") == 2, 60, "2 instances to register")
        status = broker_status(front)
        assert sorted((w["program"], w["instance"]) for w in status["workers"]) == [("game", 0), ("game", 1)]
        assert programs_of(front)["game"] | {"age": 0} == {
            "name": "game",
            "count": 2,
            "running": 2,
            "registered": 2,
            "restarts": 0,
            "unregistered": 0,
            "given_up": 0,
            "age": 0,
        }
        shown = run_cli("status", "--broker", front).stdout
        assert "PROGRAM" in shown and "game" in shown, shown

        # A trainer's rollout over the fleet's four agents equals SyncVectorEnv.
        envs = RlayVectorEnv.remote("rlay/Conformance-v0", 4, broker=front, timeout=20)
        sync = SyncVectorEnv([lambda: gym.make("rlay/Conformance-v0")] * 4)
        try:
            assert_same(envs.reset(seed=5), sync.reset(seed=5), "reset")
            for t in range(20):
                action = sync.action_space.sample()
                assert_same(envs.step(action), sync.step(action), f"step {t}")
        finally:
            envs.close()
            sync.close()

        # An instance that dies comes back (after 0.5 s), and registers again.
        victim = next(w["pid"] for w in status["workers"] if w["instance"] == 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: programs_of(front)["game"]["restarts"] == 1, 30, "the killed instance to be restarted")
        wait_for(lambda: victim not in [w["pid"] for w in broker_status(front)["workers"]], 10, "the broker to drop it")
        wait_for(lambda: programs_of(front)["game"]["registered"] == 2, 60, "the restarted instance to register")
    log_text = (tmp_path / "logs" / "game-1.log").read_text()
    assert log_text.count("rlay up starts:") == 2 and "registered as" in log_text


def test_stopping_rlay_up_stops_what_a_shell_script_started(tmp_path):
    """A program that is a script: the game is the script's child, in the instance's process group,
    and goes when `rlay up` stops, though it is no child of rlay up's."""
    script = " ".join([*GAME, "--broker", "$RLAY_BROKER"]) + " & wait"
    programs = f'[[programs]]\nname = "scripted"\ncommand = {toml_list(["sh", "-c", script])}\n'
    with fleet(tmp_path, programs) as (front, _):
        wait_for(lambda: programs_of(front).get("scripted", {}).get("registered") == 1, 60, "the game to register")
        game = broker_status(front)["workers"][0]["pid"]
    wait_for(lambda: not os.path.exists(f"/proc/{game}"), 10, f"the script's game (pid {game}) to be gone")


def test_a_launch_that_never_registers_is_reported(tmp_path):
    programs = '[[programs]]\nname = "mute"\ncommand = ["sleep", "600"]\nregister_timeout = 1\n'
    with fleet(tmp_path, programs) as (front, up):
        wait_for(
            lambda: programs_of(front).get("mute", {}).get("unregistered") == 1, 30, "the late launch to be reported"
        )
        assert programs_of(front)["mute"]["running"] == 1
    _, _, err = up.stop()
    assert "mute#0" in err and "has not registered within 1 s of its launch" in err and "mute-0.log" in err


def test_a_program_that_cannot_start_is_retried_then_given_up_on(tmp_path):
    programs = '[[programs]]\nname = "missing"\ncommand = ["./no-such-game"]\n'
    with fleet(tmp_path, programs, ("--max-restarts", "1"), exit_code=1) as (front, _):
        wait_for(
            lambda: programs_of(front).get("missing", {}).get("given_up") == 1, 30, "the program to be given up on"
        )
    assert "cannot start './no-such-game'" in (tmp_path / "logs" / "missing-0.log").read_text()


def test_a_worker_launched_as_an_instance_names_its_program(monkeypatch):
    from workers.base import launched_as

    monkeypatch.setenv("RLAY_PROGRAM", "arena")
    monkeypatch.setenv("RLAY_INSTANCE", "7")
    assert launched_as() == {"program": "arena", "instance": 7}
    monkeypatch.setenv("RLAY_INSTANCE", "seven")
    assert launched_as() == {}
