"""rlay: one gymnasium VectorEnv over envs that live in other processes and hosts.

>>> import rlay
>>> envs = rlay.make_vec("CartPole-v1", num_envs=8)  # embedded: private broker + local workers
>>> obs, infos = envs.reset(seed=0)
>>> envs.close()
"""

import gymnasium
from gymnasium.vector import AutoresetMode

from rlay.env import RlayEnv
from rlay.errors import (
    BrokerError,
    BrokerLostError,
    LeaseError,
    RemoteEnvError,
    RlayError,
    RlayTimeoutError,
    SpacesMismatch,
    WorkerLostError,
)
from rlay.registration import register
from rlay.vector import RlayVectorEnv

__version__ = "0.1.0"

# The conformance env (docs/protocol.md, Appendix B) by its gymnasium id, so that any process that
# imports rlay can make it: `rlay worker rlay/Conformance-v0`. Its module loads only when made.
if "rlay/Conformance-v0" not in gymnasium.registry:
    gymnasium.register("rlay/Conformance-v0", entry_point="rlay.conformance.env:ConformanceEnv")

__all__ = [
    "AutoresetMode",
    "BrokerError",
    "BrokerLostError",
    "LeaseError",
    "RemoteEnvError",
    "RlayEnv",
    "RlayError",
    "RlayTimeoutError",
    "RlayVectorEnv",
    "SpacesMismatch",
    "WorkerLostError",
    "make_vec",
    "register",
]


def make_vec(env_id, num_envs, broker=None, *, vector_kwargs=None, **env_kwargs):
    """Make an RlayVectorEnv of ``num_envs`` copies of ``env_id``.

    Embedded (a private broker and local workers) when ``broker`` is None;
    otherwise lease slots of ``env_id`` from the broker at that address.
    ``vector_kwargs`` go to ``RlayVectorEnv(...)``, or with a broker to ``RlayVectorEnv.remote(...)``
    (which has no ``envs_per_worker``, ``env_threads``, ``context`` or ``daemon``: the workers are not
    the trainer's); ``env_kwargs`` to ``gymnasium.make``
    (embedded only: remote envs are made by their workers, see
    ``rlay worker --env-kwargs``).
    """
    import functools

    import gymnasium as gym

    vector_kwargs = dict(vector_kwargs or {})
    if broker is None:
        return RlayVectorEnv([functools.partial(gym.make, env_id, **env_kwargs)] * num_envs, **vector_kwargs)
    if env_kwargs:
        raise TypeError(
            f"env kwargs {sorted(env_kwargs)} cannot be applied to remote envs: the workers make them "
            "(rlay worker ENV --env-kwargs JSON)"
        )
    return RlayVectorEnv.remote(env_id, num_envs, broker, **vector_kwargs)
