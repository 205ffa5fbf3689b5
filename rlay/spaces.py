"""Spaces on the wire, and batched values as lists of leaves.

A space crosses the wire as plain msgpack data (maps, lists, ints, strings,
bytes; no extension types), so that a worker in any language can describe its
envs. ``decode_space(encode_space(s)) == s`` for every space gymnasium ships;
a subclass of one, or a custom Space, is refused: its meaning is Python code.

A batched value (the observations or actions of k envs) crosses the wire as
*leaves* (protocol 3.8, 4.2): one per Box/Discrete/MultiDiscrete/MultiBinary/
Text/Graph/Sequence/OneOf in the space, depth first, Tuple entries in order and
Dict entries in the space's key order. An array leaf has k rows and travels as
raw frames; a Text leaf is a list of k strings in the message body. A *value
leaf* (Graph, Sequence, OneOf: values of varying size) is a list of k values in
the body, each checked against the space, with the arrays inside it as raw
frames (:func:`encode_value`, :func:`decode_value`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.spaces import GraphInstance

from rlay.values import RepeatedKeys, WireError, array_dtype_str, array_from_buffer, parse_dtype

__all__ = [
    "UnsupportedSpaceError",
    "encode_space",
    "decode_space",
    "leaf_spaces",
    "flatten",
    "unflatten",
    "split",
    "is_value_space",
    "ValueRows",
    "encode_value",
    "decode_value",
    "MAX_SPACE_DEPTH",
    "MAX_BATCH",
]

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, Text, Graph, Sequence, OneOf, Tuple and Dict"
VALUE_SPACES = (spaces.Graph, spaces.Sequence, spaces.OneOf)  # one value leaf each, whatever they hold
# Tuple, Dict, Graph, Sequence and OneOf nested in one another at most this deep (protocol 4.1): every
# walk of a space or of its values recurses once a level, and a peer's space map must not exhaust the stack.
MAX_SPACE_DEPTH = 32
# The most elements one Box or MultiBinary of a space from the wire may have (2**28: 256 MiB of
# uint8 a env): a 31-byte map claiming MultiBinary([65536, 65536]) made a trainer allocate 16 GiB.
MAX_SPACE_ELEMENTS = 2**28
_NESTING_SPACES = (spaces.Tuple, spaces.Dict, *VALUE_SPACES)
_NESTING_KINDS = ("Tuple", "Dict", "Graph", "Sequence", "OneOf")
# The most items L one batch in a value leaf may have (protocol 3.8.1): a batch of a zero-size space (a
# Box of shape (0,)) takes no bytes at all, so only this bounds what gymnasium's contains() iterates.
MAX_BATCH = 2**20


class UnsupportedSpaceError(TypeError):
    """A space rlay cannot carry across the wire."""


def _array_fields(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)  # (not ascontiguousarray: it makes a 0-d array 1-d; tobytes() is C order anyway)
    return {"dtype": array_dtype_str(array), "shape": list(array.shape), "data": array.tobytes()}


def _array(fields: Any, what: str) -> np.ndarray:
    if not isinstance(fields, dict) or not isinstance(fields.get("data"), bytes):
        raise WireError(f"{what} must be a map with dtype, shape and data")
    return array_from_buffer(fields.get("dtype"), fields.get("shape"), fields["data"]).copy()


def encode_space(space: spaces.Space, name: str = "space") -> dict[str, Any]:
    """Encode a single-env space as plain msgpack-able data (protocol 4.1).

    Only gymnasium's own space classes cross the wire, checked by exact type: a subclass
    (``class MyBox(Box)``) or a custom Space raises UnsupportedSpaceError, naming the
    space by its path under ``name`` (``observation_space['pos']``) and what to use instead;
    so does nesting deeper than MAX_SPACE_DEPTH.
    """
    return _encode_space(space, name, 0)


def _encode_space(space: spaces.Space, name: str, depth: int) -> dict[str, Any]:
    kind = type(space)
    if depth >= MAX_SPACE_DEPTH and kind in _NESTING_SPACES:
        raise UnsupportedSpaceError(
            f"rlay cannot carry {name}: Tuple, Dict, Graph, Sequence and OneOf spaces nest there more than "
            f"{MAX_SPACE_DEPTH} deep (protocol 4.1)"
        )
    depth += 1
    if kind is spaces.Box:
        return {
            "type": "Box",
            "dtype": space.dtype.str,
            "shape": list(space.shape),
            "low": _array_fields(space.low),
            "high": _array_fields(space.high),
        }
    if kind is spaces.Discrete:
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.str}
    if kind is spaces.MultiDiscrete:
        return {
            "type": "MultiDiscrete",
            "nvec": _array_fields(space.nvec),
            "start": _array_fields(space.start),
            "dtype": space.dtype.str,
        }
    if kind is spaces.MultiBinary:
        n = space.n
        return {"type": "MultiBinary", "n": n if isinstance(n, int) else list(n)}
    if kind is spaces.Text:
        return {
            "type": "Text",
            "min_length": int(space.min_length),
            "max_length": int(space.max_length),
            "charset": "".join(space.character_list),  # in its order: sample() depends on it
        }
    if kind is spaces.Tuple:
        return {
            "type": "Tuple",
            "spaces": [_encode_space(s, f"{name}[{i}]", depth) for i, s in enumerate(space.spaces)],
        }
    if kind is spaces.Dict:
        for key in space.spaces:
            if not isinstance(key, str):
                raise UnsupportedSpaceError(f"Dict space keys must be strings, got {key!r} in {name}: {space}")
        return {
            "type": "Dict",
            "spaces": [[k, _encode_space(s, f"{name}[{k!r}]", depth)] for k, s in space.spaces.items()],
        }
    if kind is spaces.Graph:
        edge = space.edge_space
        return {
            "type": "Graph",
            "node_space": _encode_space(space.node_space, f"{name}.node_space", depth),
            "edge_space": None if edge is None else _encode_space(edge, f"{name}.edge_space", depth),
        }
    if kind is spaces.Sequence:
        return {
            "type": "Sequence",
            "feature_space": _encode_space(space.feature_space, f"{name}.feature_space", depth),
            "stack": bool(space.stack),
        }
    if kind is spaces.OneOf:
        return {
            "type": "OneOf",
            "spaces": [_encode_space(s, f"{name}.spaces[{i}]", depth) for i, s in enumerate(space.spaces)],
        }
    raise UnsupportedSpaceError(_refusal(space, name))


def _refusal(space: Any, name: str) -> str:
    kind = type(space)
    what = f"{kind.__module__}.{kind.__qualname__}"
    base = next(
        (c for c in kind.__mro__[1:] if c.__module__.startswith("gymnasium.spaces.") and c is not spaces.Space), None
    )
    if base is not None:
        return (
            f"rlay cannot carry {name} = {space!r}: it is a {what}, a subclass of gymnasium.spaces.{base.__name__}, "
            f"and a space crosses the wire as data, not as Python code (protocol 4.1). Use gymnasium.spaces."
            f"{base.__name__} itself (keep any extra behaviour in the env, or in a wrapper around the vector env)"
        )
    if isinstance(space, spaces.Space):
        return (
            f"rlay cannot carry {name} = {space!r}: it is a custom gymnasium Space ({what}), whose meaning is "
            f"Python code, and a space crosses the wire as data (protocol 4.1). Describe its values with "
            f"gymnasium's own spaces ({SUPPORTED}), nested as needed"
        )
    return f"rlay cannot carry {name} = {space!r} ({what}): it is not a gymnasium space; use one of {SUPPORTED}"


def decode_space(data: Any) -> spaces.Space:
    """Build a space from :func:`encode_space` data. Raises WireError on malformed input."""
    try:
        return _decode_space(data, 0)
    except WireError:
        raise
    except Exception as exc:  # (RecursionError too, though MAX_SPACE_DEPTH keeps the walk shallow)
        raise WireError(f"malformed space description: {type(exc).__name__}: {exc}") from None


def _decode_space(data: Any, depth: int) -> spaces.Space:
    if not isinstance(data, dict):
        raise WireError(f"a space must be a map, got {type(data).__name__}")
    kind = data.get("type")
    if kind in _NESTING_KINDS:
        if depth >= MAX_SPACE_DEPTH:
            raise WireError(f"Tuple, Dict, Graph, Sequence and OneOf spaces nested more than {MAX_SPACE_DEPTH} deep")
        depth += 1
    if kind == "Box":
        dtype = parse_dtype(data["dtype"])
        low, high = _array(data["low"], "Box.low"), _array(data["high"], "Box.high")
        return spaces.Box(low=low, high=high, shape=_shape(data["shape"], "Box.shape"), dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]), dtype=parse_dtype(data["dtype"]))
    if kind == "MultiDiscrete":
        nvec = _array(data["nvec"], "MultiDiscrete.nvec")
        start = _array(data["start"], "MultiDiscrete.start")
        return spaces.MultiDiscrete(nvec, dtype=parse_dtype(data["dtype"]), start=start)
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(n if type(n) is int and 0 <= n <= MAX_SPACE_ELEMENTS else _shape(n, "MultiBinary.n"))
    if kind == "Text":
        return spaces.Text(int(data["max_length"]), min_length=int(data["min_length"]), charset=str(data["charset"]))
    if kind == "Tuple":
        return spaces.Tuple([_decode_space(s, depth) for s in _list(data["spaces"], "Tuple.spaces")])
    if kind == "Dict":
        pairs = _list(data["spaces"], "Dict.spaces")
        return spaces.Dict(OrderedDict((str(k), _decode_space(s, depth)) for k, s in pairs))
    if kind == "Graph":
        edge = data["edge_space"]
        return spaces.Graph(
            _decode_space(data["node_space"], depth), None if edge is None else _decode_space(edge, depth)
        )
    if kind == "Sequence":
        if type(data["stack"]) is not bool:
            raise WireError(f"Sequence.stack must be a bool, got {data['stack']!r}")
        return spaces.Sequence(_decode_space(data["feature_space"], depth), stack=data["stack"])
    if kind == "OneOf":
        return spaces.OneOf([_decode_space(s, depth) for s in _list(data["spaces"], "OneOf.spaces")])
    raise WireError(f"unknown space type {kind!r}; supported spaces are {SUPPORTED}")


def _shape(value: Any, what: str) -> tuple[int, ...]:
    """A shape from the wire: a list of ints >= 0 with at most MAX_SPACE_ELEMENTS elements in all."""
    dims = _list(value, what)
    if not all(type(d) is int and d >= 0 for d in dims):
        raise WireError(f"{what} must be a list of ints >= 0, got {value!r:.100}")
    if math.prod(dims) > MAX_SPACE_ELEMENTS:
        raise WireError(f"{what} {dims!r:.100} has more than {MAX_SPACE_ELEMENTS} elements")
    return tuple(dims)


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise WireError(f"{what} must be a list, got {type(value).__name__}")
    return value


def is_value_space(space: spaces.Space) -> bool:
    """A Graph, Sequence or OneOf: one value leaf, its values of varying size (protocol 3.8)."""
    return isinstance(space, VALUE_SPACES)


def leaf_spaces(space: spaces.Space) -> list[spaces.Space]:
    """The leaves of ``space`` in wire order."""
    if isinstance(space, spaces.Tuple):
        return [leaf for s in space.spaces for leaf in leaf_spaces(s)]
    if isinstance(space, spaces.Dict):
        return [leaf for s in space.spaces.values() for leaf in leaf_spaces(s)]
    return [space]


class ValueRows(tuple):
    """The k values of a value leaf (Graph, Sequence, OneOf), as gymnasium batches them (a tuple),
    with the leaf's space, which :func:`encode_value` checks each one against."""

    def __new__(cls, values: Any, space: spaces.Space) -> ValueRows:
        rows = super().__new__(cls, values)
        rows.space = space
        return rows


