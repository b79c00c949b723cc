"""The cascade's escalation rule and the draft parsing it reads from."""

from __future__ import annotations

import orjson

from router.core.cascade import Draft, EscalationRule, confidence, judge
from router.protocol import draft_logprobs_request, read_draft, strip_logprobs

RULE = EscalationRule(min_confidence=0.5, answer_threshold=0.3)


def test_each_reason_and_the_order_checks_run_in() -> None:
    ok = Draft("Paris.", "stop", [-0.1, -0.2])
    assert judge(ok, RULE) is None
    assert judge(None, RULE) == "unreadable"
    assert judge(Draft(" \n", "stop"), RULE) == "empty"
    assert judge(Draft("Paris, the capital of", "length"), RULE) == "truncated"
    assert judge(Draft("Paris, the capital of", "length"), EscalationRule(escalate_on_length=False)) is None
    assert judge(Draft("I can't help with that.", "stop"), RULE) == "refused"
    assert judge(Draft("Paris.", "stop", [-1.0, -1.0]), RULE) == "low_confidence"  # exp(-1) = 0.37
    assert judge(Draft("Paris.", "stop", [-1.0]), EscalationRule(min_confidence=0)) is None
    assert judge(ok, RULE, risk=lambda: 0.31) == "answer_scorer"
    assert judge(ok, RULE, risk=lambda: 0.29) is None

    def never() -> float:
        raise AssertionError("the answer scorer must not run when a cheaper check already decided")

    assert judge(Draft("", "stop"), RULE, risk=never) == "empty"
    assert abs(confidence([-0.5, -1.5]) - 0.3679) < 1e-3


def test_draft_parsing_for_chat_and_completions() -> None:
    chat = orjson.dumps(
        {
            "choices": [
                {"message": {"content": "4"}, "finish_reason": "stop", "logprobs": {"content": [{"logprob": -0.2}]}}
            ]
        }
    )
    assert read_draft(chat) == ("4", "stop", [-0.2])
    text = orjson.dumps({"choices": [{"text": "4", "finish_reason": "length", "logprobs": {"token_logprobs": [-1.5]}}]})
    assert read_draft(text) == ("4", "length", [-1.5])
    tool = orjson.dumps({"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]}}]})
    parsed = read_draft(tool)
    assert parsed is not None and judge(Draft(*parsed), RULE) is None  # a tool call is not an empty draft
    assert read_draft(b"not json") is None
    assert read_draft(b'{"choices": []}') is None
    assert orjson.loads(strip_logprobs(chat))["choices"][0]["logprobs"] is None
    asked, added = draft_logprobs_request({"model": "m"}, chat=True)
    assert asked["logprobs"] is True and added
    _, added = draft_logprobs_request({"model": "m", "logprobs": True}, chat=True)
    assert not added
    completion, added = draft_logprobs_request({"model": "m"}, chat=False)
    assert completion["logprobs"] == 1 and added
