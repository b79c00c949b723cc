"""The composition root: adapters, scorers and the service chosen by the settings and wired together (`wire`),
then opened and closed as one (`running`): every resource is entered on one AsyncExitStack, so a failure at any
step of the start closes whatever was opened before it, and the stop closes them in the reverse order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import orjson

from router.adapters.backend import AiohttpBackend, BackendByProvider
from router.adapters.backend_http1 import Http1Backend
from router.adapters.backend_litellm import LitellmBackend, litellm_prices
from router.adapters.cache_memory import MemoryCache
from router.adapters.cache_redis import RedisCache
from router.adapters.conversations import MemoryConversations, RedisConversations
from router.adapters.discovery import discover_model
from router.adapters.identity_secret import identity_secret
from router.adapters.ledger_queue import QueuedLedger
from router.adapters.ledger_redis import RedisStreamLedger
from router.adapters.ledger_sqlite import SqliteLedger, check_ledger
from router.adapters.limiter_memory import MemoryLimiter
from router.adapters.limiter_redis import RedisLimiter
from router.adapters.metrics import FanOutSink, Metrics
from router.adapters.pairs import RedisPairs, SqlitePairs, pairs_path
from router.adapters.quality import QualityGauge
from router.adapters.score_windows import MemoryScores, RedisScores
from router.adapters.spend_gauges import SpendGauges
from router.api.auth import Authenticator
from router.api.policy_files import PolicyFiles, build_policy
from router.core.balance import BalancePolicy, Balancer
from router.core.budgets import Budget, micros
from router.core.conversation import ConversationPolicy
from router.core.limits import TierLimits
from router.core.ports import Backend, Scorer
from router.core.records import DecisionRecord
from router.core.shadow import ShadowGate, ShadowPair, ShadowPolicy
from router.core.share import ShareTargets
from router.core.tiers import Tier
from router.core.types import Prices, Role, Worker
from router.errors import ConfigError
from router.processes import SighupLatch
from router.service.admission import AdmissionControl
from router.service.coordinator import Ports, RoutingService
from router.service.recording import Recorder
from router.service.spending import Spending
from router.settings import KeySettings, Settings, TierSettings

__all__ = [
    "ShutdownClock",
    "Stores",
    "Wiring",
    "budget_of",
    "build_balancer",
    "build_tiers",
    "key_budgets",
    "resolve_workers",
    "running",
    "wire",
]

log = logging.getLogger("triage.app")


@dataclass(slots=True)
class ShutdownClock:
    """When the server began to shut down (time.monotonic), kept on `app.state.shutdown`: `triage serve`'s server
    sets it as it stops accepting. The in-flight requests' wait and the shadow calls' wait share one graceful
    timeout from then; without it (a server that does not say) the shadow calls get the whole timeout."""

    began: float | None = None

    def remaining(self, grace: float) -> float:
        return grace if self.began is None else max(0.0, grace - (time.monotonic() - self.began))


log = logging.getLogger("triage.app")

# build_scorer and build_cascade live in router.api.policy_files (built again on SIGHUP); imported from here too.


class _Closes(Protocol):
    async def close(self) -> None: ...


class _Starts(_Closes, Protocol):
    async def start(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Stores:
    """What keeps state outside the request: limits, records, pairs, conversations, score windows, answers."""

    redis_limiter: RedisLimiter | None
    ledger: QueuedLedger[DecisionRecord] | None
    pairs: QueuedLedger[ShadowPair] | None
    conversations: MemoryConversations | RedisConversations | None
    scores: MemoryScores | RedisScores | None
    cache: MemoryCache | RedisCache | None


@dataclass(slots=True)
class Wiring:
    """Everything one gateway process is made of, built from its settings; nothing is opened yet."""

    settings: Settings
    workers: list[Worker]
    direct: Http1Backend
    hosted: LitellmBackend | None
    backend: Backend
    stores: Stores
    metrics: Metrics
    service: RoutingService
    policy_files: PolicyFiles
    auth: Authenticator
    spend_gauges: SpendGauges | None = None  # tiers' spend and remaining budgets, read in the background

    def models_body(self) -> bytes:
        created = int(time.time())
        owners = {w.model: w.name for w in self.workers}
        data = [
            {"id": mid, "object": "model", "created": created, "owned_by": owners.get(mid, "llm-triage")}
            for mid in self.service.model_ids()
        ]
        return orjson.dumps({"object": "list", "data": data})


def wire(settings: Settings, workers: Sequence[Worker] | None = None, scorer: Scorer | None = None) -> Wiring:
    """The gateway's parts, chosen by the settings (workers that leave `model` out are asked for it)."""
    workers = list(workers) if workers is not None else resolve_workers(settings)
    direct = Http1Backend(tls=AiohttpBackend())  # plain-HTTP workers on the lean client, TLS ones on aiohttp
    # Only a fleet with hosted workers pays for the dispatch: vLLM workers keep the direct client.
    hosted = LitellmBackend() if any(w.provider == "litellm" for w in workers) else None
    backend: Backend = BackendByProvider(direct, hosted) if hosted else direct
    policy, source = build_policy(settings, scorer)
    redis_limiter = _redis_limiter(settings)
    stores = Stores(
        redis_limiter, _ledger(settings), _pairs(settings), _conversations(settings, redis_limiter),
        _scores(settings), _cache(settings, redis_limiter),
    )  # fmt: skip
    ledger = stores.ledger
    limiter: RedisLimiter | MemoryLimiter = redis_limiter or MemoryLimiter()
    spending = Spending(ZoneInfo(settings.limits.budget_timezone))
    metrics = Metrics(_metrics_dir())
    service = RoutingService(
        workers,
        policy,
        _ports(
            settings,
            workers,
            backend,
            stores,
            AdmissionControl(limiter, max_pending=settings.server.max_pending_admissions, spending=spending),
        ),
        Recorder(
            FanOutSink([metrics, ledger]) if ledger is not None else metrics,
            next((w.prices for w in workers if w.role is Role.LARGE), Prices()),
            settings.ledger.store_prompts,
        ),
    )
    _read_metrics(metrics, stores, service, settings.ledger.outcomes)
    spend_gauges = SpendGauges(limiter, spending.tier_caps, list(build_tiers(settings).values()))
    metrics.family(
        "triage_budget_spend_usd",
        "A tier's spend in the budget's current window (in flight included).",
        ("tier", "window"),
        spend_gauges.spend,
    )
    metrics.family(
        "triage_budget_remaining_usd",
        "What is left of a tier's budget in its current window.",
        ("tier", "window"),
        spend_gauges.remaining,
    )
    auth = _authenticator(settings, redis_limiter)
    return Wiring(
        settings, workers, direct, hosted, backend, stores, metrics, service, PolicyFiles(settings, service, source),
        auth, spend_gauges,
    )  # fmt: skip


