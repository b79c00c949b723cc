"""A stream's usage taken out for a caller who did not ask for it, in every shape workers send it."""

from __future__ import annotations

import orjson
import pytest

from router.sse import events_end, without_usage

USAGE = {"prompt_tokens": 12000, "completion_tokens": 3, "total_tokens": 12003}


def event(doc: object, *, crlf: bool = False) -> bytes:
    prefix, end = (b"data:", b"\r\n\r\n") if crlf else (b"data: ", b"\n\n")
    return prefix + orjson.dumps(doc) + end


def content(i: int, **extra: object) -> dict[str, object]:
    return {"id": "c", "choices": [{"index": 0, "delta": {"content": f"w{i}"}}], **extra}


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_a_usage_only_chunk_is_dropped_and_the_rest_passes_byte_for_byte(crlf: bool) -> None:
    body = event(content(0), crlf=crlf) + event(content(1), crlf=crlf)
    done = b"data: [DONE]" + (b"\r\n\r\n" if crlf else b"\n\n")
    assert without_usage(body + event({"id": "c", "choices": [], "usage": USAGE}, crlf=crlf) + done) == body + done
    assert without_usage(body + done) == body + done  # nothing to take out: the same bytes


def test_usage_on_a_chunk_with_choices_is_removed_and_the_chunk_kept() -> None:
    out = without_usage(event(content(0, usage=USAGE)) + b"data: [DONE]\n\n")
    first, done = out.split(b"\n\n")[:2]
    assert orjson.loads(first[5:]) == content(0)
    assert done == b"data: [DONE]"


@pytest.mark.parametrize(
    "line",
    [
        b'data: {"id":"c","choices":[],"usage":null}',
        b'data: {"usage": null, "id":"c","choices":[]}',
        b'data: {"id":"c", "usage" : null , "choices":[]}',
    ],
)
def test_a_null_usage_field_is_taken_out_leaving_valid_json(line: bytes) -> None:
    out = without_usage(line + b"\n\n")
    assert orjson.loads(out[5:]) == {"id": "c", "choices": []}


def test_usage_mentioned_inside_text_is_not_touched() -> None:
    text = content(0)
    text["choices"][0]["delta"]["content"] = '{"usage": null, "usage": {"a": 1}}'  # type: ignore[index]
    body = event(text)
    assert without_usage(body) == body


def test_what_is_not_a_json_chunk_passes_as_it_is() -> None:
    body = b'data: {"usage": broken\n\n: a comment with "usage"\n\nevent: usage\ndata: "usage"\n\n'
    assert without_usage(body) == body


def test_events_end_finds_the_last_whole_event() -> None:
    assert events_end(b"data: a\n\ndata: b") == len(b"data: a\n\n")
    assert events_end(b"data: a\r\n\r\ndata: b\r\n") == len(b"data: a\r\n\r\n")
    assert events_end(b"data: a") == 0
