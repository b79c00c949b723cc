"""The deployment's identity secret: the HMAC key that stands in for client addresses in Redis key names and in
the ledger. Given in the config or the environment, else created once and kept: in Redis when limits use Redis
(every replica reads the same one; SET NX makes the first start win), else in a file only its owner can read."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import redis
from redis.exceptions import RedisError

from router.errors import ConfigError

__all__ = ["identity_secret"]

ENV = "TRIAGE_IDENTITY_SECRET"
log = logging.getLogger("triage.auth")


def identity_secret(configured: str | None, redis_url: str | None, key_prefix: str, path: Path) -> bytes:
    given = configured or os.environ.get(ENV)
    if given:
        return given.encode()
    if redis_url:
        shared = _in_redis(redis_url, f"{key_prefix}:identity-secret")
        if shared is not None:
            return shared
    return _in_file(path)


def _in_redis(url: str, key: str) -> bytes | None:
    """The replicas' shared secret; None when Redis is down at start (the gateway still starts, as its tiers'
    on_limiter_error allows, on the local file's secret: set TRIAGE_IDENTITY_SECRET so replicas agree)."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.set(key, secrets.token_hex(32), nx=True)
        value = client.get(key)
    except RedisError as exc:
        log.warning(
            "cannot read the identity secret from Redis (%s); using the local one, so replicas may key anonymous "
            "callers differently until restarted. Set auth.identity_secret or %s to avoid this.",
            type(exc).__name__,
            ENV,
        )
        return None
    finally:
        client.close()
    if not isinstance(value, bytes) or not value:
        raise ConfigError(f"Redis key {key!r} holds no identity secret; delete it or set {ENV}")
    return value


def _in_file(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the identity secret: {exc.strerror}") from None
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the identity secret: {exc.strerror}") from None
    if len(value) < 16:
        raise ConfigError(f"{path}: the identity secret is missing or too short; delete the file to make a new one")
    return value
