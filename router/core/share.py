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
from typing import NamedTuple, Protocol

from router.core.policy import decide
from router.core.tiers import Tier
from router.core.types import Decision, Role

__all__ = ["DEBT_SPAN", "ScoreStore", "ScoreWindow", "ShareControl", "ShareTarget", "ShareTargets", "target_for"]

# Decisions over which the debt is spread: the share asked of the quantile moves by 1/DEBT_SPAN per call owed.
# Small enough to hold a share over a few hundred requests, large enough that one call does not swing it.
DEBT_SPAN = 25
_INF = math.inf


class ScoreWindow:
    """The last `size` scores, in arrival order and sorted: adding one costs two binary searches and two
    memmoves of the sorted list (O(log W) compares; about a microsecond at W = 1000), and a quantile is a
    lookup."""

    __slots__ = ("_ring", "_sorted", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a score window holds at least one score")
        self.size = size
        self._ring: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._ring)

    def values(self) -> list[float]:
        """The scores, oldest first."""
        return list(self._ring)

    def add(self, score: float) -> None:
        if not -_INF < score < _INF:  # NaN would break the sort order, infinity the quantile: both decide nothing
            return
        ring, ordered = self._ring, self._sorted
        if len(ring) >= self.size:
            del ordered[bisect_left(ordered, ring.popleft())]
        ring.append(score)
        insort(ordered, score)

    def replace(self, scores: Iterable[float]) -> None:
        """Take `scores` (oldest first; the last `size` are kept) as the window, e.g. the replicas' shared one."""
        kept = [s for s in scores if -_INF < s < _INF][-self.size :]
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


class ShareControl:
    """The integral term for one window: large calls owed to the target (negative when taken beyond it),
    bounded so that the share asked of the quantile stays within 0..1."""

    __slots__ = ("_high", "_low", "asked", "debt", "target")

    def __init__(self, target: float) -> None:
        self.target = target
        self.debt = 0.0
        self.asked = target  # the share asked of the quantile: target + debt / DEBT_SPAN, kept as debt moves
        self._low, self._high = -target * DEBT_SPAN, (1 - target) * DEBT_SPAN

    def share(self) -> float:
        return self.asked

    def count(self, large: bool) -> None:
        owed = self.debt + self.target - (1.0 if large else 0.0)
        self.debt = debt = self._low if owed < self._low else self._high if owed > self._high else owed
        self.asked = self.target + debt / DEBT_SPAN


class ShareTarget(NamedTuple):  # a tuple: one is made per routed request, and a tuple is the cheapest
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


class ScoreStore(Protocol):
    """Recent routed scores per window key (share targets): in process, or shared by replicas through Redis.
    Both calls sit on the request path and never wait: sharing happens in the background. `window` returns
    the same object for a key every time (a shared window is refreshed in place)."""

    def window(self, key: str) -> ScoreWindow: ...

    def add(self, key: str, score: float) -> None: ...


@dataclass(slots=True)
class ShareTargets:
    """Decisions under share targets, over windows kept by a store (per process, or shared by replicas). Below
    `min_scores` scores in the window (a cold start), the fallback (the scorer's suggested threshold) decides
    and owes nothing."""

    windows: ScoreStore
    min_scores: int = 100
    _held: dict[str, tuple[ScoreWindow, ShareControl]] = field(default_factory=dict)

    def decide(self, target: ShareTarget, score: float, fallback: float) -> Decision:
        """Route one score by the threshold in force, then add it to the window and count where it went."""
        window, control = self._hold(target)
        warm = len(window) >= self.min_scores
        decision = decide(score, _threshold(window, control) if warm else fallback)
        self.windows.add(target.key, score)
        if warm:
            control.count(decision.role is Role.LARGE)
        return decision

    def threshold(self, target: ShareTarget, fallback: float) -> float:
        """The threshold the next request under `target` meets."""
        window, control = self._hold(target)
        return _threshold(window, control) if len(window) >= self.min_scores else fallback

    def _hold(self, target: ShareTarget) -> tuple[ScoreWindow, ShareControl]:
        held = self._held.get(target.key)
        if held is None or held[1].target != target.share:  # a new target starts without debt
            held = self._held[target.key] = (self.windows.window(target.key), ShareControl(target.share))
        return held


def _threshold(window: ScoreWindow, control: ShareControl) -> float:
    found = window.threshold(control.asked)
    assert found is not None  # the window is not empty: min_scores >= 1
    # A score equal to the threshold (a tie: repeated prompts) goes large only while large calls are owed:
    # the quantile alone would send a whole block of equal scores to one side.
    return found if control.debt >= 0 else math.nextafter(found, math.inf)
