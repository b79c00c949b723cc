"""`triage analytics quality`: how much of the large model's quality the routed answers kept, estimated from
labelled shadow pairs (`triage label`'s outcomes: each carries which model answered the caller), with a
bootstrap confidence interval and the number of pairs behind it. Shadow pairs are a uniform sample of routed
requests (routing.shadow.rate), so the share they show is the traffic's."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.errors import ConfigError

__all__ = ["QualityEstimate", "QualityGauge", "estimate", "read_labelled"]


@dataclass(frozen=True, slots=True)
class QualityEstimate:
    pairs: int
    kept: float  # routed answers' quality as a share of the large model's
    low: float  # 95% bootstrap interval
    high: float
    small_share: float  # share of the pairs the small model answered

    def to_json(self) -> dict[str, float | int]:
        return {
            "pairs": self.pairs,
            "kept": self.kept,
            "low": self.low,
            "high": self.high,
            "small_share": self.small_share,
        }


def read_labelled(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(routed outcome, large outcome, routed to small) per labelled pair in an outcomes file; lines without
    `routed` (outcomes from elsewhere) are skipped."""
    routed, large, small_routed = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read labelled outcomes ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            role, s, big = doc.get("routed"), float(doc["small"]), float(doc["large"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"{path}:{n}: not an outcome record") from None
        if role not in ("small", "large"):
            continue
        routed.append(s if role == "small" else big)
        large.append(big)
        small_routed.append(role == "small")
    return np.array(routed), np.array(large), np.array(small_routed, dtype=bool)


def estimate(routed: np.ndarray, large: np.ndarray, small: np.ndarray, draws: int = 2000) -> QualityEstimate | None:
    """None without pairs, or when the large model scored nothing on them (nothing to keep a share of)."""
    n = len(routed)
    if n == 0 or large.sum() <= 0:
        return None
    rng = np.random.default_rng(0)
    picks = rng.integers(0, n, size=(draws, n))
    big = large[picks].sum(axis=1)
    shares = np.divide(routed[picks].sum(axis=1), big, out=np.ones(draws), where=big > 0)
    low, high = np.quantile(shares, [0.025, 0.975])
    return QualityEstimate(n, float(routed.sum() / large.sum()), float(low), float(high), float(small.mean()))


class QualityGauge:
    """The point estimate for /metrics, read again only when the labelled file changed, at most every
    `interval` seconds: a scrape must not re-read a large file each time."""

    def __init__(self, path: Path, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._mtime = -1.0
        self._value = (math.nan, 0)

    def read(self) -> tuple[float, int]:
        """(quality kept, labelled pairs); NaN and 0 until there are labelled pairs."""
        now = self._clock()
        if now < self._next:
            return self._value
        self._next = now + self._interval
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return self._value
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                routed, large, _ = read_labelled(self._path)
            except ConfigError:
                return self._value
            kept = float(routed.sum() / large.sum()) if len(large) and large.sum() > 0 else math.nan
            self._value = (kept, len(large))
        return self._value
