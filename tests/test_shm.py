"""Large observations through shared memory (rlay/shm.py, protocol 3.9): same results as
frames and as SyncVectorEnv, a fallback to frames wherever the segment cannot be used, a
worker that writes only where a valid offer says, and no segment left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from rlay import RlayVectorEnv
from rlay.shm import SHM_DIR, ObsSegment, SegmentCache
from rlay.values import WireError
from rlay.wire import IN_PLACE, decode_leaves
from tests.conftest import RLAY, ROOT, Proc, broker_status, free_port, subprocess_env, up_deployment, wait_for
from tests.envs import ImageDictEnv
from tests.test_equivalence import compare_runs

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason=f"no {SHM_DIR} here")

IMAGE = spaces.Box(0, 255, (128, 128, 4), np.uint8)  # 64 KiB per env: a large leaf


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "frames"])
def test_large_observations_equal_sync_in_shared_memory_or_frames(leaf_paths, shared_memory, mode):
    envs = RlayVectorEnv([ImageDictEnv] * 3, envs_per_worker=2, autoreset_mode=mode, shared_memory=shared_memory)
    try:
        assert (envs._buffer.segment is not None) == shared_memory
        compare_runs(envs, "ImageDictEnv", mode, num_envs=3)
    finally:
        envs.close()
    # Dict leaves in order: image (large), pos (small, always one frame).
    assert leaf_paths and all(p == (["shm", "frame"] if shared_memory else ["rows", "frame"]) for p in leaf_paths), (
        leaf_paths[:3]
    )


def test_copy_false_returns_the_shared_buffer_and_copy_true_a_copy():
    for copy in (False, True):
        envs = RlayVectorEnv([ImageDictEnv] * 2, copy=copy)
        try:
            first = envs.reset(seed=1)[0]["image"]
            kept = first.copy()
            second = envs.step(envs.action_space.sample())[0]["image"]
            assert (second is first or np.shares_memory(second, first)) == (not copy)
            assert np.array_equal(first, kept) == copy  # copy=False: the step overwrote it, as AsyncVectorEnv's
        finally:
            envs.close()


def test_first_ready_results_from_shared_memory_are_each_envs_own(leaf_paths):
    import gymnasium as gym

    sync = gym.vector.SyncVectorEnv([ImageDictEnv] * 4)
    envs = RlayVectorEnv([ImageDictEnv] * 4, envs_per_worker=1)
    try:
        expected_obs = sync.reset(seed=3)[0]
        envs.async_reset(seed=3)
        obs, *_, infos = envs.recv(batch_size=4)
        order = infos["env_id"]
        np.testing.assert_array_equal(obs["image"], expected_obs["image"][order])
        kept = {int(i): obs["image"][k].copy() for k, i in enumerate(order)}
        actions = sync.action_space.sample()
        expected = sync.step(actions)[0]
        envs.send({key: value[[1, 3]] for key, value in actions.items()}, [1, 3])
        got, *_, infos = envs.recv(batch_size=2)
        np.testing.assert_array_equal(got["image"], expected["image"][infos["env_id"]])
        for k, i in enumerate(infos["env_id"]):
            assert not np.array_equal(got["image"][k], kept[int(i)]), "a step must change the image"
        np.testing.assert_array_equal(obs["image"][list(order).index(0)], kept[0])  # returned results stay as they were
    finally:
        envs.close()
        sync.close()
    assert leaf_paths and all(p[0] == "shm" for p in leaf_paths)


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "frames"])
def test_after_first_ready_stepping_the_buffer_holds_each_envs_last_observation(shared_memory):
    """A masked reset after recv() returns, for the rows it does not reset, the observation recv()
    last returned for them: every leaf of it (workers write large leaves into the buffer at once)."""
    envs = RlayVectorEnv(
        [ImageDictEnv] * 2, envs_per_worker=1, autoreset_mode=AutoresetMode.DISABLED, shared_memory=shared_memory
    )
    try:
        envs.async_reset(seed=0)
        envs.recv(2)
        envs.send(envs.action_space.sample(), [0, 1])
        obs, *_, infos = envs.recv(2)
        last = {int(i): {key: obs[key][k].copy() for key in obs} for k, i in enumerate(infos["env_id"])}
        out, _ = envs.reset(seed=5, options={"reset_mask": np.array([True, False])})
        for key in ("image", "pos"):
            np.testing.assert_array_equal(out[key][1], last[1][key], err_msg=key)
    finally:
        envs.close()


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_a_lost_envs_truncation_reports_its_last_observation_not_the_new_envs(mode):
    """Under "replace" the new envs are reset as frames: the buffer keeps the lost envs' last
    observations, which their truncation reports. The token changes, so that a lost worker still
    running cannot write into rows that now belong to other envs."""
    import signal

    from tests.envs import SlowImageEnv

    envs = RlayVectorEnv(
        [SlowImageEnv] * 4, envs_per_worker=2, autoreset_mode=mode, on_worker_failure="replace", timeout=30
    )
    try:
        envs.reset(seed=0)
        seen = envs.step(np.zeros(4, np.int64))[0].copy()
        victim, lost, token = envs._lease.groups[1].pid, envs._lease.groups[1].rows.tolist(), envs._buffer.segment.token
        envs.step_async(np.zeros(4, np.int64))
        os.kill(victim, signal.SIGKILL)  # while its envs sleep in their step
        obs, _, _, truncated, infos = envs.step_wait()
        assert truncated[lost].all() and infos["worker_lost"][lost].all()
        reported = np.stack(infos["final_obs"][lost]) if mode == AutoresetMode.SAME_STEP else obs[lost]
        np.testing.assert_array_equal(reported, seen[lost])
        assert envs._buffer.segment.token != token
    finally:
        envs.close()


def test_a_worker_that_cannot_see_the_segment_sends_frames(leaf_paths):
    """A worker in its own mount namespace, with a /dev/shm of its own: another host, as far as
    shared memory goes. The trainer offers its segment, the worker cannot open it, and frames
    carry the observations; the results are the same."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /dev/shm needs root and unshare")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()}")
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    elsewhere = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh", *RLAY]
    broker = Proc("broker", "--frontend", front, "--backend", back)
    worker = Proc("worker", "tests.envs:ImageDictEnv", "-p", "1", "-k", "3", "--broker", back, command=elsewhere)
    try:
        wait_for(lambda: len(broker_status(front)["workers"]) == 1, 60, "the worker to register")
        envs = RlayVectorEnv.remote("tests.envs:ImageDictEnv", 3, broker=front, timeout=30)
        try:
            assert envs._buffer.segment is not None, "the trainer makes and offers its segment all the same"
            compare_runs(envs, "ImageDictEnv", AutoresetMode.NEXT_STEP, num_envs=3)
        finally:
            envs.close()
    finally:
        results = [worker.stop(), broker.stop()]
    for code, _, err in results:
        assert code == 0, err
    assert leaf_paths and all(p == ["rows", "frame"] for p in leaf_paths), leaf_paths[:3]


