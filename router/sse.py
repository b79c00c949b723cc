"""Server-sent events as OpenAI-compatible workers send them: where whole events end, and a stream's usage taken
out for a caller who did not ask for it (the gateway always asks the worker for it, to settle the stream)."""

from __future__ import annotations

import re

import orjson

__all__ = ["EVENT_ENDS", "events_end", "without_usage"]

# How an event ends: a blank line, its lines ended by LF or CRLF as SSE allows (vLLM sends LF; sse-starlette,
# behind llama-cpp-python's server among others, sends CRLF).
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
_BOUNDARY = re.compile(rb"(\r?\n\r?\n)")
# OpenAI's `"usage": null` on every other chunk of a stream that asked for usage; the field goes with the comma
# that joins it to its neighbour. (Inside a JSON string a quote is escaped, so text cannot match.)
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')


def events_end(data: bytes) -> int:
    """Where the last whole event in `data` ends (0: none has)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def without_usage(events: bytes) -> bytes:
    """Whole events with the worker's usage taken out: an event that is only usage (vLLM's and OpenAI's last
    chunk, `"choices": []`) is dropped; usage riding on a chunk with choices (llama.cpp's way), or null (OpenAI's
    on every other chunk), is removed from that chunk."""
    if b'"usage"' not in events:
        return events
    parts = _BOUNDARY.split(events)  # event, separator, event, separator, ..., what follows the last one
    kept: list[bytes] = []
    for i in range(0, len(parts) - 1, 2):
        event = _event_without_usage(parts[i]) if b'"usage"' in parts[i] else parts[i]
        if event is not None:
            kept += (event, parts[i + 1])
    last = _event_without_usage(parts[-1]) if b'"usage"' in parts[-1] else parts[-1]
    if last:
        kept.append(last)
    return b"".join(kept)


def _event_without_usage(event: bytes) -> bytes | None:
    """One event without its usage; None to drop it. What is not a JSON chunk with usage stays as it is."""
    lines = event.split(b"\n")
    for i, line in enumerate(lines):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        if _NULL_USAGE.search(line):
            lines[i] = _NULL_USAGE.sub(b"", line, count=1)
            continue
        cr = line.endswith(b"\r")
        try:
            doc = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
            continue
        del doc["usage"]
        if not doc.get("choices"):
            return None
        lines[i] = b"data: " + orjson.dumps(doc) + (b"\r" if cr else b"")
    return b"\n".join(lines)
