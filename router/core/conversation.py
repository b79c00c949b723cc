"""Routing a conversation as a unit. The classifier scores one turn; a follow-up such as "and the second case?"
scores as easy although it continues a hard exchange, and every switch between models throws away the prefix
cache the conversation built on the other worker. A conversation policy decides a later turn's model from what
its earlier turns got:

- per_turn: every turn by its own score (the memory is not used);
- sticky: every later turn goes where the first turn went;
- escalate_only: once a turn was answered by the large model, the rest of the conversation stays there.

A tier that may not use a model is never moved to it."""

from __future__ import annotations

from enum import StrEnum

from router.core.types import Role

__all__ = ["ConversationPolicy", "remembered_role", "steer"]


class ConversationPolicy(StrEnum):
    PER_TURN = "per_turn"
    STICKY = "sticky"
    ESCALATE_ONLY = "escalate_only"


def steer(policy: ConversationPolicy, remembered: Role | None, decided: Role, allowed: frozenset[Role]) -> Role | None:
    """The role the policy moves this turn to, or None to keep the decided one."""
    if remembered is None or remembered is decided or remembered not in allowed:
        return None
    if policy is ConversationPolicy.STICKY:
        return remembered
    if policy is ConversationPolicy.ESCALATE_ONLY and remembered is Role.LARGE:
        return remembered
    return None


def remembered_role(policy: ConversationPolicy, first_turn: bool, answered: Role, known: Role | None) -> Role | None:
    """What to remember after a turn was answered by `answered` (None: nothing new to remember)."""
    if policy is ConversationPolicy.STICKY:
        return answered if first_turn or known is None else None
    if policy is ConversationPolicy.ESCALATE_ONLY:
        return Role.LARGE if answered is Role.LARGE and known is not Role.LARGE else None
    return None
