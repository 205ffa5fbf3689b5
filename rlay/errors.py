"""Exceptions a trainer sees. Misuse raises gymnasium's own types, re-exported here."""

from __future__ import annotations

import builtins
import multiprocessing
from typing import Any

from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError

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
]


class RlayError(RuntimeError):
    """Base class of rlay's own errors."""


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

    Where the remote class is a Python builtin exception, the raised object is
    also an instance of it (``except ValueError`` works as with AsyncVectorEnv).
    """

    remote_type: str = "Exception"
    details: list[dict[str, Any]]


_remote_classes: dict[str, type[RemoteEnvError]] = {}


def remote_env_error(type_name: str, message: str, details: list[dict[str, Any]]) -> RemoteEnvError:
    """Build a RemoteEnvError that also subclasses the builtin exception named ``type_name``.

    The name is only looked up among Python's builtin exception classes: nothing
    from the wire is imported or evaluated.
    """
    cls = _remote_classes.get(type_name)
    if cls is None:
        builtin = getattr(builtins, type_name, None) if type_name.isidentifier() else None
        if (
            isinstance(builtin, type)
            and issubclass(builtin, Exception)
            and not issubclass(builtin, (OSError, UnicodeError))  # constructors with special signatures
        ):
            cls = type(f"Remote{type_name}", (RemoteEnvError, builtin), {"remote_type": type_name})
        else:
            cls = RemoteEnvError
        _remote_classes[type_name] = cls
    err = cls(message)
    err.details = details
    if cls is RemoteEnvError:
        err.remote_type = type_name
    return err
