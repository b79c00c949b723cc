"""Which requests the exact response cache may answer, and under which key. Pure: no store here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["IGNORED_FIELDS", "cache_key"]

# Fields that do not change the answer's content: who asks, and how it is delivered.
IGNORED_FIELDS = frozenset({"user", "stream", "stream_options", "metadata"})


def cache_key(scope: str, endpoint: str, payload: Mapping[str, Any]) -> str | None:
    """A key for a deterministic request (temperature 0 given explicitly, one choice, not streamed), scoped
    (per tier) so tiers never see each other's answers; None when the request may not be cached."""
    if payload.get("temperature") != 0 or payload.get("stream") or payload.get("n", 1) not in (1, None):
        return None
    kept = {k: v for k, v in payload.items() if k not in IGNORED_FIELDS}
    try:
        canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(f"{scope}\0{endpoint}\0{canonical}".encode()).hexdigest()
    return f"{scope}:{digest}"
