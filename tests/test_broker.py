"""Bad input to a real broker and real workers: a clear error reply, nothing lost, nothing run."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from rlay import BrokerError, RlayVectorEnv
from rlay import protocol as P
from rlay.values import packb
from rlay.wire import decode_header, encode_leaves, header
from tests.conftest import broker_status, deployment, up_deployment, wait_for
from tests.test_codec import pickle_payload


@pytest.fixture
def cartpoles():
    """`rlay broker` and a 2x2 CartPole `rlay worker`, as subprocesses."""
    with deployment([["CartPole-v1", "-p", "2", "-k", "2"]], workers=2) as addresses:
        yield addresses


def ask(sock: zmq.Socket, frames: list[bytes], timeout: float = 5.0) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(timeout * 1000), f"no reply within {timeout} s to {frames!r:.80}"
    return decode_header(sock.recv_multipart()[0])


def assert_serves(front: str) -> None:
    envs = RlayVectorEnv.remote("CartPole-v1", 4, broker=front, timeout=10)
    try:
        obs, _ = envs.reset(seed=0)
        obs, *_ = envs.step(np.zeros(4, dtype=np.int64))
        assert obs.shape == (4, 4)
    finally:
        envs.close()


def test_malformed_trainer_messages_get_error_replies(cartpoles, dealers, tmp_path):
    front, _ = cartpoles
    sock, leased = dealers(front), dealers(front)
    assert ask(leased, [header(P.LEASE, req=1, env_id="CartPole-v1", num_envs=1)])[P.TYPE] == P.LEASED
    marker = tmp_path / "owned"
    cases = [  # (socket, frames, code): `leased` holds a lease of one slot, `sock` none
        (sock, [b"\xc1garbage"], P.E_BAD_MESSAGE),
        (sock, [msgpack.packb([1, 2, 3])], P.E_BAD_MESSAGE),
        (sock, [msgpack.packb({"v": 99, "type": "status"})], P.E_VERSION),
        (sock, [msgpack.packb({"v": True, "type": "status"})], P.E_VERSION),  # (equal to 1 in Python)
        (sock, [msgpack.packb({"v": 1.0, "type": "status"})], P.E_VERSION),
        (sock, [header("frobnicate", req=1)], P.E_UNKNOWN_TYPE),
        (sock, [pickle_payload(marker)], P.E_BAD_MESSAGE),
        (sock, [header(P.STEP, req=2, parts=[[[0, 1], 1]]), b"body"], P.E_NO_LEASE),
        (leased, [header(P.STEP, req=2, parts=[[[1000, 1001], 1]]), b"body"], P.E_SLOT),  # slots it does not hold
        (sock, [header(P.STEP, req=3, parts="nope")], P.E_BAD_MESSAGE),
        (leased, [header(P.STEP, req=3, parts=[["slot"]])], P.E_BAD_MESSAGE),
        (sock, [header(P.LEASE, req=3, env_id="CartPole-v1", num_envs=1, timeout=True)], P.E_BAD_MESSAGE),
        (leased, [header(P.STEP, req=4, parts=[[[0], 5]]), b""], P.E_BAD_MESSAGE),  # frame count lies
        (sock, [header(P.LEASE, req=5, env_id="CartPole-v1", num_envs=-3)], P.E_BAD_MESSAGE),
        (sock, [header(P.REPLACE, req=6, slots=[0])], P.E_NO_LEASE),
        (leased, [header(P.STEP, req=7, parts=[[[0], 1]], timeout=1, partial="yes"), b""], P.E_BAD_MESSAGE),
        (leased, [header(P.STEP, req=8, parts=[[[0], 1]], timeout=1, loss_truncations=-1), b""], P.E_BAD_MESSAGE),
        (leased, [header(P.STEP, req=9, parts=[[[0], 1]], timeout=1, loss_truncations="2"), b""], P.E_BAD_MESSAGE),
    ]
    for peer, frames, code in cases:
        reply = ask(peer, frames)
        assert reply[P.TYPE] == P.ERROR and reply["code"] == code, (frames, reply)
        assert reply["message"]
    assert ask(leased, [header(P.RELEASE, req=10)])[P.TYPE] == P.RELEASED
    assert not marker.exists()
    assert_serves(front)


def deep_map(depth: int) -> dict:
    """A space map nested ``depth`` maps deep (a Dict in a Dict in ...), far past what spaces may nest."""
    space: dict = {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
    for _ in range(depth):
        space = {"type": "Dict", "spaces": space}
    return space


def test_malformed_worker_messages_get_error_replies(cartpoles, dealers, tmp_path):
    front, back = cartpoles
    sock = dealers(back)
    marker = tmp_path / "owned"
    good = dict(
        env_id="X",
        num_envs=1,
        host="h",
        pid=1,
        obs_space={"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"},
        act_space={"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"},
    )
    cases = [
        ([pickle_payload(marker)], P.E_BAD_MESSAGE),
        ([msgpack.packb({"v": 2, "type": P.REGISTER})], P.E_VERSION),
        ([header(P.REGISTER, env_id="X")], P.E_REGISTRATION),
        ([header(P.REGISTER, **{**good, "num_envs": 10**12})], P.E_LIMIT),  # over max_envs_per_worker
        ([header(P.REGISTER, **{**good, "env_id": "CartPole-v1"})], P.E_REGISTRATION),  # spaces differ
        ([header(P.REGISTER, **{**good, "obs_space": deep_map(300)})], P.E_REGISTRATION),  # (comparing it recursed)
        ([header("bogus")], P.E_UNKNOWN_TYPE),
    ]
    for frames, code in cases:
        reply = ask(sock, frames)
        assert reply[P.TYPE] == P.ERROR and reply["code"] == code, (frames, reply)
    # A reply to a request nobody made is dropped with a log line, not answered or fatal.
    sock.send_multipart([header(P.REPLY, req=12345), b"\x80"])
    first = ask(sock, [header(P.REGISTER, **good)])
    assert first[P.TYPE] == P.REGISTERED
    again = ask(sock, [header(P.REGISTER, **good)])  # the same peer again: it replaces its old slots
    assert again[P.TYPE] == P.REGISTERED and again["worker"] != first["worker"]
    assert not marker.exists()
    workers = broker_status(front)["workers"]
    assert sorted(w["env_id"] for w in workers) == ["CartPole-v1", "CartPole-v1", "X"]
    assert_serves(front)


def test_a_worker_error_with_odd_reports_still_reaches_the_trainer(cartpoles, dealers):
    """The broker names each report's slot where it can; a report it cannot place passes on as it is."""
    front, back = cartpoles
    worker, trainer = dealers(back), dealers(front)
    discrete = {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
    assert (
        ask(
            worker,
            [header(P.REGISTER, env_id="Odd", num_envs=1, host="h", pid=1, obs_space=discrete, act_space=discrete)],
        )[P.TYPE]
        == P.REGISTERED
    )
    leased = ask(trainer, [header(P.LEASE, req=1, env_id="Odd", num_envs=1, timeout=5)])
    slot = leased["slots"][0]["slot"]
    trainer.send_multipart(
        [header(P.CALL, req=2, parts=[[[slot], 1]], timeout=30), packb({"name": "x", "args": [], "kwargs": {}})]
    )
    assert worker.poll(5000), "the call never reached the worker"
    request = decode_header(worker.recv_multipart()[0])
    reports = [{"env": [0]}, {"env": 0, "type": "ValueError", "message": "bad", "traceback": ""}]
    worker.send_multipart([header(P.ERROR, req=request[P.REQ], code=P.E_ENV, message="boom", errors=reports)])
    assert trainer.poll(5000), "the worker's error never reached the trainer"
    answer = decode_header(trainer.recv_multipart()[0])
    assert answer[P.TYPE] == P.ERROR and answer["code"] == P.E_ENV and answer[P.REQ] == 2, answer
    assert answer["failures"][0]["errors"] == [reports[0], {**reports[1], "slot": slot}]
    assert ask(trainer, [header(P.RELEASE, req=3)])[P.TYPE] == P.RELEASED


def test_a_reply_over_max_message_size_comes_back_as_an_error_not_a_stuck_slot(tmp_path):
    """ZeroMQ would cut a worker that sends a frame over the limit, and its reply would be lost for good
    (its slots busy forever): the broker tells each worker its limit, and the worker answers with an error."""
    workers = '[[workers]]\nenv = "rlay.bench:FrameEnv"\nenv_kwargs = { shape = [64, 64] }\nenvs_per_worker = 4'
    with up_deployment(tmp_path, "max_message_size = 12000", workers) as (front, _):  # 4 x 4 KiB: one 16 KiB frame
        envs = RlayVectorEnv.remote("rlay.bench:FrameEnv", 4, broker=front, timeout=10)
        try:
            for _ in range(2):  # the second time too: the error freed the slots
                with pytest.raises(
                    BrokerError, match="a frame of 16384 bytes is over the broker's max_message_size of 12000"
                ):
                    envs.reset(seed=0)
        finally:
            envs.close()


def test_a_request_over_max_message_size_is_refused_before_sending_and_loses_nothing(tmp_path):
    """ZeroMQ would drop a trainer's frame over the limit and cut its connection; the wait would then
    time out with no cause. The broker tells the trainer its limit in `leased`, and the trainer refuses
    to send such a request: a clear error at once, and the lease and its envs go on as before."""
    workers = '[[workers]]\nenv = "rlay.bench:FrameEnv"\nenv_kwargs = { shape = [16, 16] }\nenvs_per_worker = 2'
    with up_deployment(tmp_path, "max_message_size = 12000", workers) as (front, _):
        envs = RlayVectorEnv.remote("rlay.bench:FrameEnv", 2, broker=front, timeout=10)
        try:
            first, _ = envs.reset(seed=0)
            with pytest.raises(
                BrokerError,
                match="cannot send a set_attr to the broker at .*: a frame of 2[0-9]{4} "
                "bytes is over the broker's max_message_size of 12000; nothing was sent",
            ):
                envs.set_attr("note", ["x" * 10_000, "y" * 10_000])  # one body of both: over 20,000 bytes
            envs.set_attr("note", ["x", "y"])
            assert envs.get_attr("note") == ("x", "y")
            obs, *_ = envs.step(np.zeros(2, np.int64))
            np.testing.assert_array_equal(obs, first)  # FrameEnv returns its one frame
        finally:
            envs.close()


def test_a_new_replace_supersedes_one_still_pending(cartpoles, dealers):
    """A trainer that stopped waiting for a replacement (an error, an interrupt) asks again: the new
    request takes the old one's place, and only it is answered."""
    front, back = cartpoles
    discrete = {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
    game = dict(env_id="Lossy", num_envs=1, host="h", pid=1, obs_space=discrete, act_space=discrete)
    first, trainer = dealers(back), dealers(front)
    assert ask(first, [header(P.REGISTER, **game)])[P.TYPE] == P.REGISTERED
    slot = ask(trainer, [header(P.LEASE, req=1, env_id="Lossy", num_envs=1, timeout=5)])["slots"][0]["slot"]
    first.send_multipart([header(P.DISCONNECT)])  # its slot is LOST now
    wait_for(
        lambda: not any(w["env_id"] == "Lossy" for w in broker_status(front)["workers"]),
        10,
        "the broker to drop the disconnected worker",
    )
    trainer.send_multipart([header(P.REPLACE, req=2, slots=[slot], timeout=30)])  # no free slot: it waits
    trainer.send_multipart([header(P.REPLACE, req=3, slots=[slot], timeout=30)])  # the trainer asks again
    wait_for(lambda: broker_status(front)["pending_leases"] == 1, 10, "one pending replacement")
    assert ask(dealers(back), [header(P.REGISTER, **{**game, "pid": 2})])[P.TYPE] == P.REGISTERED
    assert trainer.poll(10_000), "no answer to the replace"
    answer = decode_header(trainer.recv_multipart()[0])
    assert answer[P.TYPE] == P.REPLACED and answer[P.REQ] == 3 and answer["replaces"] == [slot], answer
    assert ask(trainer, [header(P.RELEASE, req=4)])[P.TYPE] == P.RELEASED  # (nothing else came first)


def test_pickle_payload_forwarded_to_a_worker_runs_nothing(cartpoles, tmp_path):
    """The broker forwards bodies untouched; the worker must refuse the payload itself."""
    front, _ = cartpoles
    marker = tmp_path / "owned"
    envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=10)
    try:
        envs.reset(seed=0)
        group = envs._lease.groups[0]
        req = envs._client.send(P.STEP, [pickle_payload(marker)], parts=[[group.slots, 1]], timeout=5)
        head, _ = envs._client.wait(req, 10, "the forged step")
        assert head[P.TYPE] == P.ERROR and head["code"] == P.E_BAD_MESSAGE
        assert "msgpack-numpy" in head["message"] and group.worker in head["message"]
        assert not marker.exists()
        obs, *_ = envs.step(np.zeros(2, dtype=np.int64))  # the worker kept serving
        assert obs.shape == (2, 4)
    finally:
        envs.close()


def test_lease_timeout_says_what_it_found(cartpoles):
    front, _ = cartpoles
    with pytest.raises(BrokerError, match=r"found 4 free of 4 registered on 2 worker\(s\)"):
        RlayVectorEnv.remote("CartPole-v1", 5, broker=front, timeout=0.5)
    with pytest.raises(BrokerError, match="other env ids registered: CartPole-v1"):
        RlayVectorEnv.remote("Nope-v0", 1, broker=front, timeout=0.5)


def test_two_trainers_share_a_broker_with_their_own_slots(cartpoles):
    front, _ = cartpoles
    a = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=10)
    b = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=10)
    try:
        assert not set(a.slots) & set(b.slots)
        oa, _ = a.reset(seed=1)
        ob, _ = b.reset(seed=1)
        np.testing.assert_array_equal(oa, ob)
        trainers = broker_status(front)["trainers"]
        assert sorted(t["slots"] for t in trainers) == [2, 2]
        with pytest.raises(BrokerError, match="found 0 free of 4"):
            RlayVectorEnv.remote("CartPole-v1", 1, broker=front, timeout=0.3)
    finally:
        a.close()
        b.close()
    assert broker_status(front)["trainers"] == []


