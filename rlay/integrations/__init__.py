"""Adapters from rlay to the trainers people use. Each needs its trainer's package, and nothing in rlay
imports them: import the one you use.

- ``rlay.integrations.sb3``: a stable-baselines3 ``VecEnv`` over an RlayVectorEnv (``pip install 'rlay[sb3]'``).
- RLlib needs no adapter: ``rlay.register`` (rlay/registration.py) makes ``gymnasium.make_vec`` return
  an RlayVectorEnv, which is how RLlib's env runners build their envs.
- CleanRL-style scripts use RlayVectorEnv as they use gymnasium's vector envs: ``examples/ppo_cartpole.py``.
"""
