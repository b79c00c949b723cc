"""The Grafana dashboard queries only metrics the running gateway serves, with labels it sets: read from the
app's own /metrics after real traffic, not from metrics registered by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.api.conftest import Stack
from tests.prometheus import parse

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-triage.json"


def test_dashboard_queries_metrics_and_labels_the_gateway_serves(stack: Stack) -> None:
    for body in (
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
    ):
        stack.client.post("/v1/chat/completions", json=body)
    text = stack.client.get("/metrics").text
    types = parse(text).types
    names = set(re.findall(r"^([a-z_]+)", text, re.M))
    labels = set(re.findall(r"[{,]([a-z_]+)=", text))
    assert "triage_overloaded_total" in names  # load shedding is visible to operators
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    for expr in exprs:
        for metric in re.findall(r"\btriage_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in names or base in {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}, (
                f"{metric} is not served by /metrics"
            )
        _check_types(expr, types)
        for label in re.findall(r"\b([a-z_]+)\s*(?:=~|!=|=)\s*\"", expr):
            assert label in labels, f"label {label} is not set on any metric"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels | {"le"}, f"label {label} is not set on any metric"


def _check_types(expr: str, types: dict[str, str]) -> None:
    """rate() and increase() read counters (a histogram's buckets are counters), and a counter is read only
    through them: its raw value is a per-process running total that restarts at 0."""
    for m in re.finditer(r"\btriage_[a-z_]+", expr):
        metric = m.group(0)
        kind = types.get(metric)
        inside = re.search(r"\b(?:rate|increase)\(\s*$", expr[: m.start()]) is not None
        if inside:
            assert kind in ("counter", "histogram"), f"{expr}: {metric} is a {kind}, not a counter"
        else:
            assert kind != "counter", f"{expr}: the counter {metric} is read outside rate() or increase()"
