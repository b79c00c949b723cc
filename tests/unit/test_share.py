"""Share target's pure parts: the score window's quantile, the bounded integral term, the cold start, and which
tiers follow a target."""

from __future__ import annotations

import math
import random

import pytest

from router.adapters.score_windows import MemoryScores
from router.core.share import DEBT_SPAN, ScoreWindow, ShareControl, ShareTarget, ShareTargets, target_for
from router.core.tiers import Tier
from router.core.types import Role


def test_window_keeps_the_last_scores_sorted_and_reads_quantiles_like_a_sort() -> None:
    rng = random.Random(7)
    window, kept = ScoreWindow(50), list[float]()
    for i in range(400):
        score = round(rng.random(), 2) if i % 3 else rng.random()  # ties too
        window.add(score)
        kept = [*kept, score][-50:]
        ordered = sorted(kept)
        for share in (0.0, 0.1, 0.3, 0.5, 1.0):
            top = round(share * len(ordered))
            expected = math.nextafter(ordered[-1], math.inf) if top == 0 else ordered[len(ordered) - top]
            assert window.threshold(share) == expected
            assert sum(s >= expected for s in kept) >= top  # ties can only add to the top
    assert len(window) == 50


def test_window_ignores_nan_and_replace_keeps_the_newest() -> None:
    window = ScoreWindow(3)
    assert window.threshold(0.3) is None
    window.add(float("nan"))
    window.add(float("inf"))
    assert len(window) == 0
    window.replace([0.9, 0.1, float("nan"), 0.2, 0.3])  # oldest first: 0.9 falls out
    assert len(window) == 3
    assert window.threshold(1 / 3) == 0.3
    window.add(0.05)  # evicts 0.1, the oldest left
    assert window.threshold(1.0) == 0.05
    with pytest.raises(ValueError, match="at least one"):
        ScoreWindow(0)


def test_debt_is_bounded_so_the_share_asked_stays_in_zero_to_one() -> None:
    control = ShareControl(0.3)
    for _ in range(1000):
        control.count(large=True)
    assert control.debt == pytest.approx(-0.3 * DEBT_SPAN)
    assert control.share() == 0.0
    for _ in range(1000):
        control.count(large=False)
    assert control.debt == pytest.approx(0.7 * DEBT_SPAN)
    assert control.share() == 1.0


def run(targets: ShareTargets, target: ShareTarget, scores: list[float], fallback: float = 0.5) -> list[bool]:
    """Route `scores` one by one as the service does; whether each went large."""
    return [targets.decide(target, score, fallback).role is Role.LARGE for score in scores]


@pytest.mark.parametrize("seed", range(20))
def test_the_share_holds_when_the_traffic_changes_level(seed: int) -> None:
    rng = random.Random(seed)
    easy = [rng.uniform(0.0, 0.4) for _ in range(600)]  # short chat: every score below the suggested 0.5
    hard = [rng.betavariate(5, 2) * 0.4 + 0.6 for _ in range(600)]  # long multiple choice: all above it
    targets, target = ShareTargets(MemoryScores(200), min_scores=50), ShareTarget(0.3, "routing")
    large = run(targets, target, easy + hard)
    for half in (large[450:600], large[1050:1200]):
        assert abs(sum(half) / 150 - 0.3) <= 0.04
    # the classifier still picks which: within the last 150, what went large scored above what did not
    last = list(zip(hard[450:], large[1050:], strict=True))
    assert min(s for s, big in last if big) > sum(s for s, big in last if not big) / sum(not b for _, b in last)


def test_the_share_holds_over_tied_scores() -> None:
    """Every score equal: a quantile alone sends all or nothing; the debt spreads it to the target."""
    targets, target = ShareTargets(MemoryScores(100), min_scores=20), ShareTarget(0.3, "routing")
    large = run(targets, target, [0.42] * 600)
    assert abs(sum(large[300:]) / 300 - 0.3) <= 0.02


def test_a_cold_start_uses_the_suggested_threshold() -> None:
    targets, target = ShareTargets(MemoryScores(100), min_scores=30), ShareTarget(0.3, "routing")
    assert run(targets, target, [0.9] * 29, fallback=0.95) == [False] * 29  # the suggested threshold decided
    assert targets.threshold(target, 0.95) == 0.95
    run(targets, target, [0.9])
    assert targets.threshold(target, 0.95) == 0.9  # 30 scores: the window decides


def test_windows_are_per_key_and_a_new_target_starts_without_debt() -> None:
    store = MemoryScores(100)
    targets = ShareTargets(store, min_scores=10)
    run(targets, ShareTarget(0.3, "routing"), [0.1 * (i % 10) for i in range(100)])
    assert len(store.window("routing")) == 100 and len(store.window("tier:paid")) == 0
    assert targets.threshold(ShareTarget(0.5, "routing"), 0.5) == pytest.approx(0.5)  # top half of 0.0..0.9


@pytest.mark.parametrize(
    ("tier", "gateway", "expected"),
    [
        (Tier("free"), 0.3, ShareTarget(0.3, "routing")),
        (Tier("free"), None, None),
        (Tier("paid", target_large_share=0.5), None, ShareTarget(0.5, "tier:paid")),
        (Tier("paid", target_large_share=0.5), 0.3, ShareTarget(0.5, "tier:paid")),
        (Tier("fixed", threshold=0.7), 0.3, None),  # its own threshold beats the gateway's target
        (Tier("pinned", roles=frozenset({Role.SMALL})), 0.3, None),  # routes nothing by score
        (Tier("pinned", roles=frozenset({Role.LARGE}), target_large_share=0.5), 0.3, None),
        (Tier("cascade", cascade=True), 0.3, None),
    ],
)
def test_which_tiers_follow_a_target(tier: Tier, gateway: float | None, expected: ShareTarget | None) -> None:
    assert target_for(tier, gateway) == expected
