"""The names users import are a contract: adding one is a decision, losing one is a break."""

from __future__ import annotations

import classifiers
import router
import router.protocol
import router.settings


def test_exported_members() -> None:
    assert router.__all__ == ["__version__"]
    assert sorted(router.settings.__all__) == [
        "AuthSettings",
        "BalancingSettings",
        "CacheSettings",
        "CascadeSettings",
        "KeySettings",
        "LedgerSettings",
        "LimitsSettings",
        "RoutingSettings",
        "ServerSettings",
        "Settings",
        "TierSettings",
        "WorkerSettings",
        "load_settings",
    ]
    assert sorted(router.protocol.__all__) == [
        "ChatCompletionRequest",
        "CompletionRequest",
        "GenerationRequest",
        "MAX_JSON_DEPTH",
        "MAX_N",
        "MAX_TOKENS_BOUND",
        "affinity_key",
        "decode_body",
        "draft_logprobs_request",
        "encode",
        "error_body",
        "prompt_chars",
        "prompt_text",
        "read_draft",
        "strip_logprobs",
    ]
    assert sorted(classifiers.__all__) == [
        "Classifier",
        "ClassifierFileError",
        "answer_text",
        "default_answer_path",
        "default_path",
        "load",
    ]
