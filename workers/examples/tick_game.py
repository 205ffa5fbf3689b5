"""An example game that owns its main loop and pushes decisions to rlay.

It ticks at a fixed rate. Each of its agents wraps a real gymnasium env and
reaches a decision point every ``--every`` ticks, the agents staggered so that
they decide at different ticks. At a decision point an agent hands over its
state and keeps ticking (it idles in the game world) until its command comes:
the non-blocking form a real-time game uses. ``--blocking`` instead lines the
agents up on the same ticks and pauses the loop while every agent waits.

    python -m workers.examples.tick_game CartPole-v1 --agents 3 --every 4 --tick-hz 240

then, in a trainer::

    envs = RlayVectorEnv.remote("CartPole-v1", 3, broker="tcp://127.0.0.1:5555")

(with ``rlay broker`` running). Ctrl-C, SIGTERM or the broker shutting down ends the game.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time

from rlay import protocol as P
from workers.loader import env_factory
from workers.push import Command, PushWorker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.examples.tick_game", description=__doc__.split("\n\n")[0])
    parser.add_argument("env", help="gymnasium id or package.module:factory of the env each agent wraps")
    parser.add_argument(
        "--broker",
        default=os.environ.get("RLAY_BROKER", P.DEFAULT_BACKEND),
        help="the broker's worker (back-end) address [default: $RLAY_BROKER, or %(default)s]",
    )
    parser.add_argument("--agents", type=int, default=2, help="agents (env slots) in this game")
    parser.add_argument("--every", type=int, default=4, help="ticks between an agent's decision points")
    parser.add_argument("--tick-hz", type=float, default=240.0, help="tick rate of the game loop")
    parser.add_argument(
        "--warmup", type=int, default=0, help="ticks before the first decision point (a loading screen)"
    )
    parser.add_argument("--blocking", action="store_true", help="agents decide on the same ticks; the loop blocks")
    parser.add_argument(
        "--report-ticks", action="store_true", help="add info['tick'] (breaks equality with plain envs)"
    )
    parser.add_argument(
        "--quit-after",
        type=int,
        default=None,
        metavar="N",
        help="leave when the Nth command arrives, without carrying it out (a crash mid-episode)",
    )
    parser.add_argument("--env-kwargs", default=None, help="JSON object of env keyword arguments")
    parser.add_argument("--name", default=None, help="env id to register under [default: ENV]")
    return parser.parse_args(argv)


class Agent:
    """One env in the game world, and the state it reports at its next decision point."""

    def __init__(self, env, first_decision: int):
        self.env = env
        self.state: dict | None = None  # None until the first command has been carried out
        self.next_decision = first_decision
        self.waiting = False  # submitted its state; the game idles it until its command comes
        self.report_ticks = False

    def carry_out(self, command: Command, tick: int, every: int, report_ticks: bool) -> None:
        if command.kind == "reset":
            obs, info = self.env.reset(seed=command.seed, options=command.options)
            self.state = {"obs": obs, "info": info}
        else:
            obs, reward, terminated, truncated, info = self.env.step(command.action)
            self.state = {"obs": obs, "reward": reward, "terminated": terminated, "truncated": truncated, "info": info}
        self.report_ticks = report_ticks
        self.next_decision = tick + every

    def submission(self, tick: int) -> dict:
        if self.state is None:
            return {}
        state = dict(self.state)
        if self.report_ticks:
            state["info"] = {**state["info"], "tick": tick}
        return state


def run(args: argparse.Namespace) -> None:
    make = env_factory(args.env, json.loads(args.env_kwargs) if args.env_kwargs else None)
    envs = [make() for _ in range(args.agents)]
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    game = PushWorker(
        args.broker,
        env_id=args.name or args.env,
        observation_space=envs[0].observation_space,
        action_space=envs[0].action_space,
        num_agents=args.agents,
        metadata=envs[0].metadata,
        render_mode=envs[0].render_mode,
    )
    stagger = 0 if args.blocking else 1
    agents = [Agent(env, args.warmup + j * stagger) for j, env in enumerate(envs)]
    period = 1.0 / args.tick_hz
    tick, next_tick, commands = 0, time.monotonic(), 0
    try:
        while not stop["now"]:
            deciding = [j for j, a in enumerate(agents) if not a.waiting and tick >= a.next_decision]
            for j in deciding:
                game.submit(j, **agents[j].submission(tick))
                agents[j].waiting = True
            # Agents without a command idle while the game keeps ticking; a blocking game
            # pauses instead, but only while no agent has anything to do.
            block = args.blocking and all(a.waiting for a in agents)
            for j, command in game.commands(timeout=P.IDLE_POLL_MS / 1000 if block else 0).items():
                commands += 1
                if command.kind == "close" or commands == args.quit_after:
                    stop["now"] = True
                    break
                agents[j].waiting = False
                agents[j].carry_out(command, tick, args.every, args.report_ticks)
            tick += 1
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))  # the game's frame timer
    finally:
        game.close()
        for env in envs:
            env.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
