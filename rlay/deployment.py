"""Deployment files (TOML), as `rlay up` and `rlay broker --config` read them: every key checked when
the file is read, with an error naming the file, the table and what the key must hold.

    [broker]                  addresses, heartbeats, CURVE, max_message_size, limits
    [[workers]]               Python workers: an env id or factory, how many, envs per worker
    [fleet]                   log_dir, and defaults for the programs
    [[programs]]              any executable that speaks the protocol: count instances each
    [cluster]                 ray = "ADDRESS": place workers and programs on a Ray cluster

Paths in the file (a program's cwd, the fleet's log_dir, the broker's curve directory is the
exception: relative to where the command runs) are relative to the file's own directory.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlay import protocol as P

__all__ = [
    "ConfigError",
    "read_deployment",
    "programs",
    "worker_programs",
    "log_dir",
    "LIMIT_KEYS",
    "DEFAULT_LOG_DIR",
]

DEFAULT_LOG_DIR = "rlay-logs"  # beside the deployment file, when [fleet] names none


class ConfigError(ValueError):
    """A deployment file that cannot be used; the message names the file and the key."""


# What a peer may ask of a broker (broker/limits.py), each a [broker] key.
LIMIT_KEYS = {
    "max_envs_per_worker",
    "max_slots",
    "max_pending_leases",
    "registrations_per_second",
    "registration_burst",
}
SECTIONS = {
    "broker": {
        "frontend",
        "backend",
        "max_message_size",
        "heartbeat_interval",
        "heartbeat_liveness",
        "curve",
        "metrics",
        *LIMIT_KEYS,
    },
    "workers": {"env", "num_workers", "envs_per_worker", "threads", "env_kwargs", "name", "resources"},
    "fleet": {"log_dir", "register_timeout"},
    "programs": {"name", "command", "count", "env", "cwd", "register_timeout", "resources"},
    "cluster": {"ray"},
}
TABLE_ARRAYS = {"workers", "programs"}  # [[...]] sections; the others are [...] tables


def _is_int(value: Any) -> bool:
    return type(value) is int  # (a TOML bool is not a count)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# What each key must hold: (as the error says it, the check).
VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "frontend": ("an address string", lambda v: isinstance(v, str)),
    "backend": ("an address string", lambda v: isinstance(v, str)),
    "curve": ("a key directory (a string)", lambda v: isinstance(v, str)),
    "metrics": (
        'the HOST:PORT to serve Prometheus metrics on (a string: "127.0.0.1:9100")',
        lambda v: isinstance(v, str) and v.rpartition(":")[2].isdigit() and v.rpartition(":")[0] != "",
    ),
    "max_message_size": ("a number of bytes >= 1, or -1 for no limit", lambda v: _is_int(v) and (v == -1 or v >= 1)),
    "heartbeat_interval": (
        f"a number of seconds from {P.MIN_HEARTBEAT_INTERVAL} to {P.MAX_HEARTBEAT_INTERVAL:g}",
        lambda v: _is_number(v) and P.MIN_HEARTBEAT_INTERVAL <= v <= P.MAX_HEARTBEAT_INTERVAL,
    ),
    "heartbeat_liveness": (
        f"an integer from 1 to {P.MAX_HEARTBEAT_LIVENESS}",
        lambda v: _is_int(v) and 1 <= v <= P.MAX_HEARTBEAT_LIVENESS,
    ),
    "max_envs_per_worker": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "max_slots": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "max_pending_leases": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "registrations_per_second": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "registration_burst": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "env": ("a gymnasium id or package.module:factory (a string)", lambda v: isinstance(v, str)),
    "num_workers": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "envs_per_worker": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "threads": ('an integer >= 1, or "auto"', lambda v: v == "auto" or (_is_int(v) and v >= 1)),
    "env_kwargs": ("a table of keyword arguments", lambda v: isinstance(v, dict)),
    "name": (
        "a string of letters, digits, '-', '_' and '.'",
        lambda v: isinstance(v, str) and 0 < len(v) <= 200 and all(c.isalnum() or c in "-_./" for c in v),
    ),
    "command": (
        "a non-empty list of strings (the program and its arguments)",
        lambda v: isinstance(v, list) and v != [] and all(isinstance(a, str) for a in v),
    ),
    "count": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "cwd": ("a directory (a string)", lambda v: isinstance(v, str)),
    "log_dir": ("a directory (a string)", lambda v: isinstance(v, str)),
    "register_timeout": ("a number of seconds > 0", lambda v: _is_number(v) and v > 0),
    "resources": (
        "a table of resource amounts >= 0 (CPU = 2, GPU = 0.25, ...)",
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) and x >= 0 for k, x in v.items()),
    ),
    "ray": (
        'a Ray cluster address (a string: "auto", "ray://HOST:PORT", "HOST:PORT")',
        lambda v: isinstance(v, str) and v != "",
    ),
}
# [[programs]] env is a table of environment variables, where [[workers]] env is the env to host.
PROGRAM_ENV_VALUE = (
    "a table of environment variables (strings)",
    lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
)


def read_deployment(path: str | Path) -> dict[str, Any]:
    """The deployment file at ``path``, checked; ConfigError naming what is wrong."""
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown sections {sorted(unknown)} (expected [broker], [[workers]], [fleet], "
            "[[programs]] and [cluster])"
        )
    for section, keys in SECTIONS.items():
        if section not in config:
            continue
        value = config[section]
        if section in TABLE_ARRAYS:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(f"{path}: {section} must be [[{section}]] tables")
            for n, table in enumerate(value):
                _check(path, f"[[{section}]] #{n + 1}", table, keys, section)
        elif not isinstance(value, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        else:
            _check(path, f"[{section}]", value, keys, section)
    names = [p["name"] for p in config.get("programs", [])]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two [[programs]] have the same name: names must be unique")
    return config


def _check(path: str | Path, where: str, table: dict, keys: set[str], section: str) -> None:
    if set(table) - keys:
        raise ConfigError(f"{path}: unknown keys {sorted(set(table) - keys)} in {where}")
    required = {"workers": ("env",), "programs": ("name", "command")}.get(section, ())
    for key in required:
        if key not in table:
            raise ConfigError(f"{path}: {where} has no '{key}'")
    for key, value in table.items():
        what, ok = PROGRAM_ENV_VALUE if (section, key) == ("programs", "env") else VALUES[key]
        if not ok(value):
            raise ConfigError(f"{path}: {where} {key} must be {what}, got {value!r}")


def programs(config: dict[str, Any], path: str | Path) -> list[Any]:
    """The [[programs]] of a deployment file read from ``path``, as rlay.fleet.Program; relative cwds
    are taken from the file's directory."""
    from rlay.fleet import Program

    base = Path(path).resolve().parent
    defaults = config.get("fleet", {})
    return [
        Program(
            name=p["name"],
            command=tuple(p["command"]),
            count=p.get("count", 1),
            env=dict(p.get("env", {})),
            cwd=str(base / p["cwd"]) if "cwd" in p else str(base),
            register_timeout=float(p.get("register_timeout", defaults.get("register_timeout", 60.0))),
            resources={k: float(v) for k, v in p.get("resources", {}).items()},
        )
        for p in config.get("programs", [])
    ]


