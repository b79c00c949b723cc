"""The shadow pairs store, beside the decision ledger: an SQLite table in `<ledger>-pairs.sqlite`, or a capped
Redis stream when the ledger is in Redis (replicas share it). Written like the ledger (a queue that never blocks
a request, batches from a background task); read by `triage label`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from router.adapters.ledger_queue import QueuedLedger
from router.core.shadow import ShadowPair
from router.errors import ConfigError

__all__ = ["RedisPairs", "SqlitePairs", "pairs_path", "read_pairs"]

PAIR_COLUMNS = tuple(f.name for f in fields(ShadowPair))
_CREATE = (
    "CREATE TABLE IF NOT EXISTS pairs ("
    + ", ".join(f"{c} {'REAL' if c in ('ts', 'score') else 'TEXT'}" for c in PAIR_COLUMNS)
    + ")"
)
_INSERT = f"INSERT INTO pairs ({', '.join(PAIR_COLUMNS)}) VALUES ({', '.join('?' for _ in PAIR_COLUMNS)})"


def pairs_path(ledger: Path) -> Path:
    """Where the pairs of an SQLite ledger go: beside it."""
    return ledger.with_name(ledger.stem + "-pairs.sqlite")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(_CREATE)
    return db


class SqlitePairs(QueuedLedger[ShadowPair]):
    def __init__(self, path: Path, *, batch: int = 32, interval: float = 0.5, max_queue: int = 10_000) -> None:
        super().__init__(batch=batch, interval=interval, max_queue=max_queue)
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _row(self, item: ShadowPair) -> tuple[Any, ...]:
        return astuple(item)

    async def _open(self) -> None:
        self._db = await asyncio.to_thread(_connect, self.path)

    async def _store(self, rows: list[tuple[Any, ...]]) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)

    async def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class RedisPairs(QueuedLedger[ShadowPair]):
    def __init__(self, url: str, *, stream: str, maxlen: int = 100_000, max_queue: int = 10_000) -> None:
        super().__init__(batch=64, interval=0.5, max_queue=max_queue)
        self._redis = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.stream = stream
        self._maxlen = maxlen

    def _row(self, item: ShadowPair) -> tuple[Any, ...]:
        return astuple(item)

    async def _store(self, rows: list[tuple[Any, ...]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for values in rows:
            encoded: dict[Any, Any] = {
                c: "" if v is None else repr(v) if isinstance(v, float) else str(v)
                for c, v in zip(PAIR_COLUMNS, values, strict=True)
            }
            pipe.xadd(self.stream, encoded, maxlen=self._maxlen, approximate=True)
        await pipe.execute()

    async def _close(self) -> None:
        await self._redis.aclose()


def _pair(values: dict[str, Any]) -> ShadowPair:
    ts, score = values["ts"], values["score"]
    return ShadowPair(
        **{c: values[c] for c in PAIR_COLUMNS if c not in ("ts", "score")},
        ts=float(ts),
        score=None if score in (None, "") else float(score),
    )


def read_pairs(source: str | Path) -> Iterator[ShadowPair]:
    """Every stored pair, oldest first: from an SQLite pairs file, or `redis://host:port/db#stream` (the
    ledger's stream name plus `:pairs`)."""
    text = str(source)
    if text.startswith(("redis://", "rediss://", "unix://")):
        url, _, stream = text.partition("#")
        client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        try:
            start = "-"
            while True:
                chunk = cast(list[tuple[str, dict[str, str]]], client.xrange(stream, start, "+", 1000))
                for _, values in chunk:
                    yield _pair(dict(values))
                if len(chunk) < 1000:
                    return
                start = "(" + chunk[-1][0]
        except redis.RedisError as exc:
            raise ConfigError(f"{url}: cannot read shadow pairs ({exc})") from None
        finally:
            client.close()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{path}: no shadow pairs file (turn routing.shadow on and let traffic through)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot open the shadow pairs ({exc})") from None
    try:
        sql = f"SELECT {', '.join(PAIR_COLUMNS)} FROM pairs ORDER BY ts"
        for row in db.execute(sql):
            yield _pair(dict(zip(PAIR_COLUMNS, row, strict=True)))
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a readable shadow pairs file ({exc})") from None
    finally:
        db.close()
