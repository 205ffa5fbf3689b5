"""The C++ SDK (workers/cpp): it builds with CMake, its examples and the C program over its C ABI
pass `rlay conformance`, and a game project links it through find_package(rlay)."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import time

import msgpack
import numpy as np
import pytest

from rlay import RlayVectorEnv
from tests.conftest import ROOT, Proc, assert_same, broker_status, free_port, run_cli, wait_for

BUILD = ROOT / "build" / "cpp"
BUILD_TIMEOUT = 900  # s: a first build on 2 cores
CONFORMANCE_TIMEOUT = 180
NEEDS = "cmake, a C++17 compiler, libzmq3-dev and cppzmq-dev (README: Run the tests)"


def run(args: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="session")
def cpp_build() -> os.PathLike:
    """Configure and build workers/cpp into build/cpp (incremental after the first time). Another test
    session building at the same time waits for it (a lock file beside the build directory)."""
    assert shutil.which("cmake"), f"cmake is not installed: the C++ SDK's tests need {NEEDS}"
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / "cpp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        run(["cmake", "-S", ROOT / "workers" / "cpp", "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release"], BUILD_TIMEOUT)
        run(["cmake", "--build", BUILD, "-j", str(os.cpu_count() or 2)], BUILD_TIMEOUT)
    return BUILD


def conformance(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="rlay-test-") as tmp:  # (where a failing run keeps its logs)
        done = run_cli("conformance", *args, timeout=CONFORMANCE_TIMEOUT, env={"TMPDIR": tmp})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "passed, 0 failed" in out, out
    return out


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_the_sdk_builds_and_its_unit_tests_pass(cpp_build):
    run(["ctest", "--test-dir", cpp_build, "--output-on-failure"], 120)


@pytest.mark.timeout(BUILD_TIMEOUT + CONFORMANCE_TIMEOUT)
def test_the_cpp_command_example_conforms(cpp_build):
    conformance("--", str(cpp_build / "rlay_example_command"), "--envs", "4")


@pytest.mark.timeout(BUILD_TIMEOUT + CONFORMANCE_TIMEOUT)
def test_the_cpp_push_example_conforms(cpp_build):
    conformance("--mode", "push", "--", str(cpp_build / "rlay_example_push"), "--agents", "3")


@pytest.mark.timeout(BUILD_TIMEOUT + CONFORMANCE_TIMEOUT)
def test_the_c_program_over_the_abi_conforms(cpp_build):
    conformance("--", str(cpp_build / "rlay_example_c"), "--broker", "{broker}")


@pytest.mark.timeout(BUILD_TIMEOUT + CONFORMANCE_TIMEOUT)
def test_the_c_program_as_a_push_worker_conforms(cpp_build):
    conformance("--mode", "push", "--", str(cpp_build / "rlay_example_c"), "--mode", "push")


@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_a_game_project_links_the_installed_sdk_with_find_package(cpp_build, tmp_path):
    prefix, game = tmp_path / "prefix", tmp_path / "game"
    run(["cmake", "--install", cpp_build, "--prefix", prefix], 120)
    game.mkdir()
    (game / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(game CXX C)\nfind_package(rlay REQUIRED)\n"
        "add_executable(game_cpp game.cpp)\ntarget_link_libraries(game_cpp PRIVATE rlay::worker)\n"
        "add_executable(game_c game.c)\ntarget_link_libraries(game_c PRIVATE rlay::c)\n"
    )
    (game / "game.cpp").write_text(
        "#include <rlay/worker.hpp>\n#include <cstdio>\nint main() {\n"
        '  auto space = rlay::spaces::discrete(3);\n  (void)space;\n  std::puts("linked");\n  return 0;\n}\n'
    )
    (game / "game.c").write_text(GAME_C)
    run(["cmake", "-S", game, "-B", game / "build", f"-DCMAKE_PREFIX_PATH={prefix}"], 120)
    run(["cmake", "--build", game / "build", "-j", "2"], 300)
    env = {**os.environ, "LD_LIBRARY_PATH": str(prefix / "lib")}
    assert run([game / "build" / "game_cpp"], 10).stdout.strip() == "linked"
    assert run([game / "build" / "game_c"], 10, env=env).stdout.split() == ["protocol", "1", "value", "leaves", "ok"]


# The C ABI's Graph, Sequence and OneOf (protocol 3.8.1): spaces, and a graph value (ext 5).
GAME_C = r"""#include <rlay.h>
#include <stdio.h>
int main(void) {
  printf("protocol %d\n", (int)rlay_protocol_version());
  rlay_space *node = NULL, *edge = NULL, *graph = NULL, *seq = NULL, *one = NULL;
  rlay_value *nodes = NULL, *g = NULL;
  size_t shape[1] = {2}, n = 0;
  const unsigned char bytes[2] = {1, 2};
  int ok = rlay_space_discrete(4, 0, &node) == RLAY_OK && rlay_space_box(-1, 1, shape, 1, "<f4", &edge) == RLAY_OK
        && rlay_space_graph(node, edge, &graph) == RLAY_OK && rlay_space_sequence(graph, 1, &seq) == RLAY_OK
        && rlay_space_one_of(seq, &one) == RLAY_OK && rlay_space_one_of_append(one, node) == RLAY_OK
        && rlay_space_one_of_append(graph, node) == RLAY_ERR_SPACE
        && rlay_value_new_ndarray("|u1", shape, 1, bytes, 2, &nodes) == RLAY_OK
        && rlay_value_new_graph(nodes, NULL, NULL, &g) == RLAY_OK && rlay_value_kind(g) == RLAY_GRAPH
        && rlay_value_len(g, &n) == RLAY_OK && n == 3;
  printf("value leaves %s\n", ok ? "ok" : rlay_last_error());
  rlay_value_free(g); rlay_value_free(nodes);
  rlay_space_free(one); rlay_space_free(seq); rlay_space_free(graph); rlay_space_free(edge); rlay_space_free(node);
  return ok ? 0 : 1;
}
"""


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
@pytest.mark.parametrize("shared_memory, path", [(True, "shm"), (False, "rows")])
def test_large_observations_from_the_cpp_worker_arrive_exactly(cpp_build, leaf_paths, shared_memory, path):
    """An image of 192 KiB per env: written into the trainer's shared memory when it offers it,
    else sent row by row, and equal to the frame env's definition either way."""
    shape = (128, 256, 6)
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Proc("broker", "--frontend", front, "--backend", back)
    worker = Proc(
        "--broker", back, "--envs", "2", "--env", "frame:128x256x6", command=[str(cpp_build / "rlay_example_command")]
    )
    envs = None
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 1, 30, "the C++ worker to register")
        envs = RlayVectorEnv.remote("rlay/Frame-128x256x6-v0", 2, broker=front, shared_memory=shared_memory, timeout=10)
        obs, _ = envs.reset(seed=0)
        pattern = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
        for step in range(4):
            for i in range(2):
                np.testing.assert_array_equal(obs[i], ((pattern + step + i) % 256).astype(np.uint8))
            obs, *_ = envs.step(np.zeros(2, np.int64))
    finally:
        if envs is not None:
            envs.close()
        for proc in (worker, broker):
            code, _, err = proc.stop()
            assert code == 0, err
    assert leaf_paths and all(p == [path] for p in leaf_paths), leaf_paths[:3]


