"""Fleets: `rlay up` launches and supervises the [[programs]] of a deployment file (rlay/fleet.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import gymnasium as gym
from gymnasium.vector import SyncVectorEnv

import rlay  # noqa: F401  (registers rlay/Conformance-v0)
from rlay import RlayVectorEnv
from rlay.deployment import read_deployment, worker_programs
from rlay.fleet import Program, dial_address
from tests.conftest import ROOT, Proc, assert_same, broker_status, free_port, run_cli, wait_for

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
    """Given up on, it will never run again: with nothing else to run, rlay up exits 1 by itself."""
    programs = '[[programs]]\nname = "missing"\ncommand = ["./no-such-game"]\n'
    with fleet(tmp_path, programs, ("--max-restarts", "1"), exit_code=1) as (_, up):
        up.popen.wait(30)
    _, _, err = up.stop()
    assert "missing#0 died 2 times in 60 s; not restarting it again" in err, err
    assert "cannot start './no-such-game'" in (tmp_path / "logs" / "missing-0.log").read_text()


def test_programs_alone_without_restarts(tmp_path):
    """A deployment of [[programs]] only, under --no-restart: an instance that dies stays down, and once
    none is left rlay up exits by itself, 1 (an instance failed)."""
    programs = f'[[programs]]\nname = "game"\ncommand = {toml_list([*GAME, "--broker", "{broker}"])}\ncount = 2\n'
    with fleet(tmp_path, programs, ("--no-restart",), exit_code=1) as (front, up):
        wait_for(lambda: programs_of(front).get("game", {}).get("registered") == 2, 60, "2 instances to register")
        first, second = sorted(w["pid"] for w in broker_status(front)["workers"])
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: programs_of(front)["game"]["running"] == 1, 10, "the killed instance to be counted down")
        assert programs_of(front)["game"]["restarts"] == 0 and up.popen.poll() is None
        os.kill(second, signal.SIGKILL)
        up.popen.wait(15)
    _, _, err = up.stop()
    assert err.count("exited with code -9; not restarted (--no-restart") == 2, err


def test_a_command_names_the_python_that_runs_rlay_up(tmp_path):
    program = Program("game", ("{python}", "-m", "game", "--broker", "{broker}", "--seat", "{name}-{index}"))
    assert program.argv(3, "tcp://h:1") == [sys.executable, "-m", "game", "--broker", "tcp://h:1", "--seat", "game-3"]
    assert program.argv(0, "tcp://h:1", python="/opt/py")[0] == "/opt/py"


def test_a_wildcard_bind_is_dialled_at_the_brokers_host():
    assert dial_address("tcp://*:5556", "10.0.0.1") == "tcp://10.0.0.1:5556"
    assert dial_address("tcp://0.0.0.0:5556", "127.0.0.1") == "tcp://127.0.0.1:5556"
    assert dial_address("tcp://10.0.0.2:5556", "10.0.0.1") == "tcp://10.0.0.2:5556"
    assert dial_address("ipc:///tmp/back", "10.0.0.1") == "ipc:///tmp/back"


def test_workers_become_programs_with_one_instance_per_worker_process(tmp_path):
    """On a Ray cluster, [[workers]] run as programs: `rlay worker` per process, unsupervised (the fleet
    supervises), with the group's options."""
    config_file = tmp_path / "w.toml"
    config_file.write_text(
        '[broker]\ncurve = "keys"\n\n[[workers]]\nenv = "CartPole-v1"\nnum_workers = 3\nenvs_per_worker = 4\n'
        'resources = { CPU = 2 }\n\n[[workers]]\nenv = "Pendulum-v1"\nname = "moon"\nenv_kwargs = { g = 1.62 }\n'
        'threads = 2\n\n[[workers]]\nenv = "CartPole-v1"\n'
    )
    cartpole, moon, again = worker_programs(read_deployment(config_file), taken={"moon"})
    assert cartpole.name == "CartPole-v1" and cartpole.count == 3 and cartpole.resources == {"CPU": 2.0}
    assert list(cartpole.command) == [
        "{python}", "-m", "rlay.cli", "worker", "CartPole-v1", "-k", "4", "--no-restart", "--broker", "{broker}",
        "--curve", os.path.abspath("keys"),
    ]  # fmt: skip
    assert moon.name == "moon-2" and moon.count == 1 and moon.resources == {}
    assert moon.command[-8:] == (
        "--name",
        "moon",
        "--env-kwargs",
        '{"g": 1.62}',
        "-t",
        "2",
        "--curve",
        cartpole.command[-1],
    )
    assert again.name == "CartPole-v1-2"


def test_rlay_and_its_command_line_import_no_ray():
    """Ray is an optional extra: only `rlay up --ray` imports it (rlay/ray_fleet.py)."""
    code = "import sys, rlay, rlay.cli, rlay.fleet, rlay.deployment, rlay.cluster; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_the_example_deployments_are_valid():
    """configs/: the fleet examples pass rlay up's checks, the Kubernetes manifest is YAML, the Slurm job
    script is bash."""
    import yaml

    configs = ROOT / "configs"
    for name in ("fleet-local.toml", "fleet-ray.toml", "cartpole-local.toml", "two-hosts.toml"):
        read_deployment(configs / name)
    assert read_deployment(configs / "fleet-ray.toml")["cluster"]["ray"] == "auto"
    documents = list(yaml.safe_load_all((configs / "k8s-fleet.yaml").read_text()))
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("Service", "rlay-broker"),
        ("Deployment", "rlay-broker"),
        ("Deployment", "arena"),
    ]
    game = documents[2]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RLAY_BROKER", "value": "tcp://rlay-broker:5556"} in game["env"]
    done = subprocess.run(["bash", "-n", str(configs / "slurm-fleet.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_local_fleet_example_runs_as_is(tmp_path):
    """configs/fleet-local.toml on fresh ports: two games and a CartPole worker, 8 slots of CartPole-v1
    that a trainer leases and steps."""
    text = (ROOT / "configs" / "fleet-local.toml").read_text()
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    text = re.sub(r'frontend = "[^"]*"', f'frontend = "{front}"', text)
    text = re.sub(r'backend = "[^"]*"', f'backend = "{back}"', text)
    config = tmp_path / "fleet-local.toml"
    config.write_text(text)
    up = Proc("up", str(config))
    try:
        wait_for(lambda: programs_of(front).get("tick-game", {}).get("registered") == 2, 60, "the games to register")
        wait_for(lambda: len(broker_status(front)["workers"]) == 3, 60, "the CartPole worker to register")
        envs = RlayVectorEnv.remote("CartPole-v1", 8, broker=front, timeout=20)
        try:
            envs.reset(seed=0)
            for _ in range(10):
                envs.step(envs.action_space.sample())
        finally:
            envs.close()
    finally:
        code, _, err = up.stop()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "rlay-logs").iterdir()) == ["tick-game-0.log", "tick-game-1.log"]


def test_a_worker_launched_as_an_instance_names_its_program(monkeypatch):
    from workers.base import launched_as

    monkeypatch.setenv("RLAY_PROGRAM", "arena")
    monkeypatch.setenv("RLAY_INSTANCE", "7")
    assert launched_as() == {"program": "arena", "instance": 7}
    monkeypatch.setenv("RLAY_INSTANCE", "seven")
    assert launched_as() == {}
