"""Share target: the threshold that sends a target share of routed requests to the large model, whatever the
score level of the traffic. The classifier still decides which requests go large (the highest scores); the
operator decides how many.

The threshold is the score above which `share` of a bounded window of recent scores lies. A quantile alone
lets the realised share wander by the binomial noise of the traffic (and by ties: many equal scores all fall
on one side), so a small integral term corrects it: the large calls owed to the target (or taken beyond it)
move the quantile asked for, within a bounded debt so that a shift in traffic cannot wind it up."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.core.tiers import Tier

if TYPE_CHECKING:
    from router.core.ports import ScoreStore

__all__ = ["DEBT_SPAN", "ScoreWindow", "ShareControl", "ShareTarget", "ShareTargets", "target_for"]

# Decisions over which the debt is spread: the share asked of the quantile moves by 1/DEBT_SPAN per call owed.
# Small enough to hold a share over a few hundred requests, large enough that one call does not swing it.
DEBT_SPAN = 25


class ScoreWindow:
    """The last `size` scores, in arrival order and sorted: adding one costs a binary search and one memmove
    of the sorted list (O(log W) compares; a few hundred ns at W = 1000), and a quantile is a lookup."""

    __slots__ = ("_ring", "_sorted", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a score window holds at least one score")
        self.size = size
        self._ring: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, score: float) -> None:
        if not math.isfinite(score):  # a NaN would break the sort order; such a score decides nothing
            return
        if len(self._ring) >= self.size:
            oldest = self._ring.popleft()
            del self._sorted[bisect_left(self._sorted, oldest)]
        self._ring.append(score)
        insort(self._sorted, score)

    def replace(self, scores: Iterable[float]) -> None:
        """Take `scores` (oldest first; the last `size` are kept) as the window, e.g. the replicas' shared one."""
        kept = [s for s in scores if math.isfinite(s)][-self.size :]
        self._ring = deque(kept)
        self._sorted = sorted(kept)

    def threshold(self, share: float) -> float | None:
        """The lowest score that puts `share` of the window at or above it (None for an empty window); for a
        share of 0, just above the highest score."""
        n = len(self._sorted)
        if n == 0:
            return None
        top = round(min(1.0, max(0.0, share)) * n)
        if top <= 0:
            return math.nextafter(self._sorted[-1], math.inf)
        return self._sorted[n - top]


@dataclass(slots=True)
class ShareControl:
    """The integral term for one window: large calls owed to the target (negative when taken beyond it),
    bounded so that the share asked of the quantile stays within 0..1."""

    target: float
    debt: float = 0.0

    def share(self) -> float:
        return min(1.0, max(0.0, self.target + self.debt / DEBT_SPAN))

    def count(self, large: bool) -> None:
        owed = self.debt + self.target - (1.0 if large else 0.0)
        self.debt = min((1 - self.target) * DEBT_SPAN, max(-self.target * DEBT_SPAN, owed))


@dataclass(frozen=True, slots=True)
class ShareTarget:
    share: float  # of routed requests the large model should get
    key: str  # the window it is held over: "routing" (tiers that follow the gateway's target) or "tier:NAME"


def target_for(tier: Tier, gateway_share: float | None) -> ShareTarget | None:
    """The share target a tier's routed requests follow, or None for a fixed threshold. A tier that reaches one
    model only, or cascades, routes nothing by score; a tier's own threshold or target beats the gateway's."""
    if tier.cascade or len(tier.roles) < 2:
        return None
    if tier.target_large_share is not None:
        return ShareTarget(tier.target_large_share, "tier:" + tier.name)
    if tier.threshold is not None or gateway_share is None:
        return None
    return ShareTarget(gateway_share, "routing")


@dataclass(slots=True)
class ShareTargets:
    """Thresholds for share targets over windows kept by a store (per process, or shared by replicas). Below
    `min_scores` scores in the window (a cold start), the fallback (the scorer's suggested threshold) applies."""

    windows: ScoreStore
    min_scores: int = 100
    _controls: dict[str, ShareControl] = field(default_factory=dict)

    def threshold(self, target: ShareTarget, fallback: float) -> float:
        window = self.windows.window(target.key)
        if len(window) < self.min_scores:
            return fallback
        control = self._control(target)
        found = window.threshold(control.share())
        if found is None:
            return fallback
        # A score equal to the threshold (a tie: repeated prompts) goes large only while large calls are owed:
        # the quantile alone would send a whole block of equal scores to one side.
        return found if control.debt >= 0 else math.nextafter(found, math.inf)

    def observe(self, target: ShareTarget, score: float, large: bool) -> None:
        """A routed request's score and whether it went large (after its threshold was read)."""
        self.windows.add(target.key, score)
        if len(self.windows.window(target.key)) > self.min_scores:  # cold-start decisions owe nothing
            self._control(target).count(large)

    def _control(self, target: ShareTarget) -> ShareControl:
        control = self._controls.get(target.key)
        if control is None or control.target != target.share:  # a new target starts without debt
            control = self._controls[target.key] = ShareControl(target.share)
        return control
