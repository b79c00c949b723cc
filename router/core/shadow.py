"""Shadow pairs: for a sampled share of routed requests the other model answers too, after and apart from the
caller's answer, so that a deployment gets labelled pairs from its own traffic. What decides whether one more
shadow call may go out: the sampling rate, the tiers, a per-minute budget and a bound on calls in flight (shadow
calls are the first thing dropped when the gateway is busy)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ShadowGate", "ShadowPair", "ShadowPolicy"]


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    rate: float = 0.0  # share of routed requests shadowed (0: off)
    tiers: frozenset[str] = frozenset()  # tiers whose requests may be shadowed (empty: every tier)
    max_per_minute: int = 60
    max_in_flight: int = 4

    @property
    def enabled(self) -> bool:
        return self.rate > 0


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One prompt answered by both models: the caller's answer and the shadow's."""

    ts: float
    request_id: str
    tier: str
    prompt: str  # the text the classifier scores (what outcomes train on)
    routed: str  # small | large: which model answered the caller
    score: float | None
    small_model: str
    large_model: str
    small_answer: str
    large_answer: str


@dataclass
class ShadowGate:
    policy: ShadowPolicy
    sample: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    in_flight: int = 0
    sent: int = 0
    dropped: int = 0  # sampled but not sent: budget spent, too many in flight, or the gateway busy
    _minute: int = field(default=-1, init=False)
    _this_minute: int = field(default=0, init=False)

    def admit(self, tier: str, busy: bool = False) -> bool:
        """Whether this request gets a shadow call; if so the caller must call done() when it ends."""
        p = self.policy
        if not p.enabled or (p.tiers and tier not in p.tiers) or self.sample() >= p.rate:
            return False
        minute = int(self.clock() // 60)
        if minute != self._minute:
            self._minute, self._this_minute = minute, 0
        if busy or self.in_flight >= p.max_in_flight or self._this_minute >= p.max_per_minute:
            self.dropped += 1
            return False
        self._this_minute += 1
        self.in_flight += 1
        self.sent += 1
        return True

    def done(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