def test_cached_parts_still_refuse_non_int_slot_ids(cartpoles):
    front, _ = cartpoles
    envs = RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=10)
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(2, dtype=np.int64))  # the broker has now validated and cached this part
        group = envs._lease.groups[0]
        forged = [float(s) for s in group.slots]  # equal to the cached key, but not slot ids
        req = envs._client.send(P.STEP, [b"\x80"], parts=[[forged, 1]], timeout=5)
        head, _ = envs._client.wait(req, 10, "the forged step")
        assert head[P.TYPE] == P.ERROR and head["code"] == P.E_SLOT and "must be ints" in head["message"]
        assert envs.step(np.zeros(2, dtype=np.int64))[0].shape == (2, 4)
    finally:
        envs.close()


def test_a_released_call_is_never_answered_even_after_a_new_lease(dealers):
    """Release while a step runs, lease again on the same connection: the old step's reply must not
    come (protocol 5.6), though the trainer is known to the broker again when it arrives."""
    slow = ["tests.envs:SlowEnv", "--env-kwargs", '{"delay": 2.0}', "-p", "1", "-k", "2"]
    with deployment([slow], workers=1) as (front, _):
        sock = dealers(front)
        leased = ask(sock, [header(P.LEASE, req=1, env_id="tests.envs:SlowEnv", num_envs=2, timeout=10)])
        first, second = (s["slot"] for s in leased["slots"])
        descriptors, frames = encode_leaves([np.zeros(1, np.int64)])
        sock.send_multipart(
            [
                header(P.STEP, req=2, parts=[[[first], 2]], timeout=30),
                packb({"autoreset": "NextStep", "actions": descriptors}),
                frames[0].tobytes(),
            ]
        )
        assert ask(sock, [header(P.RELEASE, req=3)])[P.TYPE] == P.RELEASED
        again = ask(sock, [header(P.LEASE, req=4, env_id="tests.envs:SlowEnv", num_envs=1, timeout=10)])
        assert [s["slot"] for s in again["slots"]] == [second]  # the first is still busy with the old step
        wait_for(
            lambda: broker_status(front)["workers"][0]["busy"] == 0, 30, "the old step's reply to reach the broker"
        )
        reply = ask(sock, [header(P.STATUS, req=5)])  # what comes first on this connection
        assert reply[P.TYPE] == P.STATUS and reply[P.REQ] == 5, reply
        assert ask(sock, [header(P.RELEASE, req=6)])[P.TYPE] == P.RELEASED