@asynccontextmanager
async def running(wiring: Wiring, shutdown: ShutdownClock) -> AsyncIterator[None]:
    """The gateway's resources open, in order, for as long as the app serves; closed in the reverse order,
    also when a step of the start fails."""
    w, s, server = wiring, wiring.stores, wiring.settings.server
    async with AsyncExitStack() as stack:
        stack.callback(w.metrics.refresh)  # last: this process's final totals stay in the files after it exits
        for client in (s.scores, s.conversations, s.cache, s.redis_limiter):  # closed after the rest
            if isinstance(client, (RedisScores, RedisConversations, RedisCache, RedisLimiter)):
                stack.push_async_callback(client.close)
        if w.hosted is not None:
            await stack.enter_async_context(_started(w.hosted))
        await stack.enter_async_context(_started(w.direct))
        if s.redis_limiter is not None:
            await s.redis_limiter.warm()
        for store in (s.ledger, s.pairs, w.spend_gauges):
            if store is not None:
                await stack.enter_async_context(_started(store))
        # Closed before the stores: uvicorn has finished in-flight requests by then (graceful shutdown), and
        # shadow calls under way finish first (they record too), within what is left of the graceful timeout.
        stack.push_async_callback(lambda: w.service.close(shutdown.remaining(server.graceful_shutdown_timeout)))
        w.metrics.start(server.metrics_refresh)
        stack.push_async_callback(w.metrics.stop)
        stack.callback(_on_sighup(w.policy_files))
        yield


