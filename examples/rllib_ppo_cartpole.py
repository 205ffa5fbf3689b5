"""RLlib PPO (the new API stack) on CartPole-v1 with its envs leased from an rlay broker.

    rlay up configs/cartpole-local.toml &                                  # a broker and 8 CartPole slots
    RAY_USAGE_STATS_ENABLED=0 python examples/rllib_ppo_cartpole.py --broker tcp://127.0.0.1:5555

RLlib's env runners build their envs with ``gymnasium.make_vec(id, n, vectorization_mode=...)``.
``rlay.register`` gives gymnasium an id whose vector entry point is an RlayVectorEnv, and
``gym_env_vectorize_mode="vector_entry_point"`` makes the env runners use it: each leases its
``--envs-per-runner`` envs from the broker. RLlib steps them in gymnasium's default NEXT_STEP
autoreset mode (RlayVectorEnv's default too). An env runner that is a Ray actor is a process of
its own: a Ray setup hook registers the id there as well.

Ray starts on this host alone (``--ray-address local``). Prints one line per training iteration and, at the
end, a JSON summary line (with the addresses of Ray's nodes and every env runner's vector env).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

import rlay

ENV = "rlay/CartPole-v1"  # the id RLlib asks gymnasium for


def registration(broker: str):
    """A function that registers ENV with gymnasium, for this process and Ray's worker processes."""

    def register_rlay_cartpole() -> None:
        rlay.register(ENV, env_id="CartPole-v1", broker=broker, vector_kwargs={"timeout": 60})

    return register_rlay_cartpole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, help="the broker's front-end address, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations at most")
    parser.add_argument("--target-return", type=float, default=475.0, help="stop once the mean return reaches it")
    parser.add_argument("--env-runners", type=int, default=1, help="env runner actors (0: sample in this process)")
    parser.add_argument("--envs-per-runner", type=int, default=8, help="envs each env runner leases")
    parser.add_argument("--batch-size", type=int, default=4000, help="env steps per training iteration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ray-address", default="local", help="local: start Ray on this host alone; auto: the cluster it joined"
    )
    args = parser.parse_args()

    register = registration(args.broker)
    register()
    ray.init(
        address=args.ray_address,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"worker_process_setup_hook": register},
    )
    config = (
        PPOConfig()
        .environment(ENV)
        .env_runners(
            num_env_runners=args.env_runners,
            num_envs_per_env_runner=args.envs_per_runner,
            gym_env_vectorize_mode="vector_entry_point",
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)
        .training(
            lr=3e-4,
            num_epochs=6,
            vf_loss_coeff=0.01,
            train_batch_size_per_learner=args.batch_size,
            minibatch_size=min(128, args.batch_size),
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="linear", vf_share_layers=True))
        .debugging(seed=args.seed)
    )
    start = time.perf_counter()
    algo = config.build_algo()
    try:
        mean_return, steps = math.nan, 0
        for iteration in range(1, args.iterations + 1):
            runners = algo.train()["env_runners"]
            mean_return = runners.get("episode_return_mean", math.nan)
            steps = int(runners["num_env_steps_sampled_lifetime"])
            print(f"iteration {iteration:>3}  steps {steps:>7}  mean return {mean_return:6.1f}", flush=True)
            if mean_return >= args.target_return:
                break
        if args.env_runners:
            envs = algo.env_runner_group.foreach_env_runner(
                lambda runner: repr(runner.env.unwrapped), local_env_runner=False
            )
        else:
            envs = [repr(algo.env_runner.env.unwrapped)]
        summary = {
            "iterations": iteration,
            "steps": steps,
            "seconds": round(time.perf_counter() - start, 1),
            "mean_return": round(mean_return, 1),
            "envs": envs,
            "ray_nodes": sorted(node["NodeManagerAddress"] for node in ray.nodes()),
        }
    finally:
        algo.stop()
        ray.shutdown()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
