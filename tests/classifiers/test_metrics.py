"""Routing metrics against examples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifiers.lab.metrics import (
    oracle_curve,
    pooled_curve,
    pooled_random,
    pooled_route_metrics,
    random_curve,
    route_metrics,
    routing_curve,
)


def test_curve_points_by_hand() -> None:
    # 4 items; the large model gains on items 0 and 2, loses on 3.
    small = np.array([0, 1, 0, 1])
    large = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.1, 0.5, 0.3])  # order: 0, 2, 3, 1
    c = routing_curve(scores, small, large)
    assert c.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # q: all small 2/4; +item0 3/4; +item2 4/4; +item3 3/4; +item1 3/4
    assert c.quality.tolist() == [0.5, 0.75, 1.0, 0.75, 0.75]


def test_ties_are_not_split() -> None:
    small, large = np.array([0, 0, 1]), np.array([1, 1, 1])
    c = routing_curve(np.array([0.5, 0.5, 0.1]), small, large)
    assert c.share.tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert c.quality.tolist() == pytest.approx([1 / 3, 1.0, 1.0])


def test_metrics_by_hand() -> None:
    small = np.array([0, 1, 0, 1])
    large = np.array([1, 1, 1, 0])
    c = routing_curve(np.array([0.9, 0.1, 0.5, 0.3]), small, large)
    m = route_metrics(c, q_small=0.5, q_large=0.75, price_small=1.0, price_large=11.0)
    # PGR at the points: 0, 1, 2, 1, 1; trapezoid with step 0.25: 0.25*(0.5+1.5+1.5+1) = 1.125
    assert m.apgr == pytest.approx(1.125)
    assert m.cpt50 == pytest.approx(0.125)  # PGR 0.5 halfway to the first point
    assert m.cpt80 == pytest.approx(0.2)
    # 95% of 0.75 = 0.7125: reached between 0 and 0.25 at share 0.2125/0.25*0.25 = 0.2125
    assert m.share_at_95 == pytest.approx(0.2125)
    assert m.saved_free_small == pytest.approx(0.7875)
    # cost: 0.2125 * 11 + 0.7875 * 1 = 3.125 of 11
    assert m.saved_priced == pytest.approx(1 - 3.125 / 11)


def test_random_router_has_apgr_half_and_oracle_beats_it() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 500).astype(float)
    large = np.maximum(small, rng.integers(0, 2, 500)).astype(float)
    q_s, q_l = small.mean(), large.mean()
    rand = route_metrics(random_curve(small, large), q_s, q_l, 0.0, 1.0)
    assert rand.apgr == pytest.approx(0.5)
    assert rand.cpt50 == pytest.approx(0.5)
    oracle = route_metrics(oracle_curve(small, large), q_s, q_l, 0.0, 1.0)
    # PGR climbs linearly to 1 over the items where large gains (share g), then stays: APGR = 1 - g/2.
    g = float(np.mean(large > small))
    assert oracle.apgr == pytest.approx(1 - g / 2)
    assert oracle.share_at_95 < rand.share_at_95


def test_unreachable_target_is_nan() -> None:
    c = routing_curve(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0.0, 0.0]) + 1e-9)
    m = route_metrics(c, 0.0, 1.0, 0.0, 1.0)
    assert math.isnan(m.share_at_95)


def test_pooled_metrics_weigh_every_family_alike_by_hand() -> None:
    # Family A: one item the large model wins (score 0.9). Family B: two items, the large model wins the first
    # (score 0.5); both models get the second right (score 0.1). Weights: A's item 1, B's items 1/2 each.
    parts = [
        (np.array([0.9]), np.array([0.0]), np.array([1.0])),
        (np.array([0.5, 0.1]), np.array([0.0, 1.0]), np.array([1.0, 1.0])),
    ]
    curve, q_small, q_large = pooled_curve(parts)
    assert (q_small, q_large) == pytest.approx((0.25, 1.0))  # the mean of the families' own qualities
    assert curve.share.tolist() == pytest.approx([0.0, 0.5, 0.75, 1.0])
    assert curve.quality.tolist() == pytest.approx([0.25, 0.75, 1.0, 1.0])
    m = pooled_route_metrics(parts)
    # PGR at the points: 0, 2/3, 1, 1; trapezoid: 0.5*(1/3) + 0.25*(5/6) + 0.25*1 = 15/24
    assert m.apgr == pytest.approx(15 / 24)
    # 95% of 1.0 is reached between share 0.5 (q 0.75) and 0.75 (q 1.0): at 0.5 + 0.2/0.25 * 0.25
    assert m.share_at_95 == pytest.approx(0.7)
    # Pooled item by item instead (no family weights) the same scores give another curve: the weights matter.
    flat = routing_curve(np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    assert flat.share.tolist() != pytest.approx(curve.share.tolist())


def test_a_family_counts_the_same_whatever_its_size() -> None:
    rng = np.random.default_rng(1)
    parts = [
        (rng.random(n), rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float) + 0.5) for n in (7, 30)
    ]
    s1, lo1, hi1 = parts[1]
    tripled = [parts[0], (np.repeat(s1, 3), np.repeat(lo1, 3), np.repeat(hi1, 3))]
    assert pooled_route_metrics(tripled).apgr == pytest.approx(pooled_route_metrics(parts).apgr)
    assert pooled_route_metrics(tripled).share_at_95 == pytest.approx(pooled_route_metrics(parts).share_at_95)
    # Families of one size: the pool is the plain curve of all items.
    same = [(rng.random(20), rng.integers(0, 2, 20).astype(float), np.ones(20)) for _ in range(3)]
    curve, _, _ = pooled_curve(same)
    plain = routing_curve(*(np.concatenate([p[j] for p in same]) for j in range(3)))
    np.testing.assert_allclose(curve.share, plain.share)
    np.testing.assert_allclose(curve.quality, plain.quality)


def test_ranking_families_by_their_gain_is_what_a_pool_rewards() -> None:
    """Within each family the items are tied; only the order of the families differs. Sending the family with
    the larger gain first recovers the gap faster than the reverse, by a hand-checkable amount."""
    big = (np.zeros(4), np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0]))  # gain 1
    none = (np.zeros(2), np.array([1.0, 1.0]), np.array([1.0, 1.0]))  # gain 0
    right = pooled_route_metrics([(big[0] + 1, big[1], big[2]), none])
    wrong = pooled_route_metrics([big, (none[0] + 1, none[1], none[2])])
    # Right: PGR rises linearly to 1 over the first half, then stays: 0.75. Wrong: flat, then rises: 0.25.
    assert right.apgr == pytest.approx(0.75) and wrong.apgr == pytest.approx(0.25)
    assert right.share_at_95 == pytest.approx(0.5 * (0.95 * 1.0 - 0.5) / 0.5)
    assert wrong.share_at_95 == pytest.approx(0.5 + 0.5 * (0.95 - 0.5) / 0.5)


def test_a_random_router_on_the_pool_averages_half() -> None:
    rng = np.random.default_rng(2)
    parts = [(np.zeros(n), rng.integers(0, 2, n).astype(float), np.ones(n)) for n in (50, 400)]
    mean, spread = pooled_random(parts, draws=300, seed=3)
    assert abs(mean - 0.5) < 3 * spread / np.sqrt(300) + 1e-3
    assert 0.0 < spread < 0.1
    assert pooled_random(parts, draws=300, seed=3) == (mean, spread)  # seeded: reproducible


def test_a_pool_that_cannot_be_scored_says_why() -> None:
    with pytest.raises(ValueError, match="at least one family"):
        pooled_route_metrics([])
    with pytest.raises(ValueError, match="equal length"):
        pooled_route_metrics([(np.zeros(2), np.zeros(3), np.ones(3))])
    with pytest.raises(ValueError, match="equal length"):
        pooled_route_metrics([(np.zeros(0), np.zeros(0), np.zeros(0))])
    with pytest.raises(ValueError, match="no gap"):
        pooled_route_metrics([(np.zeros(2), np.ones(2), np.ones(2))])
