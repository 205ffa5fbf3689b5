"""`rlay conformance` certifies the reference workers, and fails workers that break the protocol."""

from __future__ import annotations

import sys
import tempfile

import pytest

from tests.conftest import run_cli

CONFORMANCE_TIMEOUT = 180  # s: a run takes ~15 s on this machine


def conformance(*args: str) -> tuple[int, str]:
    """`rlay conformance ARGS`: (exit status, output). A failing run keeps its logs in a directory of
    TMPDIR, here a temporary one of the test's own, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rlay-test-") as tmp:
        done = run_cli("conformance", *args, timeout=CONFORMANCE_TIMEOUT, env={"TMPDIR": tmp})
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(CONFORMANCE_TIMEOUT + 30)
def test_the_python_command_worker_conforms():
    code, out = conformance(
        "--",
        sys.executable,
        "-m",
        "rlay.cli",
        "worker",
        "rlay/Conformance-v0",
        "-k",
        "4",
        "--broker",
        "{broker}",
        "--no-restart",
    )
    assert code == 0, out
    assert "23 checks: 23 passed, 0 failed" in out, out


@pytest.mark.timeout(CONFORMANCE_TIMEOUT + 30)
def test_the_python_push_worker_conforms():
    code, out = conformance(
        "--mode",
        "push",
        "--",
        sys.executable,
        "-m",
        "workers.examples.tick_game",
        "rlay/Conformance-v0",
        "--agents",
        "3",
        "--every",
        "3",
    )
    assert code == 0, out
    assert "passed, 0 failed" in out, out


@pytest.mark.timeout(CONFORMANCE_TIMEOUT + 30)
@pytest.mark.parametrize(
    "mutation, failing",
    [
        ("no-autoreset", ["steps like SyncVectorEnv, autoreset NextStep", "first-ready stepping"]),
        ("wrong-dtype", ["serves a valid request after bad ones"]),
        ("deaf-heartbeat", ["pings at the interval the broker announces"]),
        ("answers-errors", ["never answers an error or a heartbeat answer"]),
    ],
)
def test_a_worker_that_breaks_the_protocol_fails(mutation, failing):
    code, out = conformance("--", sys.executable, "-m", "tests.mutants", mutation)
    assert code == 1, out
    for name in failing:
        assert f"FAIL  {name}" in out, out
