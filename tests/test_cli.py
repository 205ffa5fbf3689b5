"""The rlay command line, run as real subprocesses."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Proc, broker_status, free_port, run_cli, wait_for

COMMANDS = {
    "broker": ["--frontend", "--backend", "--config"],
    "worker": ["--broker", "--num-workers", "--envs-per-worker", "--env-kwargs"],
    "up": ["CONFIG"],
    "status": ["--broker", "--json"],
    "rollout": ["--num-envs", "--env-steps", "--steps", "--broker"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    for option in COMMANDS[command]:
        assert option in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "rlay"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "rollout" in result.stdout


def test_embedded_rollout_prints_rate_and_returns():
    result = run_cli("rollout", "CartPole-v1", "--num-envs", "4", "--env-steps", "800", "-k", "2")
    assert result.returncode == 0, result.stderr
    assert re.search(r"800 env-steps in [\d.]+ s: [\d,]+ env-steps/s", result.stdout), result.stdout
    assert re.search(r"\d+ episodes: return mean [\d.]+ \+- [\d.]+, min [\d.]+, max [\d.]+", result.stdout)


def write_config(tmp_path: Path) -> tuple[Path, str]:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "deploy.toml"
    config.write_text(
        f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\n\n'
        '[[workers]]\nenv = "CartPole-v1"\nnum_workers = 2\nenvs_per_worker = 3\n\n'
        '[[workers]]\nenv = "Pendulum-v1"\nname = "MoonPendulum"\nenv_kwargs = { g = 1.62 }\n'
    )
    return config, front


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_status_rollout_then_signal_stops_everything(tmp_path, sig):
    config, front = write_config(tmp_path)
    up = Proc("up", str(config))
    try:
        wait_for(lambda: up.popen.poll() is not None or len(broker_status(front)["workers"]) == 3, 60, "3 workers")
        assert up.popen.poll() is None, "rlay up exited early"

        status = run_cli("status", "--broker", front)
        assert status.returncode == 0, status.stderr
        assert re.search(r"w\d+\s+\S+\s+\d+\s+CartPole-v1\s+command\s+3\s+0\s+0", status.stdout), status.stdout
        assert "MoonPendulum" in status.stdout and "3 worker(s), 7 slot(s): 7 free, 0 leased" in status.stdout

        as_json = json.loads(run_cli("status", "--broker", front, "--json").stdout)
        assert sum(w["slots"] for w in as_json["workers"]) == 7

        rollout = run_cli("rollout", "CartPole-v1", "--num-envs", "6", "--env-steps", "600", "--broker", front)
        assert rollout.returncode == 0, rollout.stderr
        assert "600 env-steps in" in rollout.stdout

        moon = run_cli("rollout", "MoonPendulum", "-n", "1", "-s", "5", "--broker", front)
        assert moon.returncode == 0 and "5 env-steps" in moon.stdout, moon.stderr
    finally:
        code, out, err = up.stop(sig)
    assert code == 0, err
    assert "rlay up: broker on" in out


def test_status_without_broker_fails_clearly():
    result = run_cli("status", "--broker", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.returncode == 1
    assert "no reply from the broker" in result.stderr and "within 0.5 s" in result.stderr


def test_bad_config_and_bad_kwargs_are_usage_errors(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[broker]\nfrontend = "tcp://127.0.0.1:1"\nport = 3\n')
    result = run_cli("up", str(config))
    assert result.returncode == 2 and "unknown keys ['port'] in [broker]" in result.stderr
    result = run_cli("worker", "CartPole-v1", "--env-kwargs", "{not json")
    assert result.returncode == 2 and "not JSON" in result.stderr
    # Values are checked too, before anything starts (these used to end in a traceback from `up`).
    for body, message in [
        ('[[workers]]\nenv = "CartPole-v1"\nenvs_per_worker = 0\n', "envs_per_worker must be an integer >= 1, got 0"),
        (
            '[[workers]]\nenv = "CartPole-v1"\nenvs_per_worker = "4"\n',
            "envs_per_worker must be an integer >= 1, got '4'",
        ),
        ('[[workers]]\nenv = "CartPole-v1"\nenv_kwargs = "{}"\n', "env_kwargs must be a table of keyword arguments"),
        ('[[workers]]\nenv = "CartPole-v1"\nnum_workers = true\n', "num_workers must be an integer >= 1, got True"),
        (
            "[broker]\nheartbeat_interval = 0\n",
            "[broker] heartbeat_interval must be a number of seconds from 0.01 to 3600",
        ),
        ('[[programs]]\nname = "game"\n', "[[programs]] #1 has no 'command'"),
        ('[[programs]]\nname = "game"\ncommand = "./game.sh"\n', "command must be a non-empty list of strings"),
        ('[[programs]]\nname = "game"\ncommand = ["g"]\ncount = 0\n', "count must be an integer >= 1, got 0"),
        ('[[programs]]\nname = "game"\ncommand = ["g"]\nenv = { N = 3 }\n', "env must be a table of environment"),
        ('[[programs]]\nname = "a b"\ncommand = ["g"]\n', "name must be a string of letters, digits"),
        ('[[programs]]\nname = "g"\ncommand = ["g"]\n[[programs]]\nname = "g"\ncommand = ["h"]\n', "same name"),
        ('[[programs]]\nname = "g"\ncommand = ["g"]\nresources = { GPU = -1 }\n', "resources must be a table"),
        ("[fleet]\nlog_dir = 3\n", "[fleet] log_dir must be a directory"),
    ]:
        config.write_text(body)
        result = run_cli("up", str(config))
        assert result.returncode == 2 and message in result.stderr, (body, result.stderr)


def test_an_address_in_use_stops_broker_and_up_at_once_without_starting_workers(tmp_path):
    import zmq

    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    try:
        addr = f"tcp://127.0.0.1:{free_port()}"
        taken.bind(addr)
        result = run_cli("broker", "--frontend", addr, "--backend", f"tcp://127.0.0.1:{free_port()}")
        assert result.returncode == 1 and f"cannot bind {addr}: Address already in use" in result.stderr, result.stderr
        # `up` stops before its workers start: none may register with whatever holds the address.
        config = tmp_path / "taken.toml"
        config.write_text(
            f'[broker]\nfrontend = "tcp://127.0.0.1:{free_port()}"\nbackend = "{addr}"\n\n'
            '[[workers]]\nenv = "CartPole-v1"\n'
        )
        result = run_cli("up", str(config))
        assert result.returncode == 1 and f"cannot bind {addr}" in result.stderr, result.stderr
        assert "rlay up: broker on" not in result.stdout
    finally:
        taken.close(0)
        ctx.term()


def test_worker_without_broker_gives_up_after_its_timeout():
    result = run_cli(
        "worker",
        "CartPole-v1",
        "--broker",
        f"tcp://127.0.0.1:{free_port()}",
        "--register-timeout",
        "0.5",
        "--no-restart",
    )
    assert result.returncode == 1
    assert "no broker answered the registration" in result.stderr


def test_configs_in_the_repo_are_valid():
    from rlay.cli import load_config

    for path in (ROOT / "configs").glob("*.toml"):
        config = load_config(str(path))
        assert config["workers"], path


def test_broker_reads_its_addresses_from_a_config(tmp_path):
    config, front = write_config(tmp_path)
    broker = Proc("broker", "--config", str(config))
    try:
        status = wait_for(lambda: broker.popen.poll() is not None or broker_status(front), 30, "the broker to answer")
        assert broker.popen.poll() is None and status["broker"]["frontend"] == front
    finally:
        code, _, err = broker.stop(signal.SIGINT)
    assert code == 0, err


def test_bench_smoke_prints_a_table_and_json():
    # (progress lines go to stderr, here, not a terminal, a plain line at every run: RLAY_PROGRESS_EVERY=0)
    result = run_cli("bench", "--quick", "--json", timeout=300, env={"RLAY_PROGRESS_EVERY": "0"})
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("rlay bench: ")]
    assert len(progress) == 6 * 3 + 1 and progress[-1] == "rlay bench: round trips and worker CPU", progress
    assert progress[-2].startswith("rlay bench: 18/18 runs (100%)") and progress[-2].endswith("0:00 left"), progress
    report = json.loads(result.stdout)
    names = [w["name"] for w in report["workloads"]]
    assert names == [
        "CartPole-v1 x8",
        "CartPole-v1 x64",
        "sleep 1 ms x64",
        "game instances x64",
        "uint8[84,84,3] x8",
        "uint8[1080,1920,4] x8",
    ]
    for w in report["workloads"]:
        assert w["rlay"] > 0 and w["sync"] > 0 and w["async"] > 0, w
    assert report["workloads"][-1]["bare_pyzmq_gbps"] > 0 and report["workloads"][-1]["memcpy_gbps"] > 0
    assert report["workloads"][2]["floor"] > 0 and "floor without rlay (2 processes x 32 threads" in result.stderr
    assert report["workloads"][3]["floor"] > 0 and "floor without rlay (64 processes x 1 threads" in result.stderr
    assert report["worker_cpu_us"]["python"] > 0
    latency = report["latency"]
    assert latency["rlay"]["median_us"] > 0 and latency["bare_pyzmq"]["p99_us"] > 0
    assert latency["broker_python_worker"]["median_us"] > 0
    assert "vs async" in result.stderr and "round trip of one env" in result.stderr
