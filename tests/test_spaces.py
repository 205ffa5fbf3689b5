"""Graph, Sequence and OneOf cross the wire exactly (protocol 3.8.1, 4.1), alone and nested, as
observations and actions: RlayVectorEnv equals SyncVectorEnv bit for bit in every autoreset mode,
embedded and remote. A space that is not gymnasium's own is refused, by exact type."""

from __future__ import annotations

import collections
import functools
import json

import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.spaces import GraphInstance
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space, iterate

from rlay import RemoteEnvError, RlayError, RlayVectorEnv
from rlay.spaces import (
    MAX_BATCH,
    MAX_SPACE_DEPTH,
    UnsupportedSpaceError,
    ValueRows,
    decode_space,
    decode_value,
    encode_space,
    encode_value,
    is_value_space,
    leaf_spaces,
)
from rlay.values import EXT_GRAPH, WireError, array_from_buffer, packb, unpackb
from rlay.wire import decode_body, decode_leaves, encode_leaves
from tests.conftest import GAME, Proc, assert_same, broker_status, deployment, wait_for
from tests.envs import SAMPLED_KINDS, BadGraphEnv, SampledSpacesEnv, SubclassSpaceEnv, VarSpacesEnv, sampled_spaces
from tests.test_equivalence import ENVS as EQUIVALENCE_ENVS
from tests.test_equivalence import MODES, NUM_ENVS, compare_runs

# name -> (the `rlay worker` ENV and kwargs, as tests/test_equivalence.py's ENVS)
KINDS = {f"sampled-{kind}": ("tests.envs:SampledSpacesEnv", {"kind": kind}) for kind in SAMPLED_KINDS}
KINDS["var-spaces"] = ("tests.envs:VarSpacesEnv", {})
LARGE = {"image-text-graph": ("tests.envs:ImageTextGraphEnv", {})}
RUN_TIMEOUT = 120  # s: one compare_runs, 60 steps of 4 envs


@pytest.fixture
def known_kinds(monkeypatch):
    """compare_runs (tests/test_equivalence.py) knows this module's envs by name."""
    for name, spec in {**KINDS, **LARGE}.items():
        monkeypatch.setitem(EQUIVALENCE_ENVS, name, spec)


# -- space maps ----------------------------------------------------------------------------------


def every_space() -> list[spaces.Space]:
    found = [space for kind in SAMPLED_KINDS for space in sampled_spaces(kind)]
    return found + [VarSpacesEnv().observation_space, VarSpacesEnv().action_space]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("space", every_space(), ids=str)
def test_every_space_map_decodes_to_an_equal_space(space):
    data = encode_space(space)
    assert msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False) == data, "plain msgpack"
    decoded = decode_space(data)
    assert decoded == space and type(decoded) is type(space)
    assert [type(s) for s in leaf_spaces(decoded)] == [type(s) for s in leaf_spaces(space)]


@pytest.mark.timeout(30)
def test_the_space_maps_of_the_new_spaces_read_as_protocol_4_1_says():
    box = spaces.Box(0, 1, (1,), np.float32)
    assert encode_space(spaces.Graph(spaces.Discrete(3), None)) == {
        "type": "Graph",
        "node_space": {"type": "Discrete", "n": 3, "start": 0, "dtype": "<i8"},
        "edge_space": None,
    }
    assert encode_space(spaces.Sequence(box, stack=True)) == {
        "type": "Sequence",
        "feature_space": encode_space(box),
        "stack": True,
    }
    assert encode_space(spaces.OneOf([box, spaces.Text(2, charset="ab")])) == {
        "type": "OneOf",
        "spaces": [encode_space(box), {"type": "Text", "min_length": 1, "max_length": 2, "charset": "ab"}],
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "data, message",
    [
        ({"type": "Graph", "node_space": None, "edge_space": None}, "a space must be a map"),
        ({"type": "Graph", "edge_space": None}, "node_space"),
        ({"type": "Sequence", "feature_space": {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}}, "stack"),
        (
            {"type": "Sequence", "feature_space": {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}, "stack": 1},
            "Sequence.stack must be a bool",
        ),
        ({"type": "OneOf", "spaces": []}, "Empty"),
        ({"type": "OneOf", "spaces": {"a": 1}}, "OneOf.spaces must be a list"),
        ({"type": "Tuple", "spaces": "ab"}, "Tuple.spaces must be a list"),
    ],
)
def test_malformed_space_maps_are_wire_errors(data, message):
    with pytest.raises(WireError, match=message):
        decode_space(data)


