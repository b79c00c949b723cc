"""Reading a model file the gateway loads, at start-up and again on every reload: a regular file, read once, up
to a size limit. A path that names a device (a symlink to /dev/zero reads forever), a FIFO (opening one waits
for a writer, for good), a directory or a file larger than the limit is refused with a message, never read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileRefused", "read_regular_file"]

_CHUNK = 1 << 20


class FileRefused(Exception):
    """The path names something other than a regular file within the limit; str() says what."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The whole file's bytes. Raises FileRefused for a non-regular file, one larger than `limit` bytes (also one
    that grows past it while read) and one that changed while read; OSError when it cannot be opened."""
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; it changes nothing for a
    # regular file. The checks are made on the descriptor, so a file swapped in after them is never read.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise FileRefused(f"not a regular file ({_kind(before.st_mode)})")
        if before.st_size > limit:
            raise FileRefused(f"{before.st_size} bytes, more than the {limit} a model file may have")
        data = _read_up_to(fd, limit + 1)
        if len(data) > limit:
            raise FileRefused(f"grew past {limit} bytes while it was read")
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(data) != after.st_size:
            raise FileRefused("it changed while it was read (write the new file beside it, then rename it)")
        return data
    finally:
        os.close(fd)


def _read_up_to(fd: int, most: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < most:
        chunk = os.read(fd, min(_CHUNK, most - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"
