"""Fuzzing: decoders and live sockets take any bytes; afterwards the broker still serves correct steps."""

from __future__ import annotations

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq
from gymnasium.spaces import GraphInstance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlay import protocol as P
from rlay.spaces import MAX_SPACE_DEPTH, decode_space, encode_space, encode_value
from rlay.values import WireError, packb, unpackb
from rlay.wire import decode_body, decode_header, decode_leaves, header
from tests.conftest import Proc, assert_remote_cartpole_equals_sync, broker_status, deployment, free_port, wait_for

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Plain msgpack data, shaped like what peers send.
data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), inner, max_size=6)
    ),
    max_leaves=30,
)
VOCABULARY = [
    "v",
    "type",
    "req",
    "parts",
    "envs",
    "slots",
    "env_id",
    "num_envs",
    "timeout",
    "gather",
    "obs_space",
    "act_space",
    "host",
    "pid",
    "mode",
    "errors",
    "code",
    "known",
    "dtype",
    "shape",
    "rows",
    "text",
    "nd",
]
TYPES = [P.REGISTER, P.REPLY, P.ERROR, P.DISCONNECT, P.LEASE, P.RELEASE, P.STATUS, P.HEARTBEAT, *P.BATCH_CALLS, "x"]
headers = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, None, "1"]), "type": st.sampled_from(TYPES)},
    optional={k: data for k in VOCABULARY[2:]},
)
ext = st.builds(
    lambda code, payload: msgpack.packb(msgpack.ExtType(code, payload)), st.integers(0, 127), st.binary(max_size=40)
)


