"""Shared memory for large observations, between a trainer and the workers on its host.

Over sockets every observation byte is copied by the kernel twice (out of the worker,
into the trainer) and once more into the trainer's batch buffer. For frames of
megabytes that is most of the step. So the trainer keeps its batch buffer of each
large Box leaf (``rlay.wire.ROW_FRAME_BYTES`` or more per env) in one segment under /dev/shm,
and offers it in every reset and step request: the segment's name, a token, and the
byte offset of each env's row (protocol 3.9). A worker that can open the segment and
finds the token at its start writes the observations there and replies with
descriptors only; any other worker (another host, another user, an older or a
foreign implementation) ignores the offer and sends frames, which the trainer takes
as before. The socket still carries every message, so ordering and failures are
unchanged: a row is read only after its worker's reply has arrived.

What the worker trusts: only names of rlay's own form, opened without creating and
without following links, as regular files, and only after checking the token, so a
request cannot make a worker write into a file it did not get from that trainer.
"""

from __future__ import annotations

import collections
import logging
import math
import mmap
import os
import re
import secrets
import stat
import time
from typing import Any, Iterable

import numpy as np
from gymnasium import spaces

__all__ = ["ObsSegment", "SegmentCache", "place_rows", "remove_segments_of"]

log = logging.getLogger("rlay.shm")

SHM_DIR = "/dev/shm"
TOKEN_BYTES = 16  # the segment starts with its token
HEADER_BYTES = 4096  # token, then nothing until the first leaf, which starts page-aligned
NAME = re.compile(r"rlay-([0-9]{1,10})-[0-9a-f]{16}\Z")  # rlay-<trainer pid>-<random>


