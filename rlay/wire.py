"""Framing: headers, bodies and array frames of rlay messages.

A message is ``[header, body?, array frames...]``. The header is a msgpack map
with at least ``v`` (protocol version) and ``type``. Batched calls carry a body
(value-codec map) and raw array frames whose dtype and shape the body lists.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import zmq
from gymnasium import spaces

from rlay import protocol as P
from rlay.spaces import ValueRows, decode_value, encode_value, is_value_space
from rlay.values import (
    MSGPACK_NUMPY_REFUSAL,
    VersionError,
    WireError,
    array_dtype_str,
    array_from_buffer,
    check_shape,
    packb,
    parse_dtype,
    unpackb,
    unpackb_plain,
)

__all__ = [
    "WireError",
    "header",
    "decode_header",
    "encode_leaves",
    "decode_leaves",
    "frame_bytes",
    "describe_failures",
]


def header(type_: str, **fields: Any) -> bytes:
    """Pack a header map for a message of ``type_``."""
    return packb({P.VERSION: P.PROTOCOL_VERSION, P.TYPE: type_, **fields})


ROW_FRAME_BYTES = 65536  # a Box leaf this large per env travels as frames row by row (when not in shared memory)


def row_bytes(space: spaces.Box) -> int:
    """The bytes of one env's array of a Box leaf."""
    return space.dtype.itemsize * math.prod(space.shape)


def is_large(space: spaces.Space) -> bool:
    """A Box leaf whose per-env array is worth its own frame (shared memory has its own threshold, rlay/shm.py)."""
    return isinstance(space, spaces.Box) and row_bytes(space) >= ROW_FRAME_BYTES


COPY_THRESHOLD = 65536  # frames smaller than this are cheaper to copy than to send zero-copy
_SNDMORE = int(zmq.SNDMORE)


def frame_size(frame: Any) -> int:
    """The bytes of a frame to send: a numpy array or a bytes-like object."""
    return frame.nbytes if isinstance(frame, np.ndarray) else len(frame)


def announced_limit(answer: dict) -> int | None:
    """The largest frame a broker takes, from its `registered` or `leased` answer; None: no limit."""
    limit = answer.get("max_message_size")
    return limit if type(limit) is int and limit >= 0 else None


def oversized(frames: Sequence[Any], limit: int | None) -> int | None:
    """The size of the largest of ``frames`` if it is over a broker's ``max_message_size`` of ``limit``
    (ZeroMQ would drop it and cut the sender's connection), else None."""
    if limit is None or not frames:
        return None
    largest = max(frame_size(frame) for frame in frames)
    return largest if largest > limit else None


def send_frames(sock: zmq.Socket, frames: list[Any], flags: int = 0) -> None:
    """send_multipart, but each frame zero-copy only when it is large enough to be worth it."""
    flags = int(flags)
    last = len(frames) - 1
    for n, frame in enumerate(frames):
        sock.send(frame, flags | _SNDMORE if n < last else flags, copy=frame_size(frame) < COPY_THRESHOLD)


def describe_failures(failures: list[dict]) -> tuple[str, str]:
    """The code and one-line message of a batched call whose parts ``failures`` failed (protocol 5.13):
    env_error if any part has it, else the alphabetically first code."""
    codes = {str(f.get("code")) for f in failures}
    code = P.E_ENV if P.E_ENV in codes else sorted(codes)[0]
    message = "; ".join(
        f"slots {f.get('slots')} on worker {f.get('worker')} (host {f.get('host')}): {f.get('message')}"
        for f in failures
    )
    return code, message


def frame_bytes(frame: Any) -> bytes | memoryview:
    """The bytes of a frame received with either copy=True or copy=False."""
    return frame.buffer if hasattr(frame, "buffer") else frame


def decode_header(frame: Any) -> dict[str, Any]:
    """Decode and check a header frame: a map with a supported ``v`` and a string ``type``."""
    head = unpackb_plain(frame_bytes(frame))
    if not isinstance(head, dict):
        raise WireError(f"header must be a msgpack map, got {type(head).__name__}")
    if b"nd" in head:
        raise WireError(MSGPACK_NUMPY_REFUSAL)
    version = head.get(P.VERSION)
    if type(version) is not int or version not in P.SUPPORTED_VERSIONS:  # (true and 1.0 equal 1 in Python)
        raise VersionError(
            f"protocol version {version!r} is not supported (supported: {list(P.SUPPORTED_VERSIONS)})", version
        )
    if not isinstance(head.get(P.TYPE), str):
        raise WireError("header has no string 'type'")
    return head


