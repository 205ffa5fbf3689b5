"""Stable-Baselines3 PPO on CartPole-v1 through rlay.

    python examples/sb3_ppo_cartpole.py                                # embedded: private broker + workers
    python examples/sb3_ppo_cartpole.py --broker tcp://127.0.0.1:5555  # from `rlay up configs/cartpole-local.toml`

The hyperparameters are RL Zoo's for CartPole-v1 (rl-baselines3-zoo, hyperparams/ppo.yml). SB3 steps
an RlayVecEnv (rlay/integrations/sb3.py), which needs gymnasium's SAME_STEP autoreset mode; VecMonitor
records the episodes. Prints one line per rollout and, at the end, a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from rlay.integrations.sb3 import make_vec_env


def linear(start: float):
    """A schedule from ``start`` down to 0 over the run (SB3 passes the fraction of it that remains)."""
    return lambda remaining: remaining * start


class Progress(BaseCallback):
    """Prints the mean return of the last 20 episodes after each rollout."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.next_print = every, every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self.next_print and self.model.ep_info_buffer:
            self.next_print += self.every
            returns = [e["r"] for e in self.model.ep_info_buffer][-20:]
            print(f"step {self.num_timesteps:>7}  mean return (last 20 episodes) {np.mean(returns):6.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=None, help="a running broker's front-end address (default: embedded)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)  # a small MLP: one thread is fastest, and leaves the other core to the workers
    env = VecMonitor(make_vec_env("CartPole-v1", args.num_envs, args.broker))
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(0.001),
        clip_range=linear(0.2),
        seed=args.seed,
        device="cpu",
    )
    start = time.perf_counter()
    try:
        model.learn(args.total_timesteps, callback=Progress(every=10_000))
    finally:
        env.close()
    returns = [e["r"] for e in model.ep_info_buffer]
    summary = {
        "steps": model.num_timesteps,
        "seconds": round(time.perf_counter() - start, 1),
        "episodes": env.episode_count,
        "mean_return_last_20": round(float(np.mean(returns[-20:])), 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