# -- only gymnasium's own spaces ------------------------------------------------------------------


class MyBox(spaces.Box):
    pass


class MyGraph(spaces.Graph):
    pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "space, path, advice",
    [
        (MyBox(0, 1, (2,)), "observation_space = ", "Use gymnasium.spaces.Box itself"),
        (MyGraph(spaces.Discrete(2), None), "observation_space = ", "Use gymnasium.spaces.Graph itself"),
        (
            spaces.Dict({"a": spaces.Sequence(spaces.Tuple((spaces.Discrete(2), MyBox(0, 1, (1,)))))}),
            "observation_space['a'].feature_space[1] = ",
            "Use gymnasium.spaces.Box itself",
        ),
        (
            spaces.Graph(spaces.Discrete(2), spaces.OneOf([spaces.Discrete(2), MyBox(0, 1)])),
            "observation_space.edge_space.spaces[1] = ",
            "subclass of gymnasium.spaces.Box",
        ),
        (SubclassSpaceEnv.Anything(), "observation_space = ", "custom gymnasium Space"),
    ],
    ids=["box-subclass", "graph-subclass", "nested", "in-oneof", "custom"],
)
def test_a_space_that_is_not_gymnasiums_own_is_refused_by_exact_type(space, path, advice):
    with pytest.raises(UnsupportedSpaceError) as caught:
        encode_space(space, "observation_space")
    message = str(caught.value)
    assert path in message and advice in message and "protocol 4.1" in message, message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["box", "custom", "nested"])
def test_an_embedded_env_with_such_a_space_fails_at_construction_with_that_error(kind):
    """The worker refuses the space before it registers, and the trainer raises at once (no timeout),
    with the worker's error."""
    with pytest.raises(RlayError) as caught:
        RlayVectorEnv([functools.partial(SubclassSpaceEnv, kind)] * 2, timeout=30)
    message = str(caught.value)
    assert "UnsupportedSpaceError: rlay cannot carry observation_space" in message, message
    assert "timed out" not in message, message


@pytest.mark.timeout(60)
def test_a_cli_worker_with_such_a_space_exits_before_registering():
    worker = Proc("worker", "tests.envs:SubclassSpaceEnv", "--broker", "tcp://127.0.0.1:1", "--no-restart")
    assert worker.popen.wait(30) != 0
    _, _, err = worker.stop()
    assert "a subclass of gymnasium.spaces.Box" in err, err[-2000:]


# -- graphs in the value codec (ext 5) ------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_graph_instance_is_ext_5_anywhere_in_a_value():
    graph = GraphInstance(np.array([[1.5]], np.float32), np.array([2]), np.array([[0, 0]], np.int32))
    packed = packb({"g": graph, "t": (graph, None)})
    back = unpackb(packed)
    assert_same(back, {"g": graph, "t": (graph, None)})
    # 5 after the ext header: fixext/ext 8 with type 5, payload = the value codec array of 3
    plain = GraphInstance(1, None, None)
    assert packb(plain) == bytes([0xD6, EXT_GRAPH, 0x93, 0x01, 0xC0, 0xC0])
    with pytest.raises(WireError, match="graph extension must hold an array of 3"):
        unpackb(msgpack.packb(msgpack.ExtType(EXT_GRAPH, msgpack.packb([1, 2]))))


# -- value leaves: both directions, checked ------------------------------------------------------


