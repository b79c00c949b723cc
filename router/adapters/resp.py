"""Redis's wire protocol (RESP2), the part the gateway's hot path speaks: commands packed into one byte string,
replies read back from a buffer as they arrive. Pure functions: the connection that uses them is
router.adapters.redis_batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["INCOMPLETE", "ProtocolError", "ReplyError", "Script", "pack", "parse"]


class ReplyError(Exception):
    """An error reply from Redis (a script's error, a wrong type, NOSCRIPT): the one call's, not the
    connection's."""


class ProtocolError(Exception):
    """Bytes that are not RESP: the connection cannot be trusted past them."""


@dataclass(frozen=True)
class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and sent in full only when Redis does not know it."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    raise TypeError(f"a Redis argument must be str, bytes or int, not {type(value).__name__}")


def pack(args: tuple[str | bytes | int, ...]) -> bytes:
    """One command as RESP: an array of bulk strings. The common types are converted here, without a call per
    argument (an admission packs a dozen); anything else goes through _arg, which refuses what Redis can't take."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for value in args:
        if type(value) is str:
            data = value.encode()
        elif type(value) is int:
            data = b"%d" % value
        elif type(value) is bytes:
            data = value
        else:
            data = _arg(value)
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete:
    """The buffer ends inside a reply: wait for more bytes."""


INCOMPLETE: Any = _Incomplete()
MAX_DEPTH = 32  # nested arrays deeper than any reply the gateway asks for: a sign of garbage, not of data


def parse(buf: bytes | bytearray, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """The reply that starts at `pos` and where the next one starts, or (INCOMPLETE, pos). Bulk and simple
    strings come back as bytes, integers as int, nil as None, arrays as lists, error replies as ReplyError
    values (not raised: an error in one call leaves the others' replies readable)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return INCOMPLETE, pos
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    try:
        if kind == 0x24:  # $ bulk string
            size = int(line)
            if size < 0:
                return None, end + 2
            stop = end + 2 + size
            if len(buf) < stop + 2:
                return INCOMPLETE, pos
            if buf[stop : stop + 2] != b"\r\n":  # the length lied: every reply after it would be misread
                raise ProtocolError(f"a bulk string longer than its length ({size})")
            return bytes(buf[end + 2 : stop]), stop + 2
        if kind == 0x3A:  # : integer
            return int(line), end + 2
        if kind == 0x2B:  # + simple string
            return line, end + 2
        if kind == 0x2D:  # - error
            return ReplyError(line.decode("utf-8", "replace")), end + 2
        if kind == 0x2A:  # * array
            return _array(buf, pos, end, int(line), depth)
    except ValueError:
        raise ProtocolError(f"not a RESP length or integer: {line[:40]!r}") from None
    raise ProtocolError(f"not a RESP reply type: {bytes(buf[pos : pos + 1])!r}")


def _array(buf: bytes | bytearray, pos: int, end: int, count: int, depth: int) -> tuple[Any, int]:
    if count < 0:
        return None, end + 2
    if depth >= MAX_DEPTH:
        raise ProtocolError("arrays nested too deep")
    items = []
    at = end + 2
    for _ in range(count):
        item, at = parse(buf, at, depth + 1)
        if item is INCOMPLETE:
            return INCOMPLETE, pos
        items.append(item)
    return items, at
