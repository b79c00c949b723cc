"""The learning loop end to end, with workers whose quality is known by construction: the small model answers
questions about capitals and fails integrals; the large one answers both; the judge (the large worker, as by
default) prefers a real answer to "I don't know". A gateway that first sends everything to the small model
shadows its traffic, `triage label` judges the pairs, `triage classifier train --outcomes` learns from them,
SIGHUP loads the result, and from then on integrals go to the large model. The ledger, the quality report and
the labels agree on the way."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from classifiers.model import Classifier
from router.adapters.ledger_sqlite import read_records
from router.analytics.label import JUDGE_SYSTEM
from router.cli import main
from tests.api.test_reload import leaning
from tests.limits.gateways import Gateway
from tests.prometheus import parse
from tests.servers import serving, wait_until

COUNTRIES = ["France", "Peru", "Kenya", "Japan", "Chile", "Norway", "Egypt", "Canada", "Vietnam", "Ghana"]
UNSURE = "I don't know."


def easy(rng: random.Random) -> str:
    return f"What is the capital city of {rng.choice(COUNTRIES)}? Answer in one word."


def hard(rng: random.Random) -> str:
    return f"Compute the definite integral of x^{rng.randint(2, 9)} * sin(x) from 0 to {rng.randint(2, 30)}."


def _answer(model: str, text: str) -> Response:
    return JSONResponse(
        {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
    )


def worker(model: str, knows: tuple[str, ...], calls: list[str]) -> Starlette:
    """Answers a question when it contains one of `knows`; judges when asked to (the judge's system prompt)."""

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        messages = body["messages"]
        if messages[0]["role"] == "system" and messages[0]["content"] == JUDGE_SYSTEM:
            calls.append("judge")
            text = messages[1]["content"]
            a = text.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
            b = text.split("[Answer B]\n", 1)[1].split("\n\nWhich", 1)[0]
            verdict = "TIE" if (a == UNSURE) == (b == UNSURE) else ("B" if a == UNSURE else "A")
            return _answer(model, verdict)
        calls.append("answer")
        question = messages[-1]["content"]
        return _answer(model, "A precise answer." if any(k in question for k in knows) else UNSURE)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def _ask(client: httpx.Client, prompt: str) -> str:
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    return r.headers["x-triage-model"]


def _pairs(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM pairs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_shadow_label_train_reload_changes_the_routing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_calls: list[str] = []
    large_calls: list[str] = []
    active = tmp_path / "classifier.json"
    leaning(active, -50.0)  # the prior, moved so that everything goes to the small model
    ledger = tmp_path / "ledger.sqlite"
    pairs = tmp_path / "ledger-pairs.sqlite"
    outcomes = tmp_path / "outcomes.jsonl"
    with (
        serving(worker("tiny-small", ("capital",), small_calls)) as small,
        serving(worker("tiny-large", ("capital", "integral"), large_calls)) as large,
    ):
        cfg = tmp_path / "gateway.json"
        cfg.write_text(
            json.dumps(
                {
                    "server": {"log_level": "warning"},
                    "routing": {
                        "classifier_path": str(active),
                        "shadow": {"rate": 1.0, "max_per_minute": 1000, "max_in_flight": 8},
                    },
                    "workers": [
                        {
                            "name": "small",
                            "role": "small",
                            "base_url": f"{small.url}/v1",
                            "model": "tiny-small",
                            "price_input": 0.2,
                            "price_output": 0.2,
                        },
                        {
                            "name": "large",
                            "role": "large",
                            "base_url": f"{large.url}/v1",
                            "model": "tiny-large",
                            "price_input": 3.0,
                            "price_output": 15.0,
                        },
                    ],
                    "ledger": {"path": str(ledger), "store_prompts": True, "outcomes": str(outcomes)},
                }
            )
        )
        gw = Gateway(cfg, tmp_path / "gateway.log")
        try:
            rng = random.Random(0)
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                prompts = [easy(rng) if i % 2 else hard(rng) for i in range(120)]
                assert {_ask(client, p) for p in prompts} == {"tiny-small"}
                wait_until(lambda: _pairs(pairs) == 120, 30, "120 shadow pairs")
                assert large_calls.count("answer") == 120  # every shadow call, none for the callers

                assert main(["label", "--pairs", str(pairs), "--config", str(cfg), "--out", str(outcomes)]) == 0
                said = capsys.readouterr().out
                assert "labelled 120 pairs" in said and "judge: 240 calls" in said
                rows = [json.loads(line) for line in outcomes.read_text().splitlines()]
                by_kind = {("capital" in r["prompt"], r["small"], r["large"]) for r in rows}
                assert by_kind == {(True, 0.5, 0.5), (False, 0.0, 1.0)}  # ties on capitals, large wins integrals
                # Resumable: nothing left to label, nothing judged twice.
                assert main(["label", "--pairs", str(pairs), "--config", str(cfg), "--out", str(outcomes)]) == 0
                assert "nothing to label" in capsys.readouterr().out and large_calls.count("judge") == 240

                wait_until(
                    lambda: len(list(read_records(ledger))) == 240, 30, "120 requests and their shadows in the ledger"
                )
                assert (
                    main(
                        [
                            "analytics",
                            "summary",
                            "--ledger",
                            str(ledger),
                            "--outcomes",
                            str(outcomes),
                            "--format",
                            "json",
                        ]
                    )
                    == 0
                )
                summary = json.loads(capsys.readouterr().out)
                assert summary["requests"] == 120 and summary["shadow"]["calls"] == 120
                # Routed answers kept 60 halves of the large model's 60 halves + 60 wins: a third.
                assert summary["quality"]["pairs"] == 120
                assert summary["quality"]["kept"] == pytest.approx(1 / 3)
                assert main(["analytics", "quality", "--ledger", str(ledger), "--outcomes", str(outcomes)]) == 0
                assert "quality kept 33.3% of the large model's" in capsys.readouterr().out
                scrape = parse(httpx.get(gw.url + "/metrics").text)
                assert scrape.get("triage_quality_pairs") == 120
                assert scrape.get("triage_quality_kept_ratio") == pytest.approx(1 / 3, abs=1e-3)
                assert scrape.get("triage_cost_usd_total", model="tiny-large", basis="shadow") > 0

                trained = tmp_path / "trained.json"
                assert main(["classifier", "train", "--outcomes", str(outcomes), "--out", str(trained)]) == 0
                assert Classifier.load(trained).meta["own_outcomes"] == 120
                os.replace(trained, active)
                before = httpx.get(gw.url + "/ready").json()["classifier"]["sha256"]
                os.kill(gw.proc.pid, signal.SIGHUP)
                wait_until(
                    lambda: httpx.get(gw.url + "/ready").json()["classifier"]["sha256"] != before, 30, "the reload"
                )

                fresh = random.Random(1)
                easy_models = [_ask(client, easy(fresh)) for _ in range(20)]
                hard_models = [_ask(client, hard(fresh)) for _ in range(20)]
                # Before: no integral went to the large model. Now most do: the suggested threshold is the highest
                # that kept 95% of the large model's quality out of fold on 120 outcomes, so a few may stay small.
                assert hard_models.count("tiny-large") >= 14, hard_models
                assert easy_models.count("tiny-small") >= 18, easy_models
                wait_until(lambda: _pairs(pairs) == 160, 30, "160 shadow pairs")
        finally:
            gw.kill(signal.SIGTERM)
