"""Workers that break the protocol on purpose, one way each: `rlay conformance` must fail them.

    python -m tests.mutants MUTATION [--envs N]      (the broker's address in RLAY_BROKER)

Each hosts the conformance env in the reference command worker with one thing changed:

- ``no-autoreset``: steps an env whose episode ended instead of resetting it (NextStep);
- ``wrong-dtype``: sends float32 observation leaves as float64;
- ``deaf-heartbeat``: ignores the heartbeat interval the broker announces;
- ``answers-errors``: answers the broker's ``error`` messages.
"""

from __future__ import annotations

import argparse
import os

import gymnasium as gym
import numpy as np

import rlay  # noqa: F401  (registers rlay/Conformance-v0)
from rlay import protocol as P
from workers import autoreset, base
from workers.worker import Worker

MUTATIONS = ("no-autoreset", "wrong-dtype", "deaf-heartbeat", "answers-errors")


def mutate(mutation: str) -> None:
    if mutation == "no-autoreset":
        step_env = autoreset.step_env
        autoreset.step_env = lambda env, mode, done, action, index: step_env(env, mode, False, action, index)
    elif mutation == "wrong-dtype":
        encode_leaves = base.encode_leaves

        def widened(leaves, rows=None):
            return encode_leaves(
                [np.asarray(x, np.float64) if getattr(x, "dtype", None) == np.float32 else x for x in leaves], rows
            )

        base.encode_leaves = widened
    elif mutation == "deaf-heartbeat":
        from rlay.heartbeat import Heartbeat

        Heartbeat.adopt = lambda self, answer: None
    elif mutation == "answers-errors":
        read = Worker.read

        def answering(self, frames):
            answer = read(self, frames)
            if answer is None and not self.stopping:  # an error (a disconnect sets stopping)
                return [base.header(P.ERROR, req=None, code=P.E_BAD_MESSAGE, message="answering an error")]
            return answer

        Worker.read = answering


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mutation", choices=MUTATIONS)
    parser.add_argument("--envs", type=int, default=4)
    args = parser.parse_args()
    mutate(args.mutation)
    worker = Worker(
        [lambda: gym.make("rlay/Conformance-v0")] * args.envs, os.environ["RLAY_BROKER"], env_id="rlay/Conformance-v0"
    )
    worker.install_signal_handlers()
    worker.run()


if __name__ == "__main__":
    main()
