"""The import contracts bite: a deliberate violation in a copy of the tree breaks the contract it should, and
"standard library only" forbids every third-party package the project declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml"}  # distribution -> import name, where they differ


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("router", "classifiers"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("path", "line", "broken"),
    [
        ("router/core/costs.py", "import numpy", "core is pure: standard library only"),
        ("router/core/policy.py", "import router.service.coordinator", "api above service above core"),
        (
            "router/api/newly_added.py",
            "import router.adapters.backend",
            "only wiring.py and policy_files.py wire adapters",
        ),
        ("router/api/app.py", "import router.adapters.backend", "only wiring.py and policy_files.py wire adapters"),
        ("router/service/coordinator.py", "import router.adapters.backend", "service (and its flows) sees only core"),
        ("router/service/admission.py", "import router.service.coordinator", "the coordinator above its flows"),
        ("router/adapters/metrics.py", "import router.analytics.report", "adapters never reach up"),
        ("router/analytics/report.py", "import router.api.errors", "analytics never import the API"),
        ("classifiers/model.py", "import sklearn", "serving modules import numpy at most"),
        ("classifiers/features.py", "import classifiers.lab.lodo", "serving modules import numpy at most"),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(tree: Path, path: str, line: str, broken: str) -> None:
    target = tree / path
    target.write_text((target.read_text() if target.exists() else "") + f"\n{line}  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert re.search(re.escape(broken) + r".* BROKEN", result.stdout), result.stdout


def test_core_forbids_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    names = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0].lower() for d in declared}
    runtime = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}
    dev_only = {"pytest", "pytest_asyncio", "openai", "ruff", "mypy", "types_pyyaml", "import_linter", "limits"}
    dev_only |= {"schemathesis", "pytest_cov", "pre_commit"}
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = next(c for c in contracts if c["id"] == "core-pure")
    missing = runtime - dev_only - set(core["forbidden_modules"])
    assert not missing, f"add these to the core-pure contract: {sorted(missing)}"