def flatten(space: spaces.Space, batch: Any) -> list[Any]:
    """Split a batched value of ``space`` (as gymnasium batches it) into its leaves.

    Array leaves come back as numpy arrays with the dtype they were given in
    (the wire preserves what the caller passed, as SyncVectorEnv does);
    Text leaves as tuples of strings; value leaves as ValueRows.
    """
    if isinstance(space, spaces.Tuple):
        return [leaf for s, b in zip(space.spaces, batch, strict=True) for leaf in flatten(s, b)]
    if isinstance(space, spaces.Dict):
        return [leaf for key, s in space.spaces.items() for leaf in flatten(s, batch[key])]
    if isinstance(space, VALUE_SPACES):
        return [ValueRows(batch, space)]
    if isinstance(space, spaces.Text):
        return [tuple(batch)]
    return [np.asarray(batch)]


def split(space: spaces.Space, value: Any) -> list[Any]:
    """One env's value of ``space`` split into its leaves' values (by reference), in wire order."""
    if isinstance(space, spaces.Tuple):
        return [leaf for s, v in zip(space.spaces, value, strict=True) for leaf in split(s, v)]
    if isinstance(space, spaces.Dict):
        return [leaf for key, s in space.spaces.items() for leaf in split(s, value[key])]
    return [value]


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


