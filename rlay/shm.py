"""Shared memory for large observations, between a trainer and the workers on its host.

Over sockets every observation byte is copied into a batch or a message, by the kernel
twice (out of the worker, into the trainer), and once more into the trainer's batch
buffer. For images that is most of the step. So the trainer keeps its batch buffer of
each Box leaf of ``SHARED_BYTES`` (8 KiB) or more per env in one segment under /dev/shm,
and offers it in every reset and step request: the segment's name, a token, and the
byte offset of each env's row (protocol 3.9). A worker that can open the segment and
finds the token at its start writes the observations there and replies with
descriptors only; any other worker (another host, another user, an older or a
foreign implementation) ignores the offer and sends frames, which the trainer takes
as before. The socket still carries every message, so ordering and failures are
unchanged: a row is read only after its worker's reply has arrived.

What the worker trusts: only names of rlay's own form, opened without creating, without
following links and without blocking, as regular files of its own user that no one else
may open, with every page allocated (a sparse file would SIGBUS on a full tmpfs), and only
after checking the token. The token tells the trainer's segment from a same-named file; it
is not a secret from the peers a request passes through (protocol 14).

A live segment is one its trainer holds an exclusive ``flock`` on, whatever pid namespace
it runs in (it takes the lock before it offers the name); the files nobody holds are left
by dead trainers. A worker removes a segment it has mapped once no one holds it (checked
at most once a second, and when idle, for the 8 it keeps); a trainer about to make its
segment removes those of its user not written to for 10 s; an embedded worker whose
trainer died removes that trainer's.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import re
import secrets
import stat
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
from gymnasium import spaces

from rlay.wire import row_bytes

try:
    import fcntl
except ImportError:  # not POSIX: no shared memory, observations travel as frames
    fcntl = None

__all__ = ["ObsSegment", "SegmentCache", "is_shared", "remove_stale"]

log = logging.getLogger("rlay.shm")

SHM_DIR = "/dev/shm"
TOKEN_BYTES = 16  # the segment starts with its token
HEADER_BYTES = 4096  # token, then nothing until the first leaf; every leaf starts 4096-aligned
# Box leaves of at least this many bytes per env are kept in shared memory. Below it the offer and
# its checks cost about what the copies they save do (measured: neutral at 4-7 KiB, +20% env-steps/s
# at 12 KiB and +35% at 21 KiB, 8 envs; docs/performance.md).
SHARED_BYTES = 8192
NAME = re.compile(r"rlay-([1-9][0-9]{0,6})-[0-9a-f]{16}\Z")  # rlay-<trainer pid>-<random>
STALE_AGE = 10.0  # s: an unlocked segment written to more recently may be one being made, not a dead one
_LIVE: weakref.WeakSet[ObsSegment] = weakref.WeakSet()


def _forget_in_child() -> None:
    # A forked child (a worker restarted under supervision) must not hold its parent's lock,
    # or the segment would look live after the trainer died.
    for segment in list(_LIVE):
        segment._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def is_shared(space: spaces.Space) -> bool:
    """A leaf the trainer keeps in shared memory: a Box of at least SHARED_BYTES per env."""
    return isinstance(space, spaces.Box) and row_bytes(space) >= SHARED_BYTES


class ObsSegment:
    """The trainer's side: the batch buffers of its large observation leaves, in shared memory.

    ``arrays[leaf index]`` is that leaf's buffer, ``(num_envs, *leaf shape)``.
    """

    def __init__(
        self, path: str, fd: int, memory: mmap.mmap, arrays: dict[int, np.ndarray], rows: dict[int, tuple[int, int]]
    ):
        self.path, self.name = path, os.path.basename(path)
        self._fd, self._memory, self._pid = fd, memory, os.getpid()
        self.arrays = arrays
        self._rows = rows  # leaf index -> (offset of row 0, bytes per row)
        self.renew_token()
        _LIVE.add(self)

    @classmethod
    def create(cls, leaves: Iterable[tuple[int, spaces.Box]], num_envs: int) -> ObsSegment | None:
        """A segment for the given (leaf index, space) pairs, or None where shared memory is not
        to be had (no /dev/shm, no room in it): then observations travel as frames."""
        leaves = list(leaves)
        if not leaves or fcntl is None or not os.path.isdir(SHM_DIR):
            return None
        layout, size = {}, HEADER_BYTES
        for index, space in leaves:
            size_of_row = row_bytes(space)
            layout[index] = (size, size_of_row)
            size += -(-num_envs * size_of_row // HEADER_BYTES) * HEADER_BYTES  # the next leaf starts 4096-aligned
        remove_stale()
        path = os.path.join(SHM_DIR, f"rlay-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning("no shared memory for observations (%s); they travel as frames", exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the segment's life: it is live
            # Reserve every page now: a tmpfs that is too small (Docker gives 64 MB) fails here,
            # not with a SIGBUS in a worker's write.
            os.posix_fallocate(fd, 0, size)
            memory = _map_apart(fd, path, size)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            log.warning(
                "no shared memory for observations: %d bytes in %s: %s; they travel as frames", size, SHM_DIR, exc
            )
            return None
        arrays = {
            index: np.ndarray((num_envs, *space.shape), space.dtype, buffer=memory, offset=layout[index][0])
            for index, space in leaves
        }
        return cls(path, fd, memory, arrays, layout)

    def renew_token(self) -> None:
        """A new token: offers made before this are refused by the workers (envs lost with their
        worker are being replaced: a lost worker that still runs must not write into their rows)."""
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._memory[:TOKEN_BYTES] = self.token

    def offer(self, rows: list[int]) -> dict[str, Any]:
        """The ``shm`` map of a request whose envs are the trainer's ``rows``, in that order."""
        return {
            "name": self.name,
            "token": self.token,
            "leaves": [[index, [start + row * size for row in rows]] for index, (start, size) in self._rows.items()],
        }

    def close(self) -> None:
        """Remove the segment. Its memory lives on while the caller holds arrays of it (copy=False)."""
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._forget()
        self.arrays, self._memory = {}, None

    def _forget(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _map_apart(fd: int, path: str, size: int) -> mmap.mmap:
    """Map the file open at ``fd`` through an open file of its own. Python's mmap keeps a duplicate
    of the descriptor it maps, and a lock belongs to every duplicate: mapped through the locked
    ``fd``, a forked child would hold the segment's lock for as long as it keeps the mapping, and
    the segment of a trainer that died would look live."""
    map_fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        made, opened = os.fstat(fd), os.fstat(map_fd)
        if (opened.st_dev, opened.st_ino) != (made.st_dev, made.st_ino):
            raise OSError(f"{path} was replaced while it was being made")
        return mmap.mmap(map_fd, size)
    finally:
        os.close(map_fd)


class _Mapping:
    def __init__(self, fd: int, memory: mmap.mmap):
        self.fd, self.memory = fd, memory


class SegmentCache:
    """The worker's side: the trainers' segments it has opened, by name.

    ``place`` turns an offer into one writable array per env and offered leaf, or
    None when the offer cannot be used here (then the worker sends frames). A name
    that could not be opened is remembered until the next ``prune``, which also
    drops the segments their trainer removed.
    """

    PRUNE_INTERVAL = 1.0  # s: prune() checks the open segments at most this often

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._pruned = 0.0
        self._open: collections.OrderedDict[str, _Mapping | None] = collections.OrderedDict()

    def place(self, offer: Any, leaf_spaces: list[spaces.Space], num_rows: int) -> dict[int, list[np.ndarray]] | None:
        self.prune()
        if not isinstance(offer, dict) or fcntl is None:
            return None
        name, token, leaves = offer.get("name"), offer.get("token"), offer.get("leaves")
        if (
            not isinstance(name, str)
            or type(token) is not bytes
            or len(token) != TOKEN_BYTES
            or not isinstance(leaves, list)
        ):
            return None
        mapping = self._mapping(name)
        if mapping is None:
            return None
        size = len(mapping.memory)
        if os.fstat(mapping.fd).st_size < size:  # shrunk under us: touching what is gone would SIGBUS
            self._drop(name)
            return None
        if mapping.memory[:TOKEN_BYTES] != token:
            return None
        placed: dict[int, list[np.ndarray]] = {}
        for item in leaves:
            if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], list)):
                return None
            index, offsets = item
            if not 0 <= index < len(leaf_spaces) or index in placed or len(offsets) != num_rows:
                return None
            space = leaf_spaces[index]
            if not isinstance(space, spaces.Box):
                return None
            size_of_row = row_bytes(space)
            for offset in offsets:
                if type(offset) is not int or offset < HEADER_BYTES or offset + size_of_row > size:
                    return None
            placed[index] = [np.ndarray(space.shape, space.dtype, buffer=mapping.memory, offset=o) for o in offsets]
        return placed

    def _mapping(self, name: str) -> _Mapping | None:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        if not NAME.match(name):
            return None
        mapping = None
        try:
            # O_NONBLOCK: a file lease held by someone else would otherwise block the open.
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            fd = None  # another host's segment, or another user's
        if fd is not None:
            try:
                info = os.fstat(fd)
                if not (
                    stat.S_ISREG(info.st_mode)
                    and info.st_uid == os.geteuid()
                    and info.st_mode & 0o077 == 0
                    and info.st_size > HEADER_BYTES
                    and info.st_blocks * 512 >= info.st_size
                ):
                    raise OSError("not a segment of this user's trainer, or a sparse one")
                mapping = _Mapping(fd, mmap.mmap(fd, info.st_size))
            except OSError:
                os.close(fd)
        self._open[name] = mapping
        while len(self._open) > self.limit:
            self._drop(next(iter(self._open)))
        return mapping

    def prune(self) -> None:
        """Drop the segments their trainer has removed, remove those whose trainer died (it was
        killed: no one holds the segment's lock), and forget names that failed."""
        now = time.monotonic()
        if now - self._pruned < self.PRUNE_INTERVAL:
            return
        self._pruned = now
        for name, mapping in list(self._open.items()):
            if mapping is None or os.fstat(mapping.fd).st_nlink == 0:
                self._drop(name)
            elif _unlocked(mapping.fd):  # its trainer is gone; the lock is ours until _drop closes the fd
                _unlink(name)
                self._drop(name)

    def _drop(self, name: str) -> None:
        mapping = self._open.pop(name)
        if mapping is not None:
            os.close(mapping.fd)
            try:
                mapping.memory.close()
            except BufferError:
                pass  # a reply being built still holds a view; the mapping goes with it

    def close(self) -> None:
        for name in list(self._open):
            self._drop(name)


def _unlocked(fd: int) -> bool:
    """Whether no trainer holds the segment open at ``fd`` (a segment is locked from before its name
    is ever offered until it is removed). True leaves the lock with the caller."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass  # (another worker of the same trainer got there first)


def remove_stale(pid: int | None = None) -> None:
    """Remove this user's segments that no live trainer holds (their trainer was killed):
    those of trainer ``pid`` (an embedded worker whose trainer died), or else all of them
    old enough not to be in the making."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        match = NAME.match(name)
        if not match or (pid is not None and int(match.group(1)) != pid):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid() or (pid is None and time.time() - info.st_mtime < STALE_AGE):
                continue
            if _unlocked(fd):  # (not while its trainer lives)
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)
