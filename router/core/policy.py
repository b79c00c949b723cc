"""Routing policy: a difficulty score and a threshold decide which model size serves a request."""

from __future__ import annotations

from router.core.types import Decision, Reason, Role

__all__ = ["decide"]


def decide(score: float, threshold: float) -> Decision:
    """Higher scores mean the large model is needed; a score equal to the threshold goes large."""
    if score >= threshold:
        return Decision(Role.LARGE, Reason.AT_OR_ABOVE_THRESHOLD, score, threshold)
    return Decision(Role.SMALL, Reason.BELOW_THRESHOLD, score, threshold)