def samples(space: spaces.Space, count: int, seed: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def value_leaves() -> list[spaces.Space]:
    return [leaf for space in every_space() for leaf in leaf_spaces(space) if is_value_space(leaf)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("space", value_leaves(), ids=str)
def test_values_round_trip_exactly_through_a_leaf(space):
    """encode_leaves then decode_leaves (as a trainer and a worker do) gives the very values back."""
    values = samples(space, 5, seed=1)
    descriptors, frames = encode_leaves([ValueRows(values, space)], check_dtype=True)
    raw = [np.ascontiguousarray(f).tobytes() for f in frames]
    (back,) = decode_leaves(unpackb(packb(descriptors)), raw, [space], 5)
    assert_same(back, tuple(values))


def graph_space() -> spaces.Graph:
    return spaces.Graph(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(3))


def one_graph(**changes) -> GraphInstance:
    graph = {
        "nodes": np.zeros((3, 2), np.float32),
        "edges": np.array([0, 2], np.int64),
        "edge_links": np.array([[0, 1], [2, 2]], np.int32),
    }
    graph.update(changes)
    return GraphInstance(**graph)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "space, value, error, message",
    [
        (graph_space(), (np.zeros((1, 2), np.float32), None, None), TypeError, "must be a GraphInstance"),
        (graph_space(), one_graph(nodes=[[0.0, 0.0]]), TypeError, "value.nodes: expected a numpy array"),
        (graph_space(), one_graph(nodes=np.zeros((3, 3), np.float32)), ValueError, "does not fit"),
        (graph_space(), one_graph(nodes=np.zeros((3, 2), np.complex64)), TypeError, "only unsafely"),
        (graph_space(), one_graph(edges=None), ValueError, "both be None, or neither"),
        (graph_space(), one_graph(edges=np.array([0, 1, 2])), ValueError, "siblings have 3"),
        (graph_space(), one_graph(edge_links=np.zeros((2, 3), np.int64)), ValueError, "shape \\(m, 2\\)"),
        (graph_space(), one_graph(edge_links=np.zeros((2, 2), np.float32)), ValueError, "integer array"),
        (spaces.Graph(spaces.Discrete(2), None), one_graph(nodes=np.zeros(2, np.int64)), ValueError, "no edge space"),
        (spaces.Sequence(spaces.Discrete(3)), (1, True), TypeError, "must be an integer"),
        (spaces.Sequence(spaces.Discrete(3)), (1, np.float64(1)), TypeError, "float64 scalar"),
        (spaces.Sequence(spaces.Discrete(3)), np.array([1, 2]), TypeError, "expected a tuple or a list"),
        (spaces.Sequence(spaces.Text(3, charset="ab")), ("a", b"b"), TypeError, "must be a str"),
        (
            spaces.Sequence(spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Discrete(2)}), stack=True),
            {"a": np.zeros(2, np.int64), "b": np.zeros(3, np.int64)},
            ValueError,
            "siblings have 2",
        ),
        (
            spaces.Sequence(spaces.Dict({"a": spaces.Discrete(2)}), stack=True),
            {"b": np.zeros(2, np.int64)},
            ValueError,
            "do not match",
        ),
        (spaces.Sequence(spaces.Discrete(2), stack=True), np.int64(3), TypeError, "expected a numpy array"),
        (spaces.Sequence(spaces.Discrete(2), stack=True), np.array(3), ValueError, "first dimension"),
        (spaces.OneOf([spaces.Discrete(2)]), (1, 0), ValueError, "out of range"),
        (spaces.OneOf([spaces.Discrete(2)]), (True, 0), TypeError, "integer index"),
        (spaces.OneOf([spaces.Discrete(2)]), (0, 0, 0), ValueError, "expected 2 items"),
        (spaces.OneOf([spaces.Tuple((spaces.Discrete(2),))]), (0, {"a": 1}), TypeError, "expected a tuple"),
        (spaces.Sequence(spaces.Box(0, 1, (1,), np.float32)), (np.zeros(1, object),), WireError, "object"),
    ],
)
def test_a_value_that_does_not_fit_its_space_is_refused_naming_where(space, value, error, message):
    with pytest.raises(error, match=message):
        encode_value(space, value, [])


def leaf_message(space: spaces.Space, value) -> tuple[list, list[bytes]]:
    """A valid value leaf of one value: its descriptor list (decoded as a receiver sees it) and frames."""
    frames: list = []
    wire = encode_value(space, value, frames)
    return unpackb(packb([{"values": [wire]}])), [np.ascontiguousarray(f).tobytes() for f in frames]