# -- the values of value leaves (protocol 3.8.1) ---------------------------------------------------
#
# One walk, in both directions: encoding takes an env's (or a trainer's) value, whose arrays are
# numpy arrays, and returns its wire form, whose arrays are references {dtype, shape} to raw frames;
# decoding takes the wire form and returns the value. Both check the value against the space the
# same way, so what one side sends the other accepts.

_ARRAY_SPACES = (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)


class _Walk:
    """Check a value of a space and rebuild it, its arrays passed through ``array``.

    ``lenient`` (encoding: an env's or a user's value) takes any Mapping for a Dict and subclasses of
    tuple and list (a namedtuple, say) as plain ones, as SyncVectorEnv passes them on; decoding takes
    only what the wire makes.
    """

    def __init__(self, array: Callable[[Any, str], tuple[Any, np.ndarray]], check_dtype: bool, lenient: bool):
        self.array, self.check_dtype, self.lenient = array, check_dtype, lenient

    def one(self, space: spaces.Space, value: Any, path: str) -> Any:
        """One value of ``space`` (protocol 3.8.1, "one value")."""
        if isinstance(space, _ARRAY_SPACES):
            out, array = self.array(value, path)
            self._fits(array, space, space.shape, path)
            return out
        if isinstance(space, spaces.Discrete):
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                return int(value) if isinstance(value, int) else value  # (an IntEnum travels as an int)
            if isinstance(value, np.generic):
                raise TypeError(f"{path}: a value of {space} must be an integer, got a {value.dtype} scalar")
            try:
                out, array = self.array(value, path)
            except TypeError:
                raise TypeError(
                    f"{path}: a value of {space} must be an integer, a numpy integer or a 0-d array, "
                    f"got {type(value).__name__}"
                ) from None
            if array.ndim == 0 and array.dtype.kind not in "iu":  # (as a bool or an ext 2 float is refused)
                raise TypeError(f"{path}: a value of {space} must be an integer, got a 0-d {array.dtype} array")
            self._fits(array, space, (), path)
            return out
        if isinstance(space, spaces.Text):
            if type(value) is not str:
                raise TypeError(f"{path}: a value of {space} must be a str, got {type(value).__name__}")
            return value
        if isinstance(space, spaces.Tuple):
            items = self._items(value, path, len(space.spaces))
            return type(items)(self.one(s, v, f"{path}[{i}]") for i, (s, v) in enumerate(zip(space.spaces, items)))
        if isinstance(space, spaces.Dict):
            return {
                key: self.one(space.spaces[key], v, f"{path}[{key!r}]") for key, v in self._entries(space, value, path)
            }
        if isinstance(space, spaces.Graph):
            return self._graph(space, value, path)
        if isinstance(space, spaces.Sequence):
            if space.stack:
                return self.batch(space.feature_space, value, path, [None])
            items = self._items(value, path)
            return type(items)(self.one(space.feature_space, v, f"{path}[{i}]") for i, v in enumerate(items))
        if isinstance(space, spaces.OneOf):
            items = self._items(value, path, 2)
            index, item = items
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
                raise TypeError(f"{path}: a value of {space} starts with an integer index, got {type(index).__name__}")
            if not 0 <= index < len(space.spaces):
                raise ValueError(f"{path}: index {index} is out of range for {space}")
            index = int(index) if isinstance(index, int) else index
            return type(items)((index, self.one(space.spaces[int(index)], item, f"{path}[1]")))
        raise UnsupportedSpaceError(_refusal(space, path))

    def batch(self, space: spaces.Space, value: Any, path: str, length: list[int | None]) -> Any:
        """``length`` values of ``space`` batched as gymnasium batches them (protocol 3.8.1, "a batch");
        ``length[0]`` is the batch's length, None until its first leaf says it."""
        if isinstance(space, (*_ARRAY_SPACES, spaces.Discrete)):
            out, array = self.array(value, path)
            if array.ndim == 0:
                raise ValueError(f"{path}: a batch of {space} needs a first dimension, got a 0-d array")
            _same_length(length, array.shape[0], path)
            self._fits(array, space, (array.shape[0], *space.shape), path)
            return out
        if isinstance(space, spaces.Text):
            items = self._items(value, path)
            _same_length(length, len(items), path)
            return type(items)(self.one(space, v, f"{path}[{i}]") for i, v in enumerate(items))
        if isinstance(space, spaces.Tuple):
            items = self._items(value, path, len(space.spaces))
            return type(items)(
                self.batch(s, v, f"{path}[{i}]", length) for i, (s, v) in enumerate(zip(space.spaces, items))
            )
        if isinstance(space, spaces.Dict):
            return {
                key: self.batch(space.spaces[key], v, f"{path}[{key!r}]", length)
                for key, v in self._entries(space, value, path)
            }
        items = self._items(value, path)  # Graph, Sequence, OneOf: a tuple of single values
        _same_length(length, len(items), path)
        return type(items)(self.one(space, v, f"{path}[{i}]") for i, v in enumerate(items))

    def _graph(self, space: spaces.Graph, value: Any, path: str) -> GraphInstance:
        if type(value) is not GraphInstance:
            raise TypeError(f"{path}: a value of {space} must be a GraphInstance, got {type(value).__name__}")
        node_count: list[int | None] = [None]
        nodes = self.batch(space.node_space, value.nodes, f"{path}.nodes", node_count)
        if value.edges is None and value.edge_links is None:
            return GraphInstance(nodes, None, None)
        if space.edge_space is None:
            raise ValueError(f"{path}: {space} has no edge space, so its edges and edge_links must be None")
        if value.edges is None or value.edge_links is None:
            raise ValueError(f"{path}: edges and edge_links must both be None, or neither")
        edges = [None]
        out_edges = self.batch(space.edge_space, value.edges, f"{path}.edges", edges)
        links, array = self.array(value.edge_links, f"{path}.edge_links")
        if array.dtype.kind not in "iu" or array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(
                f"{path}.edge_links: expected an integer array of shape (m, 2), got {array.dtype} {array.shape}"
            )
        _same_length(edges, array.shape[0], f"{path}.edge_links")
        n = node_count[0]  # (None only for a node space without arrays, such as an empty Tuple)
        if n is not None and array.size and (array.min() < 0 or array.max() >= n):
            raise ValueError(
                f"{path}.edge_links: a link names no node (each must be at least 0 and below {n}, the nodes)"
            )
        return GraphInstance(nodes, out_edges, links)

    def _fits(self, array: np.ndarray, space: spaces.Space, shape: tuple, path: str) -> None:
        if array.shape != shape:
            raise ValueError(f"{path}: an array of shape {array.shape} does not fit {space} (expected {shape})")
        if self.check_dtype and not np.can_cast(array.dtype, space.dtype, "same_kind"):
            raise TypeError(
                f"{path}: an array of {array.dtype} does not fit {space} (it casts to {space.dtype} only unsafely)"
            )

    def _items(self, value: Any, path: str, count: int | None = None) -> tuple | list:
        kind = type(value)
        if kind is not tuple and kind is not list:
            if not (self.lenient and isinstance(value, (tuple, list))):
                raise TypeError(f"{path}: expected a tuple or a list, got {kind.__name__}")
            value = tuple(value) if isinstance(value, tuple) else list(value)
        if count is not None and len(value) != count:
            raise ValueError(f"{path}: expected {count} items, got {len(value)}")
        return value

    def _entries(self, space: spaces.Dict, value: Any, path: str) -> Iterator[tuple[str, Any]]:
        if type(value) is not dict:  # (in its own key order: the order its arrays' frames go in)
            if type(value) is RepeatedKeys:
                raise ValueError(f"{path}: a map that has a key more than once")
            if not (self.lenient and isinstance(value, Mapping)):
                raise TypeError(f"{path}: a value of a Dict space must be a dict, got {type(value).__name__}")
        if value.keys() != space.spaces.keys():
            raise ValueError(f"{path}: keys {sorted(map(str, value))} do not match {sorted(space.spaces)}")
        return iter(value.items())


