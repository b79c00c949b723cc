"""Evaluation protocols: no evaluated item is ever trained on. Every protocol is reported, not the best.

mmlu 5-fold                  k-fold within MMLU
mmlu subjects held out       5 folds of whole subjects: the test subjects were never seen
gsm8k 5-fold                 k-fold within GSM8K
mmlu -> gsm8k                trained without GSM8K, tested on it
gsm8k -> mmlu                the other way round
mmlu+gsm8k -> mt_bench       MT-Bench only ever as a test set
gsm8k cascade 5-fold         the same GSM8K folds: prompt-only routing against a cascade whose answer scorer
                             reads the small model's recorded answer (small cost always paid when cascading)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from classifiers.answer import answer_text
from classifiers.features import FeatureSpec, Featurizer
from classifiers.lab.data import Benchmark, load_benchmark
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.metrics import Curve, RouteMetrics, oracle_curve, random_curve, route_metrics, routing_curve
from classifiers.lab.train import DEFAULT_ALPHA, fit_raw

__all__ = ["PROTOCOLS", "ProtocolResult", "Row", "run_protocols"]

# RouteLLM's published figures (best router per benchmark, trained on Chatbot Arena data), for reference.
ROUTELLM_PUBLISHED = {
    "mmlu": {"share_at_95": 0.55, "apgr": 0.603},
    "gsm8k": {"share_at_95": 0.65},
    "mt_bench": {"share_at_95": 0.15},
}


@dataclass(frozen=True, slots=True)
class Row:
    router: str
    apgr: float
    cpt50: float
    cpt80: float
    share_at_95: float
    saved_free_small: float
    saved_priced: float

    @classmethod
    def of(cls, router: str, m: RouteMetrics) -> Row:
        return cls(router, m.apgr, m.cpt50, m.cpt80, m.share_at_95, m.saved_free_small, m.saved_priced)


@dataclass
class ProtocolResult:
    name: str
    test: str
    items: int
    q_small: float
    q_large: float
    rows: list[Row]
    curves: dict[str, Curve] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.name,
            "test": self.test,
            "items": self.items,
            "q_small": self.q_small,
            "q_large": self.q_large,
            "rows": [asdict(r) for r in self.rows],
        }


Split = Iterator[tuple[np.ndarray, np.ndarray]]
PROTOCOLS = (
    "mmlu 5-fold",
    "mmlu subjects held out",
    "gsm8k 5-fold",
    "mmlu -> gsm8k",
    "gsm8k -> mmlu",
    "mmlu+gsm8k -> mt_bench",
    "gsm8k cascade 5-fold",
)


def _outcomes(b: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    return np.array([i.small for i in b.items]), np.array([i.large for i in b.items])


def _oof(X: Any, small: np.ndarray, large: np.ndarray, splits: Split, alpha: float) -> np.ndarray:
    scores = np.full(len(small), np.nan)
    for tr, te in splits:
        coef, intercept = fit_raw(X[tr], small[tr], large[tr], alpha)
        scores[te] = X[te] @ coef + intercept
    assert not np.isnan(scores).any(), "every item is scored exactly once, by a model that never saw it"
    return scores


def run_protocols(
    *,
    root: str | Path | None = None,
    spec: FeatureSpec | None = None,
    alpha: float = DEFAULT_ALPHA,
    price_small: float = 0.24,
    price_large: float = 24.7,
    protocols: tuple[str, ...] = PROTOCOLS,
    progress: Callable[[str], None] = lambda _: None,
) -> list[ProtocolResult]:
    spec = spec or FeatureSpec()
    feat = Featurizer(spec)
    benches = {name: load_benchmark(name, root) for name in ("mmlu", "gsm8k", "mt_bench")}
    progress("featurizing " + ", ".join(f"{n} ({len(b.items)})" for n, b in benches.items()))
    X = {name: feature_matrix(feat, b.prompts) for name, b in benches.items()}
    y = {name: _outcomes(b) for name, b in benches.items()}
    results = []
    for name in protocols:
        progress(f"protocol: {name}")
        if name == "gsm8k cascade 5-fold":
            results.append(_cascade(benches["gsm8k"], X["gsm8k"], spec, alpha, price_small, price_large))
            continue
        if name == "mmlu 5-fold":
            test = "mmlu"
            scores = _oof(X[test], *y[test], KFold(5, shuffle=True, random_state=0).split(X[test]), alpha)
        elif name == "mmlu subjects held out":
            test = "mmlu"
            groups = [i.group for i in benches[test].items]
            scores = _oof(X[test], *y[test], GroupKFold(5).split(X[test], groups=groups), alpha)
        elif name == "gsm8k 5-fold":
            test = "gsm8k"
            scores = _oof(X[test], *y[test], KFold(5, shuffle=True, random_state=0).split(X[test]), alpha)
        elif " -> " in name:
            sources, test = name.split(" -> ")
            train = sources.split("+")
            import scipy.sparse as sp

            coef, intercept = fit_raw(
                sp.vstack([X[t] for t in train], format="csr"),
                np.concatenate([y[t][0] for t in train]),
                np.concatenate([y[t][1] for t in train]),
                alpha,
            )
            scores = X[test] @ coef + intercept
        else:
            raise ValueError(f"unknown protocol {name!r}")
        small, large = y[test]
        q_small, q_large = float(small.mean()), float(large.mean())
        curves = {
            "llm-triage": routing_curve(scores, small, large),
            "random": random_curve(small, large),
            "oracle": oracle_curve(small, large),
        }
        rows = [
            Row.of(router, route_metrics(c, q_small, q_large, price_small, price_large)) for router, c in curves.items()
        ]
        rows += _fixed_rows(price_small, price_large)
        results.append(ProtocolResult(name, test, len(small), q_small, q_large, rows, curves))
    return results


def _fixed_rows(price_small: float, price_large: float) -> list[Row]:
    nan = float("nan")
    return [
        Row("always-small", 0.0, nan, nan, nan, 1.0, 1 - price_small / price_large),
        Row("always-large", 1.0, nan, nan, 1.0, 0.0, 0.0),
    ]


def _cascade(
    bench: Benchmark, X_prompt: Any, spec: FeatureSpec, alpha: float, price_small: float, price_large: float
) -> ProtocolResult:
    """Prompt-only routing and the cascade on the same items and folds; x is the share sent to (routing) or
    escalated to (cascade) the large model."""
    items = [i for i in bench.items if i.small_answer is not None]
    if len(items) != len(bench.items):
        raise ValueError(f"{bench.name}: a cascade needs every item's recorded small-model answer")
    small, large = _outcomes(bench)
    X_answer = feature_matrix(replace(spec, answer=True), [answer_text(i.prompt, i.small_answer or "") for i in items])
    folds = list(KFold(5, shuffle=True, random_state=0).split(X_prompt))
    routed = _oof(X_prompt, small, large, iter(folds), alpha)
    cascaded = _oof(X_answer, small, large, iter(folds), alpha)
    q_small, q_large = float(small.mean()), float(large.mean())
    curves = {
        "prompt routing": routing_curve(routed, small, large),
        "cascade (answer scorer)": routing_curve(cascaded, small, large),
        "random": random_curve(small, large),
        "oracle": oracle_curve(small, large),
    }
    rows = [
        Row.of(
            router,
            route_metrics(c, q_small, q_large, price_small, price_large, cascade=router.startswith("cascade")),
        )
        for router, c in curves.items()
    ]
    rows += _fixed_rows(price_small, price_large)
    return ProtocolResult("gsm8k cascade 5-fold", bench.name, len(items), q_small, q_large, rows, curves)