@asynccontextmanager
async def _started(resource: _Starts) -> AsyncIterator[None]:
    await resource.start()
    try:
        yield
    finally:
        await resource.close()


def _ports(
    settings: Settings, workers: list[Worker], backend: Backend, w: Stores, admission: AdmissionControl
) -> Ports:
    shadow = settings.routing.shadow
    return Ports(
        backend=backend,
        admission=admission,
        balancer=build_balancer(settings, workers),
        cache=w.cache,
        cache_ttl=settings.cache.ttl,
        pairs=w.pairs,
        conversations=w.conversations,
        conversation_ttl=settings.routing.conversation_ttl,
        shares=ShareTargets(w.scores, settings.routing.target_min_scores) if w.scores is not None else None,
        shadow=ShadowGate(
            ShadowPolicy(shadow.rate, frozenset(shadow.tiers), shadow.max_per_minute, shadow.max_in_flight)
        ),
    )


def _authenticator(settings: Settings, redis_limiter: RedisLimiter | None) -> Authenticator:
    auth = settings.auth
    return Authenticator(
        tiers=build_tiers(settings),
        keys={k.sha256: k.tier for k in auth.keys},
        key_budgets=key_budgets(settings),
        anonymous_tier=auth.anonymous_tier,
        trusted_proxies=auth.trusted_proxies,
        key_store=redis_limiter.key_tier if redis_limiter else None,
        identity_secret=identity_secret(
            auth.identity_secret, _redis_url(settings), settings.limits.key_prefix, auth.identity_secret_path
        ),
    )


def resolve_workers(settings: Settings) -> list[Worker]:
    """Workers with their served model names, asking a worker when the config leaves `model` out."""
    wait = settings.server.discover_timeout
    resolved = []
    for ws in settings.workers:
        if ws.provider == "litellm":
            priced = ws.price_input is not None and ws.price_output is not None
            resolved.append(ws.to_worker(prices=None if priced else litellm_prices(ws.provider_model or "")))
            continue
        model = ws.model
        if model is None:
            key = ws.to_worker("?").api_key
            model = discover_model(ws.base_url or "", wait=wait, api_key=key)
        resolved.append(ws.to_worker(model))
    return resolved


def build_tiers(settings: Settings) -> dict[str, Tier]:
    return {
        name: Tier(
            name=name,
            limits=TierLimits(
                requests_per_minute=t.requests_per_minute,
                tokens_per_minute=t.tokens_per_minute,
                daily_requests=t.daily_requests,
                daily_tokens=t.daily_tokens,
                max_concurrent=t.max_concurrent,
                lease_ttl_ms=int(t.lease_ttl * 1000),
            ),
            roles=frozenset(t.models),
            threshold=t.threshold,
            target_large_share=t.target_large_share,
            max_tokens=t.max_tokens,
            max_n=t.max_n,
            max_body_bytes=t.max_body_bytes,
            fail_open=t.on_limiter_error == "open",
            cache=t.cache,
            cascade=t.mode == "cascade",
            conversation=ConversationPolicy(t.conversation) if t.conversation else None,
            budget=budget_of(t),
        )
        for name, t in settings.tiers.items()
    }


def budget_of(spend: TierSettings | KeySettings) -> Budget:
    return Budget(micros(spend.spend_per_day), micros(spend.spend_per_month), micros(spend.max_cost_per_request))


def key_budgets(settings: Settings) -> dict[str, tuple[str, Budget]]:
    """sha256 -> (the key's name, its own budget), for keys with a budget of their own."""
    out = {}
    for k in settings.auth.keys:
        budget = budget_of(k)
        if budget.any:
            out[k.sha256] = (k.name or k.sha256[:8], budget)
    return out


