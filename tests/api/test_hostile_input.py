"""Hostile and malformed input at the HTTP edge: every answer is an OpenAI envelope with the right status, never
a bare 500, and nothing grows without bound. Each test names the defect it guards against."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings
from tests.api.conftest import Stack, settings_for
from tests.servers import serving
from tests.upstream import make_upstream

SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def chat(stack: Stack, **body: object) -> httpx.Response:
    return stack.client.post("/v1/chat/completions", json={"model": "auto", "messages": SHORT, **body})


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 1000), ("n", 17), ("max_tokens", 10**18), ("max_completion_tokens", 10**18), ("n", 0)],
)
def test_n_and_max_tokens_are_bounded_at_the_edge(stack: Stack, field: str, value: int) -> None:
    """Regression: n x max_tokens of 1e14 broke the Redis limiter (a 500, and a lease left for 600 s)."""
    r = chat(stack, **{field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field
    assert stack.small_journal.bodies == stack.large_journal.bodies == []


@pytest.mark.parametrize(("field", "value"), [("temperature", False), ("max_tokens", True), ("n", True)])
def test_booleans_are_not_numbers(stack: Stack, field: str, value: bool) -> None:
    r = chat(stack, **{field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [65, 300, 1000])
def test_one_depth_limit_for_every_stage(stack: Stack, depth: int) -> None:
    """Regression: 1,024 levels parsed, re-encoding stopped near 253 and the cache key near 1,000: 500s."""
    deep = "[" * (depth - 1) + '"leaf"' + "]" * (depth - 1)  # written by hand: json.dumps itself would recurse
    # temperature 0: the cache key is computed too
    head = '{"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}], "x_deep": '
    raw = head + deep + "}"
    r = stack.client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "nested" in r.json()["error"]["message"]


def test_nesting_within_the_limit_passes_through(stack: Stack) -> None:
    r = chat(stack, temperature=0, x_deep=_nested(60))
    assert r.status_code == 200
    assert stack.small_journal.bodies[-1]["x_deep"] == _nested(60)


def test_a_compressed_body_is_refused_saying_so(stack: Stack) -> None:
    """It was refused as JSON that is "not valid UTF-8: surrogates not allowed"."""
    body = gzip.compress(b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}')
    r = stack.client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("content-encoding", "invalid_request")
    assert "uncompressed" in error["message"]
    # An uncompressed body that says so passes.
    plain = stack.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": SHORT, "max_tokens": 2},
        headers={"content-encoding": "identity"},
    )
    assert plain.status_code == 200


def test_a_worker_200_that_is_not_json_is_a_502_and_never_cached(stack: Stack) -> None:
    broken = {"status": 200, "body": "<html>oops</html>", "type": "text/html"}
    first = chat(stack, temperature=0, x_test=broken)
    second = chat(stack, temperature=0, x_test=broken)
    assert first.status_code == second.status_code == 502
    assert "not a JSON object" in first.json()["error"]["message"]
    assert second.headers.get("x-triage-cache") != "hit"
    assert len(stack.small_journal.bodies) + len(stack.large_journal.bodies) >= 2  # asked again, not cached


def test_404_and_405_codes_are_strings_and_no_slash_redirects(stack: Stack) -> None:
    r404 = stack.client.get("/v1/nothing")
    r405 = stack.client.get("/v1/chat/completions")
    assert r404.json()["error"]["code"] == "not_found"
    assert r405.json()["error"]["code"] == "method_not_allowed"
    slash = stack.client.get("/v1/models/", headers={"host": "evil.example"})
    assert slash.status_code == 404  # was 307 to a Location built from the Host header
    assert "location" not in slash.headers
    assert stack.client.head("/health").status_code == 200


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_a_stream_cut_mid_event_reaches_the_sdk_as_an_api_error(stack: Stack, crlf: bool) -> None:
    """Regression: the error event was glued onto the partial line, so SDKs saw invalid JSON, not the error. A
    worker whose events end in CRLF had every event held back, and dropped with the partial one."""
    with openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key="none", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="auto",
            messages=SHORT,
            stream=True,
            max_tokens=8,
            extra_body={"x_test": {"die_mid_event": 3, "crlf": crlf}},
        )
        seen: list[str | None] = []

        def read_all() -> None:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as raised:
            read_all()
        assert seen == ["w0 ", "w1 ", "w2 "]
        assert "worker" in raised.value.message


@pytest.mark.parametrize("chunked", [False, True])
def test_worker_answers_over_max_response_bytes_are_dropped_with_a_502(tmp_path: Path, chunked: bool) -> None:
    """Regression: a 200 MB answer was read whole (about 400 MB RSS, 1.19 GB for three at once)."""
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        workers = [w.model_copy(update={"max_response_bytes": 10_000}) for w in base.workers]
        with serving(create_app(base.model_copy(update={"workers": workers}))) as gw:
            behaviour = {"chunked": 5_000_000} if chunked else {"content": "word " * 5_000}
            r = httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "tiny-small", "messages": SHORT, "x_test": behaviour},
                timeout=10,
            )
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "upstream_response_too_large"
            ok = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT})
            assert ok.status_code == 200  # the worker is not blamed: no breaker, no failover


class _Broken:
    def score(self, text: str) -> float:
        raise RuntimeError("a defect in the scorer")


def test_an_internal_error_is_recorded_and_answered_in_the_envelope(tmp_path: Path) -> None:
    """Regression: requests that ended in a 500 had no ledger record, no metric and no x-request-id."""
    path = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={"ledger": LedgerSettings(path=path), "tiers": {"anonymous": TierSettings(requests_per_minute=100)}}
        )
        with serving(create_app(settings, scorer=_Broken())) as gw:
            answers = [httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": SHORT})]
            answers.append(httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": SHORT}))
            metrics = httpx.get(f"{gw.url}/metrics").text
    for r in answers:
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        assert len(r.headers["x-request-id"]) == 32
    records = list(read_records(path))
    assert [(r.status, r.reason) for r in records] == [(500, "internal_error")] * 2
    assert {r.request_id for r in records} == {r.headers["x-request-id"] for r in answers}
    assert 'status="500"' in metrics