def encode_leaves(leaves: Sequence[Any], rows: Any = None, check_dtype: bool = False) -> tuple[list[dict], list[Any]]:
    """Leaf descriptors for a body, and the array frames that follow it.

    ``rows`` (a slice or index array) selects the rows of every leaf to send.
    Array frames are C-contiguous numpy arrays, sendable zero-copy. Each value of
    a value leaf (ValueRows) is checked against its space, its dtypes too with
    ``check_dtype`` (observations; protocol 3.8.1): TypeError or ValueError if one does not fit.
    """
    descriptors: list[dict] = []
    frames: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, ValueRows):  # Graph, Sequence, OneOf: values in the body, their arrays as frames
            picked = leaf if rows is None else _pick(leaf, rows)
            descriptors.append({"values": [encode_value(leaf.space, value, frames, check_dtype) for value in picked]})
            continue
        if isinstance(leaf, tuple):  # Text leaf
            picked = leaf if rows is None else _pick(leaf, rows)
            descriptors.append({"text": list(picked)})
            continue
        array = leaf if rows is None else leaf[rows]
        array = np.ascontiguousarray(array)
        descriptors.append({"dtype": array_dtype_str(array), "shape": list(array.shape)})
        frames.append(array)
    return descriptors, frames


def check_rows(rows: Sequence[Any], space: spaces.Box) -> list[np.ndarray]:
    """The envs' arrays of one Box leaf, once each is found to fit ``space``: its shape, and a
    dtype that casts as SyncVectorEnv's np.stack(out=...) casts (same_kind). Nothing is cast yet."""
    arrays = [np.asarray(row) for row in rows]
    for array in arrays:
        if array.shape != space.shape:
            raise ValueError(f"an observation of shape {array.shape} does not fit {space}")
        if not np.can_cast(array.dtype, space.dtype, "same_kind"):
            raise TypeError(
                f"Cannot cast array data from {array.dtype!r} to {space.dtype!r} according to the rule 'same_kind'"
            )
    return arrays


def encode_rows(rows: Sequence[Any], space: spaces.Box) -> tuple[dict, list[np.ndarray]]:
    """A leaf sent as one frame per env: each env's own array, zero-copy when it already
    has the space's dtype and is contiguous. For large observations (frames)."""
    arrays = []
    for array in check_rows(rows, space):
        if array.dtype != space.dtype:
            cast = np.empty(space.shape, space.dtype)
            np.copyto(cast, array, casting="same_kind")
            array = cast
        arrays.append(np.ascontiguousarray(array))
    return {"dtype": space.dtype.str, "shape": [len(arrays), *space.shape], "rows": True}, arrays


def _pick(items: tuple, rows: Any) -> list:
    if isinstance(rows, slice):
        return list(items[rows])
    return [items[int(i)] for i in rows]