def build_balancer(settings: Settings, workers: Sequence[Worker]) -> Balancer:
    b = settings.balancing
    return Balancer(
        workers,
        policy=BalancePolicy(b.policy),
        affinity=b.prefix_affinity,
        load_factor=b.affinity_load_factor,
        failures_to_open=b.breaker_failures,
        cooldown=b.breaker_cooldown,
    )


def _redis_url(settings: Settings) -> str | None:
    """The Redis that limits use, and with them the shared cache and ledger: env TRIAGE_REDIS_URL first."""
    return os.environ.get("TRIAGE_REDIS_URL") or settings.limits.redis_url


def _redis_limiter(settings: Settings) -> RedisLimiter | None:
    """Limits shared through Redis when a URL is configured; else None."""
    url = _redis_url(settings)
    if not url:
        return None
    return RedisLimiter(url, timeout=settings.limits.redis_timeout, prefix=settings.limits.key_prefix)


def _shared_store(settings: Settings, section: str, backend: str) -> str | None:
    """The Redis URL a section (`cache`, `ledger`) uses: with backend redis, or auto when limits use Redis;
    None for its local store."""
    url = _redis_url(settings)
    if backend == "redis" and not url:
        raise ConfigError(f"{section}.backend: redis needs limits.redis_url (or TRIAGE_REDIS_URL)")
    return url if backend == "redis" or (backend == "auto" and url) else None


def _cache(settings: Settings, limiter: RedisLimiter | None) -> MemoryCache | RedisCache | None:
    cfg = settings.cache
    if not cfg.enabled:
        return None
    url = _shared_store(settings, "cache", cfg.backend)
    if url:
        return RedisCache(
            url,
            prefix=settings.limits.key_prefix,
            timeout=settings.limits.redis_timeout,
            batch=limiter.batch if limiter is not None else None,  # a lookup rides with its admission
        )
    return MemoryCache(cfg.max_entries)


def _ledger(settings: Settings) -> QueuedLedger[DecisionRecord] | None:
    cfg = settings.ledger
    if not cfg.enabled:
        return None
    url = _shared_store(settings, "ledger", cfg.backend)
    if url:
        return RedisStreamLedger(url, stream=cfg.stream, maxlen=cfg.maxlen)
    try:
        check_ledger(cfg.path)
    except ConfigError as exc:
        raise ConfigError(f"ledger.path: {exc}") from None
    return SqliteLedger(cfg.path)


def _conversations(settings: Settings, limiter: RedisLimiter | None) -> MemoryConversations | RedisConversations | None:
    """Where conversations' routing is remembered: Redis when limits use it (replicas agree), else in process."""
    routing = settings.routing
    if routing.conversation == "per_turn" and all(
        t.conversation in (None, "per_turn") for t in settings.tiers.values()
    ):
        return None
    url = _redis_url(settings)
    if url:
        return RedisConversations(
            url,
            prefix=settings.limits.key_prefix,
            timeout=settings.limits.redis_timeout,
            max_entries=routing.conversation_max,
            batch=limiter.batch if limiter is not None else None,  # a lookup rides with its admission
        )
    return MemoryConversations(max_entries=routing.conversation_max)


def _scores(settings: Settings) -> MemoryScores | RedisScores | None:
    """The share targets' windows: in Redis when limits use it (replicas hold one share), else in process;
    None when no share target is configured."""
    routing = settings.routing
    if routing.target_large_share is None and all(t.target_large_share is None for t in settings.tiers.values()):
        return None
    url = _redis_url(settings)
    if url:
        return RedisScores(
            url,
            size=routing.target_window,
            prefix=settings.limits.key_prefix,
            refresh=routing.target_refresh,
            timeout=settings.limits.redis_timeout,
        )
    return MemoryScores(routing.target_window)


