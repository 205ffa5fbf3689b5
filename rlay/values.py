"""The value codec: msgpack for data that crosses the wire, decoded without pickle.

Headers, bodies, infos, reset options and call/set_attr values are
msgpack with five extension types, so that numpy arrays, numpy scalars,
tuples and gymnasium's graphs come back as what was sent (gymnasium batches
infos by their type):

=====  =============  =============================================
 ext    Python         payload (itself msgpack)
=====  =============  =============================================
  1     np.ndarray     ``[dtype, shape, data]`` C-order raw bytes
  2     np scalar      ``[dtype, data]`` one item's raw bytes
  3     tuple          array of values
  4     int            big-endian two's complement bytes (ints outside 64 bits)
  5     GraphInstance  array of 3 values: nodes, edges, edge_links
=====  =============  =============================================

``dtype`` is numpy's ``dtype.str`` (``"<f4"``, ``"|u1"``, ``"|b1"``...): byte
order ``<`` or ``>``, or ``|`` for one-byte items and bytes strings. Only
fixed-size numeric, bool, bytes and unicode dtypes are accepted; object and
structured dtypes are refused on both sides, because their only general
encoding is pickle. This module never calls pickle, eval or import on what it
decodes. ``msgpack_numpy.unpackb`` does (``pickle.loads`` on object arrays), so
its array maps are refused with an error instead of being decoded.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
from gymnasium.spaces import GraphInstance

__all__ = [
    "WireError",
    "packb",
    "unpackb",
    "parse_dtype",
    "array_from_buffer",
    "EXT_NDARRAY",
    "EXT_SCALAR",
    "EXT_TUPLE",
    "EXT_BIGINT",
    "EXT_GRAPH",
    "VersionError",
    "RepeatedKeys",
]

EXT_NDARRAY = 1
EXT_SCALAR = 2
EXT_TUPLE = 3
EXT_BIGINT = 4
EXT_GRAPH = 5
_MAX_BIGINT_BYTES = 1024
# Each tuple (ext 3) and graph (ext 5) is encoded and decoded by a nested msgpack call, ~43 KB of C stack each:
# without a bound, ~200 levels overflow the stack and kill the process. 16 levels fit a thread
# of 1 MB. Arrays and maps nest within one call, which refuses more than 1024 levels.
MAX_TUPLE_DEPTH = 16
_nesting = threading.local()


@contextlib.contextmanager
def _one_tuple_deeper():
    depth = getattr(_nesting, "tuples", 0)
    if depth >= MAX_TUPLE_DEPTH:
        raise WireError(f"tuples nested more than {MAX_TUPLE_DEPTH} deep (graphs count as tuples)")
    try:
        _nesting.tuples = depth + 1
        yield
    finally:
        _nesting.tuples = depth


# byte order, kind, item size: "<f4", "|u1", "|b1", "<U7", "|S3"
_DTYPE_RE = re.compile(r"^[<>|][biufcSU][0-9]{1,4}$")
_MAX_NDIM = 32


class WireError(ValueError):
    """A message or value that cannot be (or must not be) encoded or decoded."""


class VersionError(WireError):
    """A header names a protocol version this side does not speak (``version``: what it named)."""

    def __init__(self, message: str, version: Any = None):
        super().__init__(message)
        self.version = version


def parse_dtype(text: Any) -> np.dtype:
    """Parse a dtype string from the wire, accepting only plain data dtypes."""
    if type(text) is str:
        dtype = _DTYPES.get(text)
        if dtype is not None:
            return dtype
    dtype = _parse_dtype(text)
    if len(_DTYPES) < 256:  # a peer cannot grow the cache without bound
        _DTYPES[text] = dtype
    return dtype


_DTYPES: dict[str, np.dtype] = {}


def _parse_dtype(text: Any) -> np.dtype:
    if not isinstance(text, str) or not _DTYPE_RE.match(text):
        raise WireError(
            f"unsupported dtype {text!r}: expected a numpy dtype string such as '<f4', "
            "'|u1' or '|b1' (object and structured dtypes are never accepted)"
        )
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise WireError(f"unsupported dtype {text!r}: numpy does not know it") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise WireError(f"unsupported dtype {text!r}")
    if text[0] == "|" and dtype.itemsize > 1 and dtype.kind != "S":
        raise WireError(f"dtype {text!r} needs a byte order, '<' or '>'")
    return dtype


def check_shape(shape: Any) -> tuple[int, ...]:
    # A msgpack array only: an ext 3 tuple is another value (protocol 3.4, 3.8.1), which peers refuse.
    if type(shape) is not list or len(shape) > _MAX_NDIM:
        raise WireError(f"bad array shape {shape!r}: expected a list of at most {_MAX_NDIM} ints")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise WireError(f"bad array shape {shape!r}: dimensions must be non-negative ints")
    return tuple(shape)


def array_from_buffer(dtype: Any, shape: Any, buffer: Any) -> np.ndarray:
    """A read-only array view of ``buffer``, after checking that its size matches exactly."""
    dt = parse_dtype(dtype)
    shp = check_shape(shape)
    expected = dt.itemsize * math.prod(shp)
    size = memoryview(buffer).nbytes
    if size != expected:
        raise WireError(f"array frame holds {size} bytes but dtype {dtype} and shape {list(shp)} need {expected}")
    if dt.kind == "U":  # numpy would keep code points past U+10FFFF, and fail on reading them
        codes = np.frombuffer(buffer, dtype=np.dtype("u4").newbyteorder(dt.byteorder))
        if codes.size and int(codes.max()) > 0x10FFFF:
            raise WireError(f"a {dtype} array holds a code point beyond U+10FFFF")
    try:
        return np.frombuffer(buffer, dtype=dt).reshape(shp)
    except (ValueError, OverflowError) as exc:  # a zero-size array with a dimension beyond numpy's intp
        raise WireError(f"bad array shape {list(shp)}: {exc}") from None


def array_dtype_str(array: np.ndarray) -> str:
    """The dtype string for ``array``, refusing dtypes that only pickle could carry."""
    dtype = array.dtype
    if dtype.hasobject or dtype.kind not in "biufcSU":
        raise WireError(
            f"arrays of dtype {dtype} cannot cross the wire (only numeric, bool, bytes and "
            "unicode dtypes can; object arrays would need pickle)"
        )
    return dtype.str


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        dtype = array_dtype_str(obj)
        data = np.ascontiguousarray(obj).tobytes()
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([dtype, list(obj.shape), data]))
    if isinstance(obj, np.generic):
        dtype = array_dtype_str(np.asarray(obj))
        return msgpack.ExtType(EXT_SCALAR, msgpack.packb([dtype, obj.tobytes()]))
    if type(obj) is GraphInstance:  # (a tuple subclass, which would travel as a plain tuple)
        with _one_tuple_deeper():
            return msgpack.ExtType(EXT_GRAPH, packb(list(obj)))
    if isinstance(obj, tuple):
        with _one_tuple_deeper():
            return msgpack.ExtType(EXT_TUPLE, packb(list(obj)))
    if isinstance(obj, int):
        if type(obj) is not int:  # IntEnum and other int subclasses travel as plain ints
            return int(obj)
        # beyond 64 bits: msgpack has no type for it
        size = (obj.bit_length() + 8) // 8
        if size > _MAX_BIGINT_BYTES:
            raise WireError(f"an int of {obj.bit_length()} bits is too large for the wire")
        return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(size, "big", signed=True))
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, list):  # list subclasses
        return list(obj)
    if isinstance(obj, str):
        return str(obj)
    raise WireError(
        f"a value of type {type(obj).__module__}.{type(obj).__qualname__} cannot cross the wire: "
        "only None, bool, int, float, str, bytes, lists, tuples, dicts, numpy arrays, "
        "numpy scalars and gymnasium's GraphInstance can"
    )


def packb(value: Any) -> bytes:
    """Encode ``value`` with the value codec. Raises WireError for non-data values."""
    try:
        # strict_types: tuples, np.float64 (a float subclass) and bool-like ints
        # reach _default, which keeps their types.
        return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise WireError(f"cannot encode value for the wire: {exc}") from None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        fields = msgpack.unpackb(data, raw=False)
        if not isinstance(fields, list) or len(fields) != 3 or not isinstance(fields[2], bytes):
            raise WireError("ndarray extension must hold [dtype, shape, data]")
        return array_from_buffer(fields[0], fields[1], fields[2]).copy()
    if code == EXT_SCALAR:
        fields = msgpack.unpackb(data, raw=False)
        if not isinstance(fields, list) or len(fields) != 2 or not isinstance(fields[1], bytes):
            raise WireError("numpy scalar extension must hold [dtype, data]")
        return array_from_buffer(fields[0], [], fields[1])[()]
    if code == EXT_BIGINT:
        if not 0 < len(data) <= _MAX_BIGINT_BYTES:
            raise WireError("bad big int extension")
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_TUPLE:
        with _one_tuple_deeper():
            items = unpackb(data)
        if not isinstance(items, list):
            raise WireError("tuple extension must hold an array")
        return tuple(items)
    if code == EXT_GRAPH:
        with _one_tuple_deeper():
            items = unpackb(data)
        if not isinstance(items, list) or len(items) != 3:
            raise WireError("graph extension must hold an array of 3: nodes, edges, edge_links")
        return GraphInstance(*items)
    raise WireError(f"unknown msgpack extension type {code}")


_MSGPACK_NUMPY_KEYS = {b"nd", b"type", b"data"}
MSGPACK_NUMPY_REFUSAL = (
    "refusing a msgpack-numpy array map: its decoder runs pickle on object arrays; "
    "rlay carries arrays as raw frames or as ext type 1"
)


def _object_hook(obj: dict) -> dict:
    if b"nd" in obj and _MSGPACK_NUMPY_KEYS.issubset(obj.keys()):
        raise WireError(MSGPACK_NUMPY_REFUSAL)
    return obj


class RepeatedKeys(dict):
    """A map that had a key more than once on the wire, holding the last value of each key.

    Value leaves refuse one (protocol 3.8.1); anywhere else it reads as the dict it is (3.3).
    """


def _pairs_hook(pairs: list) -> dict:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else RepeatedKeys(obj)


def _pairs_hook_checking_numpy(pairs: list) -> dict:
    return _object_hook(_pairs_hook(pairs))


def unpackb_plain(data: Any) -> Any:
    """Decode msgpack with no extension types at all (headers): C speed, and just as safe.

    An extension type in the input stays an inert ``msgpack.ExtType``; nothing is run.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise WireError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None


