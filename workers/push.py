"""Push mode: the game owns its main loop and asks for decisions (the "ServerEnv" inversion).

The reference game-side API; a C++ or C# engine plugin mirrors it (docs/protocol.md,
"Push workers")::

    from workers.push import PushWorker

    game = PushWorker("tcp://127.0.0.1:5556", env_id="MyGame-v0", observation_space=obs_space,
                      action_space=act_space, num_agents=2)
    cmd = game.decide(0)                      # first decision: no state yet; always a reset
    while cmd.kind != "close":
        if cmd.kind == "reset":
            obs, info = my_game.reset(0, seed=cmd.seed, options=cmd.options)
            cmd = game.decide(0, obs, info=info)
        else:                                  # "action"
            my_game.apply(0, cmd.action)
            ...                                # the game runs until agent 0's next decision point
            cmd = game.decide(0, obs, reward, terminated, truncated, info)
    game.close()

``decide`` blocks: the form for one agent per game. A real-time game that keeps
ticking and rendering while it waits uses ``submit`` (hand over the state) and
``poll`` (check for the next command, with a timeout) instead. A game with
several agents hands over each agent's state with ``submit`` as it reaches its
decision point and collects commands with ``commands(timeout)``; it may block
there only while *every* agent waits for a command (a trainer's step, or a
reset of some agents, needs the other agents to reach their decision points).

The game never resets by itself: it resets when told to. Autoreset follows the
trainer's AutoresetMode exactly as for hosted envs; this module runs the same
plan (workers/autoreset.py), handing each env command to the game at its next
decision point. The API is not thread-safe: call it from the game loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from rlay import protocol as P
from rlay.spaces import unflatten
from rlay.values import WireError
from rlay.wire import decode_leaves
from workers import autoreset
from workers.base import Request, WorkerBase, failure_report

__all__ = ["PushWorker", "Command"]


@dataclass
class Command:
    """What the game is told at a decision point: ``kind`` is "action", "reset" or "close"."""

    kind: str
    action: Any = None
    seed: int | None = None
    options: dict | None = None


class _Batch:
    """A broker request being served by some of this game's agents."""

    def __init__(self, request: Request):
        self.request = request
        self.results: dict[int, dict] = {}
        self.failures: list[dict] = []
        self.waiting = set(request.envs)
        self.answered = False


class _Agent:
    def __init__(self) -> None:
        self.batch: _Batch | None = None  # the request it is serving
        self.plan: autoreset.Plan | None = None
        self.next: tuple | None = None  # env command the plan asked for, not yet handed to the game
        self.handed: tuple | None = None  # env command handed to the game, awaiting its state
        self.deciding = False  # at a decision point: submitted, waiting for a command
        self.stale = False  # its handed command belongs to a request the broker forgot
        self.started = False  # has been reset at least once
        self.done = False  # its last step ended the episode


