"""Labelled shadow pairs (`triage label`'s outcomes file) as the gateway reads them: the quality gauge of
/metrics, and the reader `triage analytics quality` shares."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from router.errors import ConfigError

__all__ = ["QualityGauge", "read_labelled"]


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
