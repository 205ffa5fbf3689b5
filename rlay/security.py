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

import os
import shutil
from dataclasses import dataclass

import zmq
import zmq.auth

__all__ = ["Curve", "generate_keys"]


@dataclass(frozen=True)
class Curve:
    """This peer's keys: its own secret key file, and the broker's public key file (clients)
    or the directory of authorized client public keys (the broker)."""

    secret_file: str
    server_key_file: str | None = None
    authorized_dir: str | None = None

    @classmethod
    def from_dir(cls, keydir: str, role: str) -> "Curve":
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
        for path in (self.secret_file, self.server_key_file):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"CURVE key file {path} does not exist (make keys with `rlay keys generate DIR`)")
        if self.authorized_dir is not None and not os.path.isdir(self.authorized_dir):
            raise FileNotFoundError(f"CURVE authorized-keys directory {self.authorized_dir} does not exist")

    def secure_client(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (a worker's or trainer's) speak CURVE to the broker."""
        public, secret = zmq.auth.load_certificate(self.secret_file)
        server_public, _ = zmq.auth.load_certificate(self.server_key_file)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public

    def secure_server(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (one of the broker's) a CURVE server."""
        public, secret = zmq.auth.load_certificate(self.secret_file)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True

    def start_authenticator(self, context: zmq.Context):
        """Let in only the public keys in ``authorized_dir`` (ZAP, in a thread of ``context``)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=self.authorized_dir)
        return auth


def generate_keys(keydir: str, overwrite: bool = False) -> list[str]:
    """Write a broker keypair, a client keypair and authorized/client.key into ``keydir``.

    Refuses to replace existing keys (every host using them would be locked out) unless ``overwrite``.
    """
    existing = [n for n in ("broker.key", "broker.key_secret", "client.key", "client.key_secret")
                if os.path.exists(os.path.join(keydir, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{keydir} already holds keys ({', '.join(existing)}); replacing them locks out "
                              "every host that uses them (pass overwrite / --force to do it anyway)")
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
