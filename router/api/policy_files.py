"""The routing policy built from the files the config names (the classifier, the cascade's answer scorer), and
built again on SIGHUP: a deployment retrains on its own traffic and the gateway takes the new files without a
restart. A new file is verified while it loads (checksum, probe scores); a bad one is refused with a log line
and the policy in use keeps serving. Loading runs in a thread, so requests go on meanwhile; the swap is one
reference on the event loop, so a request sees the old policy or the new one, never half of each."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import classifiers
from router.adapters.scorers import LengthScorer
from router.core.cascade import EscalationRule
from router.core.conversation import ConversationPolicy
from router.core.ports import AnswerScorer, Scorer
from router.errors import ConfigError
from router.service.context import RoutingPolicy
from router.service.coordinator import RoutingService
from router.settings import Settings

__all__ = ["PolicyFiles", "PolicySource", "build_cascade", "build_policy", "build_scorer"]

log = logging.getLogger("triage.reload")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """What /ready reports about the policy in use."""

    classifier: str  # the classifier file's path, or the built-in scorer's name
    classifier_sha256: str  # of the file's bytes as loaded ("" for a built-in scorer)
    answer_scorer_sha256: str  # "" when the cascade has none
    loaded_at: float  # Unix seconds
    reloads: int = 0  # successful reloads since start
    failed_reloads: int = 0


def _load(path: str | Path, what: str) -> classifiers.Classifier:
    try:
        return classifiers.load(path)
    except classifiers.ClassifierFileError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def build_scorer(settings: Settings) -> tuple[Scorer, float]:
    """The configured scorer and the threshold to use with it (the config's, else the scorer's own)."""
    routing = settings.routing
    if routing.scorer == "length":
        return LengthScorer(routing.length_midpoint), 0.5 if routing.threshold is None else routing.threshold
    path = routing.classifier_path or classifiers.default_path()
    model = _load(path, "routing.classifier_path")
    if model.spec.answer:
        raise ConfigError(
            f"routing.classifier_path: {path} is an answer scorer (trained with --answers), not a prompt classifier"
        )
    suggested = model.meta.get("suggested_threshold", 0.5)
    return model, float(suggested) if routing.threshold is None else routing.threshold


class _ClassifierAnswerScorer:
    """A classifier trained with `--answers` as the cascade's AnswerScorer."""

    def __init__(self, model: classifiers.Classifier) -> None:
        self.model = model

    def score_answer(self, prompt: str, answer: str) -> float:
        return self.model.score(classifiers.answer_text(prompt, answer))


def build_cascade(settings: Settings) -> tuple[EscalationRule, AnswerScorer | None]:
    """The escalation rule, with the answer scorer and its threshold when one is configured."""
    cfg = settings.cascade
    if cfg.answer_scorer == "none":
        return EscalationRule(cfg.min_confidence, cfg.escalate_on_length), None
    path = classifiers.default_answer_path() if cfg.answer_scorer == "default" else cfg.answer_scorer
    model = _load(path, "cascade.answer_scorer")
    if not model.spec.answer:
        raise ConfigError(f"cascade.answer_scorer: {path} is a prompt classifier; train one with --answers")
    threshold = cfg.answer_threshold
    if threshold is None:
        threshold = float(model.meta.get("suggested_threshold", 0.5))
    return EscalationRule(cfg.min_confidence, cfg.escalate_on_length, threshold), _ClassifierAnswerScorer(model)


def build_policy(settings: Settings, scorer: Scorer | None = None) -> tuple[RoutingPolicy, PolicySource]:
    """The routing policy from the config's files (or around a given scorer, as tests and embedders pass)."""
    if scorer is None:
        scorer, threshold = build_scorer(settings)
    else:
        threshold = 0.5 if settings.routing.threshold is None else settings.routing.threshold
    rule, answer_scorer = build_cascade(settings)
    digest = scorer.digest if isinstance(scorer, classifiers.Classifier) else ""
    name = str(settings.routing.classifier_path or classifiers.default_path()) if digest else settings.routing.scorer
    answer_digest = answer_scorer.model.digest if isinstance(answer_scorer, _ClassifierAnswerScorer) else ""
    source = PolicySource(name, digest, answer_digest, time.time())
    conversation = ConversationPolicy(settings.routing.conversation)
    policy = RoutingPolicy(
        scorer,
        threshold,
        settings.routing.alias,
        rule,
        answer_scorer,
        conversation,
        settings.routing.target_large_share,
    )
    return policy, source


class PolicyFiles:
    """Holds where the policy in use came from, and reloads it into the service on demand (SIGHUP)."""

    def __init__(self, settings: Settings, service: RoutingService, source: PolicySource) -> None:
        self._settings = settings
        self._service = service
        self.source = source
        self._lock = asyncio.Lock()  # one load at a time
        self._queued: asyncio.Task[bool] | None = None  # the load that waits for the one under way

    async def reload(self) -> bool:
        """Load the files again and use them; False when they were refused (the policy in use stays). Calls that
        come while a load is under way share the one load queued after it, which reads the files as they are by
        then: a storm of SIGHUPs costs two loads, not one each."""
        if self._queued is None:
            self._queued = asyncio.ensure_future(self._load_when_free())
        return await asyncio.shield(self._queued)  # a caller that gives up does not cancel the others' load

    async def _load_when_free(self) -> bool:
        async with self._lock:
            self._queued = None  # this load may read the files already: a later call queues another
            return await self._load()

    async def _load(self) -> bool:
        try:
            policy, source = await asyncio.to_thread(build_policy, self._settings)
            self._service.use_policy(policy)
        except ConfigError as exc:
            return self._refused(str(exc))
        except Exception as exc:  # whatever else a file provokes (MemoryError, a bug): refused the same way
            log.exception("reload failed")
            return self._refused(f"{type(exc).__name__}: {exc}")
        self.source = replace(source, reloads=self.source.reloads + 1, failed_reloads=self.source.failed_reloads)
        log.info(
            "reloaded the routing policy: %s (sha256 %s), threshold %s",
            source.classifier,
            source.classifier_sha256[:16] or "-",
            policy.threshold,
        )
        return True

    def _refused(self, reason: str) -> bool:
        self.source = replace(self.source, failed_reloads=self.source.failed_reloads + 1)
        log.error("reload refused, the policy in use keeps serving: %s", reason)
        return False
