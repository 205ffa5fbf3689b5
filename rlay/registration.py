"""Gymnasium ids for rlay vector envs: ``gymnasium.make_vec`` of an id registered here returns an RlayVectorEnv.

Example::

    >>> import gymnasium as gym
    >>> import rlay
    >>> rlay.register("rlay/CartPole-v1", env_id="CartPole-v1")  # embedded; broker="tcp://HOST:5555" to lease
    >>> envs = gym.make_vec("rlay/CartPole-v1", num_envs=4, vectorization_mode="vector_entry_point")
    >>> type(envs).__name__
    'RlayVectorEnv'
    >>> envs.close()

Libraries that build their envs with ``gym.make_vec`` then step rlay envs: RLlib's env runners, with
``config.env_runners(gym_env_vectorize_mode="vector_entry_point")``. The registration lives in this
process's gymnasium registry: a process of its own (a Ray actor, say) must call ``register`` too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from rlay.vector import RlayVectorEnv

__all__ = ["register", "VectorEntryPoint"]


@dataclass(frozen=True)
class VectorEntryPoint:
    """The ``vector_entry_point`` of an id that ``register`` made: ``gym.make_vec`` calls it with
    ``num_envs`` and the env kwargs (the registration's, updated with those of the call)."""

    env_id: str
    broker: str | None = None
    vector_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, num_envs: int, **env_kwargs: Any) -> RlayVectorEnv:
        if self.broker is not None:
            if env_kwargs:
                raise TypeError(
                    f"env kwargs {sorted(env_kwargs)} cannot be applied to remote envs: their workers make them "
                    f"(rlay worker {self.env_id} --env-kwargs JSON)"
                )
            return RlayVectorEnv.remote(self.env_id, num_envs, self.broker, **self.vector_kwargs)
        from workers.loader import env_factory  # (embedded: this process starts the workers)

        return RlayVectorEnv([env_factory(self.env_id, env_kwargs)] * num_envs, **self.vector_kwargs)


def register(
    id: str,
    *,
    env_id: str,
    broker: str | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    **env_kwargs: Any,
) -> None:
    """Register ``id`` with gymnasium so that ``gym.make_vec(id, n)`` returns an RlayVectorEnv of ``n`` envs.

    Args:
        id: the new gymnasium id (it must not name an env that is not rlay's: ``"rlay/CartPole-v1"``,
            not ``"CartPole-v1"``). Registering it again replaces the earlier registration.
        env_id: what each env is. Embedded: a gymnasium id or ``package.module:factory``, as for
            ``rlay worker ENV``. Remote: the env id the broker's workers registered.
        broker: a running broker's front-end address to lease the envs from; None starts a private
            broker and local workers at each ``make_vec``.
        vector_kwargs: keyword arguments of ``RlayVectorEnv`` (embedded) or ``RlayVectorEnv.remote``
            (autoreset_mode, timeout, envs_per_worker, curve, ...). ``make_vec`` in
            ``vector_entry_point`` mode takes no vector kwargs of its own, so they are given here.
        env_kwargs: keyword arguments of the env's factory (embedded only), the defaults of those
            ``gym.make_vec(id, n, **kwargs)`` passes.
    """
    existing = gym.registry.get(id)
    if existing is not None and not isinstance(existing.vector_entry_point, VectorEntryPoint):
        raise ValueError(
            f"{id!r} is already registered with gymnasium, not by rlay: register the rlay envs under an id of "
            f"their own, such as 'rlay/{id}'"
        )
    vector_kwargs = dict(vector_kwargs or {})
    make = RlayVectorEnv if broker is None else RlayVectorEnv.remote
    try:  # refuse a misspelt option now, not at the first make_vec (in a Ray actor, say)
        inspect.signature(make).bind_partial(**vector_kwargs)
    except TypeError as exc:
        where = "embedded RlayVectorEnv" if broker is None else "RlayVectorEnv.remote"
        raise TypeError(f"vector_kwargs {sorted(vector_kwargs)} for {id!r}: {where} {exc}") from None
    if broker is not None and env_kwargs:
        raise TypeError(
            f"env kwargs {sorted(env_kwargs)} cannot be applied to remote envs: their workers make them "
            f"(rlay worker {env_id} --env-kwargs JSON)"
        )
    if existing is not None:
        del gym.registry[id]  # (gymnasium would warn of an override: this is rlay's own, replaced on purpose)
    gym.register(id, vector_entry_point=VectorEntryPoint(env_id, broker, vector_kwargs), kwargs=env_kwargs)
