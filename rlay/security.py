"""CURVE encryption and authentication for the broker's two sockets (libsodium, via pyzmq).

One switch: ``rlay keys generate DIR`` writes, in the layout ``Curve.from_dir`` reads,

    DIR/broker.key          the broker's public key      -> every worker and trainer host
    DIR/broker.key_secret   the broker's secret key      -> the broker host only
    DIR/client.key          a client public key
    DIR/client.key_secret   a client secret key          -> worker and trainer hosts
    DIR/authorized/         public keys the broker lets in (client.key to start with)

and ``--curve DIR`` (broker, worker) or ``curve=Curve.from_dir(DIR, "client")`` (trainer)
turns it on. A peer whose public key is not in ``authorized/`` cannot connect at all: it
cannot register, lease or step. Embedded mode (ipc inside one machine) needs none of this.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from dataclasses import dataclass

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["Curve", "KeyFileError", "generate_keys", "authorized_keys"]

log = logging.getLogger("rlay.security")


class KeyFileError(ValueError):
    """A CURVE key file, or the authorized-keys directory, that cannot be used as it is."""


@dataclass(frozen=True)
class Curve:
    """This peer's keys: its own secret key file, and the broker's public key file (clients)
    or the directory of authorized client public keys (the broker)."""

    secret_file: str
    server_key_file: str | None = None
    authorized_dir: str | None = None

    @classmethod
    def from_dir(cls, keydir: str, role: str) -> Curve:
        """The keys of ``role`` ("broker" or "client") in a directory made by generate_keys()."""
        if role == "broker":
            curve = cls(os.path.join(keydir, "broker.key_secret"), authorized_dir=os.path.join(keydir, "authorized"))
        elif role == "client":
            curve = cls(os.path.join(keydir, "client.key_secret"), server_key_file=os.path.join(keydir, "broker.key"))
        else:
            raise ValueError(f"role must be 'broker' or 'client', got {role!r}")
        curve.check()
        return curve

    def check(self) -> None:
        """Refuse missing or unreadable key files now, with the file's name, rather than
        a broker that admits no one or a peer whose handshake fails in silence."""
        for path in (self.secret_file, self.server_key_file):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(
                    f"CURVE key file {path} does not exist (make keys with `rlay keys generate DIR`)"
                )
        if self.authorized_dir is not None and not os.path.isdir(self.authorized_dir):
            raise FileNotFoundError(f"CURVE authorized-keys directory {self.authorized_dir} does not exist")
        _read_keys(self.secret_file, secret=True)
        if self.server_key_file is not None:
            _read_keys(self.server_key_file)
        if self.authorized_dir is not None:
            authorized_keys(self.authorized_dir)

    def secure_client(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (a worker's or trainer's) speak CURVE to the broker."""
        public, secret = _read_keys(self.secret_file, secret=True)
        server_public, _ = _read_keys(self.server_key_file)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public

    def secure_server(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (one of the broker's) a CURVE server."""
        public, secret = _read_keys(self.secret_file, secret=True)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True

    def start_authenticator(self, context: zmq.Context):
        """Let in only the public keys in ``authorized_dir`` (ZAP, in a thread of ``context``)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_Admission(self.authorized_dir))
        return auth


def authorized_keys(directory: str) -> frozenset[bytes]:
    """The public keys (Z85) of the ``*.key`` files in ``directory``; KeyFileError if one of
    them holds no valid public key, or if there are none (the broker would admit no one)."""
    files = sorted(glob.glob(os.path.join(directory, "*.key")))
    if not files:
        raise KeyFileError(
            f"the authorized-keys directory {directory} holds no *.key file: the broker would "
            "admit no worker or trainer (copy a client's public .key file there)"
        )
    return frozenset(_read_keys(path)[0] for path in files)


def _read_keys(path: str, secret: bool = False) -> tuple[bytes, bytes | None]:
    """A certificate file's public key, and its secret key if ``secret``, checked: 40 characters of Z85 each."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeyFileError(f"CURVE key file {path} cannot be read: {exc}") from None
    except ValueError:  # (pyzmq: no public-key line)
        raise KeyFileError(f"CURVE key file {path} has no public-key line") from None
    _check_key(path, "public-key", public)
    if secret:
        if secret_key is None:
            raise KeyFileError(
                f"CURVE key file {path} has no secret-key line (a public .key where the .key_secret is needed?)"
            )
        _check_key(path, "secret-key", secret_key)
    return public, secret_key


def _check_key(path: str, name: str, key: bytes) -> None:
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):  # (characters outside Z85)
        ok = False
    if not ok:
        raise KeyFileError(f"CURVE key file {path}: its {name} is not 40 characters of Z85")


class _Admission:
    """The ZAP check: a client's public key must be one of the authorized keys.

    A refusal is logged once per key (the first ``LOGGED_KEYS`` of them): a peer
    that keeps retrying with a wrong key does not flood the log.
    """

    LOGGED_KEYS = 1024

    def __init__(self, directory: str):
        self.directory = directory
        self.keys = authorized_keys(directory)
        self._refused: set[bytes] = set()
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        with self._lock:
            first = key not in self._refused and len(self._refused) < self.LOGGED_KEYS
            if first:
                self._refused.add(key)
        if first:
            log.warning(
                "refused a CURVE peer: its public key %s is not among the authorized keys in %s",
                key.decode("ascii", "replace"),
                self.directory,
            )
        return False


def generate_keys(keydir: str, overwrite: bool = False) -> list[str]:
    """Write a broker keypair, a client keypair and authorized/client.key into ``keydir``.

    Refuses to replace existing keys (every host using them would be locked out) unless ``overwrite``.
    """
    existing = [
        n
        for n in ("broker.key", "broker.key_secret", "client.key", "client.key_secret")
        if os.path.exists(os.path.join(keydir, n))
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"{keydir} already holds keys ({', '.join(existing)}); replacing them locks out "
            "every host that uses them (pass overwrite / --force to do it anyway)"
        )
    os.makedirs(keydir, exist_ok=True)
    authorized = os.path.join(keydir, "authorized")
    os.makedirs(authorized, exist_ok=True)
    written = []
    for name in ("broker", "client"):
        public, secret = zmq.auth.create_certificates(keydir, name)
        os.chmod(secret, 0o600)
        written += [public, secret]
    shutil.copy(os.path.join(keydir, "client.key"), authorized)
    written.append(os.path.join(authorized, "client.key"))
    return written