@pytest.mark.timeout(30)
def test_malformed_value_leaves_are_wire_errors():
    space = graph_space()
    good, frames = leaf_message(space, one_graph())
    assert_same(decode_leaves(good, frames, [space], 1)[0][0], one_graph())

    def refused(descriptors, raw, message, spaces_=(space,), rows=1):
        with pytest.raises(WireError, match=message):
            decode_leaves(descriptors, raw, None if spaces_ is None else list(spaces_), rows)

    refused(good, frames[:-1], "frame is missing")
    refused(good, frames + [b"x"], "more array frames than leaf descriptors")
    refused(good, [frames[0][:-1], *frames[1:]], "holds 23 bytes")
    refused([{"values": good[0]["values"] * 2}], frames * 2, "expected 1 values, got 2")
    refused([{"values": "x"}], [], "must be a list")
    refused(good, frames, "got values for", spaces_=(spaces.Discrete(2),))
    refused(good, frames, "needs its space", spaces_=None)
    refused([{"dtype": "<i8", "shape": [1]}], [bytes(8)], "whose values travel in the body")
    refused([{"text": ["a"]}], [], "got text for")
    huge = unpackb(packb([{"values": [GraphInstance({"dtype": "|u1", "shape": [2**40, 2]}, None, None)]}]))
    refused(huge, [b"\x00"], "holds 1 bytes")
    claim = unpackb(packb([{"values": [GraphInstance({"dtype": "|O", "shape": [1, 2]}, None, None)]}]))
    refused(claim, [bytes(16)], "unsupported dtype")
    refused(unpackb(packb([{"values": [GraphInstance(7, None, None)]}])), [], "expected an array reference")
    refused(unpackb(packb([{"values": [(1, 2, 3)]}])), [], "must be a GraphInstance")


@pytest.mark.timeout(30)
def test_actions_are_checked_for_structure_not_dtype():
    """As for array leaves (protocol 3.6), a worker takes action arrays in any dtype; their shapes and
    structure are checked all the same."""
    space = spaces.Sequence(spaces.Box(0, 1, (2,), np.float32))
    values = ((np.zeros(2, np.complex64),),)
    descriptors, frames = encode_leaves([ValueRows(values, space)])
    raw = [np.ascontiguousarray(f).tobytes() for f in frames]
    (got,) = decode_leaves(unpackb(packb(descriptors)), raw, [space], 1, check_dtype=False)
    assert got[0][0].dtype == np.complex64
    with pytest.raises(WireError, match="only unsafely"):
        decode_leaves(unpackb(packb(descriptors)), raw, [space], 1)
    with pytest.raises(ValueError, match="does not fit"):
        encode_leaves([ValueRows(((np.zeros(3, np.float32),),), space)])


# -- value leaves: the limits of protocol 3.8.1 and 4.1 ---------------------------------------------


def ref(dtype: str, shape: list) -> dict:
    return {"dtype": dtype, "shape": shape}


def decoded(space: spaces.Space, wire_values: list, frames: list, check_dtype: bool = False) -> tuple:
    """One value leaf of len(wire_values) envs, through a body, as a worker (check_dtype False) or a
    trainer (True) decodes it."""
    body = decode_body(packb({"actions": [{"values": wire_values}]}))
    (leaf,) = decode_leaves(body["actions"], frames, [space], len(wire_values), check_dtype=check_dtype)
    return leaf


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "space",
    [
        spaces.Sequence(spaces.Box(-1, 1, (0,), np.float32), stack=True),
        spaces.Sequence(spaces.MultiDiscrete(np.zeros((0,), np.int64)), stack=True),
        spaces.Graph(spaces.Box(-1, 1, (0, 3), np.float32), None),
    ],
    ids=str,
)
def test_a_batch_of_a_zero_size_space_holds_at_most_max_batch_items(space):
    """Such a batch takes no bytes: a 43-byte body declared 2**40 items, and gymnasium's contains()
    (or an env iterating them) ran for ever. Refused both ways past MAX_BATCH."""
    feature = space.node_space if isinstance(space, spaces.Graph) else space.feature_space

    def wire(length: int):
        reference = ref(feature.dtype.str, [length, *feature.shape])
        return GraphInstance(reference, None, None) if isinstance(space, spaces.Graph) else reference

    for check_dtype in (False, True):
        for length in (2**40, MAX_BATCH + 1):
            with pytest.raises(WireError, match=f"a batch of {length} items, more than the {MAX_BATCH}"):
                decoded(space, [wire(length)], [b""], check_dtype)
    (value,) = decoded(space, [wire(MAX_BATCH)], [b""])
    rows = value.nodes if isinstance(space, spaces.Graph) else value
    assert rows.shape == (MAX_BATCH, *feature.shape)
    too_long = np.zeros((MAX_BATCH + 1, *feature.shape), feature.dtype)
    with pytest.raises(ValueError, match="more than the"):
        encode_value(space, GraphInstance(too_long, None, None) if isinstance(space, spaces.Graph) else too_long, [])


