"""Fleets on a Ray cluster: `rlay up CONFIG --ray [ADDRESS]` keeps the broker where it runs and places
every instance of [[programs]] and [[workers]] on the cluster, one actor each.

    launcher = RayLauncher("auto")  # the cluster this host joined with `ray start`
    fleet = Fleet(programs, "tcp://10.0.0.1:5556", Path("rlay-logs"), supervision=Supervision(), launcher=launcher)
    fleet.start()  # connects, then one actor per instance

An instance's actor holds its program's ``resources`` (1 CPU when the table names no CPU) and is
placed with SPREAD scheduling, so a fleet spreads over the nodes that have room. The actor starts the
instance with subprocess, in a session of its own (its own process group), its output to a log file
on the actor's node, and reports the pid, the node and, once it ends, the exit code. An instance that
exits takes its actor with it (freeing its resources), and the Fleet's supervision (rlay.cluster.Restarts)
starts it again as a new actor, on any node with room. Stopping kills each process group, then each
actor. If `rlay up` dies, Ray ends the actors it owned, and each instance dies with the thread of its
actor that started it (PR_SET_PDEATHSIG).

Ray is an optional extra (``pip install -e '.[ray]'``): nothing else in rlay imports this module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import ray.cloudpickle
from ray.exceptions import RayError

from rlay.fleet import STOP_TIMEOUT, Program, dial_address, start_logged

__all__ = ["RayLauncher", "RayInstance", "InstanceActor", "actor_options"]

log = logging.getLogger("rlay.ray")

CHECK_INTERVAL = 0.1  # s between looks at every actor's state (one ray.wait over all of them)
ACTOR_CONCURRENCY = 4  # threads per actor: wait() blocks one, info() and signal() must still be served
LOST = -1  # the exit code reported for an instance whose actor was lost (its node went away, say)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class InstanceActor:
    """On a node: one instance, a process in a session of its own, its output to a log file there.

    Its code travels to the node by value (see RayLauncher.open): a node needs Ray, not rlay, to run
    [[programs]], and the actor does not pay for importing rlay.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None, log_path: str, label: str):
        context = ray.get_runtime_context()
        self.node_ip, self.node_id = ray.util.get_node_ip_address(), context.get_node_id()
        self.label = label
        self.log_path = _log_file(log_path)
        self.popen: subprocess.Popen | None = None
        self.code: int | None = None
        self.error: str | None = None
        self.exited = threading.Event()
        started = threading.Event()
        # The thread that starts the process waits for it: the process's parent-death signal is tied to
        # the thread that forked it, which so lives exactly as long as the process.
        runner = threading.Thread(target=self._run, args=(argv, env, cwd, started), name=f"rlay {label}", daemon=True)
        runner.start()
        started.wait()

    def _run(self, argv: list[str], env: dict[str, str], cwd: str | None, started: threading.Event) -> None:
        argv = [arg.replace("{python}", sys.executable) for arg in argv]
        where = f"node {self.node_ip} ({self.node_id[:8]}), Ray actor {ray.get_runtime_context().get_actor_id()}"
        note = ""
        if cwd is not None and not os.path.isdir(cwd):  # (the deployment file's directory, seldom on a node)
            note, cwd = f"\n(its directory {cwd} is not on this node: it runs in {os.getcwd()})", None
        try:
            banner = f"rlay up starts on {where}: {' '.join(argv)}{note}"
            self.popen = start_logged(argv, env, cwd, self.log_path, banner, preexec_fn=_dies_with_parent())
        except OSError as exc:  # not found, not executable, no log file: as if it exited at once
            self.error = f"rlay up cannot start {argv[0]!r} on {where}: {exc}"
            try:
                with open(self.log_path, "ab") as out:
                    out.write(f"{self.error}\n".encode())
            except OSError:
                pass
            self.code = 127
            started.set()
            self.exited.set()
            return
        started.set()
        code = self.popen.wait()
        _signal_group(self.popen.pid, signal.SIGKILL)  # (a group outlives its leader: what it left behind)
        self.code = code
        self.exited.set()

    def info(self) -> dict[str, Any]:
        """Where it runs: pid (0 if it could not start), node address and id, log path, error."""
        return {
            "pid": self.popen.pid if self.popen is not None else 0,
            "node_ip": self.node_ip,
            "node_id": self.node_id,
            "log": self.log_path,
            "error": self.error,
        }

    def wait(self) -> int:
        """Its exit code, once it has exited."""
        self.exited.wait()
        return self.code

    def signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group."""
        if self.popen is not None:
            _signal_group(self.popen.pid, sig)


def _log_file(wanted: str) -> str:
    """``wanted`` (the path rlay up chose: on one machine or a shared file system it is the same file),
    or, where that directory cannot be made on this node, a file of the same name in its temp dir."""
    for path in (Path(wanted), Path(tempfile.gettempdir()) / "rlay-logs" / Path(wanted).name):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                return str(path)
        except OSError:
            continue
    return os.devnull


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _dies_with_parent():
    """A preexec_fn: the child gets SIGKILL when the thread that forked it ends (Linux; else None)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # (the parent died before prctl)
            os._exit(1)

    return preexec


