"""Hosts of their own for the multi-host tests: network namespaces on one bridge, made with `ip netns`
and veth pairs (root needed), and removed afterwards. Traffic goes only between them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import NamedTuple

SUBNET = "10.77.{}.{}"


class Host(NamedTuple):
    ns: str  # the namespace (also its host name, see on_host)
    address: str  # its address on the bridge
    veth: str  # the host's end of its veth pair: `ip link set VETH down` cuts it off
    bridge: str  # the bridge it is on: `ip link set VETH nomaster` cuts it off with its link up


class CannotMakeHosts(Exception):
    """This machine does not let the test make namespaces (not root, no bridge support)."""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def bridged_hosts(*names: str) -> Iterator[dict[str, Host]]:
    """Namespaces ``names`` on one bridge of their own: {name: Host}. Removed on exit."""
    if os.geteuid() != 0:
        raise CannotMakeHosts("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    bridge, net = f"rlbr{tag}", 77 + int(tag[:2], 16) % 100
    made: list[str] = []
    try:
        try:
            sh("ip", "link", "add", bridge, "type", "bridge")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            raise CannotMakeHosts(f"cannot make network namespaces here: {exc}") from None
        sh("ip", "link", "set", bridge, "up")
        hosts = {}
        for n, name in enumerate(names, 1):
            ns, veth = f"rl{name[:2]}{tag}", f"rlv{n}{tag}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", bridge, "up")
            address = SUBNET.format(net, n)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            hosts[name] = Host(ns, address, veth, bridge)
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)


def on_host(ns: str, *command: str) -> list[str]:
    """Run ``command`` in namespace ``ns`` with its own host name (a UTS namespace) equal to ``ns``;
    each step execs the next, so the command's pid is the one the test signals."""
    return ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', ns, *command]


def rlay_on(ns: str) -> list[str]:
    """The rlay CLI, run on host ``ns``."""
    return on_host(ns, sys.executable, "-m", "rlay.cli")