@pytest.mark.timeout(30)
def test_edge_links_must_name_nodes_in_actions_and_observations():
    """As gymnasium's Graph.contains checks: 0 <= link < the node count, in any integer dtype."""
    space = graph_space()
    nodes, edges = np.zeros((2, 2), np.float32).tobytes(), np.zeros(1, np.int64).tobytes()

    def wire(dtype: str) -> GraphInstance:
        return GraphInstance(ref("<f4", [2, 2]), ref("<i8", [1]), ref(dtype, [1, 2]))

    for dtype, links in [("<i8", [[5, -7]]), ("<i4", [[0, 2]]), ("|i1", [[-1, 0]]), (">u8", [[2, 0]])]:
        for check_dtype in (False, True):
            with pytest.raises(WireError, match=r"value.edge_links: a link names no node \(.* below 2, the nodes\)"):
                decoded(space, [wire(dtype)], [nodes, edges, np.array(links, dtype).tobytes()], check_dtype)
    (graph,) = decoded(space, [wire(">u8")], [nodes, edges, np.array([[1, 0]], ">u8").tobytes()])
    assert graph.edge_links.dtype == np.dtype(">u8") and graph.edge_links.tolist() == [[1, 0]]  # the sender's dtype
    with pytest.raises(ValueError, match="a link names no node"):
        encode_value(space, one_graph(edge_links=np.array([[0, 1], [3, 0]], np.int32)), [])


def nested(depth: int, inner: spaces.Space) -> spaces.Space:
    wrap = [
        spaces.Sequence,
        lambda s: spaces.Tuple((s,)),
        lambda s: spaces.OneOf((s,)),
        lambda s: spaces.Dict({"a": s}),
    ]
    for level in range(depth):
        inner = wrap[level % len(wrap)](inner)
    return inner


@pytest.mark.timeout(60)
def test_spaces_nest_at_most_max_space_depth_deep():
    """A Sequence nested 500 deep registered, then every reset raised RecursionError."""
    deepest = nested(MAX_SPACE_DEPTH, spaces.Discrete(2))
    assert decode_space(encode_space(deepest)) == deepest
    with pytest.raises(UnsupportedSpaceError, match=f"nest there more than {MAX_SPACE_DEPTH} deep"):
        encode_space(nested(MAX_SPACE_DEPTH + 1, spaces.Discrete(2)), "observation_space")
    data = encode_space(spaces.Discrete(2))
    for _ in range(500):  # a peer's map
        data = {"type": "Sequence", "feature_space": data, "stack": False}
    with pytest.raises(WireError, match=f"nested more than {MAX_SPACE_DEPTH} deep"):
        decode_space(data)
    too_deep = spaces.Discrete(2)  # a space built here, never decoded: a value walk of it is a WireError all the same
    wire: list | int = 1
    for _ in range(3000):
        too_deep, wire = spaces.Sequence(too_deep), [wire]
    with pytest.raises(WireError, match="nested too deeply"):
        decode_value(too_deep, wire, iter([]))


@pytest.mark.timeout(30)
def test_a_shape_is_an_array_never_a_tuple():
    rows = spaces.Sequence(spaces.Box(0, 1, (2,), np.float32))
    with pytest.raises(WireError, match="bad array shape"):
        decoded(rows, [[{"dtype": "<f4", "shape": (2,)}]], [bytes(8)])
    body = decode_body(packb({"actions": [{"dtype": "<f4", "shape": (1, 2)}]}))
    with pytest.raises(WireError, match="bad array shape"):
        decode_leaves(body["actions"], [bytes(8)], [spaces.Box(0, 1, (2,), np.float32)], 1)
    # a dimension beyond numpy's intp, of a zero-size array: a WireError, not numpy's ValueError
    with pytest.raises(WireError, match="bad array shape"):
        array_from_buffer("<f4", [2**70, 0], b"")
    body = decode_body(packb({"actions": [{"dtype": "<f4", "shape": [2**64 - 1, 0]}]}))
    with pytest.raises(WireError, match="bad array shape"):
        decode_leaves(body["actions"], [b""])


@pytest.mark.timeout(30)
def test_a_discrete_value_is_an_integer_in_every_form():
    """A bool and an ext 2 float are refused for a Discrete; so is a 0-d array reference of either."""
    space = spaces.Sequence(spaces.Discrete(5))
    for dtype, raw in [("|b1", b"\x01"), ("<f8", bytes(8))]:
        for check_dtype in (False, True):
            with pytest.raises(WireError, match=f"must be an integer, got a 0-d {np.dtype(dtype)} array"):
                decoded(space, [[ref(dtype, [])]], [raw], check_dtype)
    with pytest.raises(TypeError, match="must be an integer, got a 0-d bool array"):
        encode_value(space, (np.array(True),), [])
    ((three,),) = decoded(space, [[ref(">u2", [])]], [np.array(3, ">u2").tobytes()])
    assert three.shape == () and int(three) == 3


