from __future__ import annotations

import orjson
import pytest

from router.errors import InvalidRequest
from router.protocol import ChatCompletionRequest, CompletionRequest, decode_body, prompt_text


def test_decode_keeps_the_callers_dict_for_forwarding() -> None:
    payload, typed = decode_body(
        b'{"model":"m","messages":[{"role":"user","content":"q"}],"zzz":[1]}', ChatCompletionRequest
    )
    assert payload == {"model": "m", "messages": [{"role": "user", "content": "q"}], "zzz": [1]}
    assert typed.model == "m"


def test_decode_error_names_the_parameter() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_body(b'{"model":"m","messages":[{"role":"user","content":"q"}],"max_tokens":0}', ChatCompletionRequest)
    assert info.value.param == "max_tokens"


def test_prompt_text_reads_the_last_user_turn() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}}],
                },
            ],
        }
    )
    assert prompt_text(req) == "second"


@pytest.mark.parametrize(("prompt", "text"), [("abc", "abc"), (["x", "y"], "x"), ([1, 2, 3], "")])
def test_prompt_text_of_completions(prompt: object, text: str) -> None:
    assert prompt_text(CompletionRequest.model_validate({"model": "m", "prompt": prompt})) == text


def test_prompt_tokens_counts_the_whole_conversation() -> None:
    from router.protocol import prompt_tokens

    chat = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "abcd" * 3},
                {"role": "user", "content": "de" * 2},
                {"role": "assistant", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "fghi"}]},
            ],
        }
    )
    assert prompt_tokens(chat) == 3 + 1 + 1
    assert prompt_tokens(CompletionRequest.model_validate({"model": "m", "prompt": ["abcd", "cdefghij"]})) == 3
    assert prompt_tokens(CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]})) == 3


def _nest(depth: int) -> object:
    """A value whose containers nest `depth` levels, alternating lists and dicts."""
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("deep", [62, 63, 64])
@pytest.mark.parametrize("position", [0, 500, 999])
def test_the_depth_limit_finds_one_deep_branch_among_many_shallow_ones(deep: int, position: int) -> None:
    """The body is a dict (level 1) holding `extra` (level 2, a list) of 1,000 branches: one of them nests
    `deep` levels, so the body nests deep + 2, refused past 64."""
    extra: list[object] = [{"role": "user", "content": [{"type": "text"}]} for _ in range(1000)]
    extra[position] = _nest(deep)
    body = orjson.dumps({"model": "m", "prompt": "x", "extra": extra})
    if deep + 2 > 64:
        with pytest.raises(InvalidRequest, match="nested more than 64"):
            decode_body(body, CompletionRequest)
    else:
        payload, _ = decode_body(body, CompletionRequest)
        assert payload["extra"][position] == _nest(deep)