def actor_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray actor options for one instance: its ``resources`` (CPU and GPU as Ray counts them, memory in
    bytes, any other name a custom resource of the nodes; 1 CPU unless it names CPU), SPREAD over nodes."""
    custom = dict(resources)
    options: dict[str, Any] = {
        "num_cpus": custom.pop("CPU", 1.0),
        "num_gpus": custom.pop("GPU", 0.0),
        "scheduling_strategy": "SPREAD",
        "max_restarts": 0,  # (rlay's supervision restarts instances, as new actors)
        "max_concurrency": ACTOR_CONCURRENCY,
    }
    if "memory" in custom:
        options["memory"] = custom.pop("memory")
    if custom:
        options["resources"] = custom
    return options


class RayInstance:
    """The handle of an instance on Ray (rlay.fleet.Handle): its actor, and what it reported."""

    def __init__(self, launcher: RayLauncher, label: str, actor: Any):
        self.launcher, self.label, self.actor = launcher, label, actor
        self._info_ref = actor.info.remote()
        self._exit_ref = actor.wait.remote()
        self._info: dict[str, Any] | None = None
        self._code: int | None = None
        self._kill_ref: Any = None
        self.released = False  # its actor was killed (or is dead)

    def _placed(self) -> dict[str, Any] | None:
        """What the actor reported once it runs on a node; None while it waits for one."""
        if self._info is None and self.launcher.ready(self._info_ref):
            try:
                self._info = ray.get(self._info_ref)
            except RayError as exc:
                self._info = {"pid": 0, "node_ip": "?", "node_id": "?", "log": "?", "error": str(exc)}
        return self._info

    @property
    def pid(self) -> int:
        info = self._placed()
        return info["pid"] if info else 0

    @property
    def where(self) -> str:
        info = self._placed()
        if info is None:
            return "no Ray node yet"
        return f"Ray node {info['node_ip']} ({info['node_id'][:8]})"

    @property
    def log(self) -> str:
        info = self._placed()
        return f"{info['node_ip']}:{info['log']}" if info else "(on its node, once it has one)"

    def exitcode(self) -> int | None:
        if self._code is None and self.launcher.ready(self._exit_ref):
            try:
                self._code = ray.get(self._exit_ref)
            except RayError as exc:
                self._code = LOST
                if not self.released:  # (not killed by us: its node went away, or someone killed it)
                    log.warning("%s: its Ray actor was lost: %s", self.label, str(exc).splitlines()[0])
            self.launcher.release(self)  # (its resources are free for the next instance)
        return self._code

    def pids(self) -> set[int]:
        return {self.pid} - {0}  # (its descendants are on another host's /proc: it names its program)

    def terminate(self) -> None:
        if self._placed() is None:  # (still waiting for a node: nothing runs yet)
            self.launcher.release(self)
        elif self._code is None:
            self.actor.signal.remote(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its group (done when the launcher closes, which then kills the actor)."""
        if self._placed() is not None and self._code is None and not self.released:
            self._kill_ref = self.actor.signal.remote(signal.SIGKILL)
        else:
            self.launcher.release(self)