@pytest.mark.timeout(30)
def test_a_map_that_repeats_a_key_is_refused_in_a_value_leaf():
    """A dict keeps a repeated key's last value, and counted the frames of the references that were
    left: refused instead, in a Dict's value and in an array reference (C++ refuses it too)."""
    plain = functools.partial(msgpack.packb, use_bin_type=True)
    opened = plain({"actions": [{"values": [[{}]]}]})[:-1]  # (ends where the inner map starts)
    pairs = spaces.Sequence(spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Discrete(2)}))
    twice = opened + b"\x82" + plain("a") + plain(1) + plain("a") + plain(1)
    with pytest.raises(WireError, match=r"value\[0\]: a map that has a key more than once"):
        decode_leaves(decode_body(twice)["actions"], [], [pairs], 1, check_dtype=False)
    rows = spaces.Sequence(spaces.Box(0, 1, (2,), np.float32))
    ref_twice = (
        opened + b"\x83" + plain("dtype") + plain("<f4") + plain("dtype") + plain("<f4") + plain("shape") + plain([2])
    )
    with pytest.raises(WireError, match="an array reference that has a key more than once"):
        decode_leaves(decode_body(ref_twice)["actions"], [bytes(8)], [rows], 1, check_dtype=False)
    # anywhere else a repeated key is unspecified (3.3), and the reference keeps the last value
    for key in ("a", "values"):  # (a body with the key "values" is one that marks such maps)
        read = unpackb(b"\x82" + plain(key) + plain(1) + plain(key) + plain(2))
        assert read == {key: 2} and isinstance(read, dict)


@pytest.mark.timeout(30)
def test_an_env_may_return_mappings_and_tuple_subclasses_as_syncvectorenv_passes_them_on():
    """An OrderedDict for a Dict and a namedtuple for a Tuple travel as a map and an ext 3 tuple."""
    pair = collections.namedtuple("pair", "n d")
    space = spaces.Sequence(
        spaces.Tuple((spaces.Discrete(3), spaces.Dict({"b": spaces.Discrete(2), "a": spaces.Box(0, 1, (1,))})))
    )
    value = [pair(2, collections.OrderedDict(a=np.ones(1, np.float32), b=1))]
    frames: list = []
    wire = encode_value(space, value, frames)
    assert wire == [(2, {"a": {"dtype": "<f4", "shape": [1]}, "b": 1})] and type(wire[0]) is tuple
    back = decode_value(space, unpackb(packb(wire)), iter(np.ascontiguousarray(f).tobytes() for f in frames))
    assert_same(back, [(2, {"a": np.ones(1, np.float32), "b": 1})])
    with pytest.raises(WireError, match="must be a dict, got OrderedDict"):  # (what a receiver reads is the wire's own)
        decode_value(space, [(2, collections.OrderedDict(a=ref("<f4", [1]), b=1))], iter([bytes(4)]))


# -- RlayVectorEnv equals SyncVectorEnv ----------------------------------------------------------


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", list(KINDS))
def test_embedded_equals_sync(known_kinds, name, mode):
    envs = RlayVectorEnv(
        [functools.partial(SampledSpacesEnv, **KINDS[name][1]) if name != "var-spaces" else VarSpacesEnv] * NUM_ENVS,
        autoreset_mode=mode,
        envs_per_worker=2,
        timeout=30,
    )
    try:
        compare_runs(envs, name, mode)
    finally:
        envs.close()