class PushWorker(WorkerBase):
    """A game process serving ``num_agents`` env slots from its own main loop.

    It registers when made, waiting up to ``register_timeout`` seconds, and pings the broker
    from a thread as often as the broker says when it registers (protocol 8.5). ``curve`` is
    as for ``rlay.RlayVectorEnv.remote``.
    """

    mode = P.PUSH_MODE

    def __init__(
        self,
        broker: str,
        *,
        env_id: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_agents: int = 1,
        metadata: dict | None = None,
        render_mode: str | None = None,
        host: str | None = None,
        register_timeout: float = 60.0,
        curve: Any = None,
    ):
        super().__init__(
            broker,
            env_id=env_id,
            observation_space=observation_space,
            action_space=action_space,
            num_envs=num_agents,
            metadata=metadata,
            render_mode=render_mode,
            host=host,
            register_timeout=register_timeout,
            curve=curve,
        )
        self.agents = [_Agent() for _ in range(num_agents)]
        self.connect()

    # -- the game's API -------------------------------------------------------------

    def decide(
        self,
        agent: int,
        obs: Any = None,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        info: dict | None = None,
        *,
        timeout: float | None = None,
    ) -> Command:
        """Hand over ``agent``'s state and block until its next command.

        The state is what the last command produced: after "reset", ``obs``
        and ``info``; after "action", all five. An agent's first call passes
        no state. ``timeout`` (seconds) raises TimeoutError; None waits until
        a command or a disconnect arrives.
        """
        self.submit(agent, obs, reward, terminated, truncated, info)
        return self.wait(agent, timeout)

    def submit(
        self,
        agent: int,
        obs: Any = None,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        info: dict | None = None,
    ) -> None:
        """Hand over ``agent``'s state without waiting (see :meth:`decide`)."""
        a = self._agent(agent)
        if a.deciding:
            raise RuntimeError(f"agent {agent} already submitted; wait for its command")
        if a.stale:  # the state answers a request the restarted broker forgot: drop it
            a.stale, a.handed, a.deciding = False, None, True
            return
        if a.handed is None and obs is not None:
            raise RuntimeError(f"agent {agent} was not given a command, so it has no state to submit")
        if a.handed is not None and obs is None:
            raise RuntimeError(f"agent {agent} owes the state that its {a.handed[0]!r} command produced")
        a.deciding = True
        if a.handed is None:
            return  # a first decision: nothing to report yet
        info = {} if info is None else info
        state = (obs, info) if a.handed[0] == "reset" else (obs, reward, terminated, truncated, info)
        a.handed = None
        self._advance(agent, state)

    def poll(self, agent: int, timeout: float = 0.0) -> Command | None:
        """``agent``'s next command if one arrives within ``timeout`` seconds, else None."""
        a = self._agent(agent)
        if not a.deciding:
            raise RuntimeError(f"agent {agent} is not at a decision point: submit() its state first")
        self._pump_until(lambda: a.next is not None, timeout)
        if self.stopping:
            return Command("close")
        return self._hand(agent) if a.next is not None else None

    def commands(self, timeout: float = 0.0) -> dict[int, Command]:
        """The next command of every agent at a decision point that has one, waiting up to ``timeout`` s for one.

        The form for games with several agents: block on it only while every
        agent waits for a command; otherwise poll (timeout 0) and keep ticking.
        After a disconnect, every agent gets "close".
        """

        def ready(a: _Agent) -> bool:
            return a.deciding and a.next is not None

        self._pump_until(lambda: any(ready(a) for a in self.agents), timeout)
        if self.stopping:
            return {j: Command("close") for j in range(len(self.agents))}
        return {j: self._hand(j) for j, a in enumerate(self.agents) if ready(a)}

    def _hand(self, agent: int) -> Command:
        a = self.agents[agent]
        a.handed, a.next, a.deciding = a.next, None, False
        if a.handed[0] == "reset":
            return Command("reset", seed=a.handed[1], options=a.handed[2])
        return Command("action", action=a.handed[1])

    def _pump_until(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready() and not self.stopping:
            remaining = deadline - time.monotonic()
            self._pump(max(0.0, min(remaining, P.IDLE_POLL_MS / 1000)))
            if remaining <= 0:
                break

    def wait(self, agent: int, timeout: float | None = None) -> Command:
        """Block until ``agent``'s next command; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_s = (
                P.IDLE_POLL_MS / 1000 if deadline is None else min(P.IDLE_POLL_MS / 1000, deadline - time.monotonic())
            )
            command = self.poll(agent, max(0.0, slice_s))
            if command is not None:
                return command
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no command for agent {agent} of {self.env_id!r} within {timeout:g} s (broker {self.broker})"
                )

    def close(self) -> None:
        """Leave the broker: the trainer's pending calls on these agents fail, naming them."""
        self.disconnect()
        self.stopping = True

    # -- plumbing -------------------------------------------------------------------

    def _agent(self, agent: int) -> _Agent:
        if not 0 <= agent < len(self.agents):
            raise IndexError(f"agent {agent} out of range: this game registered {len(self.agents)} agent(s)")
        return self.agents[agent]

    def _pump(self, timeout: float) -> None:
        """Read what the broker sent, for up to ``timeout`` seconds."""
        lost = self.broker_lost() if self.sock is not None else None
        if lost:
            self.register_again(lost)
            for agent in self.agents:  # the broker forgot the requests they were serving
                agent.batch = agent.plan = agent.next = None
                agent.stale = agent.handed is not None  # the game owes state nobody waits for
        if self.sock is None or not self.sock.poll(timeout * 1000):
            self.segments.prune()
            return
        while self.sock is not None and self.sock.poll(0):
            frames = self.sock.recv_multipart(copy=False)
            self.heartbeat.received()
            request = self.read(frames)
            if isinstance(request, Request):
                reply = self._start(request)
            else:
                reply = request
            if reply is not None:
                self.send_to_broker(reply)

    def _start(self, request: Request) -> list[Any] | None:
        """Begin serving a request: give each of its agents a plan. Replies only on immediate errors."""
        try:
            factories = self._plan_factories(request)
        except (WireError, KeyError, TypeError, ValueError) as exc:
            return self.bad_message(request.req, exc)
        batch = _Batch(request)
        for j, make_plan in zip(request.envs, factories):
            if self.agents[j].batch is not None:
                batch.failures.append(
                    {
                        "env": j,
                        "type": "RuntimeError",
                        "traceback": "",
                        "message": f"agent {j} is still serving an earlier request",
                    }
                )
                batch.waiting.discard(j)
            else:
                self._begin(j, batch, make_plan)
        if not batch.waiting and not batch.answered:
            batch.answered = True
            return self._finish(batch)
        return None

    def _plan_factories(self, request: Request) -> list:
        """For each agent of the request, a function creating its plan (raising if it may not run)."""
        body = request.body
        if request.kind == P.RESET:
            seeds, options = body.get("seeds"), body.get("options")
            if not autoreset.valid_seeds(seeds, len(request.envs)):
                raise WireError("reset needs 'seeds', one int or nil per env")
            return [lambda n=n: autoreset.reset_plan(seeds[n], options) for n in range(len(request.envs))]
        if request.kind == P.STEP:
            mode = body.get("autoreset")
            if mode not in autoreset.MODES:
                raise WireError(f"unknown autoreset mode {mode!r}")
            leaves = decode_leaves(
                body.get("actions"), request.frames, self.act_leaves, len(request.envs), check_dtype=False
            )

            def make(j: int, n: int) -> autoreset.Plan:
                if not self.agents[j].started:
                    raise RuntimeError(f"agent {j} was stepped before its first reset")
                action = unflatten(self.act_space, [leaf[n] for leaf in leaves])
                return autoreset.step_plan(mode, self.agents[j].done, action, j)

            return [lambda j=j, n=n: make(j, n) for n, j in enumerate(request.envs)]
        unsupported = f"push envs do not support {request.kind}(): the game owns its env objects"
        return [lambda: _raise(NotImplementedError(unsupported)) for _ in request.envs]

    def _begin(self, agent: int, batch: _Batch, make_plan) -> None:
        a = self.agents[agent]
        a.batch = batch
        try:
            a.plan = make_plan()
        except Exception as exc:
            self._settle(agent, failure=failure_report(agent, exc))
            return
        self._advance(agent, None)

    def _advance(self, agent: int, state: tuple | None) -> None:
        """Feed the game's state to ``agent``'s plan (None: start it); keep its next command or its outcome."""
        a = self.agents[agent]
        try:
            command = next(a.plan) if state is None else a.plan.send(state)
        except StopIteration as stop:
            a.started = True
            a.done = bool(stop.value.get("terminated") or stop.value.get("truncated"))
            self._settle(agent, result=stop.value)
        except Exception as exc:
            self._settle(agent, failure=failure_report(agent, exc))
        else:
            a.next = command

    def _settle(self, agent: int, result: dict | None = None, failure: dict | None = None) -> None:
        """Record an agent's outcome; answer the broker once every agent of the request has one."""
        a = self.agents[agent]
        batch = a.batch
        a.batch = a.plan = a.next = a.handed = None
        if failure is not None:
            batch.failures.append(failure)
        else:
            batch.results[agent] = result
        batch.waiting.discard(agent)
        if not batch.waiting and not batch.answered and self.sock is not None:
            batch.answered = True
            self.send_to_broker(self._finish(batch))

    def _finish(self, batch: _Batch) -> list[Any]:
        request = batch.request
        if batch.failures:  # (in envs order, as a command worker lists them)
            order = {j: n for n, j in enumerate(request.envs)}
            return self.env_error(request.req, sorted(batch.failures, key=lambda f: order[f["env"]]))
        try:
            results = [batch.results[j] for j in request.envs]
            columns = {key: [r[key] for r in results] for key in results[0] if key != "obs"}
            return self.reply(request, [r["obs"] for r in results], columns)
        except Exception as exc:
            reports = getattr(exc, "reports", None) or [failure_report(request.envs[0], exc)]
            return self.env_error(request.req, reports)


def _raise(exc: Exception):
    raise exc
