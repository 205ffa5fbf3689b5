"""A stable-baselines3 VecEnv over an RlayVectorEnv, embedded or remote.

Example::

    >>> from stable_baselines3 import PPO
    >>> from stable_baselines3.common.vec_env import VecMonitor
    >>> from rlay.integrations.sb3 import make_vec_env
    >>> env = VecMonitor(make_vec_env("CartPole-v1", 8))  # broker="tcp://HOST:5555" to lease remote envs
    >>> model = PPO("MlpPolicy", env).learn(10_000)  # doctest: +SKIP
    >>> env.close()

SB3 wants an env that resets in the step that ends an episode, and finds the last observation of the
episode in ``info["terminal_observation"]``: gymnasium's SAME_STEP autoreset mode, whose
``final_obs`` and ``final_info`` carry it. So RlayVecEnv takes a vector env in SAME_STEP mode and
refuses the others (NEXT_STEP would hand SB3 a step whose action is ignored; DISABLED never resets).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from rlay import make_vec

try:
    from stable_baselines3.common.vec_env import VecEnv
    from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
except ImportError as exc:  # the base install has no trainer in it
    raise ImportError(
        "rlay.integrations.sb3 needs stable-baselines3 (and torch): pip install 'rlay[sb3]' "
        "(or, in a checkout, pip install -e '.[train]')"
    ) from exc

__all__ = ["RlayVecEnv", "make_vec_env", "infos_to_list"]

WORKER_LOST_KEY = "worker_lost"  # rlay's info key for an env replaced after its worker was lost (README, Failures)


class RlayVecEnv(VecEnv):
    """SB3's ``VecEnv`` API over a gymnasium vector env in SAME_STEP mode (an RlayVectorEnv, or any).

    Args:
        venv: the vector env; closed by :meth:`close`.

    ``step_wait`` returns SB3's list of per-env info dicts: gymnasium's ``_key`` masks become absent
    keys; an env whose episode ended gets the info of its last step, with ``terminal_observation``
    and ``TimeLimit.truncated`` (truncated and not terminated), and its reset's info goes to
    ``reset_infos``, as DummyVecEnv does. Rewards stay float64 (DummyVecEnv casts them to float32).

    ``get_attr``, ``set_attr`` and ``env_method`` go to the envs through the vector env's
    ``get_attr``, ``set_attr`` and ``call``, which reach every env: ``get_attr`` picks ``indices``
    from the answers, while ``set_attr`` and ``env_method`` refuse a subset of the envs rather than
    touch the others.
    """

    def __init__(self, venv: VectorEnv):
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"stable-baselines3 needs a vector env in AutoresetMode.SAME_STEP (an episode's last observation "
                f"in the step's info, the reset observation in its place); {venv!r} is in {mode}: make it with "
                "autoreset_mode=AutoresetMode.SAME_STEP, or use rlay.integrations.sb3.make_vec_env()"
            )
        if getattr(venv, "copy", True) is False:
            raise ValueError(
                "stable-baselines3 keeps the previous observations across a step, which an RlayVectorEnv made "
                "with copy=False overwrites: make it with copy=True"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.metadata = dict(venv.metadata)

    def reset(self) -> VecEnvObs:
        # SB3 keeps a seed and an options dict per env, used by the next reset only; gymnasium's reset
        # takes one options dict for all envs: envs whose options differ are reset in groups.
        groups: dict[int, list[int]] = {}
        for i, options in enumerate(self._options):
            first = next((g for g in groups if self._options[g] == options), i)
            groups.setdefault(first, []).append(i)
        for first, rows in groups.items():
            options = dict(self._options[first])
            if len(groups) > 1:
                mask = np.zeros(self.num_envs, dtype=np.bool_)
                mask[rows] = True
                options["reset_mask"] = mask
            obs, infos = self.venv.reset(seed=list(self._seeds), options=options or None)
            for i, info in enumerate(infos_to_list(infos, self.num_envs)):
                if i in rows:
                    self.reset_infos[i] = info
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminations, truncations, vector_infos = self.venv.step_wait()
        dones = terminations | truncations
        infos = infos_to_list(vector_infos, self.num_envs)
        for i, info in enumerate(infos):
            if not dones[i]:
                info["TimeLimit.truncated"] = False
                continue
            # SAME_STEP: the env's info is its reset's; the ended step's is in final_info
            reset_info = {k: v for k, v in info.items() if k not in ("final_obs", "final_info")}
            self.reset_infos[i] = reset_info
            ended = dict(info.get("final_info", {}))
            if reset_info.get(WORKER_LOST_KEY):  # its worker was lost: the truncation says so too
                ended[WORKER_LOST_KEY] = True
            ended["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            ended["terminal_observation"] = info["final_obs"]
            infos[i] = ended
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._refuse_subset(indices, f"set_attr({attr_name!r})")
        self.venv.set_attr(attr_name, [value] * self.num_envs)  # (a list or tuple would be taken as per-env values)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        self._refuse_subset(indices, f"env_method({method_name!r})")
        return list(self.venv.call(method_name, *method_args, **method_kwargs))

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """False for each env. The envs live in worker processes and a wrapper class cannot cross rlay's
        wire (nothing from it is unpickled), so this cannot look; envs that rlay makes from a gymnasium
        id carry no SB3 wrapper. VecMonitor around this VecEnv records the episodes."""
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None for _ in range(self.num_envs)]
        return list(self.venv.render())

    def _refuse_subset(self, indices: VecEnvIndices, what: str) -> None:
        if sorted(set(self._get_indices(indices))) != list(range(self.num_envs)):
            raise NotImplementedError(
                f"{what} with indices={indices!r}: a vector env's call and set_attr reach every env, and running "
                "it on the others too could change them; call it with indices=None"
            )


def make_vec_env(
    env_id: str, num_envs: int, broker: str | None = None, *, vector_kwargs: dict | None = None, **env_kwargs: Any
) -> RlayVecEnv:
    """An RlayVecEnv over ``rlay.make_vec(env_id, num_envs, broker, ...)`` in SAME_STEP mode: embedded
    (a private broker and local workers) when ``broker`` is None, else leased from the broker at that
    address. ``vector_kwargs`` go to RlayVectorEnv, ``env_kwargs`` to ``gymnasium.make`` (embedded only)."""
    vector_kwargs = dict(vector_kwargs or {})
    mode = vector_kwargs.setdefault("autoreset_mode", AutoresetMode.SAME_STEP)
    if AutoresetMode(mode) != AutoresetMode.SAME_STEP:
        raise ValueError(f"stable-baselines3 needs autoreset_mode=AutoresetMode.SAME_STEP, got {mode!r}")
    return RlayVecEnv(make_vec(env_id, num_envs, broker, vector_kwargs=vector_kwargs, **env_kwargs))


def infos_to_list(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector infos (a dict of arrays, ``_key`` masking who has ``key``; nested dicts alike)
    as one dict per env, as gymnasium's DictInfoToList wrapper gives them."""
    per_env: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        values = infos_to_list(value, num_envs) if isinstance(value, dict) else value
        if len(values) != num_envs:
            raise ValueError(f"info {key!r} has {len(values)} values for {num_envs} envs")
        has = infos.get(f"_{key}", np.ones(num_envs, dtype=np.bool_))
        for i in np.flatnonzero(has):
            per_env[i][key] = values[i]
    return per_env
