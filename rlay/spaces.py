"""Spaces on the wire, and batched values as lists of leaves.

A space crosses the wire as plain msgpack data (maps, lists, ints, strings,
bytes; no extension types), so that a worker in any language can describe its
envs. ``decode_space(encode_space(s)) == s`` for every supported space.

A batched value (the observations or actions of k envs) crosses the wire as
*leaves*: one per Box/Discrete/MultiDiscrete/MultiBinary/Text in the space,
depth first, Tuple entries in order and Dict entries in the space's key order.
An array leaf has k rows and travels as one raw frame; a Text leaf is a list
of k strings and travels inside the message body.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from gymnasium import spaces

from rlay.values import WireError, array_dtype_str, array_from_buffer, parse_dtype

__all__ = [
    "UnsupportedSpaceError",
    "encode_space",
    "decode_space",
    "leaf_spaces",
    "flatten",
    "unflatten",
]

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, Text, Tuple and Dict"


class UnsupportedSpaceError(TypeError):
    """A space rlay cannot carry across the wire."""


def _array_fields(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)  # (not ascontiguousarray: it makes a 0-d array 1-d; tobytes() is C order anyway)
    return {"dtype": array_dtype_str(array), "shape": list(array.shape), "data": array.tobytes()}


def _array(fields: Any, what: str) -> np.ndarray:
    if not isinstance(fields, dict) or not isinstance(fields.get("data"), bytes):
        raise WireError(f"{what} must be a map with dtype, shape and data")
    return array_from_buffer(fields.get("dtype"), fields.get("shape"), fields["data"]).copy()


def encode_space(space: spaces.Space) -> dict[str, Any]:
    """Encode a single-env space as plain msgpack-able data."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "dtype": space.dtype.str,
            "shape": list(space.shape),
            "low": _array_fields(space.low),
            "high": _array_fields(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.str}
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": _array_fields(space.nvec),
            "start": _array_fields(space.start),
            "dtype": space.dtype.str,
        }
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": n if isinstance(n, int) else list(n)}
    if isinstance(space, spaces.Text):
        return {
            "type": "Text",
            "min_length": int(space.min_length),
            "max_length": int(space.max_length),
            "charset": "".join(space.character_list),  # in its order: sample() depends on it
        }
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [encode_space(s) for s in space.spaces]}
    if isinstance(space, spaces.Dict):
        for key in space.spaces:
            if not isinstance(key, str):
                raise UnsupportedSpaceError(f"Dict space keys must be strings, got {key!r} in {space}")
        return {"type": "Dict", "spaces": [[k, encode_space(s)] for k, s in space.spaces.items()]}
    raise UnsupportedSpaceError(
        f"rlay cannot carry the space {space!r} ({type(space).__name__}); supported spaces are {SUPPORTED}"
    )


def decode_space(data: Any) -> spaces.Space:
    """Build a space from :func:`encode_space` data. Raises WireError on malformed input."""
    try:
        return _decode_space(data)
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"malformed space description: {type(exc).__name__}: {exc}") from None


def _decode_space(data: Any) -> spaces.Space:
    if not isinstance(data, dict):
        raise WireError(f"a space must be a map, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "Box":
        dtype = parse_dtype(data["dtype"])
        low, high = _array(data["low"], "Box.low"), _array(data["high"], "Box.high")
        return spaces.Box(low=low, high=high, shape=tuple(data["shape"]), dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]), dtype=parse_dtype(data["dtype"]))
    if kind == "MultiDiscrete":
        nvec = _array(data["nvec"], "MultiDiscrete.nvec")
        start = _array(data["start"], "MultiDiscrete.start")
        return spaces.MultiDiscrete(nvec, dtype=parse_dtype(data["dtype"]), start=start)
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(n if isinstance(n, int) else tuple(n))
    if kind == "Text":
        return spaces.Text(int(data["max_length"]), min_length=int(data["min_length"]), charset=str(data["charset"]))
    if kind == "Tuple":
        return spaces.Tuple([_decode_space(s) for s in data["spaces"]])
    if kind == "Dict":
        return spaces.Dict(OrderedDict((str(k), _decode_space(s)) for k, s in data["spaces"]))
    raise WireError(f"unknown space type {kind!r}; supported spaces are {SUPPORTED}")


def leaf_spaces(space: spaces.Space) -> list[spaces.Space]:
    """The leaves of ``space`` in wire order."""
    if isinstance(space, spaces.Tuple):
        return [leaf for s in space.spaces for leaf in leaf_spaces(s)]
    if isinstance(space, spaces.Dict):
        return [leaf for s in space.spaces.values() for leaf in leaf_spaces(s)]
    return [space]


def flatten(space: spaces.Space, batch: Any) -> list[Any]:
    """Split a batched value of ``space`` (as gymnasium batches it) into its leaves.

    Array leaves come back as numpy arrays with the dtype they were given in
    (the wire preserves what the caller passed, as SyncVectorEnv does);
    Text leaves as tuples of strings.
    """
    if isinstance(space, spaces.Tuple):
        return [leaf for s, b in zip(space.spaces, batch, strict=True) for leaf in flatten(s, b)]
    if isinstance(space, spaces.Dict):
        return [leaf for key, s in space.spaces.items() for leaf in flatten(s, batch[key])]
    if isinstance(space, spaces.Text):
        return [tuple(batch)]
    return [np.asarray(batch)]


def unflatten(space: spaces.Space, leaves: list[Any]) -> Any:
    """Inverse of :func:`flatten`: nest leaves back into the batched structure."""
    it = iter(leaves)
    value = _unflatten(space, it)
    if next(it, None) is not None:
        raise WireError("more leaves than the space has")
    return value


def _unflatten(space: spaces.Space, it) -> Any:
    if isinstance(space, spaces.Tuple):
        return tuple(_unflatten(s, it) for s in space.spaces)
    if isinstance(space, spaces.Dict):
        return {key: _unflatten(s, it) for key, s in space.spaces.items()}
    try:
        return next(it)
    except StopIteration:
        raise WireError("fewer leaves than the space has") from None
