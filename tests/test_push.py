"""Push mode: games that own their main loop, behind the same RlayVectorEnv."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlay import RemoteEnvError, RlayTimeoutError, RlayVectorEnv, WorkerLostError
from tests.conftest import GAME, Proc, broker_status, deployment, wait_for
from tests.test_equivalence import MODES, compare_runs

TICK_HZ = "2000"


@pytest.fixture(scope="module")
def broker():
    """A broker alone (the tests start their own workers); (front, back)."""
    with deployment([], workers=0) as addresses:
        yield addresses


class Games:
    """Game processes started by a test, stopped (and checked) at its end."""

    def __init__(self, broker):
        self.front, self.back = broker
        self.procs: list[Proc] = []

    def start(self, env: str, name: str, *extra: str, agents: int = 1, count: int = 1) -> None:
        before = self.registered(name)
        for _ in range(count):
            self.procs.append(
                Proc(
                    env,
                    "--broker",
                    self.back,
                    "--name",
                    name,
                    "--agents",
                    str(agents),
                    "--tick-hz",
                    TICK_HZ,
                    *extra,
                    command=GAME,
                )
            )
        wait_for(lambda: self.registered(name) == before + count * agents, 60, f"{count} game(s) {name!r} to register")

    def registered(self, name: str) -> int:
        return sum(w["slots"] for w in broker_status(self.front)["workers"] if w["env_id"] == name)

    def stop_all(self, expect: int = 0) -> None:
        for proc in self.procs:
            code, _, err = proc.stop()
            assert code == expect, f"{proc.args} exited with {code}:\n{err}"


@pytest.fixture
def games(broker):
    g = Games(broker)
    yield g
    g.stop_all()


PUSH_ENVS = {"CartPole-v1": "CartPole-v1", "DictEnv": "tests.envs:DictEnv"}


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("layout", ["1 agent x 2 games", "3 agents x 1 game", "3 agents blocking"])
@pytest.mark.parametrize("name", list(PUSH_ENVS))
def test_push_env_equals_sync(games, name, layout, mode):
    env_id = f"push-{name}-{layout}-{mode.value}".replace(" ", "")
    if layout.startswith("1 agent"):
        games.start(PUSH_ENVS[name], env_id, "--every", "3", agents=1, count=2)
        num_envs = 2
    else:
        extra = ["--every", "4"] + (["--blocking"] if "blocking" in layout else [])
        games.start(PUSH_ENVS[name], env_id, *extra, agents=3)
        num_envs = 3
    envs = RlayVectorEnv.remote(env_id, num_envs, broker=games.front, autoreset_mode=mode, timeout=30)
    try:
        compare_runs(envs, name, mode, num_envs=num_envs)
    finally:
        envs.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_push_and_hosted_slots_mix_in_one_vector_env(broker, games, mode):
    env_id = f"mixed-{mode.value}"
    hosted = Proc("worker", "CartPole-v1", "--broker", broker[1], "--name", env_id, "-k", "2")
    try:
        wait_for(lambda: games.registered(env_id) == 2, 60, "the hosted worker to register")
        games.start("CartPole-v1", env_id, agents=2)
        envs = RlayVectorEnv.remote(env_id, 4, broker=broker[0], autoreset_mode=mode, timeout=30)
        try:
            modes = sorted(envs._lease.slot_info[s]["mode"] for s in envs.slots)
            assert modes == ["command", "command", "push", "push"]
            compare_runs(envs, "CartPole-v1", mode, num_envs=4)
        finally:
            envs.close()
    finally:
        code, _, err = hosted.stop()
        assert code == 0, err


def test_reset_between_decision_points_is_honoured_at_the_next_one(games):
    # The game shows a loading screen for 400 ticks (0.2 s) before its first decision point:
    # the trainer's reset arrives in between and must be carried out there, not lost or early.
    games.start("CartPole-v1", "loading", "--warmup", "400", "--report-ticks", agents=2)
    envs = RlayVectorEnv.remote("loading", 2, broker=games.front, timeout=30)
    try:
        obs, infos = envs.reset(seed=11)
        import gymnasium as gym

        expected = np.stack([gym.make("CartPole-v1").reset(seed=11 + i)[0] for i in range(2)])
        np.testing.assert_array_equal(obs, expected)
        assert infos["tick"].min() >= 400, f"reset results reported at ticks {infos['tick']}"
        # Once running, a masked reset of one agent is delivered at that agent's next decision point.
        envs.step(np.array([0, 1]))
        obs, infos = envs.reset(seed=[None, 5], options={"reset_mask": np.array([False, True])})
        np.testing.assert_array_equal(obs[1], gym.make("CartPole-v1").reset(seed=5)[0])
        assert list(infos["_tick"]) == [False, True]
    finally:
        envs.close()


def test_game_that_disconnects_mid_episode_names_the_slot(games):
    games.start("CartPole-v1", "quitter", "--quit-after", "3", agents=2)
    envs = RlayVectorEnv.remote("quitter", 2, broker=games.front, timeout=30)
    try:
        envs.reset(seed=0)  # commands 1 and 2
        with pytest.raises(WorkerLostError) as caught:
            envs.step(np.array([0, 1]))  # command 3: the game leaves without answering
        text = str(caught.value)
        assert "envs 0, 1 (slots [" in text and "disconnected" in text and "on host" in text
        with pytest.raises(WorkerLostError, match=r"envs 0, 1 \(slots \[\d+, \d+\]\) are lost"):
            envs.step(np.array([0, 1]))
    finally:
        envs.close()
    games.procs[-1].popen.wait(timeout=10)


def test_killed_game_gives_an_error_naming_the_slot(games):
    games.start("CartPole-v1", "doomed", agents=1)
    envs = RlayVectorEnv.remote("doomed", 1, broker=games.front, timeout=1.0)
    try:
        envs.reset(seed=0)
        doomed = games.procs.pop()
        os.kill(doomed.popen.pid, signal.SIGKILL)
        doomed.popen.wait(timeout=10)
        # The broker either finds the connection gone when it sends (EHOSTUNREACH), or, if the
        # kernel's news has not reached it yet, the call's deadline passes: both name the slot.
        with pytest.raises((WorkerLostError, RlayTimeoutError), match=r"envs 0 \(slots \[\d+\]\).*on host"):
            envs.step(np.array([0]))
    finally:
        envs.close()


def test_real_time_game_keeps_ticking_while_the_trainer_is_slow(games):
    import time

    games.start("CartPole-v1", "realtime", "--every", "2", "--report-ticks", agents=2)
    envs = RlayVectorEnv.remote("realtime", 2, broker=games.front, autoreset_mode=AutoresetMode.SAME_STEP, timeout=30)
    try:
        _, infos = envs.reset(seed=0)
        ticks = [infos["tick"].copy()]
        for _ in range(5):
            time.sleep(0.1)  # the trainer is busy (a slow policy update), not synchronising
            _, _, _, _, infos = envs.step(np.array([0, 1]))
            ticks.append(infos["tick"].copy())
        gaps = np.diff(np.array(ticks), axis=0)
        # At 2000 Hz, 0.1 s of trainer time is ~200 ticks: the game ticked on, far past its 2-tick cadence.
        assert gaps.min() >= 50, f"ticks between decisions: {gaps.tolist()}"
    finally:
        envs.close()


def test_push_misuse_is_reported(games):
    games.start("CartPole-v1", "strict", agents=1)
    envs = RlayVectorEnv.remote("strict", 1, broker=games.front, timeout=10)
    try:
        with pytest.raises(RemoteEnvError, match="stepped before its first reset"):
            envs.step(np.array([0]))
        with pytest.raises(NotImplementedError, match="push envs do not support call"):
            envs.get_attr("spec")
        obs, _ = envs.reset(seed=2)  # still serving
        assert obs.shape == (1, 4)
    finally:
        envs.close()


def test_game_side_api_refuses_misuse(broker):
    import gymnasium as gym

    from workers.push import PushWorker

    env = gym.make("CartPole-v1")
    game = PushWorker(
        broker[1],
        env_id="api-misuse",
        observation_space=env.observation_space,
        action_space=env.action_space,
        num_agents=2,
    )
    try:
        with pytest.raises(IndexError, match="agent 2 out of range"):
            game.submit(2)
        with pytest.raises(RuntimeError, match="not at a decision point"):
            game.poll(0)
        with pytest.raises(RuntimeError, match="no state to submit"):
            game.submit(0, np.zeros(4, np.float32))
        game.submit(0)
        with pytest.raises(RuntimeError, match="already submitted"):
            game.submit(0)
        assert game.poll(0, timeout=0.05) is None and game.commands() == {}
        with pytest.raises(TimeoutError, match="no command for agent 0 of 'api-misuse' within 0.1 s"):
            game.wait(0, timeout=0.1)
    finally:
        game.close()
        env.close()
    assert {j: c.kind for j, c in game.commands().items()} == {0: "close", 1: "close"}


def test_push_game_writes_large_observations_into_shared_memory(games, leaf_paths):
    """A push game on the trainer's host takes the shared-memory offer as a hosted worker does
    (the same reply code), SameStep final observations included."""
    games.start("tests.envs:ImageDictEnv", "push-image", "--every", "3", agents=3)
    envs = RlayVectorEnv.remote("push-image", 3, broker=games.front, autoreset_mode=AutoresetMode.SAME_STEP, timeout=30)
    try:
        compare_runs(envs, "ImageDictEnv", AutoresetMode.SAME_STEP, num_envs=3)
    finally:
        envs.close()
    seen = leaf_paths
    assert seen and all(s == ["shm", "frame"] for s in seen), seen[:3]  # image in shared memory, pos as a frame