def _pairs(settings: Settings) -> QueuedLedger[ShadowPair] | None:
    """The shadow pairs store, beside the ledger (in Redis when the ledger is)."""
    if not settings.routing.shadow.rate:
        return None
    cfg = settings.ledger
    url = _shared_store(settings, "ledger", cfg.backend)
    store: QueuedLedger[ShadowPair] = (
        RedisPairs(url, stream=cfg.stream + ":pairs") if url else SqlitePairs(pairs_path(cfg.path))
    )
    where = f"{url} stream {cfg.stream}:pairs" if url else str(pairs_path(cfg.path))
    log.warning(
        "routing.shadow: %.0f%% of routed requests are answered by the other model too; prompts and both answers "
        "are stored in %s",
        settings.routing.shadow.rate * 100,
        where,
    )
    return store


def _metrics_dir() -> Path | None:
    """The folder of prometheus_client's multiprocess mode: set by `triage serve --workers N`'s supervisor for its
    processes (or by whoever runs several gateways that way), None for one process."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value}: not a folder (metrics of several processes go there)")
    return path


def _read_metrics(metrics: Metrics, stores: Stores, service: RoutingService, quality_path: Path) -> None:
    """Values kept by the parts themselves, read at scrape time: levels are gauges, running totals counters."""
    ledger, cache, limiter = stores.ledger, stores.cache, stores.redis_limiter
    metrics.gauge(
        "triage_ledger_queue_depth",
        "Records waiting to be written.",
        lambda: float(ledger.depth if ledger else 0),
        "livesum",
    )
    metrics.counter(
        "triage_ledger_dropped_total",
        "Records dropped because the queue was full.",
        lambda: float(ledger.dropped if ledger else 0),
    )
    metrics.counter(
        "triage_limiter_errors_total",
        "Times the rate-limit store did not answer.",
        lambda: float(service.health().limiter_errors),
    )
    metrics.counter(
        "triage_limiter_unsettled_total",
        "Settlements that only gave back (unused tokens, a freed slot) which the Redis store did not take: each "
        "reservation stands until its window passes (stricter, never looser).",
        lambda: float(limiter.unsettled if limiter is not None else 0),
    )
    metrics.counter(
        "triage_overloaded_total",
        "Requests refused with 503 `overloaded`: too many were waiting for the rate limiter (load shed).",
        lambda: float(service.health().shed),
    )
    metrics.counter(
        "triage_cache_errors_total",
        "Times the response cache's Redis did not answer (each one a miss or a skipped store).",
        lambda: float(cache.errors if isinstance(cache, RedisCache) else 0),
    )
    quality = QualityGauge(quality_path)
    # Every process reads the same labelled file: the newest reading stands for all.
    metrics.gauge(
        "triage_quality_kept_ratio",
        "Routed answers' quality as a share of the large model's, from labelled shadow pairs (ledger.outcomes).",
        lambda: quality.read()[0],
        "livemostrecent",
    )
    metrics.gauge(
        "triage_quality_pairs",
        "Labelled shadow pairs behind the quality gauge.",
        lambda: float(quality.read()[1]),
        "livemostrecent",
    )
    metrics.counter(
        "triage_shadow_calls_total", "Shadow calls made (routing.shadow).", lambda: float(service.health().shadow_sent)
    )
    metrics.counter(
        "triage_shadow_dropped_total",
        "Requests sampled for a shadow call but not shadowed: budget spent, too many in flight, or the gateway busy.",
        lambda: float(service.health().shadow_dropped),
    )


def _on_sighup(files: PolicyFiles) -> Callable[[], None]:
    """SIGHUP reloads the classifier files (a process-wide signal: only where the app runs on the main thread,
    as under `triage serve`). A SIGHUP that `triage serve` held while starting (SighupLatch) is answered with
    one reload: the files may have changed after start-up read them. Returns what gives the signal back."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()
    previous = signal.getsignal(signal.SIGHUP)

    def reload() -> None:
        task = loop.create_task(files.reload())
        tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread, or no SIGHUP
        return lambda: None
    if isinstance(previous, SighupLatch) and previous.received:
        previous.received = False
        reload()

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)  # which leaves SIG_DFL: a SIGHUP would end the shutdown
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)

    return remove
