"""Share target at the service's ports: routed requests read their threshold from the window and feed it;
the record carries the threshold in force; named models, cascades and pinned tiers stay out of the window."""

from __future__ import annotations

import random

from router.adapters.score_windows import MemoryScores
from router.core.share import ShareTargets
from router.core.types import Role
from tests.service.fakes import ask, caller, stack


async def test_routed_requests_hold_the_target_and_record_the_threshold_in_force() -> None:
    store = MemoryScores(50)
    s = stack(shares=ShareTargets(store, min_scores=20), target=0.3)
    who = caller()
    rng = random.Random(3)
    for _ in range(220):
        s.scorer.value = rng.uniform(0.0, 0.2)  # all below the suggested 0.5: a fixed threshold sends none large
        await ask(s, who)
    records = s.sink.records
    assert [r.threshold for r in records[:20]] == [0.5] * 20  # cold start: the suggested threshold
    for r in records:
        assert r.score is not None and r.threshold is not None
        assert (r.role == "large") == (r.score >= r.threshold)  # the record's threshold is the one that decided
    share = sum(r.role == "large" for r in records[-150:]) / 150
    assert abs(share - 0.3) <= 0.05
    assert {r.reason for r in records} == {"below_threshold", "at_or_above_threshold"}
    assert len(store.window("routing")) == 50


async def test_named_models_cascades_and_pinned_tiers_stay_out_of_the_window() -> None:
    store = MemoryScores(50)
    s = stack(shares=ShareTargets(store, min_scores=1), target=0.3)
    s.scorer.value = 0.9
    await ask(s, caller(), {"model": "small-model"})
    await ask(s, caller(roles=frozenset({Role.SMALL})))  # a pinned tier: the score cannot choose
    await ask(s, caller(cascade=True))
    await ask(s, caller(threshold=0.95))  # a tier's own threshold beats the gateway's target
    assert len(store.window("routing")) == 0
    assert [r.threshold for r in s.sink.records[1:]] == [0.5, 0.5, 0.95]
    await ask(s, caller(target_large_share=0.5))  # a tier's own target, over its own window
    assert len(store.window("tier:free")) == 1 and len(store.window("routing")) == 0
