"""PPO on CartPole-v1 through rlay, in one file (after CleanRL's ppo.py).

    python examples/ppo_cartpole.py                                # embedded: private broker + workers
    python examples/ppo_cartpole.py --broker tcp://127.0.0.1:5555  # from `rlay up configs/cartpole-local.toml`

Which autoreset mode suits PPO? This script uses SAME_STEP: an env that ends an episode is reset within
that step, so every transition in the rollout is real (state, action, reward, next state), and the
episode's last observation comes in ``infos["final_obs"]``, from which a truncated episode (CartPole
stops at 500 steps) is bootstrapped. Under gymnasium's default NEXT_STEP the step after each episode
end only resets its env: its action is ignored, and that transition must be masked out of the
advantages and the loss, or PPO learns from a jump between episodes. Mind that gymnasium's vector
NormalizeObservation refuses any mode but NEXT_STEP (and NormalizeReward's statistics assume it): with
SAME_STEP, normalize inside the envs (a gymnasium.wrappers.NormalizeObservation around each env) or
in the agent.

The hyperparameters are RL Zoo's for CartPole-v1 (CleanRL's defaults, tuned for Atari, also solve it
but take longer and may forget it again). Prints a line every 10 updates, and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

import rlay


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=None, help="a running broker's front-end address (default: embedded)")
    parser.add_argument("--env-id", default="CartPole-v1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=32, help="steps per env per rollout")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="annealed linearly to 0")
    parser.add_argument("--gamma", type=float, default=0.98)
    parser.add_argument("--gae-lambda", type=float, default=0.8)
    parser.add_argument("--num-minibatches", type=int, default=1)
    parser.add_argument("--update-epochs", type=int, default=20)
    parser.add_argument("--clip-coef", type=float, default=0.2)
    parser.add_argument("--ent-coef", type=float, default=0.0)
    parser.add_argument("--vf-coef", type=float, default=0.5)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    return parser.parse_args()


def layer(in_features: int, out_features: int, std: float = np.sqrt(2)) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, std)
    nn.init.constant_(linear.bias, 0.0)
    return linear


class Agent(nn.Module):
    def __init__(self, obs_size: int, num_actions: int):
        super().__init__()
        self.critic = nn.Sequential(layer(obs_size, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, std=1.0))
        self.actor = nn.Sequential(
            layer(obs_size, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, num_actions, std=0.01)
        )

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def act(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        dist = Categorical(logits=self.actor(obs))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs)


def main() -> None:
    args = parse_args()
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_updates = args.total_timesteps // batch_size
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a small MLP: one thread is fastest, and leaves the other core to the workers

    # The envs: embedded (a private broker and local worker processes) or leased from a running broker.
    mode = gym.vector.AutoresetMode.SAME_STEP
    if args.broker is None:
        envs = rlay.RlayVectorEnv([lambda: gym.make(args.env_id)] * args.num_envs, autoreset_mode=mode)
    else:
        envs = rlay.RlayVectorEnv.remote(args.env_id, args.num_envs, broker=args.broker, autoreset_mode=mode)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "this PPO handles discrete actions only"

    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    shape = (args.num_steps, args.num_envs)
    obs = torch.zeros(shape + envs.single_observation_space.shape)
    actions = torch.zeros(shape, dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros(shape) for _ in range(4))
    returns_seen: deque[float] = deque(maxlen=20)
    episodes = 0

    start = time.perf_counter()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs)
    next_done = torch.zeros(args.num_envs)
    try:
        for update in range(1, num_updates + 1):
            for group in optimizer.param_groups:
                group["lr"] = (1.0 - (update - 1.0) / num_updates) * args.learning_rate

            # Roll out num_steps steps of every env.
            for step in range(args.num_steps):
                obs[step], dones[step] = next_obs, next_done
                with torch.no_grad():
                    action, logprob, _, value = agent.act(next_obs)
                actions[step], logprobs[step], values[step] = action, logprob, value
                next_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32)
                # A truncated episode did not end: bootstrap from the value of its last observation.
                for i in np.flatnonzero(truncations & ~terminations):
                    with torch.no_grad():
                        final_value = agent.value(torch.as_tensor(infos["final_obs"][i]))
                    reward[i] += args.gamma * final_value
                rewards[step] = reward
                next_obs = torch.as_tensor(next_obs)
                next_done = torch.as_tensor(terminations | truncations, dtype=torch.float32)
                for i in np.flatnonzero(infos.get("_episode", [])):
                    returns_seen.append(float(infos["episode"]["r"][i]))
                    episodes += 1

            # Generalized advantage estimation; dones[t + 1] cuts the sum where an episode ended.
            with torch.no_grad():
                next_value = agent.value(next_obs)
                advantages = torch.zeros_like(rewards)
                last_gae = torch.zeros(args.num_envs)
                for t in reversed(range(args.num_steps)):
                    if t == args.num_steps - 1:
                        next_nonterminal, next_values = 1.0 - next_done, next_value
                    else:
                        next_nonterminal, next_values = 1.0 - dones[t + 1], values[t + 1]
                    delta = rewards[t] + args.gamma * next_values * next_nonterminal - values[t]
                    last_gae = delta + args.gamma * args.gae_lambda * next_nonterminal * last_gae
                    advantages[t] = last_gae
                returns = advantages + values

            # Optimize the clipped surrogate objective over shuffled minibatches.
            b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
            b_actions, b_logprobs = actions.reshape(-1), logprobs.reshape(-1)
            b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
            for _ in range(args.update_epochs):
                for mb in torch.randperm(batch_size).split(minibatch_size):
                    _, new_logprob, entropy, new_value = agent.act(b_obs[mb], b_actions[mb])
                    ratio = (new_logprob - b_logprobs[mb]).exp()
                    mb_adv = (b_advantages[mb] - b_advantages[mb].mean()) / (b_advantages[mb].std() + 1e-8)
                    pg_loss = torch.max(
                        -mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                    ).mean()
                    v_loss = 0.5 * ((new_value - b_returns[mb]) ** 2).mean()
                    loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()

            if update % 10 == 0 or update == num_updates:
                steps = update * batch_size
                mean = np.mean(returns_seen) if returns_seen else float("nan")
                sps = steps / (time.perf_counter() - start)
                print(f"step {steps:>7}  mean return (last 20 episodes) {mean:6.1f}  {sps:5.0f} steps/s", flush=True)
    finally:
        envs.close()

    summary = {
        "steps": num_updates * batch_size,
        "seconds": round(time.perf_counter() - start, 1),
        "episodes": episodes,
        "mean_return_last_20": round(float(np.mean(returns_seen)), 1) if returns_seen else None,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
