"""The Grafana dashboard queries only metrics the gateway serves, with labels it sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from router.adapters.metrics import Metrics
from router.core.records import DecisionRecord

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-triage.json"


def served_names_and_labels() -> tuple[set[str], set[str]]:
    m = Metrics()
    m.gauge("triage_ledger_queue_depth", "", lambda: 0.0)
    m.gauge("triage_ledger_dropped_total", "", lambda: 0.0)
    m.gauge("triage_limiter_errors_total", "", lambda: 0.0)
    m.emit(
        DecisionRecord(
            ts=1,
            request_id="r",
            tier="t",
            caller="c",
            model_requested="auto",
            model="m",
            worker="w",
            role="small",
            score=0.1,
            threshold=0.2,
            reason="below_threshold",
            escalated=False,
            cache_hit=False,
            prompt_tokens=1,
            completion_tokens=1,
            ttft_ms=1.0,
            latency_ms=2.0,
            status=200,
            cost=0.1,
            cost_large=0.2,
        )
    )
    text = m.render()
    names = set(re.findall(r"^([a-z_]+)", text, re.M))
    labels = set(re.findall(r"[{,]([a-z_]+)=", text))
    return names, labels


def test_dashboard_queries_existing_metrics_and_labels() -> None:
    names, labels = served_names_and_labels()
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    for expr in exprs:
        for metric in re.findall(r"\btriage_[a-z_]+", expr):
            assert metric in names, f"{metric} is not served by /metrics"
        for label in re.findall(r"\b([a-z_]+)\s*(?:=~|!=|=)\s*\"", expr):
            assert label in labels, f"label {label} is not set on any metric"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels | {"le"}, f"label {label} is not set on any metric"
