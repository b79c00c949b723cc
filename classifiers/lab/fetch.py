"""`triage data fetch`: the recorded outcomes the classifier is trained on, from their public source.

Both sources are pinned to a commit. RouteLLM's files are used as published and checked byte for byte
(sha256). LLMRouter's are filtered on arrival: only the twelve task families the project trains on are kept,
because its other families belong to an evaluation that must stay unseen. What is kept is checked by a digest
of its rows (serialisation aside), since the pins were taken from copies serialised differently."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from classifiers.lab.families import FAMILIES

__all__ = [
    "GITHUB_RAW",
    "SOURCES",
    "FetchError",
    "Pinned",
    "Remote",
    "Source",
    "fetch",
    "row_digest",
    "verify",
]

GITHUB_RAW = "https://raw.githubusercontent.com"
MAX_FILE_BYTES = 64 << 20  # the largest pinned file is 3.3 MB; a mirror answering more is not serving it
# LLMRouter's families the project trains on (all of FAMILIES but MT-Bench, which is RouteLLM's alone).
KEPT_FAMILIES = frozenset(FAMILIES) - {"mt_bench"}


class FetchError(Exception):
    """A file could not be downloaded, or what arrived is not what was pinned, or the folder could not be
    written. `updated` names the sources already swapped in before it (none, unless writing failed)."""

    def __init__(self, message: str, updated: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.updated = updated


@dataclass(frozen=True, slots=True)
class Pinned:
    path: str  # under the source's folder here
    upstream: str  # path in the repository
    sha256: str  # of the bytes (RouteLLM) or of the kept rows (LLMRouter, see row_digest)


@dataclass(frozen=True, slots=True)
class Source:
    folder: str  # under the data root: routellm/ or llmrouter/
    repo: str  # owner/name on GitHub
    commit: str
    license: str
    files: tuple[Pinned, ...]
    filtered: bool  # rows of unkept task families are dropped, and rows are checked instead of bytes


@dataclass(frozen=True, slots=True)
class Remote:
    base: str = GITHUB_RAW  # serves OWNER/REPO/COMMIT/PATH, as raw.githubusercontent.com does
    timeout: float = 60.0  # seconds per file, its whole download


# The pinned commits and every file's sha256: data beside this module (pins.json), read once at import.
_PINS = json.loads(Path(__file__).with_name("pins.json").read_text(encoding="utf-8"))

SOURCES = tuple(
    Source(
        name,
        pin["repo"],
        pin["commit"],
        pin["licence"],
        tuple(Pinned(f["path"], f["upstream"], f["sha256"]) for f in pin["files"]),
        filtered=name == "llmrouter",
    )
    for name, pin in _PINS.items()
)


def _numbers_as_floats(value: Any) -> Any:
    # 1 and 1.0 are the same outcome; a re-serialisation may write either
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return {k: _numbers_as_floats(v) for k, v in value.items()}


def row_digest(rows: list[Any]) -> str:
    """sha256 of the rows in their order, blind to key order, spacing and number formatting (1 or 1.0). Order
    counts: the loader resolves a question listed under two families by which comes first."""
    lines = (json.dumps(_numbers_as_floats(r), sort_keys=True, ensure_ascii=False, separators=(",", ":")) for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _parse_rows(name: str, data: bytes) -> list[Any]:
    try:
        text = data.decode("utf-8")
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if name.endswith(".jsonl")
            else json.loads(text)
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FetchError(f"{name}: not JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FetchError(f"{name}: expected a list of objects")
    return rows


def _serialise(name: str, rows: list[Any]) -> bytes:
    if name.endswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    return json.dumps(rows, ensure_ascii=False).encode()


def _provenance(source: Source) -> str:
    how = (
        f"Rows of task families other than {', '.join(sorted(KEPT_FAMILIES))} were dropped on arrival "
        "(they belong to an evaluation that must stay unseen); the rest is checked by its row digest."
        if source.filtered
        else "Each file is as published, checked byte for byte against its pinned sha256."
    )
    files = "\n".join(f"- `{f.path}` <- `{f.upstream}` (sha256 {f.sha256})" for f in source.files)
    return (
        f"# {source.folder}: fetched by `triage data fetch`\n\n"
        f"From https://github.com/{source.repo} at commit `{source.commit}` (license {source.license}; the "
        f"benchmarks inside keep their own licenses). {how}\n\n{files}\n"
    )


def verify(folder: Path, source: Source) -> list[str]:
    """What in `folder` differs from the pins (empty: everything matches)."""
    problems = []
    for f in source.files:
        path = folder / f.path
        if not path.is_file():
            problems.append(f"{f.path}: missing")
            continue
        data = path.read_bytes()
        try:
            got = row_digest(_parse_rows(f.path, data)) if source.filtered else hashlib.sha256(data).hexdigest()
        except FetchError as e:
            problems.append(str(e))
            continue
        if got != f.sha256:
            problems.append(f"{f.path}: sha256 {got}, pinned {f.sha256}")
    return problems


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme)


_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5


async def _download(client: httpx.AsyncClient, url: str, dest: Path, within: float) -> str:
    """`url` streamed into `dest`, its sha256 computed on the way; the whole file within `within` seconds (not
    each read: a mirror trickling bytes is as stuck as a silent one)."""
    try:
        async with asyncio.timeout(within):
            return await _stream_into(client, url, dest)
    except TimeoutError:
        raise FetchError(f"{url}: timed out (the whole file within {within:g} s)") from None
    except httpx.HTTPError as e:
        raise FetchError(f"{url}: {e or type(e).__name__}") from None
    except OSError as e:
        raise FetchError(f"cannot write {dest}: {e.strerror or e}") from None


async def _stream_into(client: httpx.AsyncClient, url: str, dest: Path) -> str:
    first = url
    for _ in range(MAX_REDIRECTS + 1):
        async with client.stream("GET", url) as response:
            if response.is_redirect:
                target = urllib.parse.urljoin(url, response.headers["location"])
                if _origin(target) != _origin(first):  # a mirror serves its own files: elsewhere is not pinned
                    raise FetchError(f"{first}: redirected to another origin ({target}); refused")
                url = target
                continue
            if response.status_code != 200:
                raise FetchError(f"{url}: HTTP {response.status_code}")
            digest, size = hashlib.sha256(), 0
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise FetchError(f"{url}: more than {MAX_FILE_BYTES} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            return digest.hexdigest()
    raise FetchError(f"{first}: more than {MAX_REDIRECTS} redirects")


class _Arrivals:
    """One source's files arriving into its scratch folder, each checked as it lands. A filtered source keeps
    the query files' rows of kept families; its dcrouter files keep rows whose question is one of those, so
    they are checked once every query file has been."""

    def __init__(self, source: Source, scratch: Path, client: httpx.AsyncClient, remote: Remote) -> None:
        self.source, self.scratch, self._client, self._remote = source, scratch, client, remote
        self._base = remote.base.rstrip("/")
        self._questions: set[Any] = set()
        self._queries_left = sum(f.path.startswith("query_") for f in source.files)
        self._queries_done = asyncio.Event()
        if not self._queries_left:
            self._queries_done.set()

    def url(self, f: Pinned) -> str:
        return f"{self._base}/{self.source.repo}/{self.source.commit}/{f.upstream}"

    async def one(self, f: Pinned, gate: asyncio.Semaphore) -> None:
        url, dest = self.url(f), self.scratch / f.path
        if self.source.filtered:
            dest = self.scratch / ".raw" / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        async with gate:
            digest = await _download(self._client, url, dest, self._remote.timeout)
        if not self.source.filtered:
            if digest != f.sha256:
                raise FetchError(f"{url}: sha256 {digest}, pinned {f.sha256}")
            return
        if f.path.startswith("query_"):
            kept = [r for r in _parse_rows(f.path, dest.read_bytes()) if r.get("task_name") in KEPT_FAMILIES]
            self._questions.update(r.get("query") for r in kept)
            self._queries_left -= 1
            if not self._queries_left:
                self._queries_done.set()
        else:
            await self._queries_done.wait()
            kept = [r for r in _parse_rows(f.path, dest.read_bytes()) if r.get("question") in self._questions]
        rows_digest = row_digest(kept)
        if rows_digest != f.sha256:
            raise FetchError(f"{url}: the kept rows' digest is {rows_digest}, pinned {f.sha256}")
        (self.scratch / f.path).parent.mkdir(parents=True, exist_ok=True)
        (self.scratch / f.path).write_bytes(_serialise(f.path, kept))
        dest.unlink()


def _scratch(root: Path, source: Source) -> Path:
    return root / f".{source.folder}.partial-{os.getpid()}"


async def _arrive(root: Path, sources: Sequence[Source], remote: Remote) -> None:
    """Every file of `sources` into its source's scratch folder, checked on arrival; the first failure stops
    the rest. Files go to disk as they come: only the one being filtered is held in memory."""
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(follow_redirects=False, timeout=remote.timeout) as client:
        for source in sources:
            scratch = _scratch(root, source)
            arrivals = _Arrivals(source, scratch, client, remote)
            try:
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(parents=True)
            except OSError as e:
                raise FetchError(f"cannot write {scratch}: {e.strerror or e}") from None
            try:
                async with asyncio.TaskGroup() as group:
                    for f in source.files:
                        group.create_task(arrivals.one(f, gate))
            except BaseExceptionGroup as group_error:  # the first failure is the one to report
                raise _first(group_error) from None
            shutil.rmtree(scratch / ".raw", ignore_errors=True)
            (scratch / "PROVENANCE.md").write_text(_provenance(source), encoding="utf-8")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report from a group: a FetchError over a cancellation."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        e = pending.pop(0)
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        else:
            leaves.append(e)
    return next((e for e in leaves if isinstance(e, FetchError)), leaves[0])


def _swap(root: Path, source: Source) -> None:
    """The checked scratch folder in place of the source's folder; the previous one back if that fails."""
    scratch, target = _scratch(root, source), root / source.folder
    old = root / f".{source.folder}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    try:
        scratch.rename(target)
    except OSError:
        if old.exists():  # put the previous folder back rather than lose it
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fetch(
    root: Path,
    remote: Remote = Remote(),
    *,
    force: bool = False,
    say: Callable[[str], None] = lambda _: None,
    sources: Sequence[Source] = SOURCES,
) -> None:
    """Every source into `root`/<folder>, skipping a folder that already matches its pins (unless `force`).
    Everything is downloaded and checked before any folder is touched: a failure changes nothing."""
    if urllib.parse.urlsplit(remote.base).scheme not in ("http", "https"):
        raise FetchError(f"the mirror must be an http(s) URL, not {remote.base!r}")
    todo = []
    for source in sources:
        folder = root / source.folder
        if not force and (folder / "PROVENANCE.md").is_file() and not verify(folder, source):
            say(f"{source.folder}: already in {folder}, every file matches its pin")
            continue
        say(f"{source.folder}: {len(source.files)} files from {source.repo}@{source.commit[:12]}")
        todo.append(source)
    try:
        if todo:
            asyncio.run(_arrive(root, todo, remote))
        updated: list[str] = []
        for source in todo:
            try:
                _swap(root, source)
            except OSError as e:
                raise FetchError(f"cannot write {root / source.folder}: {e.strerror or e}", tuple(updated)) from None
            updated.append(source.folder)
            folder = root / source.folder
            say(f"{source.folder}: {_size(folder) / 1e6:.1f} MB in {folder}, every file matches its pin")
    finally:
        for source in todo:
            shutil.rmtree(_scratch(root, source), ignore_errors=True)
