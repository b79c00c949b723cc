"""Conversation policies at the service's ports: a multi-turn conversation under per_turn, sticky and
escalate_only, the tier's restriction respected, callers kept apart, and the memory bounded."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.adapters.conversations import MemoryConversations
from router.core.conversation import ConversationPolicy, remembered_role, steer
from router.core.types import Role
from router.protocol import decode_body
from router.protocol.messages import MessagesRequest
from router.protocol.responses import ResponsesRequest
from router.service.context import Endpoint, RequestOptions
from tests.service.fakes import Stack, ask, caller, stack

SMALL_ONLY = frozenset({Role.SMALL})
BOTH = frozenset({Role.SMALL, Role.LARGE})


def test_the_policies_as_rules() -> None:
    E, S, P = ConversationPolicy.ESCALATE_ONLY, ConversationPolicy.STICKY, ConversationPolicy.PER_TURN
    assert steer(E, Role.LARGE, Role.SMALL, BOTH) is Role.LARGE
    assert steer(E, Role.SMALL, Role.LARGE, BOTH) is None  # escalate only: never moved down
    assert steer(E, Role.LARGE, Role.SMALL, SMALL_ONLY) is None  # never to a model the tier may not use
    assert steer(S, Role.SMALL, Role.LARGE, BOTH) is Role.SMALL
    assert steer(S, None, Role.LARGE, BOTH) is None
    assert steer(P, Role.LARGE, Role.SMALL, BOTH) is None
    assert remembered_role(E, True, Role.LARGE, None) is Role.LARGE
    assert remembered_role(E, False, Role.SMALL, None) is None
    assert remembered_role(E, False, Role.LARGE, Role.LARGE) is None  # already known: no write
    assert remembered_role(S, True, Role.SMALL, None) is Role.SMALL
    assert remembered_role(S, False, Role.LARGE, Role.SMALL) is None  # sticky keeps the first turn's model
    assert remembered_role(S, False, Role.LARGE, None) is Role.LARGE  # forgotten: the next turn re-anchors


def conversation(*turns: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are terse."}]
    for i, text in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": text})
    return messages


async def turn(s: Stack, score: float, *turns: str, **tier: Any) -> tuple[str, str]:
    s.scorer.value = score
    out = await ask(s, caller(**tier), {"messages": conversation(*turns)})
    return out.routed.worker.role.value, out.routed.decision.reason.value


async def test_escalate_only_keeps_a_conversation_on_the_large_model_once_it_got_there() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)
    assert await turn(s, 0.1, "hi") == ("small", "below_threshold")
    assert await turn(s, 0.9, "hi", "prove the theorem") == ("large", "at_or_above_threshold")
    assert await turn(s, 0.1, "hi", "prove the theorem", "and the second case?") == ("large", "conversation")
    assert await turn(s, 0.1, "hi", "prove the theorem", "and the second case?", "thanks") == ("large", "conversation")
    assert await turn(s, 0.1, "another conversation", "and?") == ("small", "below_threshold")
    records = [r.reason for r in s.sink.records]
    assert records.count("conversation") == 2


async def test_sticky_keeps_the_first_turn_s_model_both_ways() -> None:
    s = stack(conversation=ConversationPolicy.STICKY)
    assert await turn(s, 0.1, "hi") == ("small", "below_threshold")
    assert await turn(s, 0.9, "hi", "prove it") == ("small", "conversation")
    assert await turn(s, 0.9, "hard one") == ("large", "at_or_above_threshold")
    assert await turn(s, 0.1, "hard one", "ok") == ("large", "conversation")


async def test_per_turn_routes_every_turn_by_its_own_score() -> None:
    s = stack(conversation=ConversationPolicy.PER_TURN)
    assert await turn(s, 0.9, "hi") == ("large", "at_or_above_threshold")
    assert await turn(s, 0.1, "hi", "and?") == ("small", "below_threshold")


async def test_a_tier_policy_per_tier_and_a_tier_that_may_not_use_the_large_model() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)
    assert await turn(s, 0.9, "hi") == ("large", "at_or_above_threshold")
    # The same conversation from a tier limited to the small model: never moved to the large one.
    assert await turn(s, 0.1, "hi", "and?", roles=SMALL_ONLY) == ("small", "below_threshold")
    # A tier that says per_turn overrides the gateway's escalate_only.
    assert await turn(s, 0.1, "hi", "and?", conversation=ConversationPolicy.PER_TURN) == ("small", "below_threshold")


async def test_callers_with_the_same_opening_are_different_conversations() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)
    s.scorer.value = 0.9
    await ask(s, caller(), {"messages": conversation("hi")})
    s.scorer.value = 0.1
    other = caller()
    other = type(other)(other.tier, "client:2")
    out = await ask(s, other, {"messages": conversation("hi", "and?")})
    assert out.routed.decision.reason == "below_threshold"


async def test_named_models_cascades_and_completions_are_left_alone() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)
    assert await turn(s, 0.9, "hi") == ("large", "at_or_above_threshold")
    s.scorer.value = 0.1
    out = await ask(s, caller(), {"model": "small-model", "messages": conversation("hi", "and?")})
    assert out.routed.decision.reason == "requested"


async def test_the_memory_is_bounded_and_forgets_after_its_ttl() -> None:
    now = [0.0]
    memory = MemoryConversations(max_entries=100, clock=lambda: now[0])
    for i in range(1000):
        await memory.put(f"c{i}", Role.LARGE, ttl=60)
    assert len(memory) == 100
    assert await memory.get("c0") is None and await memory.get("c999") is Role.LARGE
    now[0] = 61
    assert await memory.get("c999") is None
    assert len(memory) == 99


@pytest.mark.parametrize("policy", list(ConversationPolicy))
async def test_a_failed_memory_routes_by_the_turn_s_own_score(policy: ConversationPolicy) -> None:
    class Broken:
        async def get(self, key: str) -> Role | None:
            return None

        async def put(self, key: str, role: Role, ttl: float) -> None:
            return None

    s = stack(conversation=policy, memory=Broken())
    assert await turn(s, 0.9, "hi") == ("large", "at_or_above_threshold")
    assert await turn(s, 0.1, "hi", "and?") == ("small", "below_threshold")


async def test_end_users_of_one_key_are_different_conversations() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)

    async def as_user(score: float, turns: tuple[str, ...], **who: str) -> str:
        s.scorer.value = score
        out = await ask(s, caller(), {"messages": conversation(*turns), **who})
        return out.routed.decision.reason.value

    assert await as_user(0.9, ("hi",), user="alice") == "at_or_above_threshold"
    assert await as_user(0.1, ("hi", "and?"), user="bob") == "below_threshold"  # bob's own conversation
    assert await as_user(0.1, ("hi", "and?")) == "below_threshold"  # nobody named: not alice's either
    assert await as_user(0.1, ("hi", "and?"), user="alice") == "conversation"
    # safety_identifier, OpenAI's newer field, names the end user when present.
    assert await as_user(0.9, ("hi",), safety_identifier="carol", user="alice-app") == "at_or_above_threshold"
    assert await as_user(0.1, ("hi", "and?"), safety_identifier="dave", user="alice-app") == "below_threshold"
    assert await as_user(0.1, ("hi", "and?"), safety_identifier="carol") == "conversation"


async def test_a_long_system_prompt_does_not_merge_a_key_s_conversations() -> None:
    s = stack(conversation=ConversationPolicy.ESCALATE_ONLY)
    system = {"role": "system", "content": "You follow the house style. " * 120}  # 3,360 characters

    async def say(score: float, *texts: str) -> str:
        s.scorer.value = score
        messages = [system, *conversation(*texts)[1:]]
        return (await ask(s, caller(), {"messages": messages})).routed.decision.reason.value

    assert await say(0.9, "prove the theorem") == "at_or_above_threshold"
    assert await say(0.1, "what is the weather", "and tomorrow?") == "below_threshold"  # another conversation
    assert await say(0.1, "prove the theorem", "and the second case?") == "conversation"


async def _agent_turn(s: Stack, score: float, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, str]:
    """One turn of an agent's loop through the Messages or Responses API."""
    s.scorer.value = score
    schema = MessagesRequest if endpoint is Endpoint.MESSAGES else ResponsesRequest
    payload, request = decode_body(orjson.dumps({"model": "auto", **body}), schema)
    out = await s.service.handle(caller(), endpoint, payload, request, RequestOptions())
    return out.routed.worker.role.value, out.routed.decision.reason.value


async def test_an_agents_tool_loop_stays_on_its_model_through_messages_and_responses() -> None:
    """Regression: only chat turns were steered, so a Messages or Responses tool loop under `sticky` was
    re-scored turn by turn and could switch models mid-task (losing the prompt cache it built)."""
    s = stack(conversation=ConversationPolicy.STICKY)
    ask_: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]}
    call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "file text"}]}
    first = {"system": "agent", "max_tokens": 5, "messages": [ask_]}
    assert await _agent_turn(s, 0.9, Endpoint.MESSAGES, first) == ("large", "at_or_above_threshold")
    later = {**first, "messages": [ask_, call, result]}
    assert await _agent_turn(s, 0.1, Endpoint.MESSAGES, later) == ("large", "conversation")
    items: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
    opening = {"instructions": "agent", "input": items}
    assert await _agent_turn(s, 0.1, Endpoint.RESPONSES, opening) == ("small", "below_threshold")
    loop = [
        *items,
        {"type": "function_call", "call_id": "c1", "name": "read", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "file text"},
    ]
    assert await _agent_turn(s, 0.9, Endpoint.RESPONSES, {**opening, "input": loop}) == ("small", "conversation")
