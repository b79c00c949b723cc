"""Analytics numbers against a ledger built by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.adapters.ledger_queue import SETTLE_EVERY
from router.adapters.ledger_sqlite import SqliteLedger, read_records
from router.analytics.cli import parse_time
from router.analytics.report import percentile, summarize
from router.cli import main
from router.core.records import DecisionRecord


def rec(
    ts: float,
    model: str,
    status: int = 200,
    tier: str = "free",
    cost: float = 0.0,
    cost_large: float = 0.0,
    latency: float = 10.0,
    **kw: object,
) -> DecisionRecord:
    values: dict[str, object] = dict(
        ts=ts,
        request_id=f"r{ts}",
        tier=tier,
        caller="c",
        model_requested="auto",
        model=model,
        worker=model,
        role=model if model in ("small", "large") else "",
        score=0.5,
        threshold=0.4,
        reason="below_threshold",
        escalated=False,
        cache_hit=False,
        prompt_tokens=10,
        completion_tokens=5,
        ttft_ms=latency / 2,
        latency_ms=latency,
        status=status,
        cost=cost,
        cost_large=cost_large,
    )
    values.update(kw)
    return DecisionRecord(**values)  # type: ignore[arg-type]


HAND = [
    rec(100, "small", cost=0.001, cost_large=0.010, latency=10),
    rec(101, "small", cost=0.001, cost_large=0.010, latency=20),
    rec(102, "small", cost=0.001, cost_large=0.010, latency=30),
    rec(103, "large", cost=0.010, cost_large=0.010, latency=100, escalated=True),
    rec(104, "", status=429, tier="anonymous"),
    rec(105, "", status=429, tier="anonymous"),
    rec(106, "small", status=502, tier="free"),
]


def test_summary_by_hand() -> None:
    s = summarize(HAND)
    assert (s.requests, s.served, s.escalations) == (7, 4, 1)
    assert s.share == {"small": 0.75, "large": 0.25}
    assert s.rate_limited == {"anonymous": 2}
    assert s.errors == {502: 1}
    assert s.cost == pytest.approx(0.013)
    assert s.cost_large == pytest.approx(0.040)
    assert s.saving == pytest.approx(1 - 0.013 / 0.040)
    assert s.latency_ms["small"] == {"p50": 20, "p95": 30, "p99": 30}
    assert s.ttft_ms["large"]["p50"] == 50
    assert (s.first_ts, s.last_ts) == (100, 106)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)
    assert percentile([7.0], 99) == 7.0


def test_times() -> None:
    assert parse_time("2026-11-30") == 1_795_996_800  # midnight UTC
    assert parse_time("24h", now=100_000) == 100_000 - 86_400
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


async def _written(path: Path, records: list[DecisionRecord], *, batch: int, interval: float) -> SqliteLedger:
    """A ledger at `path` that was given `records` and closed (which flushes what is queued)."""
    ledger = SqliteLedger(path, batch=batch, interval=interval)
    await ledger.start()
    for r in records:
        ledger.emit(r)
    await ledger.close()
    return ledger


async def test_ledger_round_trip_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = await _written(path, HAND, batch=3, interval=0.01)
    assert (ledger.written, ledger.dropped) == (7, 0)
    assert list(read_records(path)) == HAND
    assert main(["analytics", "summary", "--ledger", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 7
    assert out["cost"]["saving"] == pytest.approx(0.675)
    assert main(["analytics", "summary", "--ledger", str(path), "--tier", "anonymous", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["rate_limited"] == {"anonymous": 2}
    assert main(["analytics", "summary", "--ledger", str(path)]) == 0
    table = capsys.readouterr().out
    assert "saved 67.5%" in table
    assert "anonymous 2" in table


async def test_batches_wider_than_one_insert_keep_every_record_in_order(tmp_path: Path) -> None:
    """A batch goes in by multi-row INSERTs of ROWS_PER_INSERT: 100 records in batches of 64 are written as
    32 + 32 and 32 + 4 rows, and read back whole."""
    path = tmp_path / "ledger.sqlite"
    records = [rec(1000 + i, "small" if i % 3 else "large", latency=float(i), cost=i / 1e6) for i in range(100)]
    ledger = await _written(path, records, batch=64, interval=0.01)
    assert (ledger.written, ledger.dropped) == (100, 0)
    assert list(read_records(path)) == records


async def test_a_flush_is_one_transaction_a_failed_batch_loses_it_whole_and_says_so(tmp_path: Path) -> None:
    """The batches of one flush share a transaction: a batch SQLite refuses (a value it cannot bind) rolls back
    the flush's earlier batches too, and all of them are counted dropped; later batches start anew."""
    path = tmp_path / "ledger.sqlite"
    records = [rec(1000 + i, "small") for i in range(6)]
    records[2] = rec(1002, "small", prompt={"not": "bindable"})
    ledger = await _written(path, records, batch=2, interval=60)  # one flush, by close(), of all six
    assert (ledger.written, ledger.dropped) == (2, 4)
    assert list(read_records(path)) == records[4:]


