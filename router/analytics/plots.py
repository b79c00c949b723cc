"""PNG charts of the ledger for a slide (matplotlib: the `plots` extra, imported only here)."""

from __future__ import annotations

from pathlib import Path

from router.analytics.report import timeline
from router.core.records import DecisionRecord

__all__ = ["plot_ledger"]


def plot_ledger(records: list[DecisionRecord], out: Path, step_seconds: int) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'llm-triage[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no records to plot for these filters")
    out.mkdir(parents=True, exist_ok=True)
    buckets = timeline(records, step_seconds)
    keys = [b.key for b in buckets]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(keys, [100 * b.large_share for b in buckets], marker="o", label="large-model share of answers (%)")
    ax.plot(keys, [100 * b.saving for b in buckets], marker="s", label="cost saved vs always-large (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Routing share and saving over time")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.legend()
    share = out / "share_and_saving.png"
    fig.savefig(share, dpi=110, bbox_inches="tight")
    plt.close(fig)

    by_model: dict[str, list[float]] = {}
    for r in records:
        if r.status == 200 and r.model:
            by_model.setdefault(r.model, []).append(r.latency_ms)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.boxplot(list(by_model.values()), tick_labels=list(by_model), showfliers=False)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency per model")
    latency = out / "latency_by_model.png"
    fig.savefig(latency, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [share, latency]