@pytest.fixture(scope="module")
def spaces_deployment():
    """`rlay broker` plus two `rlay worker` processes of two envs per kind, each kind its own env id."""
    commands = [
        [spec, "--name", name, "-p", "2", "-k", "2", *(["--env-kwargs", json.dumps(kwargs)] if kwargs else [])]
        for name, (spec, kwargs) in KINDS.items()
    ]
    with deployment(commands, workers=2 * len(KINDS)) as (front, _):
        yield front


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", list(KINDS))
def test_remote_equals_sync(spaces_deployment, known_kinds, name, mode):
    envs = RlayVectorEnv.remote(name, NUM_ENVS, broker=spaces_deployment, autoreset_mode=mode, timeout=30)
    try:
        assert len({g.worker for g in envs._lease.groups}) == 2, "the lease must span both worker processes"
        compare_runs(envs, name, mode)
    finally:
        envs.close()
    assert all(w["leased"] == 0 for w in broker_status(spaces_deployment)["workers"])


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "rows"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_large_box_beside_text_and_a_graph(known_kinds, leaf_paths, mode, shared_memory):
    """A Box of 64 KiB per env goes into shared memory or row by row, which splits each observation
    into its leaves env by env: the Text and the Graph beside it arrive exactly too."""
    from tests.envs import ImageTextGraphEnv

    envs = RlayVectorEnv(
        [ImageTextGraphEnv] * NUM_ENVS, envs_per_worker=2, autoreset_mode=mode, shared_memory=shared_memory, timeout=30
    )
    try:
        compare_runs(envs, "image-text-graph", mode)
    finally:
        envs.close()
    path = "shm" if shared_memory else "rows"
    assert leaf_paths and all(p[1] == path for p in leaf_paths), leaf_paths[:3]  # (leaf 1 is the image)


@pytest.fixture(scope="module")
def push_broker():
    """A broker alone (the tests start their own workers); (front, back)."""
    with deployment([], workers=0) as addresses:
        yield addresses


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("name", ["var-spaces", "sampled-nested"])
def test_a_push_game_equals_sync(push_broker, known_kinds, name, mode):
    """A push worker (workers/examples/tick_game.py, 3 agents) replies through the same encoding."""
    front, back = push_broker
    env_id = f"push-{name}-{mode.value}"
    spec, kwargs = KINDS[name]
    game = Proc(
        spec,
        *("--broker", back, "--name", env_id, "--agents", "3", "--every", "3", "--tick-hz", "2000"),
        *(["--env-kwargs", json.dumps(kwargs)] if kwargs else []),
        command=GAME,
    )
    try:
        wait_for(
            lambda: any(w["env_id"] == env_id for w in broker_status(front)["workers"]), 60, "the game to register"
        )
        envs = RlayVectorEnv.remote(env_id, 3, broker=front, autoreset_mode=mode, timeout=30)
        try:
            compare_runs(envs, name, mode, num_envs=3)
        finally:
            envs.close()
    finally:
        code, _, err = game.stop()
        assert code == 0, err


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("copy", [True, False])
def test_asyncvectorenv_without_shared_memory_agrees_and_rlay_needs_no_such_switch(copy):
    """gymnasium's AsyncVectorEnv carries these spaces only with shared_memory=False; RlayVectorEnv's
    shared memory (default on) keeps them out of it, and the two agree."""
    fns = [functools.partial(SampledSpacesEnv, "nested")] * 3
    with pytest.raises(TypeError, match="disable `shared_memory`"):
        AsyncVectorEnv(fns[:1], shared_memory=True)
    reference = AsyncVectorEnv(fns, shared_memory=False, copy=copy, autoreset_mode=AutoresetMode.SAME_STEP)
    envs = RlayVectorEnv(fns, copy=copy, autoreset_mode=AutoresetMode.SAME_STEP, timeout=30)
    try:
        assert_same(envs.reset(seed=2), reference.reset(seed=2), "reset")
        actions = reference.action_space
        actions.seed(2)
        for t in range(25):
            action = actions.sample()
            assert_same(envs.step(action), reference.step(action), f"step {t}")
    finally:
        envs.close()
        reference.close()


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda m: m.value)
def test_first_ready_stepping_carries_them_too(mode):
    """send/recv: each env's result equals the same env stepped alone in a SyncVectorEnv."""
    envs = RlayVectorEnv([VarSpacesEnv] * 4, envs_per_worker=1, autoreset_mode=mode, timeout=30)
    refs = [SyncVectorEnv([VarSpacesEnv], autoreset_mode=mode) for _ in range(4)]
    space = refs[0].single_action_space
    space.seed(4)
    obs_space = refs[0].single_observation_space

    def rows(obs) -> list:  # a batch's observations env by env
        return list(iterate(batch_space(obs_space, len(obs["t"])), obs))

    try:
        envs.async_reset(seed=5)
        obs, *_, infos = envs.recv()
        for k, env_id in enumerate(infos["env_id"].tolist()):
            assert_same(rows(obs)[k], rows(refs[env_id].reset(seed=5 + env_id)[0])[0], f"reset of env {env_id}")
        for t in range(20):
            ids = [t % 4, (t + 1) % 4]
            actions = [space.sample() for _ in ids]
            envs.send({key: tuple(a[key] for a in actions) for key in actions[0]}, ids)
            obs, rewards, terminations, truncations, infos = envs.recv()
            for k, env_id in enumerate(infos["env_id"].tolist()):
                action = actions[ids.index(env_id)]
                expected = refs[env_id].step({key: (value,) for key, value in action.items()})
                assert_same(rows(obs)[k], rows(expected[0])[0], f"step {t} env {env_id}")
                assert_same(
                    (rewards[k : k + 1], terminations[k : k + 1], truncations[k : k + 1]), expected[1:4], f"step {t}"
                )
                if "final_obs" in expected[4]:
                    assert_same(infos["final_obs"][k], expected[4]["final_obs"][0], f"final_obs at {t}")
                if "action" in expected[4]:  # (not in a NextStep autoreset's result)
                    assert_same(infos["action"][k], expected[4]["action"][0], f"the action echoed at {t}")
                else:
                    assert "_action" not in infos or not infos["_action"][k]
    finally:
        envs.close()
        for ref in refs:
            ref.close()


