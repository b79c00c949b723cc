"""`triage data fetch` against a mirror on loopback: pinned sums, the unseen families dropped, a bad or slow
mirror refused with nothing changed; and the pins are those of the data the shipped prior was trained on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from classifiers.lab import fetch as fetching
from classifiers.lab.data import data_folder, load_benchmark
from classifiers.lab.families import load_families
from classifiers.lab.fetch import SOURCES, FetchError, Pinned, Remote, Source, fetch, row_digest, verify
from router.cli import main
from tests.servers import ThreadedServer, serving


class Mirror:
    """Serves `files` at their URL paths; `slow` paths answer after `delay` seconds. Counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.slow: set[str] = set()
        self.delay = 0.0
        self.requests = 0

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        path = request.url.path.lstrip("/")
        if path in self.slow:
            await asyncio.sleep(self.delay)
        if path not in self.files:
            return Response("not found", status_code=404)
        return Response(self.files[path])


@pytest.fixture
def mirror() -> Iterator[tuple[Mirror, ThreadedServer]]:
    m = Mirror({})
    with serving(Starlette(routes=[Route("/{path:path}", m.handle)])) as server:
        yield m, server


def _lines(rows: Sequence[Mapping[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


QUERIES = [
    {"task_name": "gsm8k", "query": "What is 2 + 2?"},
    {"task_name": "held_out_family", "query": "A question no training may see"},
    {"task_name": "mmlu", "query": "Which planet is largest?"},
]
SCORES = [
    {"question": "What is 2 + 2?", "scores": {"a": 1.0}},
    {"question": "A question no training may see", "scores": {"a": 0.0}},
    {"question": "Which planet is largest?", "scores": {"a": 1}},
]
PLAIN = b"prompt,small,large\nhello,True,False\n"


def _sources() -> tuple[Source, Source]:
    kept_q = [q for q in QUERIES if q["task_name"] != "held_out_family"]
    kept_s = [s for s in SCORES if s["question"] != "A question no training may see"]
    plain = Source(
        "plain",
        "owner/plain",
        "c" * 40,
        "MIT",
        (Pinned("sub/file.csv", "evals/sub/file.csv", hashlib.sha256(PLAIN).hexdigest()),),
        filtered=False,
    )
    filtered = Source(
        "filtered",
        "owner/filtered",
        "d" * 40,
        "MIT",
        (
            Pinned("query_train.jsonl", "q/train.jsonl", row_digest(kept_q)),
            Pinned("query_test.jsonl", "q/test.jsonl", row_digest([])),
            Pinned("dcrouter_train.json", "d/train.json", row_digest(kept_s)),
            Pinned("dcrouter_test.json", "d/test.json", row_digest([])),
        ),
        filtered=True,
    )
    return plain, filtered


def _serve(m: Mirror, plain: bytes = PLAIN) -> None:
    m.files.update(
        {
            f"owner/plain/{'c' * 40}/evals/sub/file.csv": plain,
            f"owner/filtered/{'d' * 40}/q/train.jsonl": _lines(QUERIES),
            f"owner/filtered/{'d' * 40}/q/test.jsonl": b"",
            # written the way another serialiser would: indented, keys reordered, 1 for 1.0
            f"owner/filtered/{'d' * 40}/d/train.json": json.dumps(SCORES, indent=2, sort_keys=True).encode(),
            f"owner/filtered/{'d' * 40}/d/test.json": b"[]",
        }
    )


def test_fetch_keeps_the_pinned_files_and_drops_the_unseen_families(
    tmp_path: Path, mirror: tuple[Mirror, ThreadedServer]
) -> None:
    m, server = mirror
    _serve(m)
    sources = _sources()
    said: list[str] = []
    fetch(tmp_path, Remote(server.url, 5), say=said.append, sources=sources)
    assert (tmp_path / "plain" / "sub" / "file.csv").read_bytes() == PLAIN
    queries = (tmp_path / "filtered" / "query_train.jsonl").read_text().splitlines()
    assert [json.loads(q)["task_name"] for q in queries] == ["gsm8k", "mmlu"]
    scores = json.loads((tmp_path / "filtered" / "dcrouter_train.json").read_text())
    assert "A question no training may see" not in {s["question"] for s in scores} and len(scores) == 2
    assert all(verify(tmp_path / s.folder, s) == [] for s in sources)
    one, two = {"q": "x", "n": 1}, {"q": "y", "n": 0.5}
    assert row_digest([one, two]) == row_digest([{"n": 1.0, "q": "x"}, two]) != row_digest([two, one])
    assert "c" * 40 in (tmp_path / "plain" / "PROVENANCE.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filtered", "plain"]  # no scratch folders left
    # A second fetch finds everything matching its pin and downloads nothing.
    before = m.requests
    fetch(tmp_path, Remote(server.url, 5), say=said.append, sources=sources)
    assert m.requests == before and said[-1].endswith("every file matches its pin")
    # A file changed by hand no longer matches: the next fetch replaces it.
    (tmp_path / "plain" / "sub" / "file.csv").write_bytes(PLAIN + b"x,True,True\n")
    assert verify(tmp_path / "plain", sources[0]) != []
    fetch(tmp_path, Remote(server.url, 5), sources=sources)
    assert (tmp_path / "plain" / "sub" / "file.csv").read_bytes() == PLAIN


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fault", ["one byte changed", "missing file", "not JSON", "too slow", "too large"])
def test_a_bad_mirror_changes_nothing(
    tmp_path: Path, mirror: tuple[Mirror, ThreadedServer], fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, server = mirror
    _serve(m)
    sources = _sources()
    fetch(tmp_path, Remote(server.url, 5), sources=sources)
    (tmp_path / "filtered" / "query_test.jsonl").unlink()  # so that the filtered source is fetched again
    before = _snapshot(tmp_path)
    train = f"owner/filtered/{'d' * 40}/q/train.jsonl"
    expected = {
        "one byte changed": "the kept rows' digest",
        "missing file": "HTTP 404",
        "not JSON": "not JSON",
        "too slow": "timed out",
        "too large": "more than",
    }[fault]
    if fault == "one byte changed":
        m.files[train] = m.files[train].replace(b"2 + 2", b"2 + 3")
    elif fault == "missing file":
        del m.files[train]
    elif fault == "not JSON":
        m.files[train] = b'{"task_name": "gsm8k", \n'
    elif fault == "too slow":
        m.slow, m.delay = {train}, 3.0
    else:
        monkeypatch.setattr(fetching, "MAX_FILE_BYTES", 16)
    # A short timeout only where the fault is slowness: under a saturated machine (CI), 0.5 s for every file
    # once timed out a 404 before it came.
    timeout = 1.0 if fault == "too slow" else 5.0
    with pytest.raises(FetchError, match=expected):
        fetch(tmp_path, Remote(server.url, timeout), force=True, sources=sources)
    assert _snapshot(tmp_path) == before  # the plain source, fetched first and fine, was not swapped in either


def test_the_command_names_what_failed_and_exits_1(
    tmp_path: Path, mirror: tuple[Mirror, ThreadedServer], capsys: pytest.CaptureFixture[str]
) -> None:
    _, server = mirror
    assert main(["data", "fetch", "--to", str(tmp_path / "d"), "--mirror", server.url, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "lm-sys/RouteLLM/0b64fdafe049e596a3f5657c219329f24af24198/" in err
    assert "nothing was changed" in err and not (tmp_path / "d" / "routellm").exists()
    assert "--mirror URL" in err and "TRIAGE_DATA" in err  # the two ways round a source out of reach
    assert main(["data", "fetch", "--to", str(tmp_path / "d"), "--mirror", "file:///etc"]) == 1
    assert "http(s) URL" in capsys.readouterr().err


def _upstream_copy(data: Path) -> dict[str, bytes]:
    """What the two repositories serve at their pinned commits, rebuilt from the copies here: RouteLLM's files
    as they are, LLMRouter's with a row of a family that must stay unseen put back among them, serialised anew."""
    files = {}
    for source in SOURCES:
        for f in source.files:
            body = (data / source.folder / f.path).read_bytes()
            if source.filtered:
                lines = f.path.endswith(".jsonl")
                rows = [json.loads(x) for x in body.splitlines() if x.strip()] if lines else json.loads(body)
                if f.path.startswith("query"):
                    rows.append({"task_name": "unseen", "query": "held out", "ground_truth": "", "metric": "em"})
                else:
                    rows.append({"question": "held out", "scores": dict.fromkeys(rows[0]["scores"], 1)})
                rows.insert(random.Random(f.path).randrange(len(rows)), rows.pop())  # among the others
                body = _lines(rows) if lines else json.dumps(rows, indent=1).encode()
            files[f"{source.repo}/{source.commit}/{f.upstream}"] = body
    return files


def test_a_fetch_of_the_pinned_sources_gives_the_data_here(
    tmp_path: Path, routing_data: Path, mirror: tuple[Mirror, ThreadedServer], capsys: pytest.CaptureFixture[str]
) -> None:
    for source in SOURCES:  # the pins are the sums of the copies the shipped prior was trained on
        assert verify(routing_data / source.folder, source) == []
    m, server = mirror
    m.files.update(_upstream_copy(routing_data))
    assert main(["data", "fetch", "--to", str(tmp_path), "--mirror", server.url]) == 0
    assert "every file matches its pin" in capsys.readouterr().out
    fetched, here = load_families(tmp_path), load_families(routing_data)
    assert list(fetched) == list(here)
    for name in here:
        assert sorted(fetched[name].items, key=repr) == sorted(here[name].items, key=repr), name
    assert load_benchmark("mt_bench", tmp_path) == load_benchmark("mt_bench", routing_data)


def test_triage_data_defaults_to_the_fetch_folder_where_shared_data_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIAGE_DATA", raising=False)
    monkeypatch.setenv("TRIAGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert data_folder() == tmp_path / "cache" / "data"
    with pytest.raises(FileNotFoundError, match="run `triage data fetch`"):
        load_benchmark("gsm8k")
    (tmp_path / "shared" / "data" / "routellm").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "routellm" / "PROVENANCE.md").write_text("x")
    assert data_folder() == Path("../shared/data")
    monkeypatch.setenv("TRIAGE_DATA", str(tmp_path / "elsewhere"))
    assert data_folder() == tmp_path / "elsewhere"


def test_a_folder_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, mirror: tuple[Mirror, ThreadedServer]
) -> None:
    m, server = mirror
    _serve(m)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FetchError, match="cannot write") as refused:
        fetch(tmp_path / "file", Remote(server.url, 5), sources=_sources())
    assert refused.value.updated == ()
    # The second source's scratch folder is taken by a file: found before any folder is swapped in.
    root = tmp_path / "root"
    root.mkdir()
    (root / f".filtered.partial-{os.getpid()}").write_text("in the way")
    with pytest.raises(FetchError, match="cannot write") as early:
        fetch(root, Remote(server.url, 5), sources=_sources())
    assert early.value.updated == () and not (root / "plain").exists()
    (root / f".filtered.partial-{os.getpid()}").unlink()
    # The second source's old folder cannot be moved aside: the first was swapped in, and the error says so.
    (root / "filtered").mkdir()
    (root / f".filtered.old-{os.getpid()}" / "x").mkdir(parents=True)
    with pytest.raises(FetchError, match="cannot write") as partly:
        fetch(root, Remote(server.url, 5), sources=_sources())
    assert partly.value.updated == ("plain",) and (root / "plain" / "sub" / "file.csv").exists()
    assert sorted(p.name for p in root.iterdir()) == [f".filtered.old-{os.getpid()}", "filtered", "plain"]


def _plain(*files: tuple[str, bytes]) -> Source:
    pins = tuple(Pinned(name, f"evals/{name}", hashlib.sha256(data).hexdigest()) for name, data in files)
    return Source("plain", "owner/plain", "c" * 40, "MIT", pins, filtered=False)


def _at(name: str) -> str:
    return f"/owner/plain/{'c' * 40}/evals/{name}"


def test_the_timeout_bounds_a_whole_file_not_one_read(tmp_path: Path) -> None:
    async def trickle(_: Request) -> Response:
        async def slowly() -> AsyncIterator[bytes]:
            for i in range(len(PLAIN)):  # every read is quick; the file takes about 7 s
                yield PLAIN[i : i + 1]
                await asyncio.sleep(0.2)

        return StreamingResponse(slowly())

    with (
        serving(Starlette(routes=[Route(_at("a.csv"), trickle)])) as server,
        pytest.raises(FetchError, match=r"a\.csv: timed out \(the whole file within 1 s\)"),
    ):
        fetch(tmp_path, Remote(server.url, 1), sources=[_plain(("a.csv", PLAIN))])
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_another_origin_is_refused(tmp_path: Path) -> None:
    async def serve_file(_: Request) -> Response:
        return Response(PLAIN)

    with serving(Starlette(routes=[Route(_at("a.csv"), serve_file)])) as elsewhere:

        async def away(_: Request) -> Response:
            return RedirectResponse(elsewhere.url + _at("a.csv"), status_code=302)

        async def here(_: Request) -> Response:
            return RedirectResponse(_at("a.csv"), status_code=301)

        app = Starlette(routes=[Route(_at("a.csv"), serve_file), Route(_at("b.csv"), here), Route(_at("c.csv"), away)])
        with serving(app) as mirror:
            # Within the mirror's origin a redirect is followed.
            fetch(tmp_path, Remote(mirror.url, 5), sources=[_plain(("b.csv", PLAIN))])
            assert (tmp_path / "plain" / "b.csv").read_bytes() == PLAIN
            with pytest.raises(FetchError, match=r"c\.csv: redirected to another origin \(http://127\.0\.0\.1:"):
                fetch(tmp_path, Remote(mirror.url, 5), force=True, sources=[_plain(("c.csv", PLAIN))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["PROVENANCE.md", "b.csv"]  # untouched


def test_each_file_is_checked_and_on_disk_as_it_arrives(tmp_path: Path) -> None:
    """A wrong file fails the fetch while another is still downloading; and a file that arrived is on disk,
    not held in memory until the last one comes."""
    release = threading.Event()
    seen_on_disk: list[bool] = []
    scratch = tmp_path / f".plain.partial-{os.getpid()}"

    async def good(_: Request) -> Response:
        return Response(PLAIN)

    async def last(_: Request) -> Response:
        deadline = time.monotonic() + 10
        while not (scratch / "good.csv").is_file() or (scratch / "good.csv").read_bytes() != PLAIN:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        seen_on_disk.append((scratch / "good.csv").is_file())
        return Response(PLAIN)

    async def wrong(_: Request) -> Response:
        return Response(PLAIN + b"tampered\n")

    async def hung(_: Request) -> Response:
        await asyncio.to_thread(release.wait, 30)
        return Response(PLAIN)

    routes = [Route(_at(n), h) for n, h in (("good.csv", good), ("last.csv", last), ("w.csv", wrong), ("h.csv", hung))]
    with serving(Starlette(routes=routes)) as mirror:
        fetch(tmp_path, Remote(mirror.url, 20), sources=[_plain(("good.csv", PLAIN), ("last.csv", PLAIN))])
        assert seen_on_disk == [True]
        try:
            with pytest.raises(FetchError, match=r"w\.csv: sha256 [0-9a-f]{64}, pinned"):
                fetch(
                    tmp_path, Remote(mirror.url, 20), force=True, sources=[_plain(("w.csv", PLAIN), ("h.csv", PLAIN))]
                )
        finally:
            release.set()
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["PROVENANCE.md", "good.csv", "last.csv"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_the_timeout_must_be_a_positive_number(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["data", "fetch", "--to", str(tmp_path), "--timeout", value])
    assert refused.value.code == 2 and "--timeout" in capsys.readouterr().err
