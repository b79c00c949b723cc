"""The gateway routing `auto` with the shipped classifier (the default scorer), over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import classifiers
from router.api.app import create_app
from router.errors import ConfigError
from router.settings import RoutingSettings, Settings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import make_upstream

EASY = "What is the capital of France?"
HARD = (
    "Let f be a continuous function on [0,1] with f(0)=0. Prove that the integral of f squared is bounded "
    "by the square of the integral of |f'|, and find when equality holds."
)


def test_default_scorer_is_the_shipped_classifier_with_its_suggested_threshold() -> None:
    model = classifiers.load()
    easy, hard = model.score(EASY), model.score(HARD)
    threshold = (easy + hard) / 2  # between the two, so each must land on its own side
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = Settings(
            server=base.server, workers=base.workers, ledger=base.ledger, routing=RoutingSettings(threshold=threshold)
        )
        assert settings.routing.scorer == "classifier"
        with serving(create_app(settings)) as gw:
            for text, model_name in ((EASY, "tiny-small"), (HARD, "tiny-large")):
                r = httpx.post(
                    f"{gw.url}/v1/chat/completions",
                    json={"model": "auto", "messages": [{"role": "user", "content": text}]},
                )
                assert r.status_code == 200
                assert r.headers["x-triage-model"] == model_name
                assert float(r.headers["x-triage-score"]) == round(model.score(text), 4)


def test_unset_threshold_uses_the_models_suggestion() -> None:
    from router.api.policy_files import build_scorer

    base = settings_for("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    _, threshold = build_scorer(base.model_copy(update={"routing": RoutingSettings()}))
    assert threshold == classifiers.load().meta["suggested_threshold"]


def test_a_corrupt_classifier_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "classifier.json"
    bad.write_text('{"format": "llm-triage-classifier", "format_version": 1}')
    base = settings_for("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    settings = base.model_copy(update={"routing": RoutingSettings(classifier_path=bad)})
    with pytest.raises(ConfigError, match=r"routing\.classifier_path: .*classifier\.json: malformed"):
        create_app(settings)