@pytest.mark.timeout(60)
def test_an_observation_that_does_not_fit_is_an_env_error_naming_the_env():
    envs = RlayVectorEnv([BadGraphEnv, functools.partial(BadGraphEnv, True)], envs_per_worker=2, timeout=30)
    try:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError) as caught:
            envs.step(np.array([0, 0]))
        assert [d["row"] for d in caught.value.details] == [1]
        assert "value.nodes: expected a numpy array, got list" in str(caught.value), str(caught.value)
        obs, _ = envs.reset(seed=0)  # and the worker serves on
        assert len(obs) == 2 and type(obs[0]) is GraphInstance
    finally:
        envs.close()


@pytest.mark.timeout(60)
def test_a_malformed_action_is_refused_before_it_is_sent():
    envs = RlayVectorEnv([functools.partial(SampledSpacesEnv, "graph")] * 2, timeout=30)
    try:
        envs.reset(seed=0)
        bad = (GraphInstance(np.zeros(2, np.int64), None, None), GraphInstance([1, 2], None, None))
        with pytest.raises(TypeError, match=r"value.nodes: expected a numpy array, got list"):
            envs.step(bad)
        good = (GraphInstance(np.zeros(2, np.int64), None, None),) * 2
        obs, *_ = envs.step(good)  # nothing was left pending
        assert len(obs) == 2
    finally:
        envs.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SAMPLED_KINDS)
def test_rlay_env_steps_graph_sequence_and_oneof_actions_as_the_env_itself(kind):
    """RlayEnv (one env) batches a Graph, Sequence or OneOf action as a tuple of one, and gives back
    what the env itself gives, step for step."""
    from rlay import RlayEnv

    env, local = RlayEnv(functools.partial(SampledSpacesEnv, kind)), SampledSpacesEnv(kind)
    try:
        assert_same(env.reset(seed=3), local.reset(seed=3), "reset")
        env.action_space.seed(3)
        for t in range(8):
            action = env.action_space.sample()
            got, expected = env.step(action), local.step(action)
            assert_same(got, expected, f"step {t}")
            if expected[2] or expected[3]:
                assert_same(env.reset(seed=t), local.reset(seed=t), f"reset after step {t}")
    finally:
        env.close()


@pytest.mark.parametrize(
    "claim",
    [
        {"type": "MultiBinary", "n": [65536, 65536]},  # 31 bytes that made a trainer allocate 16 GiB
        {"type": "MultiBinary", "n": 2**40},
        {"type": "MultiBinary", "n": [2**40, 2**40]},  # (numpy: "array is too big", a ValueError)
        {"type": "MultiBinary", "n": [-2]},
    ],
)
def test_a_space_from_the_wire_that_claims_a_huge_shape_is_refused_before_anything_is_made(claim):
    from rlay.spaces import decode_space
    from rlay.values import WireError

    with pytest.raises(WireError, match="MultiBinary.n"):
        decode_space(claim)


def test_a_box_from_the_wire_that_claims_a_huge_shape_is_refused():
    from rlay.spaces import decode_space, encode_space
    from rlay.values import WireError

    box = encode_space(spaces.Box(0.0, 1.0, (2,), np.float32))
    with pytest.raises(WireError, match="Box.shape"):
        decode_space({**box, "shape": [2**20, 2**20]})
