"""PNG charts of routing curves (matplotlib is the `plots` extra, imported only here)."""

from __future__ import annotations

from pathlib import Path

from classifiers.lab.evaluate import ProtocolResult

__all__ = ["plot_results"]


def plot_results(results: list[ProtocolResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for test in dict.fromkeys(r.test for r in results):
        group = [r for r in results if r.test == test]
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in group:
            for router, c in r.curves.items():
                if router not in ("random", "oracle"):
                    label = f"llm-triage: {r.name}" if router == "llm-triage" else f"{router}: {r.name}"
                    ax.plot(100 * c.share, c.quality, label=label)
        first = group[0]
        for name, style in (("random", ":"), ("oracle", "--")):
            c = first.curves[name]
            ax.plot(100 * c.share, c.quality, style, color="grey", label=name)
        ax.axhline(first.q_large, color="red", lw=0.8, label="large model")
        ax.axhline(first.q_small, color="black", lw=0.8, label="small model")
        ax.axhline(0.95 * first.q_large, color="red", lw=0.8, ls="--", label="95% of large")
        ax.set_xlabel("large-model calls (%): routed to it, or escalated to it after the small model's draft")
        ax.set_ylabel("quality")
        ax.set_title(f"Routing quality on {test}")
        ax.legend(fontsize=8, loc="lower right")
        path = out / f"routing_{test}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
