"""Several hosts: broker, two worker hosts and trainer in their own network namespaces, CURVE on.

The namespaces (and the bridge joining them) are this test's own, made with `ip netns` and veth
pairs; they need root, and the test is skipped with the reason when that is not permitted.
"""

from __future__ import annotations

import json
import os
import re
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
    """Four namespaces, broker / workers / spare (a second worker host) / trainer, on one bridge:
    {name: (namespace, address, the host's end of its veth pair)}."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    bridge, net = f"rlbr{tag}", 77 + int(tag[:2], 16) % 100
    names = {"broker": 1, "workers": 2, "spare": 3, "trainer": 4}
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


def on_host(ns: str, *command: str) -> list[str]:
    """Run ``command`` in namespace ``ns`` with its own host name (a UTS namespace) equal to ``ns``;
    each step execs the next, so the command's pid is the one the test signals."""
    return ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', ns, *command]


def in_ns(ns: str) -> list[str]:
    return on_host(ns, sys.executable, "-m", "rlay.cli")


def next_line(proc: subprocess.Popen) -> str:
    """The process's next line of output; if it ends instead, fail with its stderr."""
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"the trainer exited with {proc.returncode} before printing:\n{proc.stderr.read()}")
    return line.strip()


TRAINER = """
import sys, time
import gymnasium as gym, numpy as np
from rlay import RlayVectorEnv
from rlay.security import Curve
envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=sys.argv[1], timeout=30, on_worker_failure="replace",
                            curve=Curve.from_dir(sys.argv[2], "client"))
print("hosts", ",".join(sorted({g.host for g in envs._lease.groups})), flush=True)
sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
assert np.array_equal(envs.reset(seed=3)[0], sync.reset(seed=3)[0])
for _ in range(100):
    a = sync.action_space.sample()
    for got, expected in zip(envs.step(a)[:4], sync.step(a)[:4]):
        assert np.array_equal(got, expected)
print("equal", flush=True)
sys.stdin.readline()  # the test cuts the worker host's link, then says go
start, replaced_at, steps = time.monotonic(), None, 0
while steps < 200:
    _, _, _, truncated, infos = envs.step(sync.action_space.sample())
    steps += 1
    if "worker_lost" in infos:
        replaced_at = time.monotonic() - start
        lost = np.flatnonzero(infos["_worker_lost"]).tolist()
        assert truncated[lost].all()
print(f"replaced envs {lost} after {replaced_at:.1f} s; {steps} steps; hosts now",
      ",".join(sorted({g.host for g in envs._lease.groups})), flush=True)
envs.close()
"""


def test_rollout_across_hosts_with_curve_then_a_worker_host_drops_off(hosts, tmp_path):
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    (b_ns, b_addr, _), (w_ns, _, w_veth) = hosts["broker"], hosts["workers"]
    (s_ns, _, _), (t_ns, _, _) = hosts["spare"], hosts["trainer"]
    front, back = f"tcp://{b_addr}:5555", f"tcp://{b_addr}:5556"
    broker = Proc("broker", "--frontend", front, "--backend", back, "--curve", keys, command=in_ns(b_ns))
    status = [*in_ns(b_ns), "status", "--broker", front, "--curve", keys, "--json"]

    def registered() -> int:
        result = subprocess.run(status, capture_output=True, text=True, timeout=20)
        return len(json.loads(result.stdout)["workers"]) if result.returncode == 0 else 0

    def worker_host(ns: str, *args: str) -> Proc:
        return Proc(
            "worker", "CartPole-v1", "--broker", back, "--curve", keys, "--no-restart", *args, command=in_ns(ns)
        )

    # 2 x 2 envs on the worker host, then 4 on the spare host.
    procs = [broker, worker_host(w_ns, "-p", "2", "-k", "2")]
    trainer = None
    try:
        wait_for(lambda: registered() == 2, 60, "both workers on the worker host to register across the bridge")
        procs.append(worker_host(s_ns, "-k", "4"))
        wait_for(lambda: registered() == 3, 60, "the spare host's worker to register")
        trainer = subprocess.Popen(
            on_host(t_ns, sys.executable, "-c", TRAINER, front, keys),
            cwd=ROOT,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The lease takes slots by (worker rank, registration): the worker host's first worker and
        # half of the spare host's.
        assert next_line(trainer) == f"hosts {','.join(sorted((w_ns, s_ns)))}"
        assert next_line(trainer) == "equal"
        sh("ip", "link", "set", w_veth, "down")  # the worker host drops off the network
        trainer.stdin.write("go\n")
        trainer.stdin.flush()
        line = next_line(trainer)
        replaced = re.fullmatch(r"replaced envs \[0, 1\] after ([0-9.]+) s; 200 steps; hosts now (\S+)", line)
        assert replaced, line
        assert float(replaced[1]) < 5, line  # noticed by heartbeat, replaced by the spare host at once
        assert replaced[2] == s_ns, line
        assert trainer.wait(30) == 0, trainer.stderr.read()
        report = json.loads(subprocess.run(status, capture_output=True, text=True, timeout=20).stdout)
        assert report["failures"]["workers_lost"] == 2 and report["failures"]["slots_replaced"] == 2, report
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        for proc in reversed(procs):
            proc.stop()
