"""Requests no real broker sends: what a worker must refuse with an error, and keep serving.

Each case is a message the raw broker of a conformance run sends to the worker under test, with
the error code(s) the protocol allows in answer (5.13, 3.7) and the ``req`` the error must echo
(nil when the header cannot be read). The bodies are written byte by byte where the value codec
would refuse to write them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from rlay import protocol as P
from rlay.values import EXT_BIGINT, EXT_GRAPH, EXT_NDARRAY, EXT_TUPLE, MAX_TUPLE_DEPTH, packb
from rlay.wire import encode_leaves, header

__all__ = ["Case", "malformed", "step_frames"]

BAD, ENV, VERSION, UNKNOWN = P.E_BAD_MESSAGE, P.E_ENV, P.E_VERSION, P.E_UNKNOWN_TYPE


@dataclass
class Case:
    name: str
    frames: list[bytes]
    codes: tuple[str, ...]
    req: Any


def step_frames(k: int, actions: np.ndarray, req: Any, mode: str = "NextStep") -> list[bytes]:
    """A well-formed step of envs 0..k-1 (actions: one int per env)."""
    descriptors, frames = encode_leaves([actions])
    return [
        header(P.STEP, req=req, envs=list(range(k))),
        packb({"autoreset": mode, "actions": descriptors}),
        *[np.ascontiguousarray(f).tobytes() for f in frames],
    ]


def _plain(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _nested_tuples(depth: int) -> msgpack.ExtType:
    value: Any = 1
    for _ in range(depth):
        value = msgpack.ExtType(EXT_TUPLE, _plain([value]))
    return value


def malformed(k: int, mode: str) -> list[Case]:
    """Every case, for a worker with ``k`` envs in ``mode`` ("command" or "push")."""
    envs = list(range(k))
    reqs = iter(range(100, 10_000))
    cases: list[Case] = []

    def case(name: str, frames: list[bytes], codes: tuple[str, ...] = (BAD,), req: Any = "next") -> None:
        cases.append(Case(name, frames, codes, req))

    def reset(name: str, body: bytes | None = None, env_list: Any = envs, **fields: Any) -> None:
        req = next(reqs)
        head = header(P.RESET, req=req, envs=env_list, **fields) if env_list is not None else header(P.RESET, req=req)
        cases.append(Case(name, [head] + ([] if body is None else [body]), (BAD,), req))

    def options(name: str, value: Any) -> None:
        reset(name, _plain({"seeds": [None] * k, "options": value}))

    def step(name: str, body: Any, frames: list[bytes]) -> None:
        req = next(reqs)
        body_bytes = body if isinstance(body, bytes) else _plain(body)
        cases.append(Case(name, [header(P.STEP, req=req, envs=envs), body_bytes, *frames], (BAD,), req))

    good_reset = _plain({"seeds": [None] * k, "options": None})
    # Headers (protocol 3.2, 8.1): nothing readable, so no req to echo.
    case("a header that is not msgpack", [b"\xc1"], req=None)
    case("a header that is a msgpack array", [_plain([1, 2])], req=None)
    case("a header with trailing bytes", [header(P.RESET, req=1, envs=envs) + b"\x00", good_reset], req=None)
    case("a header of protocol version 2", [_plain({"v": 2, "type": P.RESET, "req": 1})], (VERSION,), req=None)
    case("a header whose v is true", [_plain({"v": True, "type": P.RESET, "req": 1})], (VERSION,), req=None)
    case("a header with no v", [_plain({"type": P.RESET, "req": 1})], (VERSION,), req=None)
    case("a header with a bin key nd", [_plain({b"nd": True, "v": 1, "type": P.RESET})], req=None)
    case("a header with no str type", [_plain({"v": 1, "type": 7, "req": 1})], req=None)
    req = next(reqs)
    case("an unknown message type", [header("frobnicate", req=req)], (UNKNOWN,), req=req)
    # envs (5.8 leg 2).
    reset("a reset without envs", good_reset, env_list=None)
    reset("an env index out of range", _plain({"seeds": [None], "options": None}), env_list=[k])
    reset("a negative env index", _plain({"seeds": [None], "options": None}), env_list=[-1])
    reset("a repeated env index", _plain({"seeds": [None, None], "options": None}), env_list=[0, 0])
    reset("an empty env list", _plain({"seeds": [], "options": None}), env_list=[])
    reset("envs that is not a list", good_reset, env_list=0)
    reset("an env index that is a bool", _plain({"seeds": [None], "options": None}), env_list=[True])
    reset("an env index that is a float", _plain({"seeds": [None], "options": None}), env_list=[0.0])
    reset("100,000 env indices", _plain({"seeds": [None] * 100_000, "options": None}), env_list=list(range(100_000)))
    # Bodies (3.7).
    reset("a reset with no body frame", None)
    reset("a body that is not msgpack", b"\xc1")
    reset("a body with trailing bytes", good_reset + b"\xc0")
    reset("a body that is not a map", _plain([None] * k))
    reset("seeds of the wrong length", _plain({"seeds": [None] * (k + 1), "options": None}))
    reset("seeds that is not a list", _plain({"seeds": 5, "options": None}))
    reset("a seed that is a str", _plain({"seeds": ["1"] * k, "options": None}))
    reset("a seed that is a float", _plain({"seeds": [1.0] * k, "options": None}))
    reset("a seed that is a bool", _plain({"seeds": [True] * k, "options": None}))
    options(
        "a msgpack-numpy array map",
        {b"nd": True, b"type": b"<i8", b"kind": b"", b"shape": [1], b"data": b"\x80\x04K\x01."},
    )
    reset(
        "a msgpack timestamp (fixext 4, ext -1)",
        b"\x82\xa5seeds" + _plain([None] * k) + b"\xa7options\xd6\xff" + b"\x00" * 4,
    )
    reset(
        "a msgpack timestamp (ext 8, ext -1)",
        b"\x82\xa5seeds" + _plain([None] * k) + b"\xa7options\xc7\x0c\xff" + b"\x00" * 12,
    )
    options("an unknown extension type (9)", msgpack.ExtType(9, b"x"))
    reset("a str that is not UTF-8", b"\x82\xa5seeds" + _plain([None] * k) + b"\xa7options\xa2\xff\xfe")
    options(f"tuples nested {MAX_TUPLE_DEPTH + 1} deep", _nested_tuples(MAX_TUPLE_DEPTH + 1))
    options("an ext 1 array whose data is too short", msgpack.ExtType(EXT_NDARRAY, _plain(["<f4", [2], b"\x00" * 4])))
    options("an ext 1 array of dtype |O", msgpack.ExtType(EXT_NDARRAY, _plain(["|O", [1], b"\x00" * 8])))
    options("an ext 1 array of dtype =f4", msgpack.ExtType(EXT_NDARRAY, _plain(["=f4", [1], b"\x00" * 4])))
    options("an ext 1 array of 33 dimensions", msgpack.ExtType(EXT_NDARRAY, _plain(["|u1", [1] * 33, b"\x00"])))
    options(
        "a <U1 array holding U+110000",
        msgpack.ExtType(EXT_NDARRAY, _plain(["<U1", [1], (0x110000).to_bytes(4, "little")])),
    )
    options("an ext 1 array claiming 2**40 items", msgpack.ExtType(EXT_NDARRAY, _plain(["|u1", [2**40], b"\x00"])))
    reset(
        "an array32 claiming 2**32 - 1 items",
        b"\x82\xa5seeds" + _plain([None] * k) + b"\xa7options\xdd\xff\xff\xff\xff",
    )
    options("an empty ext 4 integer", msgpack.ExtType(EXT_BIGINT, b""))
    options("an ext 4 integer of 1025 bytes", msgpack.ExtType(EXT_BIGINT, b"\x01" * 1025))
    options("an ext 5 graph of 2 items", msgpack.ExtType(EXT_GRAPH, _plain([1, None])))
    options("an ext 5 graph that is not an array", msgpack.ExtType(EXT_GRAPH, _plain({"nodes": 1})))
    # Steps (5.10, 3.8).
    actions = np.zeros(k, np.int64)
    frame = actions.tobytes()
    leaf = {"dtype": "<i8", "shape": [k]}
    step("an unknown autoreset mode", {"autoreset": "Later", "actions": [leaf]}, [frame])
    step("no autoreset mode", {"actions": [leaf]}, [frame])
    step("actions that is not a list", {"autoreset": "NextStep", "actions": leaf}, [frame])
    step("no action leaves", {"autoreset": "NextStep", "actions": []}, [])
    step(
        "an action leaf with a row too many",
        {"autoreset": "NextStep", "actions": [{"dtype": "<i8", "shape": [k + 1]}]},
        [np.zeros(k + 1, np.int64).tobytes()],
    )
    step(
        "an action leaf of the wrong row shape",
        {"autoreset": "NextStep", "actions": [{"dtype": "<i8", "shape": [k, 2]}]},
        [np.zeros((k, 2), np.int64).tobytes()],
    )
    step("a missing action frame", {"autoreset": "NextStep", "actions": [leaf]}, [])
    step("an extra frame after the actions", {"autoreset": "NextStep", "actions": [leaf]}, [frame, frame])
    step(
        "an action leaf claiming 2**40 bytes a row",
        {"autoreset": "NextStep", "actions": [{"dtype": "|u1", "shape": [k, 2**40]}]},
        [frame],
    )
    step("an action frame a byte short", {"autoreset": "NextStep", "actions": [leaf]}, [frame[:-1]])
    step(
        "an action leaf whose shape is an ext 3 tuple",
        {"autoreset": "NextStep", "actions": [{"dtype": "<i8", "shape": msgpack.ExtType(EXT_TUPLE, _plain([k]))}]},
        [frame],
    )
    step("an action dtype |O", {"autoreset": "NextStep", "actions": [{"dtype": "|O", "shape": [k]}]}, [frame])
    step(
        "an action dtype |f8 (no byte order)",
        {"autoreset": "NextStep", "actions": [{"dtype": "|f8", "shape": [k]}]},
        [frame],
    )
    step(
        "a row-framed action leaf missing a row",
        {"autoreset": "NextStep", "actions": [{"dtype": "<i8", "shape": [k], "rows": True}]},
        [np.zeros((), np.int64).tobytes()] * (k - 1),
    )
    # Value leaves (3.8.1): the conformance env's action is a Discrete, an array leaf.
    step("a value leaf for an array leaf", {"autoreset": "NextStep", "actions": [{"values": list(range(k))}]}, [])
    step(
        "a value leaf of array references for an array leaf",
        {"autoreset": "NextStep", "actions": [{"values": [{"dtype": "<i8", "shape": []}] * k}]},
        [np.zeros((), np.int64).tobytes()] * k,
    )
    step("a value leaf whose values are not a list", {"autoreset": "NextStep", "actions": [{"values": 0}]}, [])
    # ... and values that 3.8.1 refuses whatever the space: a worker refuses each at once, and
    # must not walk, allocate for or hang on what they claim before it has refused them.
    step(
        "a value leaf claiming 2**40 rows of no bytes",
        {"autoreset": "NextStep", "actions": [{"values": [{"dtype": "<f4", "shape": [2**40, 0]}] * k}]},
        [b""] * k,
    )
    links = msgpack.ExtType(
        EXT_GRAPH,
        _plain([{"dtype": "<f4", "shape": [1, 1]}, {"dtype": "<i8", "shape": [1]}, {"dtype": "<i8", "shape": [1, 2]}]),
    )
    step(
        "a value leaf of graphs whose edge links name no node",
        {"autoreset": "NextStep", "actions": [{"values": [links] * k}]},
        [bytes(4), bytes(8), np.array([[5, -7]], "<i8").tobytes()] * k,
    )
    step(
        "a value leaf of 0-d bool arrays",
        {"autoreset": "NextStep", "actions": [{"values": [{"dtype": "|b1", "shape": []}] * k}]},
        [b"\x01"] * k,
    )
    twice = b"\x82" + _plain("a") + _plain(1) + _plain("a") + _plain(1)  # a map with the key "a" twice
    step(
        "a value leaf of maps that repeat a key",
        _plain({"autoreset": "NextStep", "actions": [{"values": [0] * k}]})[:-k] + twice * k,
        [],
    )
    # call and set_attr (5.11, 5.12): a native or push worker may refuse every call (NotImplementedError).
    either = (BAD, ENV) if mode == P.COMMAND_MODE else (ENV,)
    for name, kind, body in (
        ("a call of the reserved name reset", P.CALL, {"name": "reset", "args": [], "kwargs": {}}),
        ("a call with no name", P.CALL, {"args": []}),
        ("a set_attr with values of the wrong length", P.SET_ATTR, {"name": "x", "values": []}),
    ):
        req = next(reqs)
        case(name, [header(kind, req=req, envs=envs), _plain(body)], either, req=req)
    return cases
