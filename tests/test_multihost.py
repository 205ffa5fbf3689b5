"""Several hosts: broker, workers and trainer in their own network namespaces, CURVE on.

The namespaces (and the bridge joining them) are this test's own, made with `ip netns` and veth
pairs; they need root, and the test is skipped with the reason when that is not permitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from rlay.security import generate_keys
from tests.conftest import ROOT, Proc, subprocess_env, wait_for

SUBNET = "10.77.{}.{}"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@pytest.fixture
def hosts():
    """Three namespaces, broker / workers / trainer, on one bridge: {name: (namespace, address)}."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    bridge, net = f"rlbr{tag}", 77 + int(tag[:2], 16) % 100
    names = {"broker": 1, "workers": 2, "trainer": 3}
    made: list[str] = []
    try:
        try:
            sh("ip", "link", "add", bridge, "type", "bridge")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        sh("ip", "link", "set", bridge, "up")
        hosts = {}
        for name, n in names.items():
            ns, veth = f"rl{name[:2]}{tag}", f"rlv{n}{tag}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", bridge, "up")
            address = SUBNET.format(net, n)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            hosts[name] = (ns, address, veth)
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "rlay.cli"]


TRAINER = """
import sys, time
import gymnasium as gym, numpy as np
from rlay import RlayVectorEnv, WorkerLostError
from rlay.security import Curve
envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=sys.argv[1], timeout=30,
                            curve=Curve.from_dir(sys.argv[2], "client"))
sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
assert np.array_equal(envs.reset(seed=3)[0], sync.reset(seed=3)[0])
for _ in range(100):
    a = sync.action_space.sample()
    for got, expected in zip(envs.step(a)[:4], sync.step(a)[:4]):
        assert np.array_equal(got, expected)
print("equal", flush=True)
sys.stdin.readline()  # the test cuts the worker host's link, then says go
start = time.monotonic()
try:
    while time.monotonic() - start < 20:
        envs.step(sync.action_space.sample())
    print("no error", flush=True)
except WorkerLostError as exc:
    print(f"lost after {time.monotonic() - start:.1f} s: {exc}", flush=True)
envs.close()
"""


def test_rollout_across_hosts_with_curve_then_a_worker_host_drops_off(hosts, tmp_path):
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    (b_ns, b_addr, _), (w_ns, _, w_veth), (t_ns, _, _) = hosts["broker"], hosts["workers"], hosts["trainer"]
    front, back = f"tcp://{b_addr}:5555", f"tcp://{b_addr}:5556"
    broker = Proc("broker", "--frontend", front, "--backend", back, "--curve", keys, command=in_ns(b_ns))
    workers = Proc("worker", "CartPole-v1", "--broker", back, "-p", "2", "-k", "2", "--curve", keys,
                   "--no-restart", command=in_ns(w_ns))
    trainer = None
    try:
        status = [*in_ns(b_ns), "status", "--broker", front, "--curve", keys, "--json"]

        def registered() -> int:
            result = subprocess.run(status, capture_output=True, text=True, timeout=20)
            return len(json.loads(result.stdout)["workers"]) if result.returncode == 0 else 0

        wait_for(lambda: registered() == 2, 60, "both workers on the worker host to register across the bridge")
        trainer = subprocess.Popen(["ip", "netns", "exec", t_ns, sys.executable, "-c", TRAINER, front, keys],
                                   cwd=ROOT, env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert trainer.stdout.readline().strip() == "equal", trainer.stderr.read()
        sh("ip", "link", "set", w_veth, "down")  # the worker host drops off the network
        trainer.stdin.write("go\n")
        trainer.stdin.flush()
        line = trainer.stdout.readline().strip()
        assert line.startswith("lost after"), line + trainer.stderr.read()
        seconds = float(line.split()[2])
        assert seconds < 5, line
        assert "no heartbeat" in line and "worker w" in line
        assert trainer.wait(30) == 0
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        for proc in (workers, broker):
            proc.stop()
