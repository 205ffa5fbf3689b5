"""CURVE: only peers with an authorized key can register, lease or step; traffic is encrypted."""

from __future__ import annotations

import re
import shutil

import pytest
import zmq.auth

from rlay import BrokerError, BrokerLostError, RlayTimeoutError, RlayVectorEnv
from rlay import protocol as P
from rlay.client import BrokerClient
from rlay.security import Curve, generate_keys
from tests.conftest import Proc, assert_remote_cartpole_equals_sync, free_port, run_cli, wait_for


@pytest.fixture
def keys(tmp_path):
    generate_keys(str(tmp_path / "keys"))
    # A second, unauthorized client: same layout, but its public key is not in the broker's authorized/.
    generate_keys(str(tmp_path / "stranger"))
    shutil.copy(tmp_path / "keys" / "broker.key", tmp_path / "stranger" / "broker.key")
    return tmp_path / "keys", tmp_path / "stranger"


def secure_status(front: str, curve: Curve | None, timeout: float = 2.0) -> dict:
    client = BrokerClient(front, curve=curve)
    try:
        return client.request(P.STATUS, timeout, "status")
    finally:
        client.close()


def test_only_authorized_keys_get_in(keys):
    keydir, stranger = keys
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    good = Curve.from_dir(str(keydir), "client")
    broker = Proc("broker", "--frontend", front, "--backend", back, "--curve", str(keydir))
    workers = []
    try:
        wait_for(lambda: _answers(front, good), 30, "the CURVE broker to answer an authorized client")
        workers.append(Proc("worker", "CartPole-v1", "--broker", back, "-p", "2", "--curve", str(keydir)))
        wait_for(lambda: len(secure_status(front, good, 5)["workers"]) == 2, 60, "authorized workers to register")

        # Workers without a key, or with a key the broker does not know, never get through.
        for extra in ([], ["--curve", str(stranger)]):
            result = run_cli(
                "worker", "CartPole-v1", "--broker", back, "--register-timeout", "1.5", "--no-restart", *extra
            )
            # (queued until the handshake fails, or refused at once: either way it gives up in time)
            assert result.returncode == 1, result.stderr
            assert re.search("no broker answered the registration|could not send the registration", result.stderr)
        assert len(secure_status(front, good, 5)["workers"]) == 2

        # Trainers likewise: no key, or an unknown key, gets no answer at all (not even to heartbeats).
        # The error names CURVE keys as a likely cause: the request waits for an answer that never comes,
        # or (once the failed handshake dropped the connection) cannot even be sent.
        for curve in (None, Curve.from_dir(str(stranger), "client")):
            with pytest.raises(
                (RlayTimeoutError, BrokerLostError),
                match="no reply from the broker|not answered heartbeats|could not send a lease",
            ) as lost:
                RlayVectorEnv.remote("CartPole-v1", 2, broker=front, timeout=1.0, curve=curve)
            text = str(lost.value)
            assert "CURVE" in text and ("could not send" in text or "nothing at all has come from that address" in text)
        status = run_cli("status", "--broker", front, "--timeout", "1")
        assert status.returncode == 1 and "no reply" in status.stderr and "--curve DIR" in status.stderr

        # An authorized trainer leases and steps, with the same results as SyncVectorEnv.
        assert_remote_cartpole_equals_sync(front, steps=20, seed=2, curve=good)
        secured = run_cli("status", "--broker", front, "--curve", str(keydir))
        assert secured.returncode == 0 and "2 worker(s)" in secured.stdout
    finally:
        errs = []
        for proc in [*workers, broker]:
            code, _, err = proc.stop()
            assert code == 0, err
            errs.append(err)
    # The broker says whom it refused: the stranger's key, once (its worker and its trainer both tried).
    stranger_key = zmq.auth.load_certificate(str(stranger / "client.key"))[0].decode()
    refusals = re.findall(r"refused a CURVE peer: its public key (\S+) is not among the authorized keys", errs[-1])
    assert refusals == [stranger_key], errs[-1]


