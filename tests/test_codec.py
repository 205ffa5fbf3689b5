"""The value codec and the space codec: exact round trips, and nothing from the wire is unpickled."""

from __future__ import annotations

import pickle

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from gymnasium import spaces

from rlay.spaces import UnsupportedSpaceError, decode_space, encode_space, flatten, leaf_spaces, unflatten
from rlay.values import WireError, packb, unpackb
from tests.conftest import assert_same


class _CreatesFile:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_payload(marker) -> bytes:
    """msgpack-numpy's encoding of an object array, carrying a pickle that creates ``marker``."""
    return msgpack.packb(
        {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": pickle.dumps(_CreatesFile(str(marker)))},
        use_bin_type=True,
    )


def test_payload_is_live_under_msgpack_numpy(tmp_path):
    marker = tmp_path / "owned"
    msgpack_numpy.unpackb(pickle_payload(marker))  # what rlay must never do
    assert marker.exists()


def test_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "owned"
    for payload in (pickle_payload(marker), packb({"info": msgpack.ExtType(99, b"x")})):
        with pytest.raises(WireError):
            unpackb(payload)
    nested = msgpack.packb({"info": [msgpack.unpackb(pickle_payload(marker), raw=True)]}, use_bin_type=True)
    with pytest.raises(WireError, match="msgpack-numpy"):
        unpackb(nested)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        -(2**63),
        2**64 - 1,
        1.5,
        "text",
        b"\x00bytes",
        [1, "a"],
        (1, (2.0, "x")),
        {"k": {"n": [None]}},
        {1: "int key", (1, 2): "tuple key"},
        2**64,
        -(2**127) + 3,
        np.float32(1.25),
        np.int8(-3),
        np.bool_(True),
        np.uint64(2**64 - 1),
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.zeros((0, 3), np.float64),
        np.array(["ab", "c"]),
        np.array([b"x", b"yz"]),
        np.array([1 + 2j], np.complex64),
        np.asfortranarray(np.ones((2, 3))),
        np.arange(10)[::3],
    ],
    ids=repr,
)
def test_values_round_trip_with_their_types(value):
    assert_same(unpackb(packb(value)), value)


@pytest.mark.parametrize("bad", [np.array([object()]), np.zeros(2, dtype=[("a", "i4")]), {"x": object()}, {1j}])
def test_non_data_is_refused_on_the_sending_side(bad):
    with pytest.raises(WireError, match="cannot cross the wire|cannot encode"):
        packb(bad)


def ext_array(dtype, shape, data) -> bytes:
    return msgpack.packb(msgpack.ExtType(1, msgpack.packb([dtype, shape, data])))


@pytest.mark.parametrize(
    "payload, reason",
    [
        (ext_array("|O", [1], b"\x00" * 8), "unsupported dtype"),
        (ext_array("<V8", [1], b"\x00" * 8), "unsupported dtype"),
        (ext_array("float32", [1], b"\x00" * 4), "unsupported dtype"),
        (ext_array("<i3", [1], b"\x00" * 3), "numpy does not know it"),
        (ext_array("=f4", [1], b"\x00" * 4), "unsupported dtype"),
        (ext_array("|f4", [1], b"\x00" * 4), "needs a byte order"),
        (ext_array("<f4", [10**9, 10**9], b"\x00" * 4), "need"),  # huge declared size, no allocation
        (ext_array("<f4", [-1], b""), "non-negative"),
        (ext_array("<f4", [2], b"\x00" * 7), "need"),
        (msgpack.packb(msgpack.ExtType(2, msgpack.packb(["<f8", b"\x00"]))), "need"),
        (packb({"a": [1, 2, 3]})[:-2], "malformed"),
        (b"\xc1", "malformed"),
        # ext -1, msgpack's timestamp (decoded by msgpack itself, not by the codec's hook), in each encoding
        (msgpack.packb({"t": msgpack.Timestamp(5)}), "extension type -1"),
        (msgpack.packb([1, msgpack.Timestamp(5, 7)]), "extension type -1"),
        (msgpack.packb(msgpack.ExtType(3, msgpack.packb([msgpack.Timestamp(2**40, 1)]))), "extension type -1"),
        # the same payloads in the other ext formats, which other encoders may pick
        (b"\xc7\x04\xff" + b"\x00\x00\x00\x05", "extension type -1"),  # ext 8
        (b"\xc8\x00\x08\xff" + b"\x00" * 8, "extension type -1"),  # ext 16
        (b"\x91\xc9\x00\x00\x00\x0c\xff" + b"\x00" * 12, "extension type -1"),  # ext 32, in an array
        # a timestamp inside tuples nested 3 deep (the outermost decode looks into them)
        (
            msgpack.packb(
                msgpack.ExtType(
                    3,
                    msgpack.packb(
                        [msgpack.ExtType(3, msgpack.packb([msgpack.ExtType(3, msgpack.packb([msgpack.Timestamp(5)]))]))]
                    ),
                )
            ),
            "extension type -1",
        ),
        (
            ext_array("<U1", [1], b"\xff\xff\xff\xff"),
            "beyond U\\+10FFFF",
        ),  # numpy would keep it, and fail on reading it
        (msgpack.packb(msgpack.ExtType(2, msgpack.packb([">U1", b"\x00\x11\x00\x00"]))), "beyond U\\+10FFFF"),
    ],
)
def test_malformed_values_get_a_clear_error(payload, reason):
    with pytest.raises(WireError, match=reason):
        unpackb(payload)


