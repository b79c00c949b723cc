"""Every reason a record can carry is a member of one enum, and the docs list each one."""

from __future__ import annotations

from pathlib import Path

from router import errors
from router.core.cascade import Draft, EscalationRule, judge
from router.core.types import Reason

ROOT = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
# Raised before the service (no record), or recorded under another reason (429 -> rate_limited).
NOT_RECORDED = {"invalid_api_key", "request_too_large", "rate_limit_exceeded"}


def _subclasses(cls: type) -> list[type]:
    subs: list[type] = cls.__subclasses__()
    return [cls, *(s for sub in subs for s in _subclasses(sub))]


def test_every_error_code_the_service_records_is_a_member() -> None:
    for cls in _subclasses(errors.TriageError):
        code = cls.code  # type: ignore[attr-defined]
        if code in NOT_RECORDED:
            continue
        assert Reason.of_error(code).value == code, f"{cls.__name__}.code {code!r} is not a Reason"


def test_every_escalation_is_a_draft_member() -> None:
    rule = EscalationRule(min_confidence=0.5, escalate_on_length=True, answer_threshold=0.5)
    drafts = [
        None,
        Draft("", "stop", []),
        Draft("cut", "length", []),
        Draft("I'm sorry, I can't help", "stop", []),
        Draft("unsure", "stop", [-5.0]),
        Draft("risky", "stop", []),
    ]
    whys = {judge(d, rule, lambda: 0.9) for d in drafts} | {"draft_failed", "draft_status_400", "draft_status_413"}
    assert None not in whys
    for why in whys:
        assert Reason.of_draft(str(why)).value.startswith("draft:")
    assert Reason.of_draft("draft_status_400") is Reason.DRAFT_REJECTED


def test_the_docs_document_every_reason() -> None:
    missing = [r.value for r in Reason if f"`{r.value}`" not in DOCS]
    assert not missing