def readme_block(language: str, after: str) -> str:
    """The first ```language block of README.md after the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(after) :]
    start = rest.index(f"```{language}\n") + len(language) + 4
    return rest[start : rest.index("```", start)]


@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_readme_line_walker_builds_installs_and_trains(cpp_build, tmp_path):
    """README, "Write a worker in C++": its game project, built against the installed SDK as written,
    registers and steps through a broker."""
    prefix, game = tmp_path / "prefix", tmp_path / "my_game"
    run(["cmake", "--install", cpp_build, "--prefix", prefix], 120)
    game.mkdir()
    (game / "line_walker.cpp").write_text(readme_block("cpp", "Your own env, as a game project"))
    (game / "CMakeLists.txt").write_text(readme_block("cmake", "`CMakeLists.txt` beside it"))
    run(["cmake", "-S", game, "-B", game / "build", f"-DCMAKE_PREFIX_PATH={prefix}"], 120)
    run(["cmake", "--build", game / "build", "-j", "2"], 300)
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Proc("broker", "--frontend", front, "--backend", back)
    walker = subprocess.Popen(
        [game / "build" / "line_walker"],
        env={**os.environ, "RLAY_BROKER": back},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        envs = RlayVectorEnv.remote("LineWalker-v0", 4, broker=front, timeout=10)
        try:
            obs, _ = envs.reset(seed=0)
            assert obs.tolist() == [3, 3, 3, 3]
            for _ in range(3):
                obs, rewards, terminated, _, infos = envs.step(np.ones(4, np.int64))
            assert obs.tolist() == [6] * 4 and rewards.tolist() == [1.0] * 4 and terminated.all()
            assert infos["x"].tolist() == [3] * 4
        finally:
            envs.close()
    finally:
        code, _, err = broker.stop()  # the broker's disconnect ends the walker
        assert code == 0, err
        assert walker.wait(15) == 0, walker.stderr.read()


SPACES_ENVS = 3
SPACES_STEPS = 30


def assert_cpp_worker_equals_sync(cpp_build, env: str, env_id: str, python_env) -> None:
    """`rlay_example_command --env ENV` leased through a broker equals SyncVectorEnv over its Python
    twin (``python_env(index)``) in every autoreset mode: its spaces encode to the very maps
    `encode_space` writes, its observations and infos arrive exactly, its actions are decoded exactly
    (each env echoes its action in its info)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from rlay.spaces import encode_space

    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Proc("broker", "--frontend", front, "--backend", back)
    worker = Proc(
        "--broker",
        back,
        "--envs",
        str(SPACES_ENVS),
        "--env",
        env,
        command=[str(cpp_build / "rlay_example_command")],
    )
    ends = {"terminated": 0, "truncated": 0}
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 1, 30, "the C++ worker to register")
        for mode in AutoresetMode:
            sync = SyncVectorEnv([functools.partial(python_env, i) for i in range(SPACES_ENVS)], autoreset_mode=mode)
            envs = RlayVectorEnv.remote(env_id, SPACES_ENVS, broker=front, autoreset_mode=mode, timeout=10)
            try:
                python = (sync.single_observation_space, sync.single_action_space)
                assert_same(envs._lease.spaces, tuple(encode_space(s) for s in python), "leased spaces")
                assert (envs.single_observation_space, envs.single_action_space) == python
                assert_same(envs.reset(seed=11), sync.reset(seed=11), f"{mode.value} reset")
                sync.action_space.seed(3)
                for t in range(SPACES_STEPS):
                    action = sync.action_space.sample()
                    expected = sync.step(action)
                    assert_same(envs.step(action), expected, f"{mode.value} step {t}")
                    done = expected[2] | expected[3]
                    ends["terminated"] += int(expected[2].sum())
                    ends["truncated"] += int(expected[3].sum())
                    if mode == AutoresetMode.DISABLED and done.any():
                        seeds = [100 * t + i for i in range(SPACES_ENVS)]
                        assert_same(
                            envs.reset(seed=seeds, options={"reset_mask": done.copy()}),
                            sync.reset(seed=seeds, options={"reset_mask": done.copy()}),
                            f"{mode.value} masked reset at {t}",
                        )
                    if t == SPACES_STEPS // 2:  # unseeded, with options, in every mode
                        assert_same(envs.reset(options={"k": 5}), sync.reset(options={"k": 5}), f"{mode.value} reset")
            finally:
                envs.close()
                sync.close()
    finally:
        results = [(p, p.stop()) for p in (worker, broker)]
        for proc, (code, _, err) in results:
            assert code == 0, f"{proc.args} exited with {code}:\n{err}"
    assert min(ends.values()) > 0, f"the runs must end episodes both ways to mean anything: {ends}"


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_every_space_crosses_a_cpp_worker_exactly(cpp_build):
    """ "rlay/Spaces-v0": every array and Text space kind of protocol 4.1 and its edge cases, against
    its Python twin, tests.envs:SpacesEnv."""
    from tests.envs import SpacesEnv

    assert_cpp_worker_equals_sync(cpp_build, "spaces", "rlay/Spaces-v0", SpacesEnv)


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_graph_sequence_and_oneof_cross_a_cpp_worker_exactly(cpp_build):
    """ "rlay/VarSpaces-v0": Graph, Sequence and OneOf values (protocol 3.8.1) of every shape the wire
    accepts, as observations and actions, against its Python twin, tests.envs:VarSpacesEnv, stepped
    with its actions as the C++ SDK hands them to env code (converted to the spaces' dtypes)."""
    from tests.envs import VarSpacesCppTwin

    assert_cpp_worker_equals_sync(cpp_build, "var-spaces", "rlay/VarSpaces-v0", VarSpacesCppTwin)


