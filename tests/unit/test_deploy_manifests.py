"""The deploy files, checked offline: the Dockerfile linted (hadolint) and read for what the image must be; the
Kubernetes overlays rendered (kubectl kustomize) and validated against Kubernetes' OpenAPI schemas; the Compose
file against the Compose specification's JSON schema; and what must agree between them and the gateway (ports,
probe paths, the metrics port, config keys that load)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.api.routes import build_router
from router.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
VLLM_VERSION = (DEPLOY / "VLLM_VERSION").read_text().strip()  # the one pin: ./dev installs it, images use it


def _serves_tools(args: list[str], parser: str) -> bool:
    """`tool_choice: "auto"` needs both flags, or vLLM answers every such request with a 400."""
    return "--enable-auto-tool-choice" in args and _flag(args, "--tool-call-parser") == parser


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        message = f"{name} is missing: `./dev test` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_the_dockerfile_lints_clean_and_builds_what_the_gateway_needs() -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    lint = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = dockerfile.read_text()
    final = text[text.rindex("\nFROM ") :]  # the final stage
    assert re.search(r"^FROM python:3\.\d+-slim", final.strip(), re.M)
    assert re.search(r"^USER 10001$", final, re.M)
    assert "HEALTHCHECK" in final and "/health" in final
    assert 'CMD ["serve", "--config", "/etc/llm-triage/gateway.yaml"' in final
    assert not re.search(r"gcc|build-essential|apt-get install", final)  # no compilers in the final stage
    assert "[train]" not in text and "[dev]" not in text  # the gateway serves without scikit-learn
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert not any(heavy in runtime for heavy in ("torch", "vllm", "scikit-learn", "scipy"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_the_manifests_validate_and_agree(overlay: str, tmp_path: Path) -> None:
    docs = _render(overlay)
    rendered = tmp_path / "all.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    check = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.31.0", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The config the gateway will read loads (keys file beside it, as mounted) and names the vLLM Services.
    config_map = _one(docs, "ConfigMap", "llm-triage-config")
    (tmp_path / "gateway.yaml").write_text(config_map["data"]["gateway.yaml"])
    secret = _one(docs, "Secret", "llm-triage-keys")
    import base64

    (tmp_path / "keys.yaml").write_bytes(base64.b64decode(secret["data"]["keys.yaml"]))
    settings = load_settings(tmp_path / "gateway.yaml")
    assert settings.auth.keys and settings.limits.redis_url == "redis://redis:6379/0"
    # The gateway: one port everywhere (container, config, Service, probes, Prometheus).
    gateway = _one(docs, "Deployment", "llm-triage")
    pod = gateway["spec"]["template"]
    c = _container(gateway)
    port = c["ports"][0]["containerPort"]
    assert port == settings.server.port == 9000
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    service = _one(docs, "Service", "llm-triage")
    assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    assert (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == ("/ready", "/health")
    paths = {getattr(r, "path", None) for r in build_router().routes}
    assert {"/ready", "/health", "/metrics"} <= paths
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/llm-triage/gateway.yaml", "/etc/llm-triage/keys.yaml"} <= mounts
    assert c["args"][-1] == "/etc/llm-triage/gateway.yaml"
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.server.graceful_shutdown_timeout + pause
    assert _one(docs, "PodDisruptionBudget", "llm-triage")["spec"]["minAvailable"] >= 1
    assert _one(docs, "HorizontalPodAutoscaler", "llm-triage")["spec"]["minReplicas"] >= 2
    # The workers: each config URL is a vLLM Service whose port is the container's, probed on /health,
    # serving the model name the config expects, with prefix caching on.
    gpus = {}
    for worker in settings.workers:
        host, wport = re.match(r"http://([\w-]+):(\d+)/v1", worker.base_url or "").groups()  # type: ignore[union-attr]
        svc = _one(docs, "Service", host)
        deployment = _one(docs, "Deployment", host)
        vc = _container(deployment)
        assert svc["spec"]["ports"][0]["port"] == int(wport) == vc["ports"][0]["containerPort"]
        assert int(_flag(vc["args"], "--port")) == int(wport)
        assert _flag(vc["args"], "--served-model-name") == worker.model
        assert "--enable-prefix-caching" in vc["args"]
        assert _serves_tools(vc["args"], "llama3_json" if overlay == "gpu" else "hermes")
        assert vc["image"].endswith(f":v{VLLM_VERSION}")
        assert vc["readinessProbe"]["httpGet"]["path"] == "/health"
        gpus[worker.role.value] = vc["resources"].get("requests", {}).get("nvidia.com/gpu")
        if overlay == "gpu" and "--tensor-parallel-size" in vc["args"]:
            assert int(_flag(vc["args"], "--tensor-parallel-size")) == int(gpus[worker.role.value])
    assert gpus == ({"small": "1", "large": "4"} if overlay == "gpu" else {"small": None, "large": None})


def test_the_compose_file_follows_the_compose_specification() -> None:
    import jsonschema

    schema_path = os.environ.get("TRIAGE_COMPOSE_SCHEMA")
    if not schema_path or not Path(schema_path).exists():
        message = "the Compose specification's schema is missing (TRIAGE_COMPOSE_SCHEMA): `./dev test` fetches it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    schema = json.loads(Path(schema_path).read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)  # the schema names draft 2019-09
    services = compose["services"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["vllm-small"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert services["vllm-large"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    assert {"cpu"} == set(services["vllm-small-cpu"]["profiles"]) == set(services["vllm-large-cpu"]["profiles"])
    for name in ("vllm-small", "vllm-large", "vllm-small-cpu", "vllm-large-cpu"):
        assert services[name]["image"].endswith(f":v{VLLM_VERSION}"), name
        assert _serves_tools(services[name]["command"], "hermes" if name.endswith("-cpu") else "llama3_json"), name
    # The CPU services read the folder `./dev models deploy/compose/models` writes, and the compose file says so.
    assert "./dev models deploy/compose/models" in (DEPLOY / "compose.yaml").read_text()
    for name in ("vllm-small-cpu", "vllm-large-cpu"):
        assert services[name]["volumes"] == ["./compose/models:/models:ro"]
        assert _flag(services[name]["command"], "--model") == "/models/smollm2-135m-instruct"
    gateway = load_settings(DEPLOY / "compose" / "gateway.yaml")
    hosts = {re.match(r"http://([\w-]+):", w.base_url or "").group(1) for w in gateway.workers}  # type: ignore[union-attr]
    aliases = {a for s in services.values() for a in s.get("networks", {}).get("default", {}).get("aliases", [])}
    assert hosts <= set(services) and hosts <= aliases  # the GPU services by name, the CPU ones by alias
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["llm-triage"]["dns_sd_configs"][0]["port"] == gateway.server.port
    assert set(jobs["vllm"]["static_configs"][0]["targets"]) == {"vllm-small:8000", "vllm-large:8000"}
