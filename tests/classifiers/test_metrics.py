"""Routing metrics against examples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifiers.lab.metrics import oracle_curve, random_curve, route_metrics, routing_curve


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
