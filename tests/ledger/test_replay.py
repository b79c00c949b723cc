"""`triage replay` of the repository's sample prompts through a real gateway: every line answered and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.adapters.ledger_sqlite import read_records
from router.analytics.replay import read_lines
from router.api.app import create_app
from router.api.auth import hash_key
from router.cli import main
from router.settings import AuthSettings, KeySettings, LedgerSettings, TierSettings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import make_upstream

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample_prompts.jsonl"


def test_replay_of_the_sample_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(SAMPLE)
    paid = sum(1 for line in lines if line.tier == "paid")
    assert len(lines) == 35
    assert paid > 0
    ledger = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={
                "ledger": LedgerSettings(path=ledger),
                "tiers": {"anonymous": TierSettings(), "paid": TierSettings()},
                "auth": AuthSettings(keys=[KeySettings(sha256=hash_key("sk-paid"), tier="paid")]),
            }
        )
        with serving(create_app(settings)) as gw:
            code = main(
                [
                    "replay",
                    str(SAMPLE),
                    "--url",
                    f"{gw.url}/v1",
                    "--concurrency",
                    "8",
                    "--key",
                    "paid=sk-paid",
                    "--max-tokens",
                    "4",
                ]
            )
    assert code == 0
    out = capsys.readouterr().out
    assert "sent 35: 200: 35" in out
    records = list(read_records(ledger))
    assert len(records) == 35
    assert sum(r.tier == "paid" for r in records) == paid
    assert {r.model for r in records} == {"tiny-small", "tiny-large"}  # the length scorer splits them
    assert main(["analytics", "summary", "--ledger", str(ledger), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["served"] == 35


def test_bad_replay_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nothing": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_lines(bad)


def test_replay_with_no_gateway_names_the_url_that_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"prompt": "and you?"}\n')
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    assert main(["replay", str(prompts), "--url", url]) == 1
    out = capsys.readouterr().out
    assert f"no answer for 2 of 2: {url}/chat/completions refused the connection" in out
    assert "is `triage serve` running there?" in out and "--url" in out
    assert "ledger has the decisions" not in out  # nothing reached a gateway: nothing to look at there


@pytest.mark.parametrize(("flag", "value"), [("--concurrency", "0"), ("--max-tokens", "-1"), ("--rate", "nan")])
def test_replay_refuses_counts_and_rates_that_are_not_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(SystemExit) as refused:  # --concurrency 0 waited forever on a semaphore of 0
        main(["replay", str(prompts), "--url", "http://127.0.0.1:9/v1", flag, value])
    assert refused.value.code == 2 and flag in capsys.readouterr().err
