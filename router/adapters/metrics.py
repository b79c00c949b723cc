"""Prometheus metrics through prometheus_client, fed by the same decision records as the ledger.

One process: a registry of this gateway's own. Under `triage serve --workers N` (PROMETHEUS_MULTIPROC_DIR set by
the supervisor), every process writes its values to files in that folder and a scrape, whichever process answers
it, sums them all (the library's multiprocess mode). Values kept elsewhere (the ledger's queue, the limiter's
failures...) are copied in by `refresh()`: on every scrape in the process that answers it, and every
`interval` seconds in each process when there are several (`start`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from router.core.ports import DecisionSink
from router.core.records import SHADOW, DecisionRecord

__all__ = ["CONTENT_TYPE", "FanOutSink", "Metrics", "MultiprocessMode"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# How a gauge's values from several processes combine (prometheus_client's names): "livesum" adds the live
# processes' levels (a queue per process), "livemostrecent" keeps the newest of values every process reads alike.
MultiprocessMode = Literal["livesum", "livemax", "livemin", "livemostrecent"]
log = logging.getLogger("triage.metrics")


class _ReadCounter:
    """A running total kept elsewhere (an int that only grows), copied into a counter by the increase seen."""

    def __init__(self, counter: Counter, read: Callable[[], float]) -> None:
        self._counter, self._read, self._last = counter, read, 0.0

    def refresh(self) -> None:
        value = float(self._read())
        if value > self._last:
            self._counter.inc(value - self._last)
            self._last = value


class _ReadGauge:
    def __init__(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self._gauge, self._read = gauge, read

    def refresh(self) -> None:
        self._gauge.set(float(self._read()))


@dataclass(frozen=True, slots=True)
class _PerModel:
    """A model's series, looked up once."""

    prompt_tokens: Counter
    completion_tokens: Counter
    cost_paid: Counter
    cost_shadow: Counter
    cost_always_large: Counter
    latency: Histogram
    ttft: Histogram


class Metrics:
    """A DecisionSink that counts; values kept elsewhere are registered with `gauge`/`counter` and read by
    `refresh`. `multiprocess_dir`: the folder of the library's multiprocess mode (None: one process)."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self._dir = multiprocess_dir
        # In multiprocess mode the values live in the folder's files and a scrape reads them all from there (a
        # registry holding the metrics as well would count this process twice); else a registry of our own.
        self._registry = CollectorRegistry() if multiprocess_dir is None else None
        registry = self._registry
        self._requests = Counter(
            "triage_requests_total",
            "Requests that reached the routing service.",
            ("tier", "model", "reason", "status"),
            registry=registry,
        )
        self._tokens = Counter(
            "triage_tokens_total", "Tokens reported by workers.", ("model", "kind"), registry=registry
        )
        self._cost = Counter(
            "triage_cost_usd_total",
            "Cost paid (basis paid; shadow calls' apart), and cost had the large model served it (always_large).",
            ("model", "basis"),
            registry=registry,
        )
        self._latency = Histogram(
            "triage_latency_seconds",
            "Latency of answered requests.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._ttft = Histogram(
            "triage_ttft_seconds",
            "Time to the first chunk (whole answer when not streamed).",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._reads: list[_ReadCounter | _ReadGauge] = []
        # Each series looked up once: labels() cost about 3 us a call, several calls a request.
        self._request_children: dict[tuple[str, str, str, int], Counter] = {}
        self._models: dict[str, _PerModel] = {}
        self._refresher: asyncio.Task[None] | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE

    def gauge(self, name: str, help_text: str, read: Callable[[], float], mode: MultiprocessMode) -> None:
        """A level read at scrape time; `mode` says how several processes' levels combine."""
        gauge = Gauge(name, help_text, registry=self._registry, multiprocess_mode=mode)
        self._reads.append(_ReadGauge(gauge, read))

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A running total kept elsewhere, read at scrape time; processes' totals add up (dead ones' too)."""
        counter = Counter(name, help_text, registry=self._registry)
        self._reads.append(_ReadCounter(counter, read))

    def refresh(self) -> None:
        for read in self._reads:
            try:
                read.refresh()
            except Exception:  # one broken reading must not cost the whole scrape
                log.exception("reading a metric failed")

    def start(self, interval: float) -> None:
        """Several processes: copy the read values into the shared files every `interval` seconds, for the
        scrapes another process answers (which see this one's at most that old). One process: nothing to do."""
        if self._dir is not None and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._run_refresh(interval))

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    async def _run_refresh(self, interval: float) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(interval)

    def emit(self, record: DecisionRecord) -> None:
        key = (record.tier, record.model, record.reason, record.status)
        requests = self._request_children.get(key)
        if requests is None:
            requests = self._request_children[key] = self._requests.labels(
                record.tier, record.model or "none", record.reason, str(record.status)
            )
        requests.inc()
        model = self._models.get(record.model)
        if model is None:
            model = self._models[record.model] = self._per_model(record.model or "none")
        if record.prompt_tokens:
            model.prompt_tokens.inc(record.prompt_tokens)
        if record.completion_tokens:
            model.completion_tokens.inc(record.completion_tokens)
        # A shadow call's cost is learning's, not routing's: kept apart so the saving panel stays routing's.
        shadow = record.reason == SHADOW
        if record.cost:
            (model.cost_shadow if shadow else model.cost_paid).inc(record.cost)
        if record.cost_large:
            model.cost_always_large.inc(record.cost_large)
        if record.status == 200 and not shadow:  # nobody waited for a shadow call
            model.latency.observe(record.latency_ms / 1000)
            if record.ttft_ms is not None:
                model.ttft.observe(record.ttft_ms / 1000)

    def _per_model(self, model: str) -> _PerModel:
        return _PerModel(
            prompt_tokens=self._tokens.labels(model, "prompt"),
            completion_tokens=self._tokens.labels(model, "completion"),
            cost_paid=self._cost.labels(model, "paid"),
            cost_shadow=self._cost.labels(model, "shadow"),
            cost_always_large=self._cost.labels(model, "always_large"),
            latency=self._latency.labels(model),
            ttft=self._ttft.labels(model),
        )

    def render(self) -> bytes:
        """The text exposition (format 0.0.4), this process's read values refreshed first."""
        self.refresh()
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._dir))  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)


class FanOutSink:
    """Hands each record to several sinks (the ledger and the metrics)."""

    def __init__(self, sinks: Sequence[DecisionSink]) -> None:
        self._sinks = tuple(sinks)

    def emit(self, record: DecisionRecord) -> None:
        for sink in self._sinks:
            sink.emit(record)
