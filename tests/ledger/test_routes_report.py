"""Each API route apart in the ledger and the summary: what share of traffic and cost each one carries; and a
ledger written before routes were recorded still reads, and takes new records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from router.adapters.ledger_sqlite import SqliteLedger, read_records
from router.api.app import create_app
from router.cli import main
from router.core.records import COLUMNS
from router.settings import LedgerSettings
from tests.api.conftest import settings_for
from tests.ledger.test_report import rec
from tests.servers import serving
from tests.upstream import make_upstream

HI = [{"role": "user", "content": "hi"}]


def test_the_gateway_records_each_requests_route_and_the_summary_splits_by_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        with serving(create_app(base.model_copy(update={"ledger": LedgerSettings(path=path)}))) as gw:
            for route, body in (
                ("/v1/chat/completions", {"model": "auto", "messages": HI, "max_tokens": 2}),
                ("/v1/responses", {"model": "auto", "input": "hi", "max_output_tokens": 2}),
                ("/v1/responses", {"model": "auto", "input": "hi", "max_output_tokens": 2, "stream": True}),
                ("/v1/messages", {"model": "auto", "messages": HI, "max_tokens": 2}),
            ):
                assert httpx.post(gw.url + route, json=body).status_code == 200
    assert [r.route for r in read_records(path)] == ["/chat/completions", "/responses", "/responses", "/messages"]
    assert main(["analytics", "summary", "--ledger", str(path), "--format", "json"]) == 0
    routes = json.loads(capsys.readouterr().out)["routes"]
    assert {k: v["requests"] for k, v in routes.items()} == {
        "/v1/chat/completions": 1,
        "/v1/responses": 2,
        "/v1/messages": 1,
    }
    assert routes["/v1/responses"]["cost"] == pytest.approx(2 * (7 * 0.1 + 2 * 0.2) / 1e6)
    assert main(["analytics", "summary", "--ledger", str(path)]) == 0
    table = capsys.readouterr().out
    assert "/v1/responses" in table and "50.0%" in table


async def test_a_ledger_from_before_routes_reads_and_takes_new_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = [c for c in COLUMNS if c != "route"]
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE decisions ({', '.join(old)})")
    row = rec(100, "small", cost=0.001)
    db.execute(f"INSERT INTO decisions VALUES ({', '.join('?' for _ in old)})", [getattr(row, c) for c in old])
    db.commit()
    db.close()
    assert [r.route for r in read_records(path)] == [""]
    ledger = SqliteLedger(path, batch=1, interval=0.01)
    await ledger.start()
    ledger.emit(rec(101, "large", route="/messages"))
    await ledger.close()
    assert [(r.ts, r.route) for r in read_records(path)] == [(100, ""), (101, "/messages")]