SPACES = [
    spaces.Box(-1.0, 1.0, (3,), np.float32),
    spaces.Box(np.array([0.0, -np.inf]), np.array([1.0, np.inf]), dtype=np.float64),
    spaces.Box(0, 255, (84, 84, 3), np.uint8),
    spaces.Box(0, 1, (2,), np.bool_),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-1),
    spaces.Discrete(4, dtype=np.int32),
    spaces.MultiDiscrete([[2, 3], [4, 5]]),
    spaces.MultiDiscrete([3, 3], dtype=np.int32, start=[1, -1]),
    spaces.MultiBinary(4),
    spaces.MultiBinary((2, 3)),
    spaces.Text(7, min_length=2, charset="abcé"),
    spaces.Text(4, charset="zyxw"),  # the order of the characters decides what sample() draws
    spaces.Box(0.0, 1.0, (), np.float32),  # 0-d spaces
    spaces.MultiDiscrete(np.array(5)),
    spaces.Tuple((spaces.Discrete(3), spaces.Box(0, 1, (2,)))),
    spaces.Dict({"z": spaces.Discrete(2), "a": spaces.Dict({"deep": spaces.Tuple((spaces.MultiBinary(2),))})}),
]


@pytest.mark.parametrize("space", SPACES, ids=str)
def test_spaces_round_trip_exactly_through_msgpack(space):
    wire = msgpack.packb(encode_space(space), use_bin_type=True)
    decoded = decode_space(msgpack.unpackb(wire, raw=False))
    assert decoded == space and str(decoded) == str(space) and decoded.shape == space.shape
    decoded.seed(3)
    space.seed(3)
    assert_same(decoded.sample(), space.sample())  # Text: the same characters in the same order
    batch = [space.sample() for _ in range(3)]
    from gymnasium.vector.utils import concatenate, create_empty_array

    batched = concatenate(space, batch, create_empty_array(space, 3))
    assert_same(unflatten(space, flatten(space, batched)), batched)
    assert len(flatten(space, batched)) == len(leaf_spaces(space))


def test_unsupported_space_names_itself():
    class MySpace(spaces.Space):
        pass

    with pytest.raises(UnsupportedSpaceError, match="custom gymnasium Space.*MySpace.*own spaces \\(Box"):
        encode_space(MySpace())
    with pytest.raises(WireError, match="unknown space type 'Frobnicate'"):
        decode_space({"type": "Frobnicate"})


def test_int_subclasses_travel_as_ints():
    import enum

    class Color(enum.IntEnum):
        RED = 3

    assert_same(unpackb(packb({"c": Color.RED})), {"c": 3})


@pytest.mark.parametrize("key_type", ["bin8", "bin16", "bin32"])
def test_msgpack_numpy_maps_are_refused_whatever_the_key_encoding(key_type, tmp_path):
    # (msgpack-numpy only unpickles maps whose key b"nd" is bytes; a str "nd" key is plain data.)
    import struct

    marker = tmp_path / "owned"
    prefix = {"bin8": b"\xc4\x02", "bin16": b"\xc5" + struct.pack(">H", 2), "bin32": b"\xc6" + struct.pack(">I", 2)}
    rest = msgpack.packb(
        {b"type": "|O", b"kind": b"O", b"shape": [1], b"data": pickle.dumps(_CreatesFile(str(marker)))},
        use_bin_type=True,
    )
    payload = bytes([0x80 | 5]) + prefix[key_type] + b"nd" + b"\xc3" + rest[1:]  # {nd: True, ...4 more}
    with pytest.raises(WireError, match="msgpack-numpy"):
        unpackb(payload)
    assert not marker.exists()


def test_tuples_nest_at_most_max_tuple_depth_deep_on_both_sides():
    """Each tuple level is a nested msgpack call on either side: the sender refuses what every
    receiver would, with the same reason, and the receiver takes what the sender may send."""
    from rlay.values import MAX_TUPLE_DEPTH

    deepest = 1
    for _ in range(MAX_TUPLE_DEPTH):
        deepest = (deepest,)
    assert unpackb(packb({"t": deepest})) == {"t": deepest}
    with pytest.raises(WireError, match=f"tuples nested more than {MAX_TUPLE_DEPTH} deep"):
        packb({"t": (deepest,)})
    too_deep = msgpack.packb([1])
    for _ in range(MAX_TUPLE_DEPTH + 1):
        too_deep = msgpack.packb([msgpack.ExtType(3, too_deep)])
    with pytest.raises(WireError, match=f"tuples nested more than {MAX_TUPLE_DEPTH} deep"):
        unpackb(too_deep)
    assert unpackb(packb((1, 2))) == (1, 2)  # (the depth is back to 0 after each refusal)
