"""Every token served is counted: through a real gateway (limits in real Redis) in front of real HTTP workers,
streams are settled from the worker's own usage whether or not the caller asked for it, the reservation counts
what the worker will read and every choice it will write, completion bounds are integers capped in both fields,
and a request that could never fit the tier's limit is a 400, not a 429 to retry forever."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from router.api.app import create_app
from router.api.auth import hash_key
from router.settings import AuthSettings, KeySettings, LimitsSettings, Settings, TierSettings
from tests.api.conftest import settings_for
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import serving
from tests.upstream import Journal, make_upstream

LIMIT = 100_000  # tokens per minute of the `metered` tier
CAPPED_KEY = "sk-capped-0123456789"  # a tier of 50,000 tokens a minute, max_tokens capped at 1,000
SMALL_KEY = "sk-small-0123456789"  # a tier of 400 tokens a minute and no cap
DAILY_KEY = "sk-daily-0123456789"  # a tier of 2,000 tokens a day
SHORT = [{"role": "user", "content": "hi"}]
CJK = "漢字仮名交じり文" * 500  # 4,000 characters; a tokenizer makes one to three tokens of each
# About 20,000 tokens of tool definitions (80,000 characters of JSON) behind a prompt of one word.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Look the thing up in the catalogue and return its fields. " * 13,
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
    for i in range(100)
]
IDS = [[(i * 7) % 30_000 for i in range(20_000)]]  # one prompt of 20,000 token ids, as a list of lists


@dataclass
class Gateway:
    url: str
    small: Journal
    large: Journal
    client: httpx.Client

    def bodies(self) -> list[dict[str, Any]]:
        return self.small.bodies + self.large.bodies


def _settings(small: str, large: str) -> Settings:
    base = settings_for(small, large, max_body_bytes=2_000_000)
    tiers = {
        "metered": TierSettings(tokens_per_minute=LIMIT),
        "capped": TierSettings(tokens_per_minute=50_000, max_tokens=1000),
        "small": TierSettings(tokens_per_minute=400),
        "daily": TierSettings(daily_tokens=2000),
    }
    keys = [
        KeySettings(sha256=hash_key(CAPPED_KEY), tier="capped"),
        KeySettings(sha256=hash_key(SMALL_KEY), tier="small"),
        KeySettings(sha256=hash_key(DAILY_KEY), tier="daily"),
    ]
    return base.model_copy(
        update={
            "tiers": tiers,
            "auth": AuthSettings(keys=keys, anonymous_tier="metered"),
            "limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=f"test-{uuid.uuid4().hex[:8]}", redis_timeout=1.0),
        }
    )


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    require_redis()
    js, jl = Journal(), Journal()
    with (
        serving(make_upstream("tiny-small", js)) as small,
        serving(make_upstream("tiny-large", jl)) as large,
        serving(create_app(_settings(f"{small.url}/v1", f"{large.url}/v1"))) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        yield Gateway(gw.url, js, jl, client)


def _post(gw: Gateway, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return gw.client.post(path, json=body, headers=headers)


def _stream(gw: Gateway, path: str, body: dict[str, Any], key: str | None = None) -> tuple[httpx.Response, str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with gw.client.stream("POST", path, json={**body, "stream": True}, headers=headers) as r:
        return r, r.read().decode()


def _reserved(r: httpx.Response, limit: int = LIMIT) -> int:
    """Tokens in use in this minute as the response's own headers report them (this request's reservation,
    when nothing else is in the window)."""
    return limit - int(r.headers["x-ratelimit-remaining-tokens"])


def _used_once_settled(gw: Gateway, expected: int) -> int:
    """The minute's token count once it reads `expected` (or the last one read at the deadline). A stream is
    settled when it closes, a moment after the client has its last byte, so this polls. The probe asks for
    the whole limit (which it could fit, alone), so with anything in use it is refused with the count and
    reserves nothing."""
    probe = {"model": "auto", "messages": SHORT, "max_tokens": LIMIT - 1}
    deadline = time.monotonic() + 10
    while True:
        r = _post(gw, "/v1/chat/completions", probe)
        assert r.status_code == 429, r.text[:300]
        used = _reserved(r)
        if used == expected or time.monotonic() > deadline:
            return used
        time.sleep(0.02)


def _events(text: str) -> list[Any]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


# -- item 5: streams are settled from the worker's usage; the estimate before it is sane -------------------------


@pytest.mark.parametrize(
    ("path", "body", "worker_counts", "at_least"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": CJK}]}, 12_000, 4_000),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}, 20_152, 20_000),
        ("/v1/completions", {"prompt": IDS}, 20_000, 20_000),
    ],
    ids=["cjk", "tools", "token-ids"],
)
def test_a_stream_without_include_usage_is_settled_from_the_worker_s_own_count(
    gateway: Gateway, path: str, body: dict[str, Any], worker_counts: int, at_least: int
) -> None:
    """Regression: without `stream_options.include_usage` the gateway never asked for usage and settled from
    its own estimate: a 12,000-token CJK prompt as 1,001 tokens, 20,152 tokens of tools as 1, a completions
    prompt of 20,000 token ids as 2. The reservation made before usage is known was as far off."""
    request = {"model": "auto", "max_tokens": 5, "x_test": {"prompt_tokens": worker_counts}, **body}
    r, text = _stream(gateway, path, request)
    assert r.status_code == 200
    assert at_least + 5 <= _reserved(r) <= 2 * worker_counts  # the estimate before the worker counted
    assert gateway.bodies()[-1]["stream_options"] == {"include_usage": True}  # asked for on the caller's behalf
    assert "usage" not in text and "prompt_tokens" not in text  # ... and not passed on: the caller did not ask
    assert len(_events(text)) == 5 and text.rstrip().endswith("data: [DONE]")
    assert _used_once_settled(gateway, worker_counts + 5) == worker_counts + 5


def test_a_caller_who_asked_for_usage_gets_it_once_and_the_stream_is_settled_from_it(gateway: Gateway) -> None:
    request = {"model": "auto", "messages": SHORT, "max_tokens": 3, "stream_options": {"include_usage": True}}
    _, text = _stream(gateway, "/v1/chat/completions", {**request, "x_test": {"prompt_tokens": 900}})
    usage = [e["usage"] for e in _events(text) if "usage" in e]
    assert usage == [{"prompt_tokens": 900, "completion_tokens": 3, "total_tokens": 903}]
    assert _used_once_settled(gateway, 903) == 903


@pytest.mark.parametrize("shape", [{}, {"usage_on_last": True}, {"null_usage": True}], ids=["vllm", "llama", "openai"])
def test_streamed_n_choices_never_show_the_worker_s_usage_and_are_all_counted(
    gateway: Gateway, shape: dict[str, Any]
) -> None:
    """n=3 choices of 4 tokens, from workers that send usage as its own chunk (vLLM), on the last content
    chunk (llama.cpp) or as null on every other chunk (OpenAI). A temperature-0 stream is not cached: asked
    twice, it is generated and hidden twice."""
    request = {"model": "auto", "messages": SHORT, "n": 3, "max_tokens": 4, "temperature": 0}
    for _ in range(2):
        r, text = _stream(gateway, "/v1/chat/completions", {**request, "x_test": {"prompt_tokens": 50, **shape}})
        assert r.status_code == 200
        assert "usage" not in text
        deltas = [c for e in _events(text) for c in e["choices"]]
        assert sorted(c["index"] for c in deltas) == [0] * 4 + [1] * 4 + [2] * 4  # every content chunk kept
    assert len(gateway.bodies()) == 2
    assert _used_once_settled(gateway, 2 * (50 + 12)) == 2 * (50 + 12)


def test_a_stream_cut_mid_way_is_settled_from_what_arrived(gateway: Gateway) -> None:
    """No usage chunk ever comes: the prompt's estimate (a token per CJK character) and the events that
    arrived are counted, not the whole reservation and not an estimate of a quarter of the prompt."""
    request = {"model": "auto", "messages": [{"role": "user", "content": CJK}], "max_tokens": 50}
    r, _ = _stream(gateway, "/v1/chat/completions", {**request, "x_test": {"die_after": 10, "prompt_tokens": 9}})
    reserved = _reserved(r)
    assert reserved >= 4000 + 50
    settled = _used_once_settled(gateway, reserved - 50 + 8)
    assert 4000 <= settled < reserved - 30, settled  # about the prompt and ten events, not fifty tokens


# -- item 6: completion bounds are integers, and a tier's cap holds in both fields --------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", ["100000", True, 99999.5, "1e5"], ids=["string", "bool", "fraction", "exponent"])
def test_a_bound_that_is_not_a_whole_number_is_a_400_naming_the_field(
    gateway: Gateway, field: str, value: object
) -> None:
    """Regression: "100000" passed unreserved (the cap read only ints), and a worker generated 100,000 tokens
    against a 50,000-a-minute tier."""
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, field: value}, CAPPED_KEY)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (field, "invalid_request_error")
    assert field in error["message"]
    assert gateway.bodies() == []


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_whole_number_written_as_a_float_is_capped_reserved_and_forwarded_as_an_integer(
    gateway: Gateway, field: str
) -> None:
    """Regression: 100000.0 passed the tier's cap unreserved. JSON Schema (and so the OpenAPI document) counts it
    as an integer: it is taken at its value."""
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, field: 100000.0}, CAPPED_KEY)
    assert r.status_code == 200, r.text
    sent = gateway.bodies()[-1][field]
    assert (sent, type(sent)) == (1000, int)
    assert _reserved(r, 50_000) == 1 + 1000
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, field: 7000.0, "n": 2.0})
    assert r.status_code == 200, r.text
    assert (gateway.bodies()[-1][field], gateway.bodies()[-1]["n"]) == (7000, 2)
    assert _reserved(r) == 1 + 2 * 7000


@pytest.mark.parametrize("value", [2.5, "2", True, 0, 129])
def test_n_that_is_not_a_whole_number_of_choices_is_a_400(gateway: Gateway, value: object) -> None:
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, "n": value})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "n")
    assert gateway.bodies() == []


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ({"max_tokens": 100_000, "max_completion_tokens": 10}, {"max_tokens": 1000, "max_completion_tokens": 10}),
        ({"max_tokens": 10, "max_completion_tokens": 100_000}, {"max_tokens": 10, "max_completion_tokens": 1000}),
        ({"max_completion_tokens": 5000}, {"max_completion_tokens": 1000}),
        ({}, {"max_tokens": 1000}),
        # llama.cpp reads n_predict first: capped too (regression: it reached the worker as sent)
        ({"n_predict": 100_000}, {"max_tokens": 1000, "n_predict": 1000}),
        ({"max_tokens": 10, "n_predict": -1}, {"max_tokens": 10, "n_predict": 10}),  # -1: unlimited there
        ({"max_tokens": 10, "n_predict": "99"}, {"max_tokens": 10, "n_predict": 10}),
        ({"n_predict": 5}, {"max_tokens": 1000, "n_predict": 5}),
        ({"n_predict": 5.7}, {"max_tokens": 1000, "n_predict": 5}),  # read as 5 there: not raised to the cap
        ({"max_tokens": 10, "n_predict": 1e300}, {"max_tokens": 10, "n_predict": 10}),
    ],
)
def test_a_tier_s_cap_holds_in_both_fields_and_the_larger_is_reserved(
    gateway: Gateway, sent: dict[str, object], forwarded: dict[str, int]
) -> None:
    """Regression: with both fields sent, only max_completion_tokens was capped, and max_tokens reached the
    worker as sent."""
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, **sent}, CAPPED_KEY)
    assert r.status_code == 200, r.text
    body = gateway.bodies()[-1]
    assert {k: body[k] for k in ("max_tokens", "max_completion_tokens", "n_predict") if k in body} == forwarded
    # "hi": no whole token, one of slack; n_predict is the worker's field, never above the bound
    assert _reserved(r, 50_000) == 1 + max(v for k, v in forwarded.items() if k != "n_predict")


# -- item 7: a completions prompt list is that many prompts, each with n choices -----------------------------------


def test_a_list_of_prompts_counts_as_that_many_choices_against_max_n(gateway: Gateway) -> None:
    """Regression: 300 prompts in one request were 300 completions (30,300 tokens) from a 175-token
    reservation, past a max_n of 16."""
    many = _post(gateway, "/v1/completions", {"model": "auto", "prompt": ["say hi"] * 300, "max_tokens": 100})
    assert many.status_code == 400
    error = many.json()["error"]
    assert error["param"] == "prompt" and "300 prompts" in error["message"] and "16" in error["message"]
    n_times = _post(gateway, "/v1/completions", {"model": "auto", "prompt": [[1, 2], [3]] * 3, "n": 3})
    assert (n_times.status_code, n_times.json()["error"]["param"]) == (400, "prompt")  # 6 prompts x 3 = 18
    assert gateway.bodies() == []


@pytest.mark.parametrize(
    ("prompt", "n", "choices", "prompt_tokens"),
    [(["abcd" * 10] * 4, 2, 8, 40), ([[1, 2, 3, 4, 5]] * 8, 2, 16, 40), ([1, 2, 3, 4, 5, 6, 7, 8], 16, 16, 8)],
    ids=["strings", "token-id-lists", "one-token-id-list"],
)
def test_every_prompt_s_choices_are_reserved_and_settled(
    gateway: Gateway, prompt: list[Any], n: int, choices: int, prompt_tokens: int
) -> None:
    r = _post(gateway, "/v1/completions", {"model": "auto", "prompt": prompt, "n": n, "max_tokens": 10})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == choices
    assert _reserved(r) == prompt_tokens + 1 + choices * 10
    settled = 7 + choices * 10  # the worker's usage: its 7 prompt tokens and every choice's 10
    assert _used_once_settled(gateway, settled) == settled


# -- item 8: a request that can never fit is a 400 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "body", "param"),
    [
        (SMALL_KEY, {"max_tokens": 401}, "max_tokens"),
        (SMALL_KEY, {"max_completion_tokens": 200, "n": 2}, "max_completion_tokens"),
        (SMALL_KEY, {"messages": [{"role": "user", "content": "漢" * 500}]}, "messages"),
        (DAILY_KEY, {"max_tokens": 2500}, "max_tokens"),
        (None, {"max_tokens": LIMIT}, "max_tokens"),
    ],
    ids=["minute", "n-times", "prompt", "day", "anonymous"],
)
def test_a_request_that_can_never_fit_the_tier_s_token_limit_is_a_400(
    gateway: Gateway, key: str | None, body: dict[str, Any], param: str
) -> None:
    """Regression: it was a 429 with retry-after: 60, forever."""
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, **body}, key)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, "tokens_exceed_limit")
    assert "never" in error["message"]
    assert "retry-after" not in r.headers
    assert gateway.bodies() == []


def test_a_request_without_a_bound_on_a_tier_smaller_than_the_default_estimate_is_admitted(
    gateway: Gateway,
) -> None:
    """Regression: with no max_tokens the gateway reserved 512 tokens, more than a 400-a-minute tier holds, and
    refused every such request with a 429. The default shrinks to what the limit leaves."""
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT}, SMALL_KEY)
    assert r.status_code == 200, r.text
    assert 0 < _reserved(r, 400) <= 400


# -- a worker's usage that does not say what was used settles the reservation, never less ----------------------


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -100_000, "completion_tokens": 10},
        {"prompt_tokens": 7, "completion_tokens": -50_000},
        {},
        {"total_tokens": 207},
        {"prompt_tokens": None, "completion_tokens": None, "total_tokens": 207},
        {"prompt_tokens": True, "completion_tokens": True},
        {"prompt_tokens": 7.9, "completion_tokens": "200"},
        {"prompt_tokens": 1 << 62, "completion_tokens": 200},
        {"prompt_tokens": (1 << 64) - 1, "completion_tokens": 200},
    ],
    ids=[
        "negative-prompt",
        "negative-completion",
        "empty",
        "total-only",
        "nulls",
        "booleans",
        "float-string",
        "2^62",
        "2^64",
    ],
)
def test_a_worker_s_usage_without_two_token_counts_settles_the_reservation(
    gateway: Gateway, usage: dict[str, Any]
) -> None:
    """Regression: a worker's usage was read as int(field or 0): a negative count was credited to the caller
    (its minute's count went below zero, then admitted far past its limit), and a usage without the two counts
    (empty, total only, nulls) settled the request at 0 tokens although the worker generated 200. A count past
    any request's (2^62) locked the caller out for the minute; at 2^63 the ledger lost its batch of records."""
    choice = {"index": 0, "message": {"role": "assistant", "content": "a " * 200}}
    answer = {"id": "x", "object": "chat.completion", "model": "tiny-small", "choices": [choice], "usage": usage}
    test = {"status": 200, "body": json.dumps(answer)}
    r = _post(gateway, "/v1/chat/completions", {"model": "auto", "messages": SHORT, "max_tokens": 200, "x_test": test})
    assert r.status_code == 200, r.text
    reserved = _reserved(r)
    assert reserved == 1 + 200
    assert _used_once_settled(gateway, reserved) == reserved


def test_a_stream_whose_worker_reports_a_negative_count_is_settled_from_what_arrived(gateway: Gateway) -> None:
    """Regression: the stream was settled at -99,995 tokens (credited to the caller, who was then admitted past
    its limit) and its end raised in the metrics. What arrived is counted instead, as for a stream without
    usage: the prompt's estimate (one token of slack for "hi") and one token per content event."""
    request = {"model": "auto", "messages": SHORT, "max_tokens": 5, "x_test": {"prompt_tokens": -100_000}}
    r, text = _stream(gateway, "/v1/chat/completions", request)
    assert r.status_code == 200
    assert len(_events(text)) == 5 and text.rstrip().endswith("data: [DONE]")
    assert _used_once_settled(gateway, 1 + 5) == 1 + 5