def peak_rss(pid: int) -> int:
    """A process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_a_large_value_leaf_action_is_not_copied_over_and_over(cpp_build):
    """A 2 MB step body, a Sequence(Discrete(5)) action of 2,000,000 ints (one byte each), took the
    C++ worker to 1.3 GB: the decoded action (~112 bytes a value) was copied by the value walk, into
    the actions, by the example env's echo and into the reply. Now the SDK decodes it in place and
    moves the plan's first command into the env: what remains is the decoded body and the env's own
    echo of it into its info (one copy each; measured 2.01 copies)."""
    from rlay import protocol as P
    from rlay.conformance.harness import RawBroker
    from rlay.values import EXT_GRAPH, packb
    from rlay.wire import decode_body, header

    n, value_bytes = 2_000_000, 112
    back = f"tcp://127.0.0.1:{free_port()}"
    raw = RawBroker(back, 0.2, 50)
    worker = Proc(
        "--broker", back, "--envs", "1", "--env", "var-spaces", command=[str(cpp_build / "rlay_example_command")]
    )
    try:
        raw.expect_register(30)
        raw.registered(1)
        head, _ = raw.ask([header(P.RESET, req=1, envs=[0]), packb({"seeds": [1], "options": None})], 10, "reset")
        assert head[P.TYPE] == P.REPLY, head
        before = peak_rss(worker.popen.pid)
        # the action space's leaves, in key order: graph, one, seq, stack (examples/var_spaces_env.hpp)
        refs = [{"dtype": "<f4", "shape": [1, 2]}, {"dtype": "<i8", "shape": [0]}, {"dtype": "<i8", "shape": [0, 2]}]
        graph = msgpack.ExtType(EXT_GRAPH, msgpack.packb(refs))
        stack = [{"dtype": "<i8", "shape": [0]}, {"dtype": "<f4", "shape": [0, 2]}]
        leaves = [{"values": [graph]}, {"values": [[0, 1]]}, {"values": [[4] * n]}, {"values": [stack]}]
        body = msgpack.packb({"autoreset": "NextStep", "actions": leaves})
        assert len(body) < n + 1000
        frames = [bytes(8), b"", b"", b"", b""]
        head, rest = raw.ask([header(P.STEP, req=2, envs=[0]), body, *frames], 60, "the large step")
        assert head[P.TYPE] == P.REPLY, head
        (info,) = decode_body(rest[0])["info"]
        assert len(info["action"][0]["seq"]) == n and info["score"] > 4 * n
        grew = peak_rss(worker.popen.pid) - before
        assert grew < 2.4 * n * value_bytes, (
            f"the worker's peak grew by {grew / 2**20:.0f} MiB for a {len(body)}-byte body"
        )
    finally:
        code, _, err = worker.stop()
        raw.close()
    assert code == 0, err


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_a_cpp_worker_speaks_curve_and_one_without_keys_is_kept_out(cpp_build, tmp_path):
    """A broker started with --curve: the C++ worker given the keys registers and steps exactly as
    SyncVectorEnv for a trainer with the client keys; one started without --curve never registers,
    and still exits 0 on SIGTERM."""
    import gymnasium as gym

    from rlay import protocol as P
    from rlay.client import BrokerClient
    from rlay.security import Curve

    keys = tmp_path / "keys"
    done = run_cli("keys", "generate", str(keys))
    assert done.returncode == 0, done.stdout + done.stderr
    curve = Curve.from_dir(str(keys), "client")

    def workers() -> list:
        client = BrokerClient(front, curve=curve)
        try:
            return client.request(P.STATUS, 5.0, "status")["workers"]
        finally:
            client.close()

    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Proc("broker", "--frontend", front, "--backend", back, "--curve", str(keys))
    command = [str(cpp_build / "rlay_example_command")]
    worker = Proc("--broker", back, "--envs", "2", "--curve", str(keys), command=command)
    outsider = None
    try:
        wait_for(lambda: len(workers()) == 1, 30, "the C++ CURVE worker to register")
        outsider = Proc("--broker", back, "--envs", "2", command=command)
        sync = gym.vector.SyncVectorEnv([lambda: gym.make("rlay/Conformance-v0")] * 2)
        envs = RlayVectorEnv.remote("rlay/Conformance-v0", 2, broker=front, curve=curve, timeout=10)
        try:
            assert_same(envs.reset(seed=5), sync.reset(seed=5), "reset")
            for t, action in enumerate([[0, 2], [1, 1], [2, 0], [2, 2], [0, 1]]):
                action = np.array(action, np.int64)
                assert_same(envs.step(action), sync.step(action), f"step {t}")
        finally:
            envs.close()
            sync.close()
        time.sleep(1.5)  # the outsider has had time to try
        assert outsider.popen.poll() is None, "the worker without keys must keep waiting, not give up"
        assert len(workers()) == 1, "a worker without the keys must not register"
    finally:
        results = [(p, p.stop()) for p in (outsider, worker, broker) if p is not None]
        for proc, (code, _, err) in results:
            assert code == 0, f"{proc.args} exited with {code}:\n{err}"


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_cpp_game_instances_launched_by_rlay_up_name_their_program(cpp_build, tmp_path):
    """A fleet of C++ workers: each sends the program and instance rlay up put in its environment."""
    from tests.test_fleet import fleet, programs_of, toml_list

    command = toml_list([str(cpp_build / "rlay_example_command"), "--envs", "1"])
    with fleet(tmp_path, f'[[programs]]\nname = "native"\ncommand = {command}\ncount = 2\n') as (front, _):
        wait_for(lambda: programs_of(front).get("native", {}).get("registered") == 2, 60, "2 instances to register")
        assert sorted((w["program"], w["instance"]) for w in broker_status(front)["workers"]) == [
            ("native", 0),
            ("native", 1),
        ]
