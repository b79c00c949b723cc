from __future__ import annotations

import pytest

from router.core.costs import cost
from router.core.limits import TierLimits, text_tokens
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


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("abcd" * 3, 3), ("漢字仮名", 4), ("Привет", 6), ("abcd漢字", 3), ("🙂" * 2, 2), ("abc", 0)],
)
def test_text_tokens_count_ascii_by_fours_and_every_other_character_as_one(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_a_tier_s_token_ceiling_is_its_smallest_token_limit() -> None:
    assert TierLimits().token_ceiling is None
    assert TierLimits(requests_per_minute=5).token_ceiling is None
    assert TierLimits(tokens_per_minute=400).token_ceiling == (400, "minute")
    assert TierLimits(tokens_per_minute=400, daily_tokens=300).token_ceiling == (300, "day")
    assert TierLimits(tokens_per_minute=400, daily_tokens=9000).token_ceiling == (400, "minute")