def decode_leaves(
    descriptors: Any,
    frames: Sequence[Any],
    leaf_spaces: Sequence[spaces.Space] | None = None,
    num_rows: int | None = None,
    check_dtype: bool = True,
    in_place: Collection[int] = (),
) -> list[Any]:
    """Turn leaf descriptors and array frames back into leaves (views of the frames).

    When ``leaf_spaces`` is given, each leaf is checked against its space: kind,
    dtype (unless ``check_dtype`` is False), row count and row shape. A leaf the
    sender wrote into shared memory (``in_place``: the leaves offered to it,
    rlay/shm.py) is checked the same way and comes back as ``IN_PLACE``. A value
    leaf comes back as a tuple of values (copies), each checked against its
    space as :func:`rlay.spaces.decode_value` checks; it needs ``leaf_spaces``.
    """
    if not isinstance(descriptors, list):
        raise WireError("leaf descriptors must be a list")
    if leaf_spaces is not None and len(descriptors) != len(leaf_spaces):
        raise WireError(f"expected {len(leaf_spaces)} leaves, got {len(descriptors)}")
    leaves: list[Any] = []
    frame_iter = iter(frames)
    for n, desc in enumerate(descriptors):
        space = leaf_spaces[n] if leaf_spaces is not None else None
        if not isinstance(desc, dict):
            raise WireError("a leaf descriptor must be a map")
        if "text" in desc:
            texts = desc["text"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise WireError("a text leaf must be a list of strings")
            if space is not None and not isinstance(space, spaces.Text):
                raise WireError(f"leaf {n}: got text for {space}")
            if num_rows is not None and len(texts) != num_rows:
                raise WireError(f"leaf {n}: expected {num_rows} strings, got {len(texts)}")
            leaves.append(tuple(texts))
            continue
        if "values" in desc:
            leaves.append(_decode_values(n, desc["values"], frame_iter, space, num_rows, check_dtype))
            continue
        if space is not None and is_value_space(space):
            raise WireError(f"leaf {n}: got an array for {space}, whose values travel in the body (protocol 3.8.1)")
        if desc.get("shm") is True:  # written into the receiver's shared memory: no frames
            leaves.append(_check_in_place(n, desc, space, num_rows, in_place))
            continue
        if desc.get("rows") is True:  # one frame per row
            leaves.append(_decode_rows(n, desc, frame_iter, space, num_rows, check_dtype))
            continue
        frame = next(frame_iter, None)
        if frame is None:
            raise WireError(f"leaf {n} announces an array frame that is missing")
        array = array_from_buffer(desc.get("dtype"), desc.get("shape"), frame_bytes(frame))
        if num_rows is not None and (array.ndim == 0 or array.shape[0] != num_rows):
            raise WireError(f"leaf {n}: expected {num_rows} rows, got shape {array.shape}")
        if space is not None:
            if isinstance(space, spaces.Text):
                raise WireError(f"leaf {n}: got an array for {space}")
            if array.shape[1:] != space.shape:
                raise WireError(f"leaf {n}: rows of shape {array.shape[1:]} do not fit {space}")
            if check_dtype and array.dtype != space.dtype:
                raise WireError(f"leaf {n}: dtype {array.dtype} does not match {space}")
        leaves.append(array)
    if next(frame_iter, None) is not None:
        raise WireError("more array frames than leaf descriptors")
    return leaves


def _decode_values(n: int, values: Any, frame_iter, space, num_rows: int | None, check_dtype: bool) -> tuple:
    if not isinstance(values, list):
        raise WireError(f"leaf {n}: a value leaf's values must be a list")
    if space is None or not is_value_space(space):
        raise WireError(
            f"leaf {n}: got values for {space}" if space is not None else f"leaf {n}: a value leaf needs its space"
        )
    if num_rows is not None and len(values) != num_rows:
        raise WireError(f"leaf {n}: expected {num_rows} values, got {len(values)}")
    try:
        return tuple(decode_value(space, value, frame_iter, check_dtype) for value in values)
    except WireError as exc:
        raise WireError(f"leaf {n}: {exc}") from None


IN_PLACE = "in place"  # a leaf whose rows are already where the receiver keeps them (shared memory)


def _check_in_place(n: int, desc: dict, space, num_rows: int | None, in_place: Collection[int]) -> str:
    if n not in in_place:
        raise WireError(f"leaf {n} is said to be in shared memory, which was not offered for it")
    dtype, shape = parse_dtype(desc.get("dtype")), check_shape(desc.get("shape"))
    if num_rows is not None and (not shape or shape[0] != num_rows):
        raise WireError(f"leaf {n}: expected {num_rows} rows, got shape {list(shape)}")
    if space is not None and (shape[1:] != space.shape or dtype != space.dtype):
        raise WireError(f"leaf {n}: rows of {dtype} {list(shape[1:])} do not fit {space}")
    return IN_PLACE


class RowFrames(list):
    """A leaf that came as one array per row (each a view of its own frame)."""


def _decode_rows(n: int, desc: dict, frame_iter, space, num_rows: int | None, check_dtype: bool) -> RowFrames:
    shape = desc.get("shape")
    if not isinstance(shape, list) or not shape or type(shape[0]) is not int or shape[0] < 0:
        raise WireError(f"leaf {n}: a row-framed leaf needs a shape [rows, ...]")
    if num_rows is not None and shape[0] != num_rows:
        raise WireError(f"leaf {n}: expected {num_rows} rows, got {shape[0]}")
    rows = RowFrames()
    for _ in range(shape[0]):
        frame = next(frame_iter, None)
        if frame is None:
            raise WireError(f"leaf {n} announces {shape[0]} row frames; some are missing")
        rows.append(array_from_buffer(desc.get("dtype"), shape[1:], frame_bytes(frame)))
    if space is not None and rows:
        if isinstance(space, spaces.Text) or rows[0].shape != space.shape:
            raise WireError(f"leaf {n}: rows of shape {rows[0].shape} do not fit {space}")
        if check_dtype and rows[0].dtype != space.dtype:
            raise WireError(f"leaf {n}: dtype {rows[0].dtype} does not match {space}")
    return rows


def decode_body(frame: Any) -> dict[str, Any]:
    body = unpackb(frame_bytes(frame))
    if not isinstance(body, dict):
        raise WireError(f"body must be a msgpack map, got {type(body).__name__}")
    return body