class RayLauncher:
    """Starts instances as actors on the Ray cluster at ``address`` ("auto": the one this host joined;
    "HOST:PORT" its head; "ray://HOST:10001" through Ray Client)."""

    def __init__(self, address: str):
        self.address = address
        self.handles: list[RayInstance] = []
        self.head_ip = "127.0.0.1"
        self.nodes: list[dict[str, Any]] = []
        self.closing = False
        self._actor_class: Any = None
        self._waiting: set = set()  # refs of info() and wait() not yet seen ready
        self._ready: set = set()
        self._checked = 0.0
        self._checked_programs: set[str] = set()
        self._warned_loopback = False

    def open(self) -> None:
        """Connect to the cluster (after the broker has started: it is forked, and Ray's threads must not be)."""
        if not ray.is_initialized():
            on_sigterm = signal.getsignal(signal.SIGTERM)
            ray.init(address=self.address, namespace="rlay", logging_level=logging.WARNING)
            if threading.current_thread() is threading.main_thread():  # (Ray's own handler exits at once)
                signal.signal(signal.SIGTERM, on_sigterm)
        # The actor's code goes to the nodes by value: they need Ray, not rlay (a node's Python worker of
        # a [[workers]] group imports rlay itself).
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        self._actor_class = ray.remote(InstanceActor)
        self.head_ip = ray.util.get_node_ip_address()
        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info(
            "ray: connected to %s: %d node(s): %s",
            self.address,
            len(self.nodes),
            "; ".join(f"{n['NodeManagerAddress']} {_resources_text(n['Resources'])}" for n in self.nodes),
        )

    def launch(self, program: Program, index: int, broker: str, log_path: Path) -> RayInstance:
        broker = dial_address(broker, self.head_ip)
        self._check(program, broker)
        label = f"{program.name}#{index}"
        argv = program.argv(index, broker, python="{python}")  # ({python}: the node's, filled in there)
        actor = self._actor_class.options(**actor_options(program.resources)).remote(
            argv, program.environment(index, broker), program.cwd, str(log_path), label
        )
        handle = RayInstance(self, label, actor)
        self.handles.append(handle)
        self._waiting.update((handle._info_ref, handle._exit_ref))
        return handle

    def _check(self, program: Program, broker: str) -> None:
        """Say once what would keep a program's instances from running or from reaching the broker."""
        if not self._warned_loopback and ("://127." in broker or "://localhost" in broker):
            self._warned_loopback = True
            away = sorted({n["NodeManagerAddress"] for n in self.nodes} - {"127.0.0.1"})
            if away:
                log.warning(
                    "ray: instances dial %s, a loopback address, but nodes %s are other hosts: bind the broker's "
                    "backend to an address they reach (tcp://0.0.0.0:PORT, with CURVE on)",
                    broker,
                    ", ".join(away),
                )
        if program.name in self._checked_programs:
            return
        self._checked_programs.add(program.name)
        need = {"CPU": 1.0, **program.resources}
        if self.nodes and not any(_fits(need, n["Resources"]) for n in self.nodes):
            log.error(
                "ray: no node of the cluster has %s for an instance of %s: its instances wait until one joins",
                _resources_text(need),
                program.name,
            )

    def ready(self, ref: Any) -> bool:
        """Whether ``ref`` has a value (or an error): one ray.wait over every pending ref per CHECK_INTERVAL."""
        if ref in self._ready:
            return True
        now = time.monotonic()
        if self._waiting and now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            pending = list(self._waiting)
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=0, fetch_local=False)
            self._waiting.difference_update(done)
            self._ready.update(done)
        return ref in self._ready

    def release(self, handle: RayInstance) -> None:
        """Kill ``handle``'s actor: its process has exited, or is not wanted."""
        if handle.released:
            return
        handle.released = True
        ray.kill(handle.actor, no_restart=True)
        self._waiting.discard(handle._info_ref)  # (its exit ref stays: it tells when the actor is dead)
        self._ready.discard(handle._info_ref)
        if handle._code is not None:  # (done with: its exit is known)
            self._ready.discard(handle._exit_ref)
            if not self.closing:
                self.handles.remove(handle)

    def close(self) -> None:
        """After the Fleet's stop(): wait for the SIGKILLs it sent, kill every actor left, wait until each is
        dead, and disconnect."""
        if not ray.is_initialized():
            return
        self.closing = True
        kills = [h._kill_ref for h in self.handles if h._kill_ref is not None]
        if kills:
            ray.wait(kills, num_returns=len(kills), timeout=STOP_TIMEOUT)
        for handle in self.handles:
            self.release(handle)
        exits = [h._exit_ref for h in self.handles if h._code is None]
        if exits:
            _, alive = ray.wait(exits, num_returns=len(exits), timeout=STOP_TIMEOUT)
            if alive:
                log.error("ray: %d actor(s) still alive %g s after ray.kill", len(alive), STOP_TIMEOUT)
        self.handles.clear()
        self._waiting.clear()
        self._ready.clear()
        ray.shutdown()


def _fits(need: dict[str, float], has: dict[str, float]) -> bool:
    return all(amount <= has.get(name, 0.0) for name, amount in need.items() if amount > 0)


def _resources_text(resources: dict[str, float]) -> str:
    shown = {
        k: f"{v / 2**30:.1f}GiB" if k == "memory" else f"{v:g}"
        for k, v in resources.items()
        if not k.startswith("node:") and k != "object_store_memory"
    }
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + "}"
