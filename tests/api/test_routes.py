"""The OpenAI-compatible surface, through a real gateway to real HTTP upstreams."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.api.conftest import Stack

SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "explain " * 100}]  # 800 chars: length score 0.89 with midpoint 100


def chat(stack: Stack, **body: object) -> httpx.Response:
    return stack.client.post("/v1/chat/completions", json={"messages": SHORT, **body})


def test_models_lists_alias_then_served_models(stack: Stack) -> None:
    r = stack.client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["auto", "tiny-small", "tiny-large"]
    assert all(m["object"] == "model" for m in r.json()["data"])


def test_auto_routes_short_prompt_small_and_long_prompt_large(stack: Stack) -> None:
    short = chat(stack, model="auto")
    long = stack.client.post("/v1/chat/completions", json={"model": "auto", "messages": LONG})
    assert (short.status_code, long.status_code) == (200, 200)
    assert short.headers["x-triage-model"] == "tiny-small"
    assert short.headers["x-triage-reason"] == "below_threshold"
    assert float(short.headers["x-triage-score"]) < 0.5
    assert long.headers["x-triage-model"] == "tiny-large"
    assert long.headers["x-triage-reason"] == "at_or_above_threshold"
    assert float(long.headers["x-triage-score"]) >= 0.5
    assert long.json()["model"] == "tiny-large"
    assert len(stack.small_journal.bodies) == 1 and len(stack.large_journal.bodies) == 1


def test_concrete_model_goes_straight_to_its_worker(stack: Stack) -> None:
    for name in ("tiny-large", "large"):  # served name or configured worker name
        r = stack.client.post("/v1/chat/completions", json={"model": name, "messages": SHORT})
        assert r.status_code == 200
        assert r.headers["x-triage-model"] == "tiny-large"
        assert r.headers["x-triage-reason"] == "requested"
        assert r.headers["x-triage-score"] == "-"
    assert stack.small_journal.bodies == []


def test_unknown_fields_pass_through_untouched(stack: Stack) -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "n": 2,
        "seed": 7,
        "logprobs": True,
        "vendor_thing": {"nested": [1, 2, {"a": None}]},
    }
    r = chat(stack, model="auto", **extra)
    assert r.status_code == 200
    echoed = r.json()["echo"]
    assert echoed["model"] == "tiny-small"  # only the model is rewritten
    for key, value in extra.items():
        assert echoed[key] == value


def test_completions_endpoint(stack: Stack) -> None:
    r = stack.client.post("/v1/completions", json={"model": "auto", "prompt": "2+2=", "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["object"] == "text_completion"
    assert r.headers["x-triage-model"] == "tiny-small"


def test_stream_passes_chunks_through_with_usage(stack: Stack) -> None:
    body = {
        "model": "auto",
        "messages": SHORT,
        "stream": True,
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
    }
    with stack.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-triage-model"] == "tiny-small"
        text = r.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:4]] == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def test_stream_without_include_usage_has_no_usage_chunk(stack: Stack) -> None:
    body = {"model": "tiny-large", "messages": SHORT, "stream": True, "max_tokens": 2}
    with stack.client.stream("POST", "/v1/chat/completions", json=body) as r:
        text = r.read().decode()
    assert "usage" not in text
    assert text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "auto"}', "messages"),
        (b'{"model": "auto", "messages": []}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
            "max_tokens",
        ),
        (b'{"model": "auto", "messages": [{"content": "x"}]}', "role"),
    ],
)
def test_malformed_requests_are_400_in_openai_envelope(stack: Stack, raw: bytes, needle: str) -> None:
    r = stack.client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert stack.small_journal.bodies == [] and stack.large_journal.bodies == []


def test_unknown_model_is_404(stack: Stack) -> None:
    r = chat(stack, model="gpt-17")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "model"


def test_body_over_limit_is_413_declared_or_chunked(stack: Stack) -> None:
    big = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    declared = stack.client.post("/v1/chat/completions", content=big)
    chunked = stack.client.post("/v1/chat/completions", content=iter([big[:40_000], big[40_000:]]))
    for r in (declared, chunked):
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
    assert stack.small_journal.bodies == []


def test_worker_4xx_passes_through_and_non_envelope_is_wrapped(stack: Stack) -> None:
    envelope = json.dumps(
        {"error": {"message": "prompt too long", "type": "BadRequestError", "param": None, "code": 400}}
    )
    r1 = chat(stack, model="auto", x_test={"status": 400, "body": envelope})
    r2 = chat(stack, model="auto", x_test={"status": 422, "body": "plain words", "type": "text/plain"})
    assert r1.status_code == 400 and r1.json()["error"]["message"] == "prompt too long"
    assert r1.headers["x-triage-model"] == "tiny-small"
    assert r2.status_code == 422
    assert r2.json()["error"]["message"] == "plain words"
    assert r2.headers["content-type"].startswith("application/json")


def test_worker_5xx_is_502(stack: Stack) -> None:
    r = chat(stack, model="auto", x_test={"status": 500, "body": "boom"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "boom" in r.json()["error"]["message"]


def test_worker_timeout_is_504(stack: Stack) -> None:
    r = chat(stack, model="auto", x_test={"sleep": 5})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_stream_worker_5xx_before_streaming_is_502_json(stack: Stack) -> None:
    r = chat(stack, model="auto", stream=True, x_test={"status": 503, "body": "overloaded"})
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")


def test_worker_dying_mid_stream_ends_with_error_event(stack: Stack) -> None:
    body = {"model": "auto", "messages": SHORT, "stream": True, "max_tokens": 6, "x_test": {"die_after": 2}}
    with stack.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_each_event_is_passed_on_before_the_next_is_sent(stack: Stack, crlf: bool) -> None:
    """Regression: a worker whose events end in CRLF, as SSE allows (sse-starlette's default), had them held
    until 1 MiB had gathered or the stream ended: no streaming at all. The worker here sends one event, then
    waits for the test to have read it."""
    journals = (stack.small_journal, stack.large_journal)
    body = {"model": "auto", "messages": SHORT, "stream": True, "max_tokens": 3, "x_test": {"gate": True, "crlf": crlf}}
    try:
        with stack.client.stream("POST", "/v1/chat/completions", json=body, timeout=15) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            for journal in journals:
                journal.gate.set()
            rest = [line for line in lines if line]
    finally:
        for journal in journals:
            journal.gate.set()  # never leave a worker waiting
            journal.gate.clear()
    events = [first, *rest]
    assert [e.removeprefix("data:").strip()[:1] for e in events] == ["{", "{", "{", "["]
    assert json.loads(first.removeprefix("data:"))["choices"][0]["delta"]["content"] == "w0 "


def test_health_and_ready(stack: Stack) -> None:
    assert stack.client.get("/health").json() == {"status": "ok"}
    ready = stack.client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    classifier = body.pop("classifier")
    assert body == {
        "ready": True,
        "workers": {"small": "up", "large": "up"},
        "breakers": {"small": "closed", "large": "closed"},
        "limiter_errors": 0,
    }
    # This stack scores by length: no file behind it.
    assert (classifier["path"], classifier["sha256"], classifier["reloads"]) == ("length", "", 0)


def test_unknown_route_and_method_use_envelope(stack: Stack) -> None:
    r404 = stack.client.get("/v1/nothing")
    r405 = stack.client.get("/v1/chat/completions")
    assert r404.status_code == 404 and "error" in r404.json()
    assert r405.status_code == 405 and "error" in r405.json()


@pytest.mark.parametrize(
    ("sent", "message", "code"),
    [
        (  # vLLM's own 404: an integer code
            {"error": {"message": "no such model", "type": "NotFoundError", "param": "model", "code": 404}},
            "no such model",
            "404",
        ),
        ({"error": {"message": ["a", 1], "code": True, "param": 7}}, '["a",1]', None),
        ({"error": "a bare string"}, "a bare string", None),
        ({"detail": "Not Found"}, "Not Found", None),  # FastAPI's shape
        ([1, 2], "[1, 2]", None),
        ("", "the worker answered 409", None),
        ("<html>bad gateway page</html>", "<html>bad gateway page</html>", None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_worker_4xx_reaches_the_caller_as_a_well_formed_envelope(
    stack: Stack, sent: object, message: str, code: str | None, stream: bool
) -> None:
    body = sent if isinstance(sent, str) else json.dumps(sent)
    r = chat(stack, model="auto", stream=stream, x_test={"status": 409, "body": body})
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["message"] == message and error["code"] == code
    assert isinstance(error["type"], str) and (error["param"] is None or isinstance(error["param"], str))
    # The SDK reads it as its own error, with the code as it is typed: a string or None.
    with (
        openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key="x", max_retries=0) as client,
        pytest.raises(openai.ConflictError) as raised,
    ):
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"x_test": {"status": 409, "body": body}},
        )
    assert raised.value.code == code and isinstance(raised.value.body, dict)
    assert raised.value.body["message"] == message


def test_a_well_formed_worker_envelope_passes_as_it_is(stack: Stack) -> None:
    sent = {"error": {"message": "too long", "type": "BadRequestError", "param": None, "code": "ctx", "more": 1}}
    r = chat(stack, model="auto", x_test={"status": 400, "body": json.dumps(sent)})
    assert r.status_code == 400 and r.json() == sent
