"""The conversation flow: before a routed turn is sent, the tier's conversation policy may move it to the model
its conversation's earlier turns got (reason `conversation`); after it is answered, what the policy needs is
remembered. A conversation is its caller, the caller's end user when it names one (OpenAI's `safety_identifier`,
else `user`: one API key often serves many people), and the whole of the system turns and the first user turn,
which every later turn repeats (not prefix affinity's first 2,048 characters: a long system prompt would make
every conversation of a key one)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from router.core.conversation import ConversationPolicy, remembered_role, steer
from router.core.ports import ConversationMemory
from router.core.types import Decision, Reason, Role, Routed, Worker
from router.protocol import ChatCompletionRequest, GenerationRequest
from router.service.context import RequestContext

__all__ = ["Conversations", "Turn"]


@dataclass(slots=True)
class Turn:
    """What the flow learnt before sending a turn, for remembering after it."""

    identity: str
    request: GenerationRequest
    policy: ConversationPolicy
    first: bool  # no assistant turn yet: the conversation starts here
    known: Role | None  # what was remembered for it
    key: str | None = None  # computed when first needed: most first turns never need it
    lookup: asyncio.Task[Role | None] | None = None  # a later turn's memory, asked for before its admission

    def cancel(self) -> None:
        """The turn is not routed after all (refused, answered from the cache): its lookup is not needed."""
        if self.lookup is not None:
            self.lookup.cancel()

    def conversation(self) -> str:
        if self.key is None:
            self.key = _key(self.identity, self.request)
        return self.key


class Conversations:
    def __init__(self, memory: ConversationMemory, ttl: float) -> None:
        self._memory = memory
        self._ttl = ttl

    def recall(self, ctx: RequestContext, policy: ConversationPolicy) -> Turn | None:
        """The turn under its policy (None: nothing to steer or remember); a later turn's memory is asked for at
        once, so that the lookup leaves with the request's admission (one round trip where both use Redis)."""
        request = ctx.request
        first = None if policy is ConversationPolicy.PER_TURN else request.first_turn()
        if first is None:  # per turn, or not a conversation (a completion prompt)
            return None
        turn = Turn(_who(ctx.caller.identity, ctx.payload), request, policy, first, None)
        if not first:
            turn.lookup = asyncio.ensure_future(self._memory.get(turn.conversation()))
        return turn

    async def steer(self, ctx: RequestContext, routed: Routed, turn: Turn, pick: Callable[[Role], Worker]) -> Routed:
        """The turn's routing under its policy, once its memory has answered."""
        if turn.lookup is not None:
            turn.known = await turn.lookup
        known, policy = turn.known, turn.policy
        role = steer(policy, known, routed.worker.role, ctx.caller.tier.roles)
        if role is not None:
            d = routed.decision
            routed = Routed(pick(role), Decision(role, Reason.CONVERSATION, d.score, d.threshold))
        return routed

    async def remember(self, turn: Turn, answered: Role) -> None:
        role = remembered_role(turn.policy, turn.first, answered, turn.known)
        if role is not None:
            await self._memory.put(turn.conversation(), role, self._ttl)


END_USER_FIELDS = ("safety_identifier", "user")  # OpenAI's names for the end user behind a request


def _who(identity: str, payload: dict[str, Any]) -> str:
    """The caller, and its end user when the request names one (a string; anything else names nobody)."""
    for name in END_USER_FIELDS:
        value = payload.get(name)
        if isinstance(value, str) and value:
            return f"{identity}\0{name}\0{value}"
    return identity


def _key(who: str, request: GenerationRequest) -> str:
    """A digest of who and the conversation's opening: its system turns and first user turn, every character
    (lengths go in first, so that no text can pass for a boundary)."""
    digest = hashlib.sha256()
    for part in (who, *_opening(request)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:32]


def _opening(request: GenerationRequest) -> Iterator[str]:
    if not isinstance(request, ChatCompletionRequest):  # Messages, Responses: their system text and first turn
        yield request.affinity_text()
        return
    for message in request.messages:
        yield message.role
        content = message.content
        if content is None or isinstance(content, str):
            yield content or ""
        else:  # parts: images and the like count too, so two openings differing by an image stay apart
            yield orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
        if message.role == "user":
            return
