"""The README and docs/ are one document in several files: every relative link resolves (the file, and the
heading an anchor names), and the README's short configuration example is a configuration the gateway takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```.*?```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text())
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(CODE_BLOCK.sub("", page.read_text()))]


def test_there_are_pages_and_links() -> None:
    assert len(PAGES) >= 8
    assert sum(len(_links(p)) for p in PAGES) >= 15


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing_anchor = bool(anchor) and dest.suffix == ".md" and dest.exists() and anchor not in _anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links that do not resolve: {broken}"


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 300


def test_the_readme_config_example_is_taken(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configure it", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example
    path = tmp_path / "gateway.yaml"
    path.write_text(example.group(1))
    settings = load_settings(path)
    assert {w.role for w in settings.workers} == {"small", "large"}
    assert settings.limits.redis_url == "redis://127.0.0.1:6379/0"
