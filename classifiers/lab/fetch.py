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


def _routellm_upstream(path: str) -> str:
    return f"routellm/evals/{path}"


_ROUTELLM_SUMS = (
    ("gsm8k/contaminated_prompts.jsonl", "1f5a7be02148ee0f7f306d233ba76a6573c826cee9499a34f8ef938a1a84c234"),
    ("gsm8k/gsm8k_responses.csv", "1f38ed03db354a020f71e92022383dc3cf37bbf2694dea4daaeea7b6c43fe57b"),
    ("mmlu/contaminated_prompts.jsonl", "9606c968198eabf5efa46ccba31286392c8e35525d83c86661618ffc5ec6d40e"),
    ("mmlu/responses/mmlu_abstract_algebra.csv", "67e564eea42e71fbfcaf616972df952c316e5538376da1c16d691177458b96b9"),
    ("mmlu/responses/mmlu_anatomy.csv", "53ebea8257805eeecc25713728264b8235cffad7b720962a3eafc92fd27ef537"),
    ("mmlu/responses/mmlu_astronomy.csv", "49915ece9dfe8aadbd351f221ada2ea86b6f832ce49fa64d1622a0f066c19794"),
    ("mmlu/responses/mmlu_business_ethics.csv", "13a45bed754ffe8f0e7f0348e69085c648a1ae0e91aa76cd5e6906fa45f7ec8e"),
    ("mmlu/responses/mmlu_clinical_knowledge.csv", "5ea37709bfbad4df7a3fcbd8973413f7645a2adfef9772490f09d3f293ffe882"),
    ("mmlu/responses/mmlu_college_biology.csv", "c38620db5b9f6f1b0fde7bc8d8299b8e2305c4dacbb1567c904cd51618d627d5"),
    ("mmlu/responses/mmlu_college_chemistry.csv", "78ca6ba22ff25c8fdb93e1c6e84384e72522106c73ed5ee9fed620928ce395ce"),
    (
        "mmlu/responses/mmlu_college_computer_science.csv",
        "8a7b2a87a36b428c9d1a8f12ce3b01cf7920f0a7146d6f8a111da6749c332da3",
    ),
    ("mmlu/responses/mmlu_college_mathematics.csv", "3f22f42779c48509c66e21d7d1fc3054eb0256c1b5b772bb6d9a3af1b253238b"),
    ("mmlu/responses/mmlu_college_medicine.csv", "63d71d29e630fc6538e1705a51f4267bdbbdea0fa7ee85056ad7d6f8f10d3987"),
    ("mmlu/responses/mmlu_college_physics.csv", "8162a0660d4ef7b963088e0a176d4b8630096127a0d0b5ed003f649cbad34455"),
    ("mmlu/responses/mmlu_computer_security.csv", "26446faf7460f03aa2d82a05c170faedb5cbf6d7bdda133b1146229107097d1c"),
    ("mmlu/responses/mmlu_conceptual_physics.csv", "ea40473704b64cb60d564ffe91962848ec6fc3106b40089d08cebc98d5c7226d"),
    ("mmlu/responses/mmlu_econometrics.csv", "927b4d877cec8697f3b8378bb7e7c7a279babaea2edacf350ea50908701907b9"),
    (
        "mmlu/responses/mmlu_electrical_engineering.csv",
        "de2fb7c2e9addb4808f5b3f7c79efbfdfb86216235bb7dc28ab70bc53664f11e",
    ),
    (
        "mmlu/responses/mmlu_elementary_mathematics.csv",
        "88697ff0d238b5852c7a959379dc8b0b45c3554ed4b2ee7cbb7ffc34e06c7cf5",
    ),
    ("mmlu/responses/mmlu_formal_logic.csv", "094a462626468569ad595c03e66e73a299188cfa175248b499dba94e005506e6"),
    ("mmlu/responses/mmlu_global_facts.csv", "6f75ddf7d6eb94ac0471529a85ff7f8b738c9f4055185b3114eed26393222d06"),
    ("mmlu/responses/mmlu_high_school_biology.csv", "444982fc2c750ab8cbc6942a0c0267040aa5023c1d2364247d20e2a28b4e325d"),
    (
        "mmlu/responses/mmlu_high_school_chemistry.csv",
        "ae5e62479365dcd056354c568f60da65b1df9f1de57dda3953a8e9933a6f12e4",
    ),
    (
        "mmlu/responses/mmlu_high_school_computer_science.csv",
        "d156d9448a6e899f7f976a0afac148a928bf709a2baa573f0c407854a25bdb11",
    ),
    (
        "mmlu/responses/mmlu_high_school_european_history.csv",
        "c64afd6c5e30ef0cd5c10beab961ac05e7ba55d6b48cd93bf6ad0a45f90515bf",
    ),
    (
        "mmlu/responses/mmlu_high_school_geography.csv",
        "21b12044be4a6b9813880ad46372006dc0846e7f85fa46883bb73dbd90fba30a",
    ),
    (
        "mmlu/responses/mmlu_high_school_government_and_politics.csv",
        "2791689acc61775a5857f4f3a5fd248d30552553c3a96f6ee63dc28285437259",
    ),
    (
        "mmlu/responses/mmlu_high_school_macroeconomics.csv",
        "73b931a2a06ba74a5c9f1e005d45a25004e36be5d075d98f8ebcf89b3fda367b",
    ),
    (
        "mmlu/responses/mmlu_high_school_mathematics.csv",
        "151b2a736981b7b20f3bad99de6a573e4692d68cf87020e943b601b70bb37390",
    ),
    (
        "mmlu/responses/mmlu_high_school_microeconomics.csv",
        "f7ea151efb4c9d96374db3358ac7e97e4d8349e26715f61dac98bc9d854ca046",
    ),
    ("mmlu/responses/mmlu_high_school_physics.csv", "1e2103fc8f7f1cfac7c00952b26db2418acab092486af78a9c51c551ae2ff9be"),
    (
        "mmlu/responses/mmlu_high_school_psychology.csv",
        "d11604f2c7a2425258d5b9a285ef71737c011cc3a91456890f088a0ee4c55212",
    ),
    (
        "mmlu/responses/mmlu_high_school_statistics.csv",
        "de6642bcd93d7a80e7bbd73d987a44d67b6e537b47749ddc518122fd582703bb",
    ),
    (
        "mmlu/responses/mmlu_high_school_us_history.csv",
        "a71186d143363e203b2f216d78c9d21f10cca51de455ef176c9c01b77f546592",
    ),
    (
        "mmlu/responses/mmlu_high_school_world_history.csv",
        "e9c52305977dc37b3e48eee727ad933b2d24d96ca3a06aec865a8900b1e87d2c",
    ),
    ("mmlu/responses/mmlu_human_aging.csv", "0d6c4109b4f61f138781ce50bbc60ff2e90dd451694d3926a088be5a5bd88aa8"),
    ("mmlu/responses/mmlu_human_sexuality.csv", "20916037e3012731883f926738daf47ed994f74ba25518fdb7f0df72a81143fd"),
    ("mmlu/responses/mmlu_international_law.csv", "e389b886e3e1570bfdf798f6f56dc3c675350200c5baf0f41a0766294ff312eb"),
    ("mmlu/responses/mmlu_jurisprudence.csv", "7e94c3849231be7b2654db11e44ee51531f8474e300fe83b1e05438df3038f0b"),
    ("mmlu/responses/mmlu_logical_fallacies.csv", "fa2d94cd2e901621aaebd0a7e64560b5dbbe4249086795398533eed2561c0c1e"),
    ("mmlu/responses/mmlu_machine_learning.csv", "9301e928481be6e20b3541e1ac112b25a4a71338b21592978c0d219cb6240020"),
    ("mmlu/responses/mmlu_management.csv", "a00b12ab0265918f9335a85ce02303ddaea0491a7b099f88a05986eeac4aa4fb"),
    ("mmlu/responses/mmlu_marketing.csv", "3ee0b6560ebe0eb4f14ce63227d6f6ec8cb8b6e57e345eae9460be742672f36c"),
    ("mmlu/responses/mmlu_medical_genetics.csv", "7c830f87dcbc0029137b3400cf361931831cb57dda55717a64e72ad74663d5df"),
    ("mmlu/responses/mmlu_miscellaneous.csv", "c2e1a5b0394a8429f55b6340e1865166ac17ec6b3571523005e413b3b2843b9f"),
    ("mmlu/responses/mmlu_moral_disputes.csv", "8b2b973b1987b724f39fd10970604d7f1150747a0db9ce766c193bd978c9d0c4"),
    ("mmlu/responses/mmlu_moral_scenarios.csv", "78ded6fdca1cd0d5c4ed16a5ed4aebf2e98401b9c00b20e565e6cce5bf1153c7"),
    ("mmlu/responses/mmlu_nutrition.csv", "ba197fbf4b6c5034414d66ea7747211056cf5f709f83d919d2d856245720cc51"),
    ("mmlu/responses/mmlu_philosophy.csv", "2f30ad01ab529ddea00dff4ff87e950fef838a78754c94f6884120628a7d0591"),
    ("mmlu/responses/mmlu_prehistory.csv", "afc816d4b78814627bae9b8c3730a9bb72bd958ff6259fd36c981777cfe83753"),
    (
        "mmlu/responses/mmlu_professional_accounting.csv",
        "fe5ee976a625832ecf624086103619523d063a3a728c60681b6a53c55b638a37",
    ),
    ("mmlu/responses/mmlu_professional_law.csv", "60a4308df4f481ff8840590b29061835207b50a9f06a9fc68baf12b114f7e2e0"),
    (
        "mmlu/responses/mmlu_professional_medicine.csv",
        "6fda30b523e4e2ce8b1f18e871a0722190a4ac81ec377a75fbba4a63e0b510f7",
    ),
    (
        "mmlu/responses/mmlu_professional_psychology.csv",
        "bfb3a7fb653e2b195d3fa258894af64d3f1c3dbd4059c1e0feb728131d20f9b3",
    ),
    ("mmlu/responses/mmlu_public_relations.csv", "2196279ea2535fbda62509c3156209b764459a3d515a9ba84b69cf16bb4c27d0"),
    ("mmlu/responses/mmlu_security_studies.csv", "1354bb17649f95b7dd8ef3179e22329abe6bef84e639d63370ae9e80b2509905"),
    ("mmlu/responses/mmlu_sociology.csv", "903ba6259b13f2877607abef22b7b19cb575104268d4ced615e3129d3caafb47"),
    ("mmlu/responses/mmlu_us_foreign_policy.csv", "f1c1d266753a3f161e2018c16c6948fb78c7f5e506a10b4fc0441049962a6c69"),
    ("mmlu/responses/mmlu_virology.csv", "d525f1ba88982befd42140e73822fe940e73db82bbdcdd569d95f26c3dd41e68"),
    ("mmlu/responses/mmlu_world_religions.csv", "49dc00d44e069ecaac6a7f7e2188f4a8bce5df56ee91bb15f55519d07f64af8e"),
    ("mt_bench/contaminated_prompts.jsonl", "a77356ecd7cab6ba9bfb6d7b91c512f83aee4f82309934387a6cdfb915882109"),
    ("mt_bench/judgements.jsonl", "ffd1d44e7af835c810d35ebd420b88a47acd8aac850f46b149b9889964ae4478"),
    ("mt_bench/question.jsonl", "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
)

_LLMROUTER = (
    ("query_train.jsonl", "data/example_data/query_data/default_query_train.jsonl"),
    ("query_test.jsonl", "data/example_data/query_data/default_query_test.jsonl"),
    ("dcrouter_train.json", "data/dcrouter_preprocessed/train.json"),
    ("dcrouter_test.json", "data/dcrouter_preprocessed/test.json"),
)
_LLMROUTER_SUMS = {
    "query_train.jsonl": "9955784f05351fa6da73b7e46e68fdce65e42525071e7e2d31e41f8e11c293e1",
    "query_test.jsonl": "825d41218e27730257f042752ee7aff8635b2f3d432a2590be442bf60293bbdf",
    "dcrouter_train.json": "bc6b662f956421dae5c43caf2591cd6f10515e6d1bf6b0b7a390d2843984188e",
    "dcrouter_test.json": "0db5251ef0e4b7626fe18d2e6f59d26d812f28e2a67e7dcae02622bcc3d6457f",
}

SOURCES = (
    Source(
        "routellm",
        "lm-sys/RouteLLM",
        "0b64fdafe049e596a3f5657c219329f24af24198",
        "Apache-2.0",
        tuple(Pinned(path, _routellm_upstream(path), digest) for path, digest in _ROUTELLM_SUMS),
        filtered=False,
    ),
    Source(
        "llmrouter",
        "ulab-uiuc/LLMRouter",
        "4e7a796942ce26e9d5f2b93191c7c2585c99c2e3",
        "MIT",
        tuple(Pinned(path, upstream, _LLMROUTER_SUMS[path]) for path, upstream in _LLMROUTER),
        filtered=True,
    ),
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