async def test_a_long_flush_commits_every_settle_every_batches(tmp_path: Path) -> None:
    """A flush of 40 one-row batches commits after batch 16 and 32: a refused batch (the 30th) rolls back only
    what came after the last commit (batches 17-29)."""
    path = tmp_path / "ledger.sqlite"
    records = [rec(1000 + i, "small") for i in range(40)]
    records[29] = rec(1029, "small", prompt={"not": "bindable"})
    assert SETTLE_EVERY == 16
    ledger = await _written(path, records, batch=1, interval=60)
    assert (ledger.written, ledger.dropped) == (26, 14)
    assert list(read_records(path)) == records[:16] + records[30:]


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite", max_queue=2)
    for r in HAND[:5]:
        ledger.emit(r)
    assert (ledger.depth, ledger.dropped) == (2, 3)
    await ledger.start()
    await ledger.close()
    assert ledger.written == 2


def test_missing_ledger_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analytics", "summary", "--ledger", str(tmp_path / "none.sqlite")]) == 2
    assert "no ledger at" in capsys.readouterr().err


async def test_summary_without_prices_says_the_saving_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "free.sqlite"
    ledger = SqliteLedger(path)
    await ledger.start()
    ledger.emit(rec(1, "small"))
    await ledger.close()
    assert main(["analytics", "summary", "--ledger", str(path)]) == 0
    assert "saving unknown: no prices were configured" in capsys.readouterr().out


async def _ledger(tmp_path: Path, records: list[DecisionRecord]) -> Path:
    path = tmp_path / "hand.sqlite"
    ledger = SqliteLedger(path)
    await ledger.start()
    for r in records:
        ledger.emit(r)
    await ledger.close()
    return path


def test_timeline_and_tiers_by_hand() -> None:
    from router.analytics.report import by_tier, timeline

    buckets = timeline(HAND, step_seconds=3)  # [99-102): ts 100, 101 | [102-105): 102, 103, 104 | [105-108): 105, 106
    assert [b.key for b in buckets] == ["1970-01-01T00:01:39Z", "1970-01-01T00:01:42Z", "1970-01-01T00:01:45Z"]
    assert [(b.requests, b.served, b.rate_limited) for b in buckets] == [(2, 2, 0), (3, 2, 1), (2, 0, 1)]
    assert buckets[1].large_share == 0.5  # small at 102, large at 103
    assert buckets[0].saving == pytest.approx(1 - 0.002 / 0.020)
    tiers = {b.key: b for b in by_tier(HAND)}
    assert (tiers["anonymous"].requests, tiers["anonymous"].rate_limited) == (2, 2)
    assert (tiers["free"].served, tiers["free"].large_share) == (4, 0.25)


