"""Exact comparison of what a vector env returns: the oracle of `rlay conformance` and of the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["assert_same"]


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Equal values of the same types, recursively; arrays equal in dtype, shape and content (NaN equal
    to NaN). Raises AssertionError naming the first difference by its path, e.g. ``step 3[4]['t']``."""
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), f"{path}: {type(a).__name__} is not an ndarray"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if b.dtype == object:
            for i, (x, y) in enumerate(zip(a.flat, b.flat)):
                assert_same(x, y, f"{path}[{i}]")
        else:
            assert np.array_equal(a, b, equal_nan=b.dtype.kind in "fc"), f"{path}: {a} != {b}"
        return
    assert type(a) is type(b), f"{path}: type {type(a).__name__} != {type(b).__name__}"
    if isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in b:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(b, (tuple, list)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
