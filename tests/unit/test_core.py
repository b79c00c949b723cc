from __future__ import annotations

import pytest

from router.core.costs import cost
from router.core.policy import decide
from router.core.types import Prices, Reason, Role


@pytest.mark.parametrize(
    ("score", "threshold", "role", "reason"),
    [
        (0.2, 0.5, Role.SMALL, Reason.BELOW_THRESHOLD),
        (0.5, 0.5, Role.LARGE, Reason.AT_OR_ABOVE_THRESHOLD),
        (0.9, 0.5, Role.LARGE, Reason.AT_OR_ABOVE_THRESHOLD),
        (0.0, 0.0, Role.LARGE, Reason.AT_OR_ABOVE_THRESHOLD),
        (0.99, 1.0, Role.SMALL, Reason.BELOW_THRESHOLD),
    ],
)
def test_decide(score: float, threshold: float, role: Role, reason: Reason) -> None:
    d = decide(score, threshold)
    assert (d.role, d.reason, d.score, d.threshold) == (role, reason, score, threshold)


def test_cost_per_million_tokens() -> None:
    # 1,000 prompt tokens at $5/M plus 500 completion tokens at $15/M = 0.005 + 0.0075
    assert cost(Prices(5.0, 15.0), 1_000, 500) == pytest.approx(0.0125)
    assert cost(Prices(), 10_000, 10_000) == 0.0
