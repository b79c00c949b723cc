"""MT-Bench's second turns: the data as loaded, and the comparison's arithmetic (the README's table is
`triage classifier eval --protocol "turn 2"`, which trains the prior first)."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.lab.turns import load_second_turns, paired_difference, turn_two

pytestmark = pytest.mark.usefixtures("routing_data")


def test_eighty_conversations_graded_on_their_second_turn() -> None:
    conversations = load_second_turns()
    assert len(conversations) == 80
    assert all(0 <= c.small <= 1 and 0 <= c.large <= 1 for c in conversations)
    assert np.mean([c.large for c in conversations]) > np.mean([c.small for c in conversations])


def test_the_routers_and_the_random_spread() -> None:
    conversations = load_second_turns()
    results, (mean, spread) = turn_two(conversations, lambda text: float(len(text)))
    assert [r.router.split(" ")[0] for r in results] == ["last", "with", "sticky", "escalate_only"]
    assert results[0].minus_last_turn is None and all(r.minus_last_turn is not None for r in results[1:])
    assert mean == pytest.approx(0.5, abs=0.03) and 0.04 < spread < 0.12  # 80 items: a wide spread
    small = np.array([c.small for c in conversations])
    large = np.array([c.large for c in conversations])
    same = np.arange(len(small), dtype=float)
    assert paired_difference(same, same, small, large, draws=50) == (0.0, 0.0, 0.0)