async def test_export_plot_timeline_and_tiers_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    path = await _ledger(tmp_path, HAND)
    out = tmp_path / "records.csv"
    assert main(["analytics", "export", "--ledger", str(path), "--out", str(out)]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    assert rows[3]["model"] == "large"
    assert main(["analytics", "export", "--ledger", str(path), "--format", "json", "--tier", "anonymous"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == [429, 429]
    assert main(["analytics", "timeline", "--ledger", str(path), "--step", "1d", "--format", "json"]) == 0
    (day,) = json.loads(capsys.readouterr().out)
    assert (day["requests"], day["served"], day["large_share"]) == (7, 4, 0.25)
    assert main(["analytics", "tiers", "--ledger", str(path)]) == 0
    assert "anonymous" in capsys.readouterr().out
    plots = tmp_path / "plots"
    assert main(["analytics", "plot", "--ledger", str(path), "--out", str(plots), "--step", "2s"]) == 0
    for name in ("share_and_saving.png", "latency_by_model.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shadow_calls_and_conversation_moves_are_counted_apart() -> None:
    records = [
        rec(1, "small", cost=0.1, cost_large=1.0),
        rec(2, "large", cost=1.0, cost_large=1.0, reason="conversation"),
        rec(3, "large", cost=1.0, reason="shadow"),  # the second answer of a shadow pair: not a request
        rec(4, "small", cost=0.1, reason="draft:low_confidence"),
    ]
    s = summarize(records)
    assert (s.requests, s.conversation_moves, s.shadow_calls) == (2, 1, 1)
    assert s.cost == pytest.approx(1.2) and s.shadow_cost == pytest.approx(1.0)  # routing's cost; learning's apart
    assert s.saving == pytest.approx(1 - 1.2 / 2.0)


def test_the_default_ledger_missing_says_it_is_relative_to_where_the_gateway_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analytics", "summary"]) == 2
    err = capsys.readouterr().err
    assert f"no ledger at .triage/ledger.sqlite (that is {tmp_path}/.triage/ledger.sqlite" in err
    assert "relative to the folder `triage serve` ran in" in err and "--ledger" in err


SHARE_CONFIG = """\
routing: {scorer: length, target_large_share: 0.3}
workers:
  - {name: small, role: small, base_url: "http://127.0.0.1:1/v1", model: small}
  - {name: large, role: large, base_url: "http://127.0.0.1:2/v1", model: large}
tiers:
  free: {}
  anonymous: {models: [small]}
  paid: {target_large_share: 0.5}
  fixed: {threshold: 0.6}
"""


def test_share_against_its_target_per_period_and_tier_by_hand() -> None:
    from router.analytics.report import share_timeline

    records = [
        rec(0, "large", reason="at_or_above_threshold", threshold=0.7),
        rec(1, "small", reason="below_threshold", threshold=0.8),
        rec(2, "small", reason="below_threshold", threshold=0.9),
        rec(3, "large", reason="requested"),  # a named model: not routed
        rec(4, "large", reason="cached"),
        rec(5, "large", reason="conversation"),  # moved after the decision: not what the threshold did
        rec(6, "large", reason="escalated"),  # a cascade
        rec(7, "large", reason="tier_policy"),  # a pinned tier
        rec(65, "large", reason="at_or_above_threshold", threshold=0.5, tier="paid"),
        rec(66, "", status=502, reason="at_or_above_threshold", threshold=0.5, tier="paid"),
    ]
    buckets = share_timeline(records, 60, {"paid": 0.5}, default=None)
    assert [(b.start[-9:], b.tier, b.routed, b.large, b.target, b.threshold_p50) for b in buckets] == [
        ("00:00:00Z", "free", 3, 1, None, 0.8),
        ("00:01:00Z", "paid", 2, 1, 0.5, 0.5),  # a decided request that failed still counts: it was decided
    ]
    assert buckets[0].large_share == pytest.approx(1 / 3)


async def test_share_command_reads_targets_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [rec(float(i), "large" if i % 3 == 0 else "small", reason="below_threshold") for i in range(30)]
    records += [
        rec(30.0 + i, "large" if i % 2 else "small", reason="below_threshold", tier=t)
        for t in ("paid", "fixed")
        for i in range(4)
    ]
    path = await _ledger(tmp_path, records)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(SHARE_CONFIG)
    base = ["analytics", "share", "--ledger", str(path), "--step", "1d"]
    assert main([*base, "--config", str(cfg), "--format", "json"]) == 0
    rows = {r["tier"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["free"]["routed"], rows["free"]["large"], rows["free"]["target"]) == (30, 10, 0.3)
    assert (rows["paid"]["target"], rows["fixed"]["target"]) == (0.5, None)  # its threshold beats the target
    assert main([*base, "--config", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "free" in table and "33.3%" in table and "30.0%" in table and "+3.3%" in table
    assert main([*base, "--target", "0.25", "--format", "json"]) == 0
    assert {r["target"] for r in json.loads(capsys.readouterr().out)} == {0.25}
    assert main([*base, "--target", "30"]) == 2
    assert "--target 30.0: a share between 0 and 1" in capsys.readouterr().err
