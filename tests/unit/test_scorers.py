from __future__ import annotations

import pytest

from router.adapters.scorers import LengthScorer


def test_length_scorer_is_half_at_midpoint_and_monotone() -> None:
    s = LengthScorer(midpoint=10)
    assert s.score("x" * 10) == 0.5
    assert s.score("") == 0.0
    assert s.score("x" * 5) < s.score("x" * 20) < 1.0
    with pytest.raises(ValueError, match="positive"):
        LengthScorer(0)