TOO_SMALL = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from tests.envs import ImageDictEnv
from tests.test_equivalence import compare_runs
from rlay import RlayVectorEnv
from gymnasium.vector import AutoresetMode
envs = RlayVectorEnv([ImageDictEnv] * 3)
assert envs._buffer.segment is None
compare_runs(envs, "ImageDictEnv", AutoresetMode.NEXT_STEP, num_envs=3)
envs.close()
print("equal to sync")
"""


def test_a_dev_shm_too_small_for_the_buffer_means_frames_not_a_crash():
    """Docker's /dev/shm is 64 MB: a segment that does not fit is refused when made (its pages
    are reserved up front), with a warning, and frames carry the observations."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /dev/shm needs root and unshare")
    script = f'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec {sys.executable} -c "$0"'
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, TOO_SMALL],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "mount" in proc.stderr and "equal to sync" not in proc.stdout:
        pytest.skip(f"cannot make a mount namespace here: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "equal to sync" in proc.stdout
    assert "no shared memory for observations" in proc.stderr and "travel as frames" in proc.stderr, proc.stderr[-2000:]


# -- the worker's side: it writes only where a valid offer says ---------------------------


@pytest.fixture
def segment():
    made = ObsSegment.create([(0, IMAGE)], 4)
    assert made is not None
    yield made
    made.close()
    assert not os.path.exists(made.path)


def offer_for(segment: ObsSegment, rows: list[int], **changes) -> dict:
    return {**segment.offer(rows), **changes}


def test_a_valid_offer_gives_views_of_the_trainers_rows(segment):
    cache = SegmentCache()
    try:
        placed = cache.place(offer_for(segment, [2, 0]), [IMAGE], 2)
        assert placed is not None and list(placed) == [0]
        placed[0][0][...] = 7
        placed[0][1][...] = 9
        assert (segment.arrays[0][2] == 7).all() and (segment.arrays[0][0] == 9).all()
        assert (segment.arrays[0][[1, 3]] == 0).all()
    finally:
        cache.close()


@pytest.mark.parametrize(
    "change",
    [
        {"token": b"\0" * 16},  # not this segment's token
        {"token": "not bytes"},
        {"name": "../../etc/passwd"},
        {"name": "rlay-1-not-hex-at-all"},
        {"name": "rlay-9999999-0123456789abcdef"},  # no such segment (another host's)
        {"name": "rlay-9999999999-0123456789abcdef"},  # not a pid
        {"leaves": [[0, [0, 4096]]]},  # row 0 over the token
        {"leaves": [[0, [4096, 1 << 40]]]},  # past the end
        {"leaves": [[0, [4096]]]},  # one offset for two rows
        {"leaves": [[1, [4096, 4096 + 65536]]]},  # no such leaf
        {"leaves": [[0, [4096.0, 4096 + 65536]]]},
        {"leaves": "all of them"},
        {"leaves": [[0, [4096, 4096 + 65536]], [0, [4096, 4096 + 65536]]]},  # a leaf twice
    ],
)
def test_an_offer_the_worker_cannot_trust_or_use_means_frames(segment, change):
    cache = SegmentCache()
    try:
        assert cache.place(offer_for(segment, [0, 1], **change), [IMAGE], 2) is None
    finally:
        cache.close()


def test_the_worker_does_not_follow_links_or_open_other_files(segment, tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(segment.token + b"\0" * 200_000)  # even with the right token in it
    link = os.path.join(SHM_DIR, "rlay-1-0123456789abcdef")
    os.symlink(target, link)
    cache = SegmentCache()
    try:
        assert cache.place(offer_for(segment, [0, 1], name="rlay-1-0123456789abcdef"), [IMAGE], 2) is None
        assert cache.place({"name": "x", "token": segment.token}, [IMAGE], 2) is None
        assert cache.place(offer_for(segment, [0, 1]), [spaces.Discrete(3)], 2) is None  # not a Box leaf
    finally:
        cache.close()
        os.unlink(link)
    assert target.read_bytes() == segment.token + b"\0" * 200_000


@pytest.mark.parametrize("spoil", ["group-readable", "other-owner", "sparse", "shrunk-after-mapping"])
def test_a_segment_that_could_sigbus_or_is_not_this_users_is_refused(segment, spoil):
    """A write past a file's end, or into a page a full tmpfs cannot give, kills the writer with
    SIGBUS: the worker refuses files that another user could truncate, sparse ones, and ones that
    shrank since it mapped them."""
    cache = SegmentCache()
    try:
        if spoil == "shrunk-after-mapping":
            assert cache.place(segment.offer([0, 1]), [IMAGE], 2) is not None
            os.truncate(segment.path, 4096 + 65536)
        elif spoil == "group-readable":
            os.chmod(segment.path, 0o640)
        elif spoil == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("chown needs root")
            os.chown(segment.path, 65534, 65534)
        else:  # a file sized without reserving its pages, token and all
            os.unlink(segment.path)
            with open(segment.path, "wb") as f:
                f.write(segment.token)
                f.truncate(4096 + 4 * 65536)
            os.chmod(segment.path, 0o600)
        assert cache.place(segment.offer([0, 1]), [IMAGE], 2) is None
    finally:
        cache.close()


def test_nothing_is_written_unless_the_reply_succeeds():
    """Two large leaves, the second of the wrong shape; or an info that cannot cross the wire:
    the reply fails, and the rows in the trainer's buffer are untouched."""
    from workers.base import EnvFailures, Request, WorkerBase

    space = spaces.Dict({"a": IMAGE, "b": IMAGE})
    two = ObsSegment.create([(0, IMAGE), (1, IMAGE)], 1)
    worker = WorkerBase(
        "tcp://127.0.0.1:1", env_id="x", observation_space=space, action_space=spaces.Discrete(2), num_envs=1
    )
    try:
        request = Request("reset", 1, [0], {"seeds": [None], "shm": two.offer([0])}, [])
        bad = {"a": np.full(IMAGE.shape, 9, np.uint8), "b": np.zeros((2, 2), np.uint8)}
        good = {"a": np.full(IMAGE.shape, 9, np.uint8), "b": np.full(IMAGE.shape, 7, np.uint8)}
        for obs, info, why in [(bad, {}, "does not fit"), (good, {"x": object()}, "cannot cross the wire")]:
            with pytest.raises(EnvFailures) as failed:
                worker.reply(request, [obs], {"info": [info]})
            assert why in failed.value.reports[0]["message"]
            assert (two.arrays[0] == 0).all() and (two.arrays[1] == 0).all()
        frames = worker.reply(request, [good], {"info": [{}]})
        assert len(frames) == 2  # header and body: no array frame
        assert (two.arrays[0] == 9).all() and (two.arrays[1] == 7).all()
    finally:
        worker.segments.close()
        two.close()


def test_a_new_token_refuses_offers_of_the_old_lease(segment):
    cache = SegmentCache()
    try:
        old = segment.offer([0])
        assert cache.place(old, [IMAGE], 1) is not None
        segment.renew_token()
        assert cache.place(old, [IMAGE], 1) is None
        assert cache.place(segment.offer([0]), [IMAGE], 1) is not None
    finally:
        cache.close()


@pytest.fixture
def two_in_use():
    """A worker's cache that checks its segments at every call, and two trainers' segments it has mapped."""
    cache = SegmentCache()
    cache.PRUNE_INTERVAL = 0.0
    segments = ObsSegment.create([(0, IMAGE)], 1), ObsSegment.create([(0, IMAGE)], 1)
    try:
        for segment in segments:
            assert cache.place(segment.offer([0]), [IMAGE], 1) is not None
        yield cache, *segments
    finally:
        for segment in segments:
            segment.close()
            if os.path.exists(segment.path):  # (close() leaves a segment that forgot its lock)
                os.unlink(segment.path)
        cache.close()


def test_the_worker_lets_go_of_removed_segments_even_while_busy(two_in_use):
    """Serving another trainer's offers (no idle tick) still lets go of a removed segment."""
    cache, made, other = two_in_use
    made.close()
    assert cache.place(other.offer([0]), [IMAGE], 1) is not None
    assert list(cache._open) == [other.name]


# -- the trainer's side: it takes a leaf as written only where it offered it ------------


def test_the_trainer_refuses_in_place_leaves_it_did_not_offer_or_that_do_not_fit():
    desc = {"dtype": "|u1", "shape": [2, 128, 128, 4], "shm": True}
    assert decode_leaves([desc], [], [IMAGE], 2, in_place={0}) == [IN_PLACE]
    for bad, in_place in [
        (desc, ()),  # not offered
        ({**desc, "dtype": "<f4"}, {0}),
        ({**desc, "shape": [3, 128, 128, 4]}, {0}),
        ({**desc, "shape": [2, 128, 128]}, {0}),
        ({**desc, "dtype": "|O8"}, {0}),
    ]:
        with pytest.raises(WireError):
            decode_leaves([bad], [], [IMAGE], 2, in_place=in_place)


# -- no segment is left behind ---------------------------------------------------------


KILLED = """
import os, signal, sys
from rlay import RlayVectorEnv
from tests.envs import ImageDictEnv
envs = RlayVectorEnv([ImageDictEnv] * 2)
envs.reset(seed=0)
print(envs._buffer.segment.path, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_no_segment_outlives_its_trainer(how):
    """At exit without close() the trainer removes it; SIGKILLed, its orphaned workers do."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, how], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == (-9 if how == "kill" else 0), proc.stderr
    path = proc.stdout.strip()
    assert path.startswith(SHM_DIR + "/rlay-")
    wait_for(lambda: not os.path.exists(path), 15, f"{path} to be removed")


def test_a_worker_removes_the_segment_of_a_trainer_that_died_not_of_one_that_lives(two_in_use):
    """No one holds a dead trainer's segment: the worker that wrote into it removes it."""
    cache, live, dead = two_in_use
    dead._forget()  # what the kernel does for a killed trainer: its lock goes, its file stays
    cache.prune()
    assert not os.path.exists(dead.path)
    assert os.path.exists(live.path) and list(cache._open) == [live.name]
    assert cache.place(live.offer([0]), [IMAGE], 1) is not None


REMOTE_KILLED = """
import os, signal, sys
from rlay import RlayVectorEnv
envs = RlayVectorEnv.remote("rlay.bench:FrameEnv", 2, broker=sys.argv[1])
envs.reset(seed=0)
print(envs._buffer.segment.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_remote_trainer_killed_leaves_no_segment_behind(tmp_path):
    """A remote trainer has no children to clean up after it: its host's worker removes the segment."""
    workers = '[[workers]]\nenv = "rlay.bench:FrameEnv"\nenv_kwargs = { shape = [64, 64, 4] }\nenvs_per_worker = 2'
    with up_deployment(tmp_path, "", workers) as (front, _):  # 16 KiB per env: shared memory
        proc = subprocess.run(
            [sys.executable, "-c", REMOTE_KILLED, front],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == -9, proc.stderr
        path = proc.stdout.strip()
        assert path.startswith(SHM_DIR + "/rlay-")
        wait_for(lambda: not os.path.exists(path), 15, f"the worker to remove {path}")


def test_only_segments_no_live_trainer_holds_are_removed_as_stale():
    """A segment is live while its trainer holds a lock on it, whatever its name says (its pid may
    be of another pid namespace); one left unlocked by a dead trainer is removed by the next."""
    import fcntl
    import time

    def segment_file(name: str, age: float) -> str:
        path = os.path.join(SHM_DIR, name)
        with open(path, "wb") as f:
            f.write(b"\0" * 8192)
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    dead = segment_file("rlay-9999998-0123456789abcdef", age=60)
    fresh = segment_file("rlay-9999998-1123456789abcdef", age=0)  # maybe being made: not yet locked
    held = segment_file("rlay-9999998-2123456789abcdef", age=60)
    odd = segment_file("rlay-9999999999-0123456789abcdef", age=60)  # no such pid: not a segment name
    holder = os.open(held, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    made = ObsSegment.create([(0, IMAGE)], 1)
    try:
        assert made is not None
        assert not os.path.exists(dead)
        assert os.path.exists(fresh) and os.path.exists(held) and os.path.exists(odd)
    finally:
        if made is not None:
            made.close()
        os.close(holder)
        for path in (dead, fresh, held, odd):
            if os.path.exists(path):
                os.unlink(path)


FORKED_AFTER = """
import fcntl, os, signal, sys
import numpy as np
from gymnasium import spaces
from rlay.shm import ObsSegment
go, answer = int(sys.argv[1]), int(sys.argv[2])
made = ObsSegment.create([(0, spaces.Box(0, 255, (128, 128, 4), np.uint8))], 1)
if os.fork() == 0:  # the worker, forked after the segment was made: it inherits the mapping too
    try:
        os.read(go, 1)  # its trainer is dead now (or, on EOF, the test gave up)
        probe = os.open(made.path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(answer, b"free")
        except BlockingIOError:
            os.write(answer, b"held")
    finally:
        os._exit(0)
print(made.path, flush=True)
signal.pause()
"""


def test_a_forked_child_does_not_keep_a_dead_trainers_segment_alive():
    """A worker forked by the trainer after its segment was made (a restart under supervision)
    inherits the segment's mapping: once the trainer is killed, no one may hold its lock, or the
    segment would never be removed."""
    go_r, go_w = os.pipe()
    answer_r, answer_w = os.pipe()
    trainer = subprocess.Popen(
        [sys.executable, "-c", FORKED_AFTER, str(go_r), str(answer_w)],
        pass_fds=(go_r, answer_w),
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(go_r)
    os.close(answer_w)  # so that the read below ends (EOF) if the worker dies without answering
    path = ""
    try:
        path = trainer.stdout.readline().strip()  # ("" if the trainer failed: it exits, closing stdout)
        assert path.startswith(SHM_DIR + "/rlay-"), path
        trainer.kill()
        assert trainer.wait(30) == -9
        os.write(go_w, b"x")
        assert os.read(answer_r, 16) == b"free"
    finally:
        trainer.kill()
        _, err = trainer.communicate(timeout=30)
        os.close(go_w)  # a worker still waiting reads EOF and exits
        os.close(answer_r)
        if path and os.path.exists(path):
            os.unlink(path)


def test_a_forked_child_does_not_hold_its_parents_segment():
    """A worker restarted by fork (supervision) must not keep the trainer's lock, or the segment
    would look live after the trainer died; nor may it remove the segment when it exits."""
    import fcntl

    made = ObsSegment.create([(0, IMAGE)], 1)
    try:
        pid = os.fork()
        if pid == 0:  # the child: no lock of its own, and closing removes nothing
            code = 0 if made._fd is None else 1
            made.close()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(made.path)
        probe = os.open(made.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the parent still holds it
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        made.close()


def test_images_from_8_kib_per_env_go_through_shared_memory(leaf_paths):
    """Atari-sized frames (84x84x3, 21 KiB) take shared memory; smaller leaves, where the offer
    would cost what it saves, stay frames."""
    import functools

    from rlay.bench import FrameEnv

    for shape, shared in [((84, 84, 3), True), ((32, 32, 4), False)]:
        envs = RlayVectorEnv([functools.partial(FrameEnv, shape)] * 2)
        try:
            assert (envs._buffer.segment is not None) == shared
            obs, _ = envs.reset(seed=0)
            np.testing.assert_array_equal(obs, np.stack([FrameEnv(shape).frame] * 2))
        finally:
            envs.close()
    assert [p[0] for p in leaf_paths] == ["shm", "frame"]