def packed(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


frames = st.one_of(st.binary(max_size=200), data.map(packed), headers.map(packed), ext)
messages = st.lists(frames, min_size=1, max_size=6)


@FUZZ
@given(st.binary(max_size=300) | data.map(packed) | ext)
def test_decoders_raise_only_wire_errors(raw):
    for decode in (unpackb, decode_header, decode_body):
        try:
            decode(raw)
        except WireError:
            pass


@FUZZ
@given(data)
def test_space_decoder_raises_only_wire_errors(value):
    try:
        decode_space(value)
    except WireError:
        pass


NESTING = {
    "Tuple": lambda inner: {"type": "Tuple", "spaces": [inner]},
    "Dict": lambda inner: {"type": "Dict", "spaces": [["a", inner]]},
    "Graph": lambda inner: {"type": "Graph", "node_space": inner, "edge_space": None},
    "Sequence": lambda inner: {"type": "Sequence", "feature_space": inner, "stack": False},
    "OneOf": lambda inner: {"type": "OneOf", "spaces": [inner]},
}


@FUZZ
@given(st.lists(st.sampled_from(sorted(NESTING)), max_size=700))
def test_space_maps_nested_any_depth_decode_or_raise_wire_errors(kinds):
    """A Sequence 500 deep registered, and every reset then raised RecursionError: past
    MAX_SPACE_DEPTH a space map is refused, whatever nests."""
    data = encode_space(gym.spaces.Discrete(2))
    for kind in kinds:
        data = NESTING[kind](data)
    try:
        decode_space(data)
    except WireError:
        return
    assert len(kinds) <= MAX_SPACE_DEPTH


@FUZZ
@given(data, st.lists(st.binary(max_size=64), max_size=4), st.none() | st.integers(0, 8))
def test_leaf_decoder_raises_only_wire_errors(descriptors, raw_frames, rows):
    try:
        decode_leaves(descriptors, raw_frames, None, rows)
    except WireError:
        pass


@pytest.fixture(scope="module")
def live():
    """A real broker and a real worker, fuzzed through both sockets."""

    def no_last_resort(err: str) -> None:
        # Bad input must meet explicit checks, not the broker's and worker's last-resort handlers.
        assert "unexpected error" not in err and "internal error" not in err, err[-3000:]

    with deployment([["CartPole-v1", "-p", "1", "-k", "2"]], workers=1, check_log=no_last_resort) as (front, back):
        ctx = zmq.Context()
        socks = {}
        for name, addr in (("front", front), ("back", back)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.connect(addr)
            socks[name] = sock
        try:
            yield front, socks
        finally:
            for sock in socks.values():
                sock.close()
            ctx.term()


@FUZZ
@given(st.sampled_from(["front", "back"]), messages)
def test_live_sockets_survive_any_message(live, side, message):
    front, socks = live
    socks[side].send_multipart(message)
    while socks[side].poll(0):  # answers (errors, mostly) are fine; drain them
        socks[side].recv_multipart()


def test_broker_still_serves_correct_steps_after_the_fuzzing(live):
    front, socks = live
    status = broker_status(front)
    assert [w["env_id"] for w in status["workers"] if w["env_id"] == "CartPole-v1"] == ["CartPole-v1"]
    assert_remote_cartpole_equals_sync(front, steps=50, seed=9)


def test_messages_over_the_size_limit_are_dropped_and_the_broker_serves_on(tmp_path):
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "small.toml"
    config.write_text(f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\nmax_message_size = 65536\n')
    broker = Proc("broker", "--config", str(config))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        wait_for(lambda: broker_status(front), 30, "the broker to answer")
        sock.connect(front)
        sock.send_multipart([msgpack.packb({"v": 1, "type": "status", "req": 1}), b"x" * 1_000_000])
        assert not sock.poll(500), "an oversized message must get no answer: libzmq drops it"
        assert broker_status(front)["workers"] == []  # still serving other peers
    finally:
        sock.close()
        ctx.term()
        code, _, err = broker.stop()
        assert code == 0, err


@pytest.mark.parametrize(
    "answer, registers",
    [
        ([b"\xc1 not msgpack"], True),
        ([packed({"type": P.REGISTERED, "worker": "w1", "slots": [0]})], True),  # no version at all
        ([packed({"v": 2, "type": P.REGISTERED, "worker": "w1", "slots": [0]})], False),
    ],
    ids=["unreadable", "no-version", "other-version"],
)
def test_a_worker_awaiting_registration_skips_unreadable_messages(answer, registers):
    """Before `registered`, an unreadable message is logged and skipped, and the worker registers and
    serves; a header of another protocol version ends the registration with an error saying so."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    broker = ctx.socket(zmq.ROUTER)  # a stand-in broker, which answers pings
    broker.setsockopt(zmq.LINGER, 0)
    broker.bind(addr)

    def next_message() -> tuple[bytes, dict, list]:
        while True:
            assert broker.poll(30_000), "the worker sent nothing for 30 s"
            ident, *frames = broker.recv_multipart()
            head = decode_header(frames[0])
            if head[P.TYPE] == P.HEARTBEAT:
                broker.send_multipart([ident, header(P.HEARTBEAT, known=True)])
                continue
            return ident, head, frames

    worker = Proc("worker", "CartPole-v1", "--broker", addr, "--register-timeout", "30", "--no-restart")
    try:
        ident, head, _ = next_message()
        assert head[P.TYPE] == P.REGISTER
        broker.send_multipart([ident, *answer])
        if registers:
            broker.send_multipart([ident, header(P.REGISTERED, worker="w1", slots=[0])])
            broker.send_multipart([ident, header(P.RESET, req=7, envs=[0]), packb({"seeds": [0]})])
            _, head, _ = next_message()
            assert (head[P.TYPE], head[P.REQ]) == (P.REPLY, 7)
        else:
            assert worker.popen.wait(30) == 1
    finally:
        code, _, err = worker.stop()
        broker.close()
        ctx.term()
    if registers:
        assert code == 0 and "ignoring an unreadable message before registration" in err, err
    else:
        assert code == 1 and "answered the registration in another protocol version" in err, err


def test_tuples_nested_too_deep_are_refused_and_the_worker_serves_on():
    """Each tuple is decoded by a nested msgpack call: unbounded, ~200 levels overflowed the worker's
    C stack and killed it. Deeper than MAX_TUPLE_DEPTH is a bad message; the worker answers on."""
    from rlay import BrokerError, RlayVectorEnv
    from rlay.values import MAX_TUPLE_DEPTH

    deep = msgpack.packb([])
    for _ in range(300):  # (the trainer's own encoder would refuse this: it is made by hand)
        deep = msgpack.packb([msgpack.ExtType(3, deep)])
    envs = RlayVectorEnv([lambda: gym.make("CartPole-v1")], timeout=20)
    try:
        with pytest.raises(BrokerError, match=f"tuples nested more than {MAX_TUPLE_DEPTH} deep"):
            envs.reset(seed=0, options={"deep": msgpack.ExtType(3, deep)})
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (1, 4)
    finally:
        envs.close()


# -- value leaves (Graph, Sequence, OneOf: protocol 3.8.1) -----------------------------------------

VALUE_SPACES = [
    gym.spaces.Graph(gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3)),
    gym.spaces.Graph(
        gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Box(0, 1, (1,), np.float64)}),
        gym.spaces.Tuple((gym.spaces.Text(2, charset="ab"), gym.spaces.MultiBinary(2))),
    ),
    gym.spaces.Sequence(gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0, 1, (2,), np.float32)))),
    gym.spaces.Sequence(
        gym.spaces.Dict({"g": gym.spaces.Graph(gym.spaces.Discrete(2), None), "x": gym.spaces.MultiDiscrete([2, 3])}),
        stack=True,
    ),
    gym.spaces.OneOf((gym.spaces.Discrete(2), gym.spaces.Sequence(gym.spaces.Discrete(4), stack=True))),
    gym.spaces.Sequence(gym.spaces.Box(0, 1, (0,), np.float32), stack=True),  # (a batch of no bytes: L is capped)
]
# What a hostile or buggy peer puts where an array reference or a value belongs.
references = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["<f4", "<f8", "<i8", "|i1", "|u1", "<i4", "|O", "=f4", "<U1", "x"]),
        "shape": st.lists(st.integers(-1, 4) | st.just(2**40) | st.just(2**70), max_size=4)
        | st.tuples(st.integers(0, 4))
        | st.none(),
    }
)
junk = data | references | st.builds(GraphInstance, data, data, data) | st.tuples(data, data)


def wire_nodes(value, path=()):
    """Every node of a value's wire form, by path (indices into tuples, lists, graphs and dicts)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from wire_nodes(item, (*path, key))
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from wire_nodes(item, (*path, i))


def replaced(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    items = [replaced(item, rest, new) if i == head else item for i, item in enumerate(value)]
    return GraphInstance(*items) if type(value) is GraphInstance else type(value)(items)


@pytest.mark.timeout(120)
@FUZZ
@given(st.sampled_from(range(len(VALUE_SPACES))), st.integers(0, 2**31), st.data())
def test_a_mutated_value_leaf_is_decoded_or_refused_with_a_wire_error(which, seed, draw):
    """Take valid values of a value leaf, change one node of their wire form and maybe the frames:
    the receiver's decoder returns values or raises WireError, nothing else."""
    space = VALUE_SPACES[which]
    space.seed(seed)
    values = [space.sample() for _ in range(2)]
    frames: list = []
    wires = [encode_value(space, v, frames) for v in values]
    raw = [np.ascontiguousarray(f).tobytes() for f in frames]
    nodes = list(wire_nodes(wires))
    path = draw.draw(st.sampled_from(nodes))
    wires = replaced(wires, path, draw.draw(junk))
    action = draw.draw(st.sampled_from(["keep", "drop", "add", "cut", "swap"]))
    if action == "drop" and raw:
        raw.pop(draw.draw(st.integers(0, len(raw) - 1)))
    elif action == "add":
        raw.insert(draw.draw(st.integers(0, len(raw))), draw.draw(st.binary(max_size=16)))
    elif action == "cut" and raw:
        n = draw.draw(st.integers(0, len(raw) - 1))
        raw[n] = raw[n][: draw.draw(st.integers(0, max(0, len(raw[n]) - 1)))]
    elif action == "swap" and len(raw) > 1:
        raw.reverse()
    try:
        descriptors = unpackb(packb([{"values": wires}]))
    except WireError:
        return  # (junk the value codec itself refuses to carry)
    try:
        decode_leaves(descriptors, raw, [space], 2, check_dtype=draw.draw(st.booleans()))
    except WireError:
        pass


@pytest.mark.timeout(120)
@FUZZ
@given(
    st.sampled_from(range(len(VALUE_SPACES))), st.lists(junk, max_size=3), st.lists(st.binary(max_size=48), max_size=4)
)
def test_a_value_leaf_of_any_values_is_decoded_or_refused_with_a_wire_error(which, values, raw):
    try:
        descriptors = unpackb(packb([{"values": values}]))
    except WireError:
        return
    try:
        decode_leaves(descriptors, raw, [VALUE_SPACES[which]], None)
    except WireError:
        pass