def unpackb(data: Any) -> Any:
    """Decode bytes made by :func:`packb`. Never runs pickle, eval or import.

    Raises WireError with a one-line reason on anything malformed.
    """
    # A msgpack-numpy map has the key b"nd" (bin or str); only data that could hold one
    # pays for the per-map hook that refuses it.
    raw = data if isinstance(data, bytes) else bytes(data)
    suspicious = b"\x02nd" in raw or b"\xa2nd" in raw  # every msgpack encoding of a 2-byte key "nd"
    # Value leaves refuse a map that repeats a key (protocol 3.8.1), which a dict would hide; only a
    # body that holds one (its descriptor has the key "values") pays for the per-map hook that marks
    # such maps, and the tuples and graphs inside it (decoded by nested calls) with it.
    if getattr(_nesting, "tuples", 0) == 0:
        _nesting.pairs = b"values" in raw
    try:
        if _nesting.pairs:
            pairs_hook = _pairs_hook_checking_numpy if suspicious else _pairs_hook
            value = msgpack.unpackb(
                raw, raw=False, strict_map_key=False, ext_hook=_ext_hook, object_pairs_hook=pairs_hook
            )
        else:
            object_hook = _object_hook if suspicious else None
            value = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_ext_hook, object_hook=object_hook)
    except WireError:
        raise
    except RecursionError:
        raise WireError("msgpack value nested too deeply") from None
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise WireError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    # msgpack decodes ext -1 (its timestamp) itself, never calling ext_hook; like any ext code
    # outside the codec it is refused. Only data that could hold one pays for the walk, once: the
    # outermost call walks into the tuples too, which nested calls decoded.
    if (
        getattr(_nesting, "tuples", 0) == 0
        and b"\xff" in raw
        and any(tail in raw for tail in _TIMESTAMP_TAILS)
        and _holds_timestamp(value)
    ):
        raise WireError("unknown msgpack extension type -1 (a msgpack timestamp)")
    return value


# msgpack makes a timestamp of ext -1 (0xff) with 4, 8 or 12 bytes of payload, and refuses other
# lengths. Every such header ends with one of these: fixext 4 and 8 (d6 ff, d7 ff); ext 8, 16 and 32
# (c7 / c8 00 / c9 00 00 00, then the length 04, 08 or 0c, then ff).
_TIMESTAMP_TAILS = (b"\xd6\xff", b"\xd7\xff", b"\x04\xff", b"\x08\xff", b"\x0c\xff")


def _holds_timestamp(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False
