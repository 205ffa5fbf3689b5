"""Fleets on a Ray cluster (rlay/ray_fleet.py): `rlay up CONFIG --ray ADDRESS` against a real cluster of
three nodes on this machine (tests/ray_cluster.py), each with resources of its own.

Every Ray process runs inside a network namespace made for this module, with only lo up, and with
RAY_USAGE_STATS_ENABLED=0: Ray binds the machine's address and reports usage unless told not to. The
broker's front end is an ipc socket, which crosses namespaces: the trainer, `rlay status` and these
checks run out here; the instances dial its back end over tcp on the namespace's 127.0.0.1, as nodes
would over a network. One cluster serves every test (Ray starts slowly).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile

import gymnasium as gym
import pytest
from gymnasium.vector import SyncVectorEnv

import rlay  # noqa: F401  (registers rlay/Conformance-v0)
from rlay import RlayVectorEnv
from tests.conftest import ROOT, Proc, assert_same, broker_status, free_port, subprocess_env, wait_for
from tests.test_fleet import programs_of, toml_list

pytestmark = [
    # (looked up, not imported: Ray runs only inside the namespace)
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra: pip install -e '.[ray]'"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip(8), for a network namespace"
    ),
]

GAME = [
    "{python}", "-m", "workers.examples.tick_game", "rlay/Conformance-v0", "--agents", "2", "--every", "2",
    "--broker", "{broker}",
]  # fmt: skip
CLUSTER_START_TIMEOUT = 90.0
# What an instance of ours runs as: the game, a worker, the actor around it (ray::InstanceActor...).
INSTANCE_MARKS = ("workers.examples.tick_game", "rlay.cli worker", "ray::InstanceActor")


def namespace_pids(namespace: str) -> set[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True)
    return {int(pid) for pid in done.stdout.split()}


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@pytest.fixture(scope="module")
def namespace():
    """A network namespace with only lo up; at the end nothing may be left in it, and it is deleted."""
    name = f"rlay-ray-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True)
        assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"], links.stdout
        yield name
    finally:
        try:
            wait_for(lambda: not namespace_pids(name), 15, "every process in the namespace to exit")
        finally:
            left = namespace_pids(name)
            for pid in left:  # (ours alone: the namespace was made for this module)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], check=True)
        assert not left, f"left in the namespace: {[command_line(p) for p in left]}"


class RayCluster:
    """tests/ray_cluster.py running in ``namespace``: its address and nodes, and its live actors on demand."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.tmpdir = tempfile.mkdtemp(prefix="rlay-ray-", dir="/tmp")  # (short: Ray's socket paths live here)
        self.env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": self.tmpdir}
        self.err = open(os.path.join(self.tmpdir, "cluster.err"), "w")
        self.popen = subprocess.Popen(
            [*self.inside(), sys.executable, "-m", "tests.ray_cluster"],
            cwd=ROOT,
            env={**subprocess_env(), **self.env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        started = self._answer(CLUSTER_START_TIMEOUT)
        self.address, self.nodes = started["address"], started["nodes"]
        self.raylets = {node["raylet_pid"]: node["name"] for node in self.nodes}

    def inside(self) -> list[str]:
        """The prefix of a command that runs in the namespace, with Ray's settings."""
        return ["ip", "netns", "exec", self.namespace, "env", *(f"{k}={v}" for k, v in self.env.items())]

    def _answer(self, timeout: float):
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        line = self.popen.stdout.readline() if ready else ""
        if not line:
            self.err.flush()
            with open(self.err.name) as f:
                raise AssertionError(f"the Ray cluster did not answer within {timeout} s:\n{f.read()[-3000:]}")
        return json.loads(line)

    def actors(self) -> list[dict]:
        """The cluster's actors that are not dead."""
        self.popen.stdin.write("actors\n")
        self.popen.stdin.flush()
        return self._answer(30)

    def node_of(self, pid: int) -> str:
        """The name of the node whose raylet ``pid`` descends from."""
        seen = pid
        while seen > 1:
            if seen in self.raylets:
                return self.raylets[seen]
            seen = parent(seen)
        raise AssertionError(f"pid {pid} ({command_line(pid)!r}) runs on no node of the cluster")

    def instance_pids(self) -> dict[int, str]:
        """Processes of instances (games, workers, their actors) in the namespace."""
        found = {pid: command_line(pid) for pid in namespace_pids(self.namespace)}
        return {pid: line for pid, line in found.items() if any(mark in line for mark in INSTANCE_MARKS)}

    def close(self) -> None:
        self.popen.stdin.close()
        try:
            code = self.popen.wait(60)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
            self.err.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        assert code == 0, f"the Ray cluster exited with code {code}"


@pytest.fixture(scope="module")
def cluster(namespace):
    cluster = RayCluster(namespace)
    try:
        yield cluster
    finally:
        cluster.close()


def test_every_node_is_on_loopback_with_its_own_resources(cluster):
    assert [n["ip"] for n in cluster.nodes] == ["127.0.0.1"] * 3
    resources = {n["name"]: n["resources"] for n in cluster.nodes}
    assert "arena" in resources["arena"] and resources["gpu"]["GPU"] == 1
    assert all("arena" not in r for name, r in resources.items() if name != "arena")


@contextlib.contextmanager
def ray_up(cluster, tmp_path, tables: str, *args: str, exit_code: int = 0, broker: str = ""):
    """`rlay up` of a deployment file of ``tables`` (and ``broker`` keys) inside the namespace, its front end
    on ipc; yields (front, the Proc). It must stop with ``exit_code``; then no actor and no instance process
    may be left."""
    front = f"ipc://{cluster.tmpdir}/front-{tmp_path.name}"
    back = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\n{broker}\n[fleet]\nlog_dir = "logs"\n\n{tables}'
    )
    up = Proc("up", str(config), *args, command=[*cluster.inside(), sys.executable, "-m", "rlay.cli"])
    try:
        yield front, up
    finally:
        code, _, err = up.stop(timeout=30)
        assert code == exit_code, err
        assert cluster.actors() == [], "actors left on the cluster after rlay up stopped"
        wait_for(lambda: not cluster.instance_pids(), 10, "every instance's processes to exit")


def placement(cluster, front: str) -> dict[tuple[str, int], str]:
    """(program, instance) -> the node it runs on, from the pid each registered with."""
    workers = broker_status(front)["workers"]
    try:
        return {(w["program"], w["instance"]): cluster.node_of(w["pid"]) for w in workers}
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the broker's workers: {workers}") from None


def counts(front: str) -> dict[str, tuple[int, int, int]]:
    return {name: (p["running"], p["registered"], p["restarts"]) for name, p in programs_of(front).items()}


@pytest.mark.timeout(150)
def test_a_fleet_on_ray_lands_where_its_resources_allow_steps_like_sync_and_comes_back(cluster, tmp_path):
    tables = (
        f'[[programs]]\nname = "arena"\ncommand = {toml_list(GAME)}\nresources = {{ arena = 1 }}\n\n'
        f'[[programs]]\nname = "game"\ncommand = {toml_list(GAME)}\ncount = 3\n\n'
        '[[workers]]\nenv = "CartPole-v1"\nenvs_per_worker = 2\nresources = { CPU = 1, GPU = 0.25 }\n'
    )
    with ray_up(cluster, tmp_path, tables, "--ray", cluster.address) as (front, up):
        everyone = {"arena": (1, 1, 0), "game": (3, 3, 0), "CartPole-v1": (1, 1, 0)}
        wait_for(lambda: counts(front) == everyone, 90, "every instance to register")
        where = placement(cluster, front)
        assert where[("arena", 0)] == "arena" and where[("CartPole-v1", 0)] == "gpu", where
        assert len({where[("game", i)] for i in range(3)}) >= 2, f"SPREAD put every game on one node: {where}"

        # A trainer's rollout over the 8 agents of the 4 games equals SyncVectorEnv.
        envs = RlayVectorEnv.remote("rlay/Conformance-v0", 8, broker=front, timeout=30)
        sync = SyncVectorEnv([lambda: gym.make("rlay/Conformance-v0")] * 8)
        try:
            assert_same(envs.reset(seed=7), sync.reset(seed=7), "reset")
            for t in range(15):
                action = sync.action_space.sample()
                assert_same(envs.step(action), sync.step(action), f"step {t}")
        finally:
            envs.close()
            sync.close()

        # A game killed comes back, as a new actor; so does one whose actor is killed (a node lost, say):
        # its game dies with the actor, and it starts again on the node with the arena.
        workers = {(w["program"], w["instance"]): w["pid"] for w in broker_status(front)["workers"]}
        game, arena = workers[("game", 1)], workers[("arena", 0)]
        arena_actor = parent(arena)
        assert "ray::InstanceActor" in command_line(arena_actor), command_line(arena_actor)
        os.kill(game, signal.SIGKILL)
        os.kill(arena_actor, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{arena}"), 10, "the arena's game to die with its actor")
        back = {"arena": (1, 1, 1), "game": (3, 3, 1), "CartPole-v1": (1, 1, 0)}
        wait_for(lambda: counts(front) == back, 60, "both to be restarted and to register again")

        def replaced() -> bool:
            pids = [w["pid"] for w in broker_status(front)["workers"]]
            return len(pids) == 5 and game not in pids and arena not in pids

        wait_for(replaced, 15, "the broker to drop the dead ones, and the new ones to register")
        assert placement(cluster, front)[("arena", 0)] == "arena"
        shown = subprocess.run(
            [sys.executable, "-m", "rlay.cli", "status", "--broker", front], capture_output=True, text=True, timeout=30
        ).stdout
        assert [line.split()[:5] for line in shown.splitlines() if line.startswith(("arena ", "game "))] == [
            ["arena", "1", "1", "1", "1"],
            ["game", "3", "3", "3", "1"],
        ], shown
    _, _, err = up.stop()
    assert "ray: connected to" in err and "on Ray node 127.0.0.1" in err, err
    assert "game#1 (pid" in err and "exited with code -9; restarting it" in err, err
    assert "arena#0: its Ray actor was lost" in err, err
    log = (tmp_path / "logs" / "arena-0.log").read_text()
    assert log.count("rlay up starts on node 127.0.0.1") == 2 and "registered as" in log, log


@pytest.mark.timeout(90)
def test_a_fleet_named_by_its_deployment_file_reports_what_cannot_be_placed(cluster, tmp_path):
    """[cluster] ray in the file; an instance no node has room for waits, is reported late, and is
    cancelled when rlay up stops; under --no-restart a killed instance stays down (exit status 1)."""
    tables = (
        f'[cluster]\nray = "{cluster.address}"\n\n'
        f'[[programs]]\nname = "solo"\ncommand = {toml_list(GAME)}\n\n'
        f'[[programs]]\nname = "huge"\ncommand = {toml_list(GAME)}\nresources = {{ arena = 2 }}\n'
        "register_timeout = 1\n"
    )
    with ray_up(cluster, tmp_path, tables, "--no-restart", exit_code=1) as (front, up):
        wait_for(lambda: counts(front).get("solo") == (1, 1, 0), 60, "solo to register")
        wait_for(lambda: programs_of(front)["huge"]["unregistered"] == 1, 30, "huge to be reported late")
        assert counts(front)["huge"] == (1, 0, 0)  # (waiting for a node: counted running, never registered)
        os.kill(broker_status(front)["workers"][0]["pid"], signal.SIGKILL)
        wait_for(lambda: counts(front)["solo"] == (0, 0, 0), 30, "solo to be counted down, not restarted")
    _, _, err = up.stop()
    assert "no node of the cluster has {CPU=1, arena=2} for an instance of huge" in err, err
    assert "huge#0 (pid 0 on no Ray node yet) has not registered within 1 s" in err, err
    assert "solo#0" in err and "not restarted (--no-restart" in err, err
    assert "its Ray actor was lost" not in err, err  # (huge's was cancelled, not lost)


def test_without_ray_installed_ray_fails_at_once_naming_the_extra(cluster, tmp_path):
    """A `ray` module that cannot be imported (as when the extra is not installed): one line, exit 1."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray (shadowed)')\n")
    config = tmp_path / "fleet.toml"
    config.write_text(f'[[programs]]\nname = "game"\ncommand = {toml_list(GAME)}\n')
    env = {**subprocess_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [*cluster.inside(), sys.executable, "-m", "rlay.cli", "up", str(config), "--ray"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: --ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'rlay[ray]'); "
        "No module named ray (shadowed)"
    ]


@pytest.mark.timeout(90)
def test_workers_on_ray_dial_a_curve_broker_with_its_keys(cluster, tmp_path):
    """[broker] curve: the broker admits CURVE clients only, and a [[workers]] group on Ray gets --curve with
    the key directory's absolute path (on one machine, the same directory on every node)."""
    from rlay import protocol as P
    from rlay.client import BrokerClient
    from rlay.security import Curve, generate_keys

    keys = tmp_path / "keys"
    generate_keys(str(keys))
    tables = '[[workers]]\nenv = "CartPole-v1"\nnum_workers = 2\nenvs_per_worker = 2\n'
    with ray_up(cluster, tmp_path, tables, "--ray", cluster.address, broker=f'curve = "{keys}"\n') as (front, _):
        client = BrokerClient(front, curve=Curve.from_dir(str(keys), "client"))
        try:

            def registered() -> int:
                programs = client.request(P.STATUS, 10, "status").get("programs") or [{}]  # ([] until reported)
                return programs[0].get("registered", 0)

            wait_for(lambda: registered() == 2, 60, "both workers to register over CURVE")
        finally:
            client.close()
