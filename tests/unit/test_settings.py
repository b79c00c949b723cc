from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import build_settings, parser
from router.errors import ConfigError
from router.settings import Settings, load_settings

GOOD = """\
server:
  port: 9100
routing:
  threshold: 0.3
workers:
  - name: small
    role: small
    base_url: http://127.0.0.1:8001/v1/
    model: tiny-small
    price_input: 0.2
  - name: large
    role: large
    base_url: http://127.0.0.1:8002/v1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD))
    assert s.server.port == 9100
    assert s.routing.threshold == 0.3
    assert s.workers[0].base_url == "http://127.0.0.1:8001/v1"  # trailing slash dropped
    assert s.workers[1].model is None  # to be discovered


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (("    role: small", "    role: tiny"), ":7: workers.0.role: Input should be 'small', 'large' or 'embeddings'"),
        (
            ("  threshold: 0.3", "  threshold: 3"),
            ":4: routing.threshold: Input should be less than or equal to 1",
        ),
        (("  port: 9100", "  prot: 9100"), ":2: server.prot: Extra inputs are not permitted"),
        (
            ("    base_url: http://127.0.0.1:8002/v1", "    base_url: 127.0.0.1:8002"),
            ":13: workers.1.base_url: Value error, must start with http:// or https://",
        ),
        (("    price_input: 0.2", "    price_input: -1"), ":10: workers.0.price_input"),
        (("    role: large", "    role: small"), ":5: workers: Value error, need at least one worker"),
    ],
)
def test_bad_file_names_line_and_key(tmp_path: Path, change: tuple[str, str], needle: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"{path}{needle}" in str(info.value)


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "workers: [unclosed"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_flags_override_defaults_and_file(tmp_path: Path) -> None:
    args = parser().parse_args(["serve", "--small", "http://10.0.0.1:1/v1", "--port", "9999", "--threshold", "0.7"])
    s = build_settings(args)
    assert [w.base_url for w in s.workers] == ["http://10.0.0.1:1/v1", "http://127.0.0.1:8002/v1"]
    assert (s.server.port, s.routing.threshold) == (9999, 0.7)
    with_file = build_settings(parser().parse_args(["serve", "--config", str(write(tmp_path, GOOD)), "--port", "1"]))
    assert with_file.server.port == 1 and with_file.routing.threshold == 0.3
    with pytest.raises(ConfigError):
        build_settings(parser().parse_args(["serve", "--config", str(write(tmp_path, GOOD)), "--small", "http://x"]))


def test_embedded_defaults_are_valid() -> None:
    s = Settings.local()
    assert [(w.name, w.role.value) for w in s.workers] == [("small", "small"), ("large", "large")]


def test_keys_hash_prints_the_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli import main

    assert main(["keys", "hash", "sk-test"]) == 0
    assert capsys.readouterr().out.strip() == "f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0"


def test_redis_flag_sets_the_limits_store() -> None:
    s = build_settings(parser().parse_args(["serve", "--redis", "redis://127.0.0.1:6379/2"]))
    assert s.limits.redis_url == "redis://127.0.0.1:6379/2"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("tiers:\n  anonymous:\n    mode: cascade\n    models: [small]\n", "mode cascade needs models [small, large]"),
        ("tiers:\n  anonymous:\n    mode: fancy\n", ":16: tiers.anonymous.mode: Input should be 'route' or 'cascade'"),
        ("balancing:\n  affinity_load_factor: 0.5\n", ":15: balancing.affinity_load_factor"),
        ("cache:\n  backend: disk\n", ":15: cache.backend"),
        ("cascade:\n  min_confidence: 2\n", ":15: cascade.min_confidence"),
    ],
)
def test_new_sections_are_checked_too(tmp_path: Path, extra: str, needle: str) -> None:
    path = write(tmp_path, GOOD + extra)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert needle in str(info.value)


def test_a_litellm_worker_needs_no_base_url_and_an_openai_one_does(tmp_path: Path) -> None:
    hosted = GOOD.replace(
        "    base_url: http://127.0.0.1:8002/v1\n", "    provider: litellm\n    provider_model: openai/gpt-4o\n"
    )
    assert load_settings(write(tmp_path, hosted)).workers[1].to_worker().model == "openai/gpt-4o"
    with pytest.raises(ConfigError, match="base_url is required"):
        load_settings(write(tmp_path, GOOD.replace("    base_url: http://127.0.0.1:8002/v1\n", "")))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            GOOD.replace("  threshold: 0.3", "  threshold: 0.3\n  target_large_share: 0.3"),
            ":5: routing.target_large_share: Value error, routing.threshold and routing.target_large_share are both",
        ),
        (
            GOOD.replace("  threshold: 0.3", "  alias: auto")
            + "tiers:\n  anonymous:\n    threshold: 0.4\n    target_large_share: 0.2\n",
            ":17: tiers.anonymous.target_large_share: Value error, threshold and target_large_share are both set",
        ),
        (
            GOOD + "tiers:\n  anonymous:\n    models: [small]\n    target_large_share: 0.2\n",
            "tiers.anonymous.target_large_share: the tier routes nothing by score (mode route, models ['small'])",
        ),
        (
            GOOD + "tiers:\n  anonymous:\n    mode: cascade\n    target_large_share: 0.2\n",
            "tiers.anonymous.target_large_share: the tier routes nothing by score (mode cascade",
        ),
        (
            GOOD.replace("  threshold: 0.3", "  target_large_share: 1"),
            ":4: routing.target_large_share: Input should be less than 1",
        ),
        (
            GOOD.replace("  threshold: 0.3", "  target_large_share: 0.3\n  target_window: 50\n  target_min_scores: 80"),
            "target_min_scores (80) exceeds target_window (50)",
        ),
    ],
)
def test_a_share_target_beside_a_fixed_threshold_is_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert needle in str(info.value)


def test_a_share_target_loads_per_gateway_and_per_tier(tmp_path: Path) -> None:
    text = GOOD.replace("  threshold: 0.3", "  target_large_share: 0.3") + (
        "tiers:\n  anonymous: {}\n  paid:\n    target_large_share: 0.5\n  fixed:\n    threshold: 0.7\n"
    )
    s = load_settings(write(tmp_path, text))
    assert s.routing.target_large_share == 0.3 and s.routing.threshold is None
    assert s.tiers["paid"].target_large_share == 0.5
    assert s.tiers["fixed"].threshold == 0.7  # a tier's own threshold beats the gateway's target


def test_a_threshold_flag_beside_a_share_target_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  threshold: 0.3", "  target_large_share: 0.3"))
    with pytest.raises(ConfigError, match=r"--threshold/--alias: .*routing.threshold and routing.target_large_share"):
        build_settings(parser().parse_args(["serve", "--config", str(path), "--threshold", "0.4"]))
