"""Client addresses never stored in clear: Redis key names and ledger records carry an HMAC under the
deployment's identity secret, which replicas share."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import uuid
from pathlib import Path

import pytest
import redis

from router.adapters.identity_secret import identity_secret
from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.gateways import Gateway, config, flood
from tests.servers import ThreadedServer


def test_redis_key_names_hold_no_address_and_replicas_share_one_secret(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: key names held `ip:127.0.0.1` in clear."""
    require_redis()
    small, large = upstreams[0], upstreams[1]
    cfg = config(tmp_path, f"{small.url}/v1", f"{large.url}/v1", REDIS_URL, {"anonymous": {"requests_per_minute": 7}})
    prefix = json.loads(cfg.read_text())["limits"]["key_prefix"]
    gateways = [Gateway(cfg, tmp_path / f"gw{i}.log") for i in range(2)]
    store = redis.Redis.from_url(REDIS_URL)
    try:
        codes = asyncio.run(flood([g.url for g in gateways], total=20, in_flight=4))
        keys = [k.decode() for k in store.scan_iter(match=f"{prefix}*")]
        secret = store.get(f"{prefix}:identity-secret")
    finally:
        for g in gateways:
            g.kill(signal.SIGTERM)
        for k in store.scan_iter(match=f"{prefix}*"):
            store.delete(k)
        store.close()
    assert codes == {200: 7, 429: 13}  # both replicas key the caller alike: one count
    assert secret is not None and len(secret) >= 32
    assert keys and not any("127.0.0.1" in k for k in keys)


def test_a_local_secret_is_created_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIAGE_IDENTITY_SECRET", raising=False)
    path = tmp_path / "state" / "identity.key"
    first = identity_secret(None, None, "p", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert identity_secret(None, None, "p", path) == first  # a restart keys callers as before
    assert identity_secret("configured-secret-123", None, "p", path) == b"configured-secret-123"
    monkeypatch.setenv("TRIAGE_IDENTITY_SECRET", "from-the-environment-1")
    assert identity_secret(None, None, "p", path) == b"from-the-environment-1"


def test_a_shared_secret_is_created_once_in_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_redis()
    monkeypatch.delenv("TRIAGE_IDENTITY_SECRET", raising=False)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    one = identity_secret(None, REDIS_URL, prefix, tmp_path / "a.key")
    two = identity_secret(None, REDIS_URL, prefix, tmp_path / "b.key")
    redis.Redis.from_url(REDIS_URL).delete(f"{prefix}:identity-secret")
    assert one == two
    assert not (tmp_path / "a.key").exists()
