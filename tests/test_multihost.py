"""Several hosts: broker, two worker hosts and trainer in their own network namespaces, CURVE on.

The namespaces (and the bridge joining them) are this test's own, made with `ip netns` and veth
pairs; they need root, and the test is skipped with the reason when that is not permitted.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from rlay.conformance.env import ENV_ID as CONFORMANCE_ENV_ID
from rlay.security import generate_keys
from tests.conftest import ROOT, Proc, subprocess_env, wait_for
from tests.netns import CannotMakeHosts, Host, bridged_hosts, on_host, rlay_on, sh
from tests.test_cpp import BUILD_TIMEOUT, cpp_build  # noqa: F401  (the fixture)


@pytest.fixture
def hosts():
    """Four namespaces, broker / workers / spare (a second worker host) / trainer, on one bridge:
    {name: (namespace, address, the host's end of its veth pair)}."""
    try:
        with bridged_hosts("broker", "workers", "spare", "trainer") as made:
            yield made
    except CannotMakeHosts as exc:
        pytest.skip(str(exc))


def next_line(proc: subprocess.Popen, timeout: float = 90) -> str:
    """The process's next line of output; if it ends instead, or prints nothing for ``timeout`` s,
    fail with its stderr."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0]:
        if reader.is_alive():
            proc.kill()
        proc.wait(10)
        raise AssertionError(
            f"the trainer exited with {proc.returncode} or printed nothing for {timeout:g} s:\n{proc.stderr.read()}"
        )
    return lines[0].strip()


def start_trainer(ns: str, script: str, *args: str) -> subprocess.Popen:
    """Run trainer ``script`` (Python source) on host ``ns``, its stdin and stdout for the test to talk to."""
    return subprocess.Popen(
        on_host(ns, sys.executable, "-c", script, *args),
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tell(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@contextlib.contextmanager
def cut_off(host: Host, how: str = "down") -> Iterator[None]:
    """``host`` is cut off from the bridge until the block ends: its link ``down`` (its kernel sees the
    carrier go), or a ``blackhole`` (its link stays up, off the bridge: what it sends is lost)."""
    if how == "down":
        sh("ip", "link", "set", host.veth, "down")
    else:
        sh("ip", "link", "set", host.veth, "nomaster")
    try:
        yield
    finally:
        if how == "down":
            sh("ip", "link", "set", host.veth, "up")
        else:
            sh("ip", "link", "set", host.veth, "master", host.bridge)


def stop_all(trainer: subprocess.Popen | None, procs: list[Proc]) -> None:
    if trainer is not None and trainer.poll() is None:
        trainer.kill()
        trainer.wait(10)
    for proc in reversed(procs):
        proc.stop()


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
start, replaced_at, steps, ended = time.monotonic(), None, 0, np.zeros(4, bool)
while steps < 200:
    _, _, terminated, truncated, infos = envs.step(sync.action_space.sample())
    steps += 1
    if "worker_lost" in infos:
        replaced_at = time.monotonic() - start
        lost = np.flatnonzero(infos["_worker_lost"]).tolist()
        assert (truncated | ended)[lost].all()  # (an episode that had just ended is not truncated again)
    ended = terminated | truncated
print(f"replaced envs {lost} after {replaced_at:.1f} s; {steps} steps; hosts now",
      ",".join(sorted({g.host for g in envs._lease.groups})), flush=True)
envs.close()
"""


def test_rollout_across_hosts_with_curve_then_a_worker_host_drops_off(hosts, tmp_path):
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    b_ns, b_addr, w_ns, w_veth = hosts["broker"].ns, hosts["broker"].address, hosts["workers"].ns, hosts["workers"].veth
    s_ns, t_ns = hosts["spare"].ns, hosts["trainer"].ns
    front, back = f"tcp://{b_addr}:5555", f"tcp://{b_addr}:5556"
    broker = Proc("broker", "--frontend", front, "--backend", back, "--curve", keys, command=rlay_on(b_ns))
    status = [*rlay_on(b_ns), "status", "--broker", front, "--curve", keys, "--json"]

    def registered() -> int:
        result = subprocess.run(status, capture_output=True, text=True, timeout=20)
        return len(json.loads(result.stdout)["workers"]) if result.returncode == 0 else 0

    def worker_host(ns: str, *args: str) -> Proc:
        return Proc(
            "worker", "CartPole-v1", "--broker", back, "--curve", keys, "--no-restart", *args, command=rlay_on(ns)
        )

    # 2 x 2 envs on the worker host, then 4 on the spare host.
    procs = [broker, worker_host(w_ns, "-p", "2", "-k", "2")]
    trainer = None
    try:
        wait_for(lambda: registered() == 2, 60, "both workers on the worker host to register across the bridge")
        procs.append(worker_host(s_ns, "-k", "4"))
        wait_for(lambda: registered() == 3, 60, "the spare host's worker to register")
        trainer = start_trainer(t_ns, TRAINER, front, keys)
        # The lease takes slots by (worker rank, registration): the worker host's first worker and
        # half of the spare host's.
        assert next_line(trainer) == f"hosts {','.join(sorted((w_ns, s_ns)))}"
        assert next_line(trainer) == "equal"
        sh("ip", "link", "set", w_veth, "down")  # the worker host drops off the network
        tell(trainer, "go")
        line = next_line(trainer)
        replaced = re.fullmatch(r"replaced envs \[0, 1\] after ([0-9.]+) s; 200 steps; hosts now (\S+)", line)
        assert replaced, line
        assert float(replaced[1]) < 5, line  # noticed by heartbeat, replaced by the spare host at once
        assert replaced[2] == s_ns, line
        assert trainer.wait(30) == 0, trainer.stderr.read()
        report = json.loads(subprocess.run(status, capture_output=True, text=True, timeout=20).stdout)
        assert report["failures"]["workers_lost"] == 2 and report["failures"]["slots_replaced"] == 2, report
    finally:
        stop_all(trainer, procs)


# -- network partitions (issue 18) ---------------------------------------------------------------
#
# Link cuts with `ip link set VETH down/up` (this kernel has no netem). With the default heartbeats
# (interval 0.5 s, liveness 4: expiry 2 s) a cut shorter than the expiry must cost nothing, and an
# outage longer than the window (expiry + 3 intervals = 3.5 s) must cost one recovery, no more.

PARTITION_TRAINER = """
import json, select, sys, time
import gymnasium as gym, numpy as np
from rlay import RlayVectorEnv
from rlay.security import Curve
N, ENV_ID = 6, sys.argv[3]
envs = RlayVectorEnv.remote(ENV_ID, N, broker=sys.argv[1], timeout=60, on_worker_failure="replace",
                            curve=Curve.from_dir(sys.argv[2], "client"))
sync = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID)] * N)
rng = np.random.default_rng(0)

def equal(got, expected, rows):  # the rows of two batches (arrays, or dicts of them) are equal
    if isinstance(expected, dict):
        return all(equal(got[key], expected[key], rows) for key in expected)
    return np.array_equal(np.asarray(got)[rows], np.asarray(expected)[rows])

assert equal(envs.reset(seed=5)[0], sync.reset(seed=5)[0], slice(None))
print("ready", flush=True)
steps, more, longest, mismatches = 0, None, 0.0, 0
lost_events = [0] * N  # steps whose infos mark the row worker_lost
loss_truncations = [0] * N
back_to_back_ends = 0  # an episode end right after another: a zero-length episode
ended = np.zeros(N, bool)
diverged = np.zeros(N, bool)  # rows given new envs: their results no longer follow SyncVectorEnv
while more is None or more > 0:
    if more is None and select.select([sys.stdin], [], [], 0)[0]:
        more = int(sys.stdin.readline())  # the test healed the cut: this many more steps, then report
    actions = rng.integers(0, sync.single_action_space.n, N)
    start = time.monotonic()
    got = envs.step(actions)
    longest = max(longest, time.monotonic() - start)
    expected = sync.step(actions)
    obs, _, term, trunc, infos = got
    lost = infos.get("_worker_lost", np.zeros(N, bool)) & infos.get("worker_lost", np.zeros(N, bool))
    for row in np.flatnonzero(lost):
        lost_events[row] += 1
        loss_truncations[row] += int(trunc[row])
    diverged |= lost
    same = [equal(g, e, ~diverged) for g, e in zip(got[:4], expected[:4])]
    mismatches += not all(same)
    done = term | trunc
    back_to_back_ends += int((done & ended).sum())
    ended = done
    steps += 1
    if more is not None:
        more -= 1
print(json.dumps({"steps": steps, "longest_step_s": longest, "mismatches": mismatches,
                  "lost_events": lost_events, "loss_truncations": loss_truncations,
                  "back_to_back_ends": back_to_back_ends, "re_leases": envs.re_leases,
                  "loss_truncations_counted": envs.loss_truncations,
                  "longest_silence_s": envs._client.heartbeat.longest_silence}), flush=True)
sys.stdin.readline()  # the test reads the broker's status while this trainer still holds its lease
envs.close()
"""


def python_workers(back: str, keys: str) -> list[list[str]]:
    """`rlay worker` with two processes of 3 CartPole envs each."""
    return [["worker", "CartPole-v1", "--broker", back, "--curve", keys, "-p", "2", "-k", "3"]]


def partition_run(
    hosts,
    tmp_path,
    cut: str,
    seconds: float,
    workers=python_workers,
    env_id: str = "CartPole-v1",
    on_host_cmd=None,
    how: str = "down",
) -> tuple[dict, dict]:
    """Broker, two workers (3 envs each) on the worker host and a trainer stepping 6 envs of
    ``env_id`` with CURVE on; cut ``cut`` off (``how``: see cut_off) for ``seconds`` while the trainer steps, then let
    it take 300 more steps. ``workers(back, keys)`` gives the worker command lines, each run on the
    worker host with ``on_host_cmd`` (default: the rlay CLI). Returns the trainer's report and the
    broker's status."""
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    broker_host, worker_host, trainer_host = hosts["broker"], hosts["workers"], hosts["trainer"]
    front, back = f"tcp://{broker_host.address}:5555", f"tcp://{broker_host.address}:5556"
    status = [*rlay_on(broker_host.ns), "status", "--broker", front, "--curve", keys, "--json"]

    def report() -> dict:
        result = subprocess.run(status, capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    procs = [Proc("broker", "--frontend", front, "--backend", back, "--curve", keys, command=rlay_on(broker_host.ns))]
    trainer = None
    try:
        run_on_worker_host = on_host_cmd or rlay_on
        procs += [Proc(*args, command=run_on_worker_host(worker_host.ns)) for args in workers(back, keys)]
        wait_for(lambda: len(report()["workers"]) == 2, 60, "both workers to register across the bridge")
        trainer = start_trainer(trainer_host.ns, PARTITION_TRAINER, front, keys, env_id)
        assert next_line(trainer) == "ready"
        before = report()
        wait_for(lambda: report()["metrics"]["env_steps"] > before["metrics"]["env_steps"] + 600, 30, "stepping")
        with cut_off(hosts[cut], how):
            time.sleep(seconds)  # the fault itself: how long the link stays down (nothing is awaited)
        tell(trainer, "300")
        result = json.loads(next_line(trainer))
        status_then = report()
        tell(trainer, "done")
        assert trainer.wait(30) == 0, trainer.stderr.read()
        return result, status_then
    finally:
        stop_all(trainer, procs)


@pytest.mark.timeout(180)
def test_a_blackhole_just_shorter_than_the_expiry_costs_nothing(hosts, tmp_path):
    """1.9 s in which everything the trainer's host sends or is sent is lost, its link up (so its
    kernel sees no error and TCP backs off as on a real network). The broker's window (3.5 s)
    covers the cut, the last ping before it and TCP's retransmission after it: nothing is lost, and
    the silence the trainer saw stays well under the window (measured 2.0-2.3 s)."""
    result, status = partition_run(hosts, tmp_path, "trainer", 1.9, how="blackhole")
    assert result["mismatches"] == 0 and result["lost_events"] == [0] * 6 and result["re_leases"] == 0, result
    assert 1.9 <= result["longest_silence_s"] < 3.0, result
    assert status["failures"]["trainers_timed_out"] == 0, status["failures"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cut", ["trainer", "workers"])
def test_a_cut_shorter_than_the_expiry_costs_nothing(hosts, tmp_path, cut):
    """1.5 s without the trainer's (or the worker host's) link, while it steps: the call in flight
    completes late with its real results (equal to SyncVectorEnv's, step for step), and nothing is
    lost, timed out, re-leased or registered again."""
    result, status = partition_run(hosts, tmp_path, cut, 1.5)
    assert result["mismatches"] == 0 and result["lost_events"] == [0] * 6, result
    assert result["longest_step_s"] > 1.0, result  # a call was in flight across the cut
    assert result["re_leases"] == 0, result
    failures = status["failures"]
    for counter in ("workers_lost", "trainers_timed_out", "re_leases", "re_registrations"):
        assert failures[counter] == 0, failures
    assert [w["name"] for w in status["workers"]] == ["w1", "w2"], status["workers"]


@pytest.mark.timeout(180)
def test_a_broker_outage_costs_one_recovery(hosts, tmp_path):
    """4 s without the broker's link (longer than the 3.5 s window): every env is truncated once
    (or, if its episode had just ended, reports only its reset), the trainer leases again once, each
    worker registers again once, and nothing is counted twice. The broker's status says so."""
    result, status = partition_run(hosts, tmp_path, "broker", 4.0)
    assert result["lost_events"] == [1] * 6, result
    assert result["back_to_back_ends"] == 0, result  # no zero-length episode
    assert sum(result["loss_truncations"]) >= 1 and max(result["loss_truncations"]) == 1, result
    assert result["re_leases"] == 1 and result["mismatches"] == 0, result
    failures = status["failures"]
    assert failures["trainers_timed_out"] == 1 and failures["re_leases"] == 1, failures
    assert failures["workers_lost"] == 2 and failures["re_registrations"] == 2, failures
    (trainer,) = status["trainers"]
    assert trainer["name"] == "t1" and trainer["re_leases"] == 1 and trainer["timed_out"] == 1, trainer
    assert trainer["loss_truncations"] == result["loss_truncations_counted"] == sum(result["loss_truncations"])
    assert sorted(w["name"] for w in status["workers"]) == ["w3", "w4"], status["workers"]


@pytest.mark.timeout(BUILD_TIMEOUT + 180)
def test_a_cut_shorter_than_the_expiry_costs_a_cpp_worker_nothing(hosts, tmp_path, cpp_build):  # noqa: F811
    """The C++ SDK follows the same rules (it counts its broker lost after the peer window):
    a 1.5 s cut of the worker host's link loses neither of two `rlay_example_command` workers, and
    every step equals SyncVectorEnv's over the Python conformance env."""

    def cpp_workers(back: str, keys: str) -> list[list[str]]:
        return [["--broker", back, "--curve", keys, "--envs", "3", "--env", "conformance"]] * 2

    def run_cpp(ns: str) -> list[str]:
        return on_host(ns, str(cpp_build / "rlay_example_command"))

    result, status = partition_run(hosts, tmp_path, "workers", 1.5, cpp_workers, CONFORMANCE_ENV_ID, run_cpp)
    assert result["mismatches"] == 0 and result["lost_events"] == [0] * 6, result
    assert result["longest_step_s"] > 1.0 and result["re_leases"] == 0, result
    failures = status["failures"]
    assert failures["workers_lost"] == 0 and failures["re_registrations"] == 0, failures


EPISODE_TRAINER = """
import json, sys
import numpy as np
from gymnasium.vector import AutoresetMode
from rlay import RlayVectorEnv
from rlay.security import Curve
N, mode = 4, AutoresetMode(sys.argv[3])
envs = RlayVectorEnv.remote("tests.envs:EpisodeEnv", N, broker=sys.argv[1], timeout=60, autoreset_mode=mode,
                            on_worker_failure="replace", curve=Curve.from_dir(sys.argv[2], "client"))
episodes = []  # (row, length, return, lost): every episode reported ended, in order
length, ret = np.zeros(N, int), np.zeros(N)
due, to_reset = np.zeros(N, bool), np.zeros(N, bool)  # NextStep's autoreset step; Disabled's masked reset
lost_markers, ends_on_autoreset_steps = [0] * N, 0

def marked(infos):
    return infos.get("_worker_lost", np.zeros(N, bool)) & infos.get("worker_lost", np.zeros(N, bool))

def step():
    global due, ends_on_autoreset_steps, to_reset
    if to_reset.any():  # Disabled: the user resets ended episodes before stepping on
        reset(to_reset)
    _, reward, term, trunc, infos = envs.step(np.zeros(N, np.int64))  # action 0: episodes run to the horizon
    done = term | trunc
    for row in range(N):
        lost_markers[row] += int(marked(infos)[row])
        if due[row]:  # NextStep: the autoreset step belongs to no episode
            ends_on_autoreset_steps += int(done[row])
            continue
        length[row] += 1
        ret[row] += reward[row]
        if done[row]:
            episodes.append((row, int(length[row]), float(ret[row]), bool(marked(infos)[row])))
            length[row], ret[row] = 0, 0.0
    due = done if mode == AutoresetMode.NEXT_STEP else np.zeros(N, bool)
    to_reset = done if mode == AutoresetMode.DISABLED else np.zeros(N, bool)

def reset(mask):
    _, infos = envs.reset(options={"reset_mask": mask})
    for row in np.flatnonzero(mask):
        lost_markers[row] += int(marked(infos)[row])

envs.reset(seed=1)
while not episodes:  # to the horizon: every env's episode has just ended
    step()
print("ended", flush=True)
sys.stdin.readline()  # the test has cut the broker's link: the next call meets the outage
for _ in range(12):
    step()
print(json.dumps({"episodes": episodes, "lost_markers": lost_markers, "loss_truncations": envs.loss_truncations,
                  "re_leases": envs.re_leases, "ends_on_autoreset_steps": ends_on_autoreset_steps}), flush=True)
envs.close()
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_an_outage_that_meets_episodes_just_ended_counts_them_exactly(hosts, tmp_path, mode):
    """Every env's episode has just ended (step 3 of EpisodeEnv's 3) when a 4 s broker outage
    begins, and the trainer's next call meets it. The envs are leased anew, once; no episode is
    reported ended twice and none has length 0: under NextStep and Disabled the loss costs no
    truncation (the autoreset step, or the masked reset, comes from the new env, marked
    worker_lost); under SameStep the episode the done step began is truncated, once per env."""
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    broker_host, worker_host, trainer_host = hosts["broker"], hosts["workers"], hosts["trainer"]
    front, back = f"tcp://{broker_host.address}:5555", f"tcp://{broker_host.address}:5556"
    procs = [Proc("broker", "--frontend", front, "--backend", back, "--curve", keys, command=rlay_on(broker_host.ns))]
    trainer = None
    try:
        procs.append(
            Proc(
                "worker", "tests.envs:EpisodeEnv", "--broker", back, "--curve", keys, "-p", "2", "-k", "2",
                command=rlay_on(worker_host.ns),
            )
        )  # fmt: skip
        trainer = start_trainer(trainer_host.ns, EPISODE_TRAINER, front, keys, mode)
        assert next_line(trainer) == "ended"
        with cut_off(broker_host):
            tell(trainer, "go")
            time.sleep(4.0)  # the fault itself: how long the link stays down (nothing is awaited)
        result = json.loads(next_line(trainer))
        assert trainer.wait(30) == 0, trainer.stderr.read()
    finally:
        stop_all(trainer, procs)
    episodes = result["episodes"]
    assert result["re_leases"] == 1 and result["lost_markers"] == [1] * 4, result
    assert result["ends_on_autoreset_steps"] == 0, result
    assert all(length >= 1 for _, length, _, _ in episodes), episodes  # no zero-length episode
    whole = [e for e in episodes if not e[3]]
    assert all(length == 3 and ret == 3.0 for _, length, ret, _ in whole), episodes
    lost = [e for e in episodes if e[3]]
    if mode == "SameStep":  # the episode the done step began, truncated after 1 step with reward 0
        assert sorted(row for row, *_ in lost) == [0, 1, 2, 3] and {(e[1], e[2]) for e in lost} == {(1, 0.0)}
        assert result["loss_truncations"] == 4, result
    else:  # the episodes that had just ended were reported once, at their end: the loss costs none
        assert lost == [] and result["loss_truncations"] == 0, result
    assert [sum(1 for row, *_ in episodes if row == r) for r in range(4)] == [len(episodes) // 4] * 4, episodes
