"""Exceptions a trainer sees. Misuse raises gymnasium's own types, re-exported here."""

from __future__ import annotations

import builtins
import multiprocessing
from typing import Any

import gymnasium.error
from gymnasium import logger
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError

from rlay import protocol as P

__all__ = [
    "RlayError",
    "RlayTimeoutError",
    "LeaseError",
    "BrokerError",
    "RemoteEnvError",
    "WorkerLostError",
    "BrokerLostError",
    "AlreadyPendingCallError",
    "ClosedEnvironmentError",
    "NoAsyncCallError",
    "remote_env_error",
    "SpacesMismatch",
    "error_from_reply",
    "log_env_error",
]


class RlayError(RuntimeError):
    """Base class of rlay's own errors."""


class SpacesMismatch(RlayError):
    """Sub-envs whose spaces do not batch together, found as gymnasium's vector envs find them, and
    a RuntimeError as theirs: the ``which`` ("observation" or "action") space of env ``env`` does not
    fit ``expected``, the space of env ``reference`` (env 0 where known) or the declared single
    observation space: it is ``actual``; under ``observation_mode``."""

    def __init__(
        self, which: str, env: int, expected: str, actual: str, observation_mode: str = "same", reference: int = 0
    ):
        self.which, self.env, self.expected, self.actual = which, env, expected, actual
        self.observation_mode, self.reference = observation_mode, reference
        if which == "action":
            text = (
                f"Some environments have an action space different from `{expected}`. "
                "In order to batch actions, the action spaces from all environments must be equal."
            )
        elif observation_mode == "same":
            text = (
                "RlayVectorEnv(..., observation_mode='same') however some of the sub-environments observation "
                "spaces are not equivalent. If this is intentional, use `observation_mode='different'` instead."
            )
        else:
            text = (
                "RlayVectorEnv(..., observation_mode='different' or custom space) however the sub-environment's "
                "observation spaces do not share a common shape and dtype."
            )
        declared = which == "observation" and observation_mode != "same"
        fit = "the declared single observation space" if declared else f"that of env {reference}"
        super().__init__(f"{text} (env {env}: its {which} space {actual} does not fit {expected}, {fit})")


class RlayTimeoutError(multiprocessing.TimeoutError, TimeoutError):
    """A wait ran out. Catchable as gymnasium's (multiprocessing's) TimeoutError or the builtin one."""


class BrokerError(RlayError):
    """The broker refused a request (bad slot, bad message, version mismatch...)."""


class LeaseError(BrokerError):
    """The broker could not lease the slots a trainer asked for."""


class BrokerLostError(RlayError):
    """The broker stopped answering heartbeats, or no longer knows this trainer's lease."""


class WorkerLostError(RlayError):
    """A worker holding some of the trainer's slots disconnected or stopped answering."""


class RemoteEnvError(RlayError):
    """Env code raised in a worker. ``remote_type`` names the remote exception class.

    Where the remote class is a Python builtin exception, or one of gymnasium's own
    (``gymnasium.error``), the raised object is also an instance of it (``except
    ValueError`` or ``except gymnasium.error.InvalidAction`` work as with AsyncVectorEnv).
    """

    remote_type: str = "Exception"
    details: list[dict[str, Any]]


_remote_classes: dict[str, type[RemoteEnvError]] = {}


