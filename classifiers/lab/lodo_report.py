"""The pooled tables of `triage classifier eval --protocol lodo`, as markdown text.

A gateway sees a mix of kinds of request, so beside the per-family LODO table the report pools every family's
held-out scores into one stream (each family weighing the same) and asks whether the scores' level across
families tracks where the large model gains."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from classifiers.lab.families import Family
from classifiers.lab.lodo import family_gain_scores, pool_parts
from classifiers.lab.metrics import RouteMetrics, pooled_random, pooled_route_metrics

__all__ = ["PAIR_FAMILIES", "level_table", "pooled_table", "rank_correlation"]

PAIR_FAMILIES = ("mmlu", "gsm8k", "mt_bench")  # graded GPT-4 against Mixtral: the pair the product is judged with


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _cell(m: RouteMetrics, bold: bool = False) -> str:
    apgr = f"**{m.apgr:.3f}**" if bold else f"{m.apgr:.3f}"
    return f"{apgr} / {_pct(m.share_at_95)}"


def pooled_table(
    families: Sequence[Family],
    scores: Mapping[str, Sequence[np.ndarray]],
    means: Mapping[str, float],
    mean_sd: float,
    draws: int = 200,
) -> str:
    """`scores`: per recipe, each family's held-out scores (lodo.held_out_scores); `means`: per recipe, the mean
    APGR over scored families; `mean_sd`: a random router's spread of that mean."""
    names = list(scores)
    lines = [
        "",
        "## pooled LODO: every family scored by the model trained without it, all held-out scores one stream",
        "(each family weighs the same: item weights 1/n_family; APGR / large share at 95% quality; random: mean",
        f" ±sd over {draws} draws on the same pool; family gain known: each item scored by its family's mean gain,",
        " nothing about the item itself: a reference)",
        "",
        "| pool | families | random ±sd | family gain known | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    known = family_gain_scores(families)
    for label, among in (("all families", ()), ("GPT-4/Mixtral families", PAIR_FAMILIES)):
        parts = pool_parts(families, known, among)
        if not parts:
            continue
        rand_mean, rand_sd = pooled_random(parts, draws)
        cells = [_cell(pooled_route_metrics(parts))]
        cells += [_cell(pooled_route_metrics(pool_parts(families, scores[n], among)), True) for n in names]
        lines.append(f"| **{label}** | {len(parts)} | {rand_mean:.3f} ±{rand_sd:.3f} | " + " | ".join(cells) + " |")
    lines.append(
        f"| mean over scored families (per family) | | 0.500 ±{mean_sd:.3f} | | "
        + " | ".join(f"{means[n]:.3f}" for n in names)
        + " |"
    )
    return "\n".join(lines)


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def level_table(families: Sequence[Family], shares: Mapping[str, Mapping[str, float]]) -> str:
    """`shares`: per recipe, each held-out family's share sent large at the suggested threshold
    (lodo.large_shares). Rows by the family's mean gain, most first."""
    names = list(shares)
    gains = {f.name: float(g[0]) for f, g in zip(families, family_gain_scores(families), strict=True)}
    lines = [
        "",
        "## score level: share of each held-out family sent to the large model at the suggested threshold",
        "(the threshold suggested by the model trained without the family; it should track the family's gain)",
        "",
        "| held-out family | mean gain | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for name, gain in sorted(gains.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {gain:+.3f} | " + " | ".join(_pct(shares[n][name]) for n in names) + " |")
    spreads = [f"{_pct(min(shares[n].values()))} to {_pct(max(shares[n].values()))}" for n in names]
    lines.append("| spread (least to most) | | " + " | ".join(spreads) + " |")
    rho = [rank_correlation([shares[n][f] for f in gains], list(gains.values())) for n in names]
    lines.append("| rank correlation with the gain (Spearman) | | " + " | ".join(f"{r:+.2f}" for r in rho) + " |")
    return "\n".join(lines)
