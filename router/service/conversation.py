"""The conversation flow: before a routed turn is sent, the tier's conversation policy may move it to the model
its conversation's earlier turns got (reason `conversation`); after it is answered, what the policy needs is
remembered. A conversation is its caller plus what prefix affinity keys on (the system turns and the first user
turn, which every later turn repeats)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from router.core.conversation import ConversationPolicy, remembered_role, steer
from router.core.ports import ConversationMemory
from router.core.types import Decision, Reason, Role, Routed, Worker
from router.protocol import GenerationRequest, affinity_key
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

    def conversation(self) -> str:
        if self.key is None:
            self.key = _key(self.identity, self.request)
        return self.key


class Conversations:
    def __init__(self, memory: ConversationMemory, ttl: float) -> None:
        self._memory = memory
        self._ttl = ttl

    async def steer(
        self,
        ctx: RequestContext,
        routed: Routed,
        policy: ConversationPolicy,
        pick: Callable[[Role], Worker],
    ) -> tuple[Routed, Turn | None]:
        """The turn's routing under the policy, and what to remember it by (None: nothing to remember)."""
        request = ctx.request
        first = None if policy is ConversationPolicy.PER_TURN else request.first_turn()
        if first is None:  # per turn, or not a conversation (a completion prompt)
            return routed, None
        turn = Turn(ctx.caller.identity, request, policy, first, None)
        if not first:
            turn.known = await self._memory.get(turn.conversation())
        known = turn.known
        role = steer(policy, known, routed.worker.role, ctx.caller.tier.roles)
        if role is not None:
            d = routed.decision
            routed = Routed(pick(role), Decision(role, Reason.CONVERSATION, d.score, d.threshold))
        return routed, turn

    async def remember(self, turn: Turn, answered: Role) -> None:
        role = remembered_role(turn.policy, turn.first, answered, turn.known)
        if role is not None:
            await self._memory.put(turn.conversation(), role, self._ttl)


def _key(identity: str, request: GenerationRequest) -> str:
    digest = hashlib.sha256(identity.encode() + b"\0" + affinity_key(request))
    return digest.hexdigest()[:32]
