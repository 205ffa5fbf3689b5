"""Turn the ENV argument of ``rlay worker`` into env factories.

ENV is either a registered gymnasium id (``CartPole-v1``, ``ale_py:ALE/Pong-v5``)
or ``package.module:factory``, a callable returning a ``gymnasium.Env``. This
reads the operator's command line, never the network.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym

__all__ = ["env_factory"]


def env_factory(spec: str, env_kwargs: dict[str, Any] | None = None) -> Callable[[], gym.Env]:
    """A zero-argument callable that builds one env for ``spec``."""
    kwargs = dict(env_kwargs or {})
    module_name, sep, attr = spec.partition(":")
    if sep and attr.isidentifier():
        module = importlib.import_module(module_name)
        factory = getattr(module, attr, None)
        if callable(factory):
            return functools.partial(factory, **kwargs)
    return functools.partial(gym.make, spec, **kwargs)