def _answers(front: str, curve: Curve) -> bool:
    try:
        secure_status(front, curve, 1.0)
        return True
    except RlayTimeoutError:
        return False


def test_missing_key_files_are_a_clear_usage_error(tmp_path):
    result = run_cli("broker", "--curve", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "rlay keys generate" in result.stderr
    result = run_cli("keys", "generate", str(tmp_path / "k"))
    assert result.returncode == 0 and "authorized/client.key" in result.stdout
    before = (tmp_path / "k" / "broker.key_secret").read_text()
    again = run_cli("keys", "generate", str(tmp_path / "k"))
    assert again.returncode == 1 and "already holds keys" in again.stderr
    assert (tmp_path / "k" / "broker.key_secret").read_text() == before  # nothing replaced
    assert run_cli("keys", "generate", str(tmp_path / "k"), "--force").returncode == 0


def test_unusable_key_files_are_refused_at_start_naming_the_file(tmp_path):
    """A broken authorized key would otherwise make the broker admit no one, silently."""
    keydir = tmp_path / "k"
    generate_keys(str(keydir))
    authorized = keydir / "authorized"
    bad = authorized / "typo.key"
    for text, reason in [
        ("not a certificate\n", "has no public-key line"),
        ('curve\n    public-key = "tooshort"\n', "is not 40 characters of Z85"),
    ]:
        bad.write_text(text)
        result = run_cli("broker", "--curve", str(keydir), timeout=30)
        assert result.returncode == 2 and str(bad) in result.stderr and reason in result.stderr, result.stderr
    bad.unlink()
    (authorized / "client.key").unlink()
    result = run_cli("broker", "--curve", str(keydir), timeout=30)
    assert result.returncode == 2 and "holds no *.key file" in result.stderr, result.stderr

    # A client whose secret file holds only a public key: refused before it connects.
    shutil.copy(keydir / "client.key", keydir / "client.key_secret")
    result = run_cli("worker", "CartPole-v1", "--broker", "tcp://127.0.0.1:9", "--curve", str(keydir), timeout=30)
    assert result.returncode == 2 and "has no secret-key line" in result.stderr, result.stderr


def test_under_curve_the_limit_a_trainer_is_told_leaves_room_for_curves_33_bytes(keys, tmp_path):
    """ZeroMQ applies max_message_size to the encrypted frame, 33 bytes larger than the one sent:
    a request within 33 bytes of the limit is refused at once, not dropped with a cut connection."""
    keydir, _ = keys
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "limited.toml"
    config.write_text(
        f'[broker]\nfrontend = "{front}"\nbackend = "{back}"\nmax_message_size = 12000\ncurve = "{keydir}"\n'
    )
    good = Curve.from_dir(str(keydir), "client")
    procs = [Proc("broker", "--config", str(config))]
    try:
        procs.append(Proc("worker", "CartPole-v1", "--broker", back, "--curve", str(keydir)))
        wait_for(
            lambda: _answers(front, good) and len(secure_status(front, good, 5)["workers"]) == 1,
            60,
            "the worker to register",
        )
        envs = RlayVectorEnv.remote("CartPole-v1", 1, broker=front, timeout=10, curve=good)
        try:
            with pytest.raises(
                BrokerError, match="a frame of 11979 bytes is over the broker's max_message_size of 11967"
            ):
                envs.set_attr("note", "x" * 11_957)  # a body of 11,979 bytes: 12,012 on the wire
            envs.set_attr("note", "x" * 11_945)  # 11,967 bytes: 12,000 on the wire, the largest that passes
            assert envs.get_attr("note") == ("x" * 11_945,)
        finally:
            envs.close()
    finally:
        for proc in reversed(procs):
            code, _, err = proc.stop()
            assert code == 0, err