def test_replace_takes_only_lost_slots_of_the_lease(cartpoles, dealers):
    front, _ = cartpoles
    sock = dealers(front)
    leased = ask(sock, [header(P.LEASE, req=1, env_id="CartPole-v1", num_envs=2, timeout=5)])
    assert leased[P.TYPE] == P.LEASED
    mine = [s["slot"] for s in leased["slots"]]
    cases = [
        (dict(slots=[mine[0]]), P.E_SLOT, "is not lost"),  # its worker is alive
        (dict(slots=[max(mine) + 1000]), P.E_SLOT, "not leased to this trainer"),
        (dict(slots=[]), P.E_BAD_MESSAGE, "non-empty list"),
        (dict(slots=[mine[0], mine[0]]), P.E_BAD_MESSAGE, "distinct"),
        (dict(slots=[mine[0]], timeout=-1), P.E_BAD_MESSAGE, "timeout"),
    ]
    for n, (fields, code, text) in enumerate(cases):
        reply = ask(sock, [header(P.REPLACE, req=10 + n, **fields)])
        assert reply[P.TYPE] == P.ERROR and reply["code"] == code and text in reply["message"], (fields, reply)
    assert ask(sock, [header(P.RELEASE, req=20)])[P.TYPE] == P.RELEASED
    assert_serves(front)


def test_a_malformed_worker_reply_in_first_ready_stepping_is_a_broker_error(cartpoles, dealers):
    """First-ready results are checked as a step's are (protocol 5.9): one value per env under each
    key, and maps for infos. A worker that breaks this gets its reply refused by name."""
    front, back = cartpoles
    worker = dealers(back)
    discrete = {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
    assert (
        ask(
            worker,
            [header(P.REGISTER, env_id="Odd", num_envs=1, host="h", pid=1, obs_space=discrete, act_space=discrete)],
        )[P.TYPE]
        == P.REGISTERED
    )
    envs = RlayVectorEnv.remote("Odd", 1, broker=front, timeout=10)
    try:
        for info in ([1], [{}, {}]):
            envs.async_reset(seed=0)
            assert worker.poll(5000), "the reset never reached the worker"
            request = decode_header(worker.recv_multipart()[0])
            descriptors, frames = encode_leaves([np.zeros(1, np.int64)])
            worker.send_multipart(
                [header(P.REPLY, req=request[P.REQ]), packb({"obs": descriptors, "info": info}), *frames]
            )
            with pytest.raises(BrokerError, match="malformed reply from a worker"):
                envs.recv()
    finally:
        envs.close()