def remote_env_error(
    type_name: str, message: str, details: list[dict[str, Any]], module: str | None = None
) -> RemoteEnvError:
    """Build a RemoteEnvError that also subclasses the exception class named ``type_name``: a Python
    builtin, or with ``module`` "gymnasium.error" one of gymnasium's.

    The name is only looked up among those classes, already imported here: nothing
    from the wire is imported or evaluated.
    """
    namespace = {None: builtins, "builtins": builtins, "gymnasium.error": gymnasium.error}.get(module)
    key = f"{module}.{type_name}"
    cls = _remote_classes.get(key)
    if cls is None:
        local = getattr(namespace, type_name, None) if namespace is not None and type_name.isidentifier() else None
        if (
            isinstance(local, type)
            and issubclass(local, Exception)
            and not issubclass(local, (OSError, UnicodeError))  # constructors with special signatures
            and (namespace is builtins or local.__init__ is Exception.__init__)
        ):
            cls = type(f"Remote{type_name}", (RemoteEnvError, local), {"remote_type": type_name})
        else:
            cls = RemoteEnvError
        if len(_remote_classes) < 256:  # (names come from the wire)
            _remote_classes[key] = cls
    err = cls(message)
    err.details = details
    if cls is RemoteEnvError:
        err.remote_type = type_name
    return err


def error_from_reply(head: dict[str, Any], what: str, lease: Any) -> Exception:
    """The exception a trainer raises for the broker's `error` (or failed parts) during ``what``: env errors
    as RemoteEnvError naming each env by its row (``lease``: rlay.trainer.lease.Lease), timeouts,
    lost workers and a forgotten lease as their own classes, anything else as BrokerError."""
    code, message = head.get("code"), str(head.get("message", ""))
    failures = head.get("failures") or []
    if code == P.E_ENV:
        details = []
        for failure in failures:
            for err in failure.get("errors") or []:
                row = lease.row_of_slot.get(err.get("slot"))
                details.append(
                    {
                        **err,
                        "row": row,
                        "worker": failure.get("worker"),
                        "host": failure.get("host"),
                        "pid": failure.get("pid"),
                    }
                )
        lines = [
            f"{who} raised {d.get('type')}: {d.get('message')}\n--- remote traceback ---\n{d.get('traceback', '')}"
            for who, d in env_error_groups(details)
        ]
        type_name = details[0]["type"] if details else "Exception"
        module = details[0].get("module") if details else None
        return remote_env_error(
            str(type_name),
            f"during {what}:\n" + "\n".join(lines or [message]),
            details,
            module if isinstance(module, str) else None,
        )
    message = lease.name_rows(message)
    if code == P.E_TIMEOUT:
        return RlayTimeoutError(f"timed out during {what}: {message}")
    if code == P.E_WORKER_LOST:
        return WorkerLostError(f"during {what}: {message}")
    if code == P.E_NO_LEASE:
        return BrokerLostError(f"during {what}: {message}")
    return BrokerError(f"the broker refused {what}: [{code}] {message}")


def env_error_groups(details: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Env errors of one call, those with the same type, message and traceback together (eight envs
    stepped before reset raise one error, said once): (who raised it, one of its details) each."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for d in details:
        groups.setdefault((d.get("type"), d.get("message"), d.get("traceback")), []).append(d)
    out = []
    for same in groups.values():
        rows = [d.get("row") for d in same]
        workers = list(
            dict.fromkeys(f"worker {d.get('worker')} (pid {d.get('pid')} on host {d.get('host')})" for d in same)
        )
        if len(same) == 1:
            d = same[0]
            who = f"env {d.get('row')} (slot {d.get('slot')}, env {d.get('env')} of {workers[0]})"
        else:
            known = sorted(r for r in rows if r is not None)
            first, last = (known[0], known[-1]) if known else (None, None)
            span = f"{first}-{last}" if known and known == list(range(first, last + 1)) else ", ".join(map(str, rows))
            who = f"envs {span} (on {', '.join(workers)})"
        out.append((who, same[0]))
    return out


def log_env_error(error: RemoteEnvError) -> None:
    """Report env errors through gymnasium's logger, as AsyncVectorEnv reports its workers' errors
    before it raises one of them: who raised each, and what (once per kind). The remote traceback is
    in the exception raised, and only there: printed once."""
    for who, d in env_error_groups(error.details):
        logger.error("%s", f"Received the following error from {who}")
        logger.error("%s", f"{d.get('type')}: {d.get('message')}")
    logger.error("%s", "Raising the exception back to the main process.")