def _same_length(length: list[int | None], n: int, path: str) -> None:
    if n > MAX_BATCH:
        raise ValueError(f"{path}: a batch of {n} items, more than the {MAX_BATCH} a value leaf carries")
    if length[0] is None:
        length[0] = n
    elif length[0] != n:
        raise ValueError(f"{path}: a batch of {n} where its siblings have {length[0]}")


def encode_value(space: spaces.Space, value: Any, frames: list[np.ndarray], check_dtype: bool = True) -> Any:
    """The wire form of one env's value of a value leaf's ``space``: its arrays become references
    ``{dtype, shape}``, and their data, in order, are appended to ``frames``. Raises TypeError or
    ValueError (naming where) if the value does not fit the space; with ``check_dtype``, an array's
    dtype must cast to its space's with numpy's same_kind rule."""

    def array(item: Any, path: str) -> tuple[dict, np.ndarray]:
        if not isinstance(item, np.ndarray):
            raise TypeError(f"{path}: expected a numpy array, got {type(item).__name__}")
        reference = {"dtype": array_dtype_str(item), "shape": list(item.shape)}
        frames.append(np.ascontiguousarray(item))
        return reference, item

    return _Walk(array, check_dtype, lenient=True).one(space, value, "value")


def decode_value(space: spaces.Space, wire: Any, frames: Iterator[Any], check_dtype: bool = True) -> Any:
    """One env's value of a value leaf's ``space`` from its wire form, each array reference taking
    the next of ``frames`` (bytes-like); every array is a writable copy. Raises WireError if it does
    not fit the space (as :func:`encode_value` checks) or a frame is missing or of the wrong size."""

    def array(item: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
        if type(item) is not dict:
            if type(item) is RepeatedKeys:
                raise ValueError(f"{path}: an array reference that has a key more than once")
            raise TypeError(f"{path}: expected an array reference {{dtype, shape}}, got {type(item).__name__}")
        frame = next(frames, None)
        if frame is None:
            raise ValueError(f"{path}: an array reference whose frame is missing")
        data = frame.buffer if hasattr(frame, "buffer") else frame
        decoded = array_from_buffer(item.get("dtype"), item.get("shape"), data).copy()
        return decoded, decoded

    try:
        return _Walk(array, check_dtype, lenient=False).one(space, wire, "value")
    except WireError:
        raise
    except (TypeError, ValueError) as exc:
        raise WireError(str(exc)) from None
    except RecursionError:  # (MAX_SPACE_DEPTH keeps the walk shallow; a local space may still be deeper)
        raise WireError("a value nested too deeply to decode") from None
