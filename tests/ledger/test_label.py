"""`triage label` on its own: the verdict arithmetic, a judge that answers nonsense or fails, reference scorers,
and pairs stores that are missing or not pairs stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router.adapters.pairs import SqlitePairs, read_pairs
from router.analytics.label import pairwise_outcomes, reference_scorer
from router.cli import main
from router.core.shadow import ShadowPair
from tests.servers import serving


def pair(i: int, small: str = "4", large: str = "four") -> ShadowPair:
    return ShadowPair(float(i), f"req-{i}", "free", f"What is 2+{i}?", "small", 0.1, "s", "l", small, large)


async def store(path: Path, pairs: list[ShadowPair]) -> None:
    sink = SqlitePairs(path, interval=0.001)
    await sink.start()
    for p in pairs:
        sink.emit(p)
    await sink.close()


def test_the_two_verdicts_make_the_outcomes() -> None:
    assert pairwise_outcomes("A", "B") == (1.0, 0.0)  # small shown first won, then small shown second won
    assert pairwise_outcomes("B", "A") == (0.0, 1.0)
    assert pairwise_outcomes("tie", "A.") == (0.25, 0.75)
    assert pairwise_outcomes("A", "A") == (0.5, 0.5)  # position bias cancels
    assert pairwise_outcomes("Answer A is better", "B") is None  # not a verdict: never guessed
    assert pairwise_outcomes("", "B") is None


def judge_app(say: str, calls: list[str]) -> Starlette:
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        calls.append(body["model"])
        if say == "500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        return JSONResponse(
            {"choices": [{"message": {"content": say}}], "usage": {"prompt_tokens": 100, "completion_tokens": 1}}
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def test_a_judge_that_answers_nonsense_or_fails_labels_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.sqlite"
    await store(pairs, [pair(i) for i in range(3)])
    out = tmp_path / "o.jsonl"
    for say in ("I think the first one", "500"):
        calls: list[str] = []
        with serving(judge_app(say, calls)) as judge:
            argv = ["label", "--pairs", str(pairs), "--out", str(out), "--judge-url", f"{judge.url}/v1"]
            assert await _run([*argv, "--judge-model", "j"]) == 0
        said = capsys.readouterr()
        assert "labelled 0 pairs" in said.out and "3 left unlabelled" in said.out
        assert (len(calls) == 6 and not out.exists()) or out.read_text() == ""
    calls = []
    with serving(judge_app("TIE", calls)) as judge:
        argv = ["label", "--pairs", str(pairs), "--out", str(out), "--judge-url", f"{judge.url}/v1"]
        assert await _run([*argv, "--judge-model", "j", "--limit", "2"]) == 0
        assert await _run([*argv, "--judge-model", "j"]) == 0  # resumes: the third only
    assert len(calls) == 6
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # Pairs are judged concurrently and written as their verdicts come: in any order.
    assert sorted((r["request_id"], r["small"], r["large"], r["routed"]) for r in rows) == [
        (f"req-{i}", 0.5, 0.5, "small") for i in range(3)
    ]


async def _run(argv: list[str]) -> int:
    import asyncio

    return await asyncio.to_thread(main, argv)  # label runs its own event loop


async def test_reference_scorers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.sqlite"
    await store(pairs, [pair(1, small="The answer is 3.", large="It is 4"), pair(2, small="5", large="so: 5")])
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"prompt": "What is 2+1?", "reference": "3"}\n{"prompt": "What is 2+9?", "reference": "x"}\n')
    out = tmp_path / "o.jsonl"
    assert await _run(["label", "--pairs", str(pairs), "--out", str(out), "--references", str(refs)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["small"], r["large"], r["label"]) for r in rows] == [
        ("What is 2+1?", 1.0, 0.0, "reference")
    ]
    assert "1 left unlabelled" in capsys.readouterr().out  # no reference for 2+2
    assert reference_scorer(r"regex:\b{reference}\b")("q", "it is 42.", "42") == 1.0
    assert reference_scorer(r"regex:\b{reference}\b")("q", "it is 420", "42") == 0.0
    assert reference_scorer("json:loads") is not None  # any importable callable
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert await _run(["label", "--pairs", str(pairs), "--out", str(out), "--references", str(bad)]) == 2
    assert f"{bad}:1: each line needs `prompt` and `reference`" in capsys.readouterr().err


async def test_missing_or_foreign_pairs_stores_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.jsonl"
    assert await _run(["label", "--pairs", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    assert "no shadow pairs file" in capsys.readouterr().err
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    assert await _run(["label", "--pairs", str(foreign), "--out", str(out)]) == 2
    assert "not a readable shadow pairs file" in capsys.readouterr().err
    text = tmp_path / "text.sqlite"
    text.write_text("hello")
    assert await _run(["label", "--pairs", str(text), "--out", str(out)]) == 2
    assert "pairs" in capsys.readouterr().err
    locked = tmp_path / "locked.sqlite"
    await store(locked, [pair(1)])
    holder = sqlite3.connect(locked)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds it: reading must wait or fail clearly
    try:
        code = await _run(
            [
                "label",
                "--pairs",
                str(locked),
                "--out",
                str(out),
                "--judge-url",
                "http://127.0.0.1:9/v1",
                "--judge-model",
                "j",
            ]
        )
    finally:
        holder.rollback()
        holder.close()
    assert code in (0, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert list(read_pairs(locked)) == [pair(1)]


def odd_judge(mode: str) -> Starlette:
    """A judge answering the verdict TIE, wrapped in what `mode` says."""

    async def chat(_: Request) -> Response:
        good = {"choices": [{"message": {"content": "TIE"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
        if mode == "null":
            return Response(b"null", media_type="application/json")
        if mode == "[]":
            return Response(b"[]", media_type="application/json")
        if mode == "usage []":
            return JSONResponse({**good, "usage": []})
        if mode == "usage 1e999":  # Python's json reads it as infinity
            return Response(json.dumps(good).replace("9,", "1e999,").encode(), media_type="application/json")
        if mode == "usage 10^30":
            return JSONResponse({**good, "usage": {"prompt_tokens": 10**30, "completion_tokens": 1}})
        if mode == "usage 5000 digits":  # past the int parser's limit
            return Response(json.dumps(good).replace("9,", "9" * 5000 + ",").encode(), media_type="application/json")
        if mode == "2 MiB":
            return JSONResponse({**good, "choices": [{"message": {"content": "TIE" + " " * (2 << 20)}}]})
        if mode == "trickle":  # a byte every 0.1 s: each read is quick, the whole answer takes 20 s
            body = json.dumps(good).encode().ljust(200)

            async def slowly() -> AsyncIterator[bytes]:
                for i in range(len(body)):
                    yield body[i : i + 1]
                    await asyncio.sleep(0.1)

            return StreamingResponse(slowly(), media_type="application/json")
        return JSONResponse(good)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.mark.parametrize(
    "mode", ["null", "[]", "usage []", "usage 1e999", "usage 10^30", "usage 5000 digits", "2 MiB", "trickle"]
)
async def test_a_judge_s_odd_answer_is_an_unlabelled_pair_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    pairs = tmp_path / "pairs.sqlite"
    await store(pairs, [pair(i) for i in range(2)])
    out = tmp_path / "o.jsonl"
    with serving(odd_judge(mode)) as judge:
        argv = ["label", "--pairs", str(pairs), "--out", str(out), "--judge-url", f"{judge.url}/v1"]
        assert await _run([*argv, "--judge-model", "j", "--judge-timeout", "1"]) == 0
    said = capsys.readouterr()
    assert "labelled 0 pairs" in said.out and "2 left unlabelled" in said.out, said
    assert "the judge failed on req-" in said.err and "Traceback" not in said.err
    assert not out.exists() or out.read_text() == ""
    assert "judge:" not in said.out  # nothing it answered was counted as spend
    with serving(odd_judge("fine")) as judge:  # the same pairs, judged by a judge that answers well
        argv = ["label", "--pairs", str(pairs), "--out", str(out), "--judge-url", f"{judge.url}/v1"]
        assert await _run([*argv, "--judge-model", "j"]) == 0
    said = capsys.readouterr()
    assert "labelled 2 pairs" in said.out and "judge: 4 calls, 36 prompt + 4 completion tokens" in said.out


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--judge-timeout", v) for v in ("0", "-1", "nan", "inf", "soon")]
    + [(flag, v) for flag in ("--limit", "--concurrency") for v in ("0", "-1", "1.5")],
)
async def test_timeouts_and_counts_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    argv = ["label", "--pairs", str(tmp_path / "p.sqlite"), "--judge-url", "http://127.0.0.1:9/v1"]
    with pytest.raises(SystemExit) as refused:
        await _run([*argv, "--judge-model", "j", flag, value])
    assert refused.value.code == 2 and flag in capsys.readouterr().err