class ObsSegment:
    """The trainer's side: the batch buffers of its large observation leaves, in shared memory.

    ``arrays[leaf index]`` is that leaf's buffer, ``(num_envs, *leaf shape)``.
    """

    def __init__(self, path: str, fd: int, memory: mmap.mmap, arrays: dict[int, np.ndarray],
                 rows: dict[int, tuple[int, int]]):
        self.path, self.name = path, os.path.basename(path)
        self._fd, self._memory = fd, memory
        self.arrays = arrays
        self._rows = rows  # leaf index -> (offset of row 0, bytes per row)
        self.renew_token()

    @classmethod
    def create(cls, leaves: Iterable[tuple[int, spaces.Box]], num_envs: int) -> "ObsSegment | None":
        """A segment for the given (leaf index, space) pairs, or None where shared memory is not
        to be had (no /dev/shm, no room in it): then observations travel as frames."""
        leaves = list(leaves)
        if not leaves or not os.path.isdir(SHM_DIR):
            return None
        layout, size = {}, HEADER_BYTES
        for index, space in leaves:
            row_bytes = space.dtype.itemsize * math.prod(space.shape)
            layout[index] = (size, row_bytes)
            size += -(-num_envs * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        _remove_stale()
        path = os.path.join(SHM_DIR, f"rlay-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning("no shared memory for observations (%s); they travel as frames", exc)
            return None
        try:
            # Reserve every page now: a tmpfs that is too small (Docker gives 64 MB) fails here,
            # not with a SIGBUS in a worker's write.
            os.posix_fallocate(fd, 0, size)
            memory = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            log.warning("no shared memory for observations: %d bytes in %s: %s; they travel as frames",
                        size, SHM_DIR, exc)
            return None
        arrays = {index: np.ndarray((num_envs, *space.shape), space.dtype, buffer=memory, offset=layout[index][0])
                  for index, space in leaves}
        return cls(path, fd, memory, arrays, layout)

    def renew_token(self) -> None:
        """A new token: offers made before this are refused by the workers (a new lease)."""
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._memory[:TOKEN_BYTES] = self.token

    def offer(self, rows: list[int]) -> dict[str, Any]:
        """The ``shm`` map of a request whose envs are the trainer's ``rows``, in that order."""
        return {"name": self.name, "token": self.token,
                "leaves": [[index, [start + row * size for row in rows]] for index, (start, size) in self._rows.items()]}

    def close(self) -> None:
        """Remove the segment. Its memory lives on while the caller holds arrays of it (copy=False)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.arrays, self._memory = {}, None


class _Mapping:
    def __init__(self, fd: int, memory: mmap.mmap):
        self.fd, self.memory = fd, memory


class SegmentCache:
    """The worker's side: the trainers' segments it has opened, by name.

    ``place`` turns an offer into one writable array per env and offered leaf, or
    None when the offer cannot be used here (then the worker sends frames). A name
    that cannot be opened is remembered as such; segments their trainer removed are
    dropped by ``prune``.
    """

    PRUNE_INTERVAL = 1.0  # s: prune() checks the open segments at most this often

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._pruned = 0.0
        self._open: collections.OrderedDict[str, _Mapping | None] = collections.OrderedDict()

    def place(self, offer: Any, leaf_spaces: list[spaces.Space], num_rows: int) -> dict[int, list[np.ndarray]] | None:
        if not isinstance(offer, dict):
            return None
        name, token, leaves = offer.get("name"), offer.get("token"), offer.get("leaves")
        if not isinstance(name, str) or type(token) is not bytes or len(token) != TOKEN_BYTES or not isinstance(leaves, list):
            return None
        mapping = self._mapping(name)
        if mapping is None or mapping.memory[:TOKEN_BYTES] != token:
            return None
        size = len(mapping.memory)
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
            row_bytes = space.dtype.itemsize * math.prod(space.shape)
            for offset in offsets:
                if type(offset) is not int or offset < HEADER_BYTES or offset + row_bytes > size:
                    return None
            placed[index] = [np.ndarray(space.shape, space.dtype, buffer=mapping.memory, offset=o) for o in offsets]
        return placed

    def _mapping(self, name: str) -> _Mapping | None:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        self.prune()
        mapping = None
        if NAME.match(name):
            try:
                fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                fd = None  # another host's segment, or another user's
            if fd is not None:
                try:
                    info = os.fstat(fd)
                    if not stat.S_ISREG(info.st_mode) or info.st_size <= HEADER_BYTES:
                        raise OSError("not a segment")
                    mapping = _Mapping(fd, mmap.mmap(fd, info.st_size))
                except OSError:
                    os.close(fd)
        self._open[name] = mapping
        while len(self._open) > self.limit:
            self._drop(next(iter(self._open)))
        return mapping

    def prune(self) -> None:
        """Drop the segments their trainer has removed (and forget names that failed)."""
        now = time.monotonic()
        if now - self._pruned < self.PRUNE_INTERVAL:
            return
        self._pruned = now
        for name, mapping in list(self._open.items()):
            if mapping is None or os.fstat(mapping.fd).st_nlink == 0:
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


def place_rows(rows: list[Any], space: spaces.Box, targets: list[np.ndarray]) -> dict[str, Any]:
    """Write one env's array per target (checked first, cast as SyncVectorEnv does: same_kind)
    and return the leaf's descriptor."""
    arrays = [np.asarray(row) for row in rows]
    for array in arrays:
        if array.shape != space.shape:
            raise ValueError(f"an observation of shape {array.shape} does not fit {space}")
        if not np.can_cast(array.dtype, space.dtype, "same_kind"):
            raise TypeError(f"Cannot cast array data from {array.dtype!r} to {space.dtype!r} according to the rule 'same_kind'")
    for array, target in zip(arrays, targets):
        np.copyto(target, array, casting="same_kind")
    return {"dtype": space.dtype.str, "shape": [len(arrays), *space.shape], "shm": True}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale() -> None:
    """Remove this user's segments whose trainer is dead (killed before it could remove them)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        match = NAME.match(name)
        if match and not _alive(int(match.group(1))):
            path = os.path.join(SHM_DIR, name)
            try:
                if os.stat(path, follow_symlinks=False).st_uid == os.getuid():
                    os.unlink(path)
            except OSError:
                pass


def remove_segments_of(pid: int) -> None:
    """Remove the segments of trainer ``pid`` (an embedded worker whose trainer died)."""
    prefix = f"rlay-{pid}-"
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and NAME.match(name):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass
