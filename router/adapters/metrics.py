"""Prometheus metrics, fed by the same decision records as the ledger (text exposition format 0.0.4).

Kept in-process and dependency-free: a handful of counters and two histograms, rendered on scrape."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from router.core.ports import DecisionSink
from router.core.records import SHADOW, DecisionRecord

__all__ = ["FanOutSink", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + inner + "}"


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts[labels]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[labels] += value

    def render(self, name: str) -> list[str]:
        out = []
        for labels, counts in self.counts.items():
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
            out.append(f"{name}_sum{_labels(labels)} {self.sums[labels]!r}")
            out.append(f"{name}_count{_labels(labels)} {running}")
        return out


class Metrics:
    """A DecisionSink that counts; gauges (queue depth, drops, limiter errors) are read at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.cost: dict[Labels, float] = defaultdict(float)
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.ttft = _Histogram(LATENCY_BUCKETS)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.families: list[Callable[[], list[str]]] = []  # labelled gauges rendered whole (spend budgets)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def emit(self, record: DecisionRecord) -> None:
        model = record.model or "none"
        self.requests[
            (("tier", record.tier), ("model", model), ("reason", record.reason), ("status", str(record.status)))
        ] += 1
        if record.prompt_tokens:
            self.tokens[(("model", model), ("kind", "prompt"))] += record.prompt_tokens
        if record.completion_tokens:
            self.tokens[(("model", model), ("kind", "completion"))] += record.completion_tokens
        # A shadow call's cost is learning's, not routing's: kept apart so the saving panel stays routing's.
        self.cost[(("model", model), ("basis", "shadow" if record.reason == SHADOW else "paid"))] += record.cost
        self.cost[(("model", model), ("basis", "always_large"))] += record.cost_large
        if record.status == 200 and record.reason != SHADOW:  # nobody waited for a shadow call
            self.latency.observe((("model", model),), record.latency_ms / 1000)
            if record.ttft_ms is not None:
                self.ttft.observe((("model", model),), record.ttft_ms / 1000)

    def render(self) -> str:
        lines = [
            "# HELP triage_requests_total Requests that reached the routing service.",
            "# TYPE triage_requests_total counter",
        ]
        lines += [f"triage_requests_total{_labels(k)} {v}" for k, v in self.requests.items()]
        lines += ["# HELP triage_tokens_total Tokens reported by workers.", "# TYPE triage_tokens_total counter"]
        lines += [f"triage_tokens_total{_labels(k)} {v}" for k, v in self.tokens.items()]
        lines += [
            "# HELP triage_cost_usd_total Cost paid, and cost had the large model served it.",
            "# TYPE triage_cost_usd_total counter",
        ]
        lines += [f"triage_cost_usd_total{_labels(k)} {v!r}" for k, v in self.cost.items()]
        lines += [
            "# HELP triage_latency_seconds Latency of answered requests.",
            "# TYPE triage_latency_seconds histogram",
            *self.latency.render("triage_latency_seconds"),
        ]
        lines += [
            "# HELP triage_ttft_seconds Time to the first chunk (whole answer when not streamed).",
            "# TYPE triage_ttft_seconds histogram",
            *self.ttft.render("triage_ttft_seconds"),
        ]
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()!r}"]
        for family in self.families:
            lines += family()
        return "\n".join(lines) + "\n"


class FanOutSink:
    """Hands each record to several sinks (the ledger and the metrics)."""

    def __init__(self, sinks: Sequence[DecisionSink]) -> None:
        self._sinks = tuple(sinks)

    def emit(self, record: DecisionRecord) -> None:
        for sink in self._sinks:
            sink.emit(record)