def worker_programs(config: dict[str, Any], taken: set[str] = frozenset()) -> list[Any]:
    """The [[workers]] of a deployment file as programs (rlay.fleet.Program), one instance per worker
    process: ``{python} -m rlay.cli worker ENV -k ENVS_PER_WORKER --no-restart --broker {broker}``, so a
    fleet launcher (a Ray cluster) places and supervises them like any program. Names are the groups'
    (name, or env), made unique against ``taken`` and each other."""
    from rlay.fleet import Program

    defaults = config.get("fleet", {})
    curve = config.get("broker", {}).get("curve")
    made, names = [], set(taken)
    for group in config.get("workers", []):
        name = group.get("name", group["env"])
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name}-{n}", n + 1
        names.add(unique)
        command = ["{python}", "-m", "rlay.cli", "worker", group["env"]]
        command += ["-k", str(group.get("envs_per_worker", 1)), "--no-restart", "--broker", "{broker}"]
        if "name" in group:
            command += ["--name", group["name"]]
        if group.get("env_kwargs"):
            command += ["--env-kwargs", json.dumps(group["env_kwargs"])]
        if group.get("threads", "auto") != "auto":
            command += ["-t", str(group["threads"])]
        if curve:  # (the same directory on every node: a shared file system, or copied there)
            command += ["--curve", os.path.abspath(curve)]
        made.append(
            Program(
                name=unique,
                command=tuple(command),
                count=group.get("num_workers", 1),
                cwd=None,
                register_timeout=float(defaults.get("register_timeout", 60.0)),
                resources={k: float(v) for k, v in group.get("resources", {}).items()},
            )
        )
    return made


def log_dir(config: dict[str, Any], path: str | Path) -> Path:
    """Where the fleet's instance logs go: [fleet] log_dir, relative to the file's directory."""
    return Path(path).resolve().parent / config.get("fleet", {}).get("log_dir", DEFAULT_LOG_DIR)
