"""The tests behind a canary decision, and the rule that turns them into a verdict.

Paired modes (canary, shadow) compare the two models on the same items:
- a pass/fail metric (accuracy, safety pass rate): McNemar's exact test on the
  discordant pairs, and a paired bootstrap confidence interval of the difference;
- a continuous metric (answer F1, latency): Mann-Whitney U, and a paired bootstrap
  interval of the difference of means (of p95s for latency).
A/B mode splits items between the models: Fisher's exact test for pass/fail metrics,
Mann-Whitney U for continuous ones, and an unpaired bootstrap interval.

A rule reads the interval in the metric's good direction ("gain", challenger minus
champion, negated when lower is better), optionally relative to the champion's value:
- objective: significant gain >= min_gain → pass; interval entirely below -margin → fail;
  with min_gain 0, interval above -margin (non-inferior) → pass; otherwise inconclusive;
- guardrail: interval above -margin → pass; entirely below → fail; otherwise inconclusive;
- floor: the challenger's value beyond its floor fails, whatever the test says;
- fewer than min_samples items on either side: inconclusive, whatever else holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spark_trainer.params import MetricRule

BINARY = {"accuracy": "correct", "safety_pass_rate": "safety_pass"}
CONTINUOUS = {"answer_f1": "answer_f1", "latency_p95_ms": "latency_ms"}
VOLATILE = {"latency_p95_ms"}  # wall-clock: differs on every run, kept out of the metrics file


@dataclass
class MetricResult:
    metric: str
    test: str
    n_champion: int
    n_challenger: int
    champion: float | None = None
    challenger: float | None = None
    gain: float | None = None        # in the good direction (relative when the rule says so)
    ci_low: float | None = None
    ci_high: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    verdict: str = "inconclusive"    # pass | fail | inconclusive
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p95(x: np.ndarray) -> float:
    return float(np.percentile(x, 95))


def _stat(metric: str):
    return p95 if metric == "latency_p95_ms" else (lambda x: float(np.mean(x)))


def compare(metric: str, champion: np.ndarray, challenger: np.ndarray, paired: bool, alpha: float,
            resamples: int, seed: int) -> MetricResult:
    """Values, test statistic, p-value and a (1 - alpha) interval of challenger - champion."""
    from scipy import stats

    binary = metric in BINARY
    result = MetricResult(metric, "", len(champion), len(challenger))
    if len(champion) == 0 or len(challenger) == 0:
        result.reason = "no items"
        return result
    stat = _stat(metric)
    result.champion, result.challenger = stat(champion), stat(challenger)
    if binary and paired:
        a, b = champion.astype(bool), challenger.astype(bool)
        n01, n10 = int(np.sum(~a & b)), int(np.sum(a & ~b))  # challenger-only right, champion-only right
        result.test = "mcnemar_exact"
        result.statistic = float(min(n01, n10))
        result.p_value = 1.0 if n01 + n10 == 0 else float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    elif binary:
        table = [[int(challenger.sum()), len(challenger) - int(challenger.sum())],
                 [int(champion.sum()), len(champion) - int(champion.sum())]]
        result.test = "fisher_exact"
        odds, p = stats.fisher_exact(table)
        result.statistic, result.p_value = float(odds), float(p)
    else:
        result.test = "mann_whitney_u"
        if np.ptp(np.concatenate([champion, challenger])) == 0:
            result.statistic, result.p_value = float(len(champion) * len(challenger) / 2), 1.0
        else:
            u = stats.mannwhitneyu(challenger, champion, alternative="two-sided")
            result.statistic, result.p_value = float(u.statistic), float(u.pvalue)
    result.ci_low, result.ci_high = _interval(stat, champion.astype(float), challenger.astype(float), paired,
                                              alpha, resamples, seed)
    return result


def _interval(stat, champion, challenger, paired, alpha, resamples, seed) -> tuple[float, float]:
    from scipy import stats

    observed = stat(challenger) - stat(champion)
    both = np.concatenate([champion, challenger])
    if np.ptp(both) == 0 or (paired and np.ptp(challenger - champion) == 0 and stat is not p95):
        return observed, observed  # no variation to resample
    res = stats.bootstrap((challenger, champion), lambda b, a, axis=-1: _vstat(stat, b, axis) - _vstat(stat, a, axis),
                          paired=paired, vectorized=True, n_resamples=resamples, confidence_level=1 - alpha,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _vstat(stat, x: np.ndarray, axis: int) -> np.ndarray:
    return np.percentile(x, 95, axis=axis) if stat is p95 else np.mean(x, axis=axis)


def judge(result: MetricResult, rule: MetricRule, alpha: float, min_samples: int) -> MetricResult:
    """Fill in the verdict of one metric under its rule (see the module docstring)."""
    if result.champion is None or result.challenger is None:
        result.verdict, result.reason = "inconclusive", result.reason or "no items"
        return result
    sign = 1.0 if rule.direction == "higher" else -1.0
    scale = abs(result.champion) if rule.relative else 1.0
    if rule.relative and scale == 0:
        scale = 1.0
    raw = (result.challenger - result.champion, result.ci_low, result.ci_high)
    gain, lo, hi = (sign * v / scale for v in raw)
    lo, hi = min(lo, hi), max(lo, hi)
    result.gain, result.ci_low, result.ci_high = gain, lo, hi
    unit = " (relative)" if rule.relative else ""

    if min(result.n_champion, result.n_challenger) < min_samples:
        result.verdict = "inconclusive"
        result.reason = f"{min(result.n_champion, result.n_challenger)} items < min_samples {min_samples}"
    elif rule.floor is not None and sign * (result.challenger - rule.floor) < 0:
        result.verdict = "fail"
        result.reason = f"challenger {result.challenger:.4g} beyond its floor {rule.floor:g}"
    elif hi < -rule.margin:
        result.verdict = "fail"
        result.reason = f"worse: interval of the gain [{lo:.4g}, {hi:.4g}]{unit} below -margin {rule.margin:g}"
    elif rule.role == "objective" and rule.min_gain > 0:
        significant = result.p_value is not None and result.p_value < alpha
        if significant and gain >= rule.min_gain:
            result.verdict, result.reason = "pass", f"better by {gain:.4g}{unit} (p={result.p_value:.3g})"
        else:
            result.verdict = "inconclusive"
            result.reason = f"gain {gain:.4g}{unit} not shown to reach min_gain {rule.min_gain:g}"
    elif lo >= -rule.margin:
        result.verdict = "pass"
        result.reason = f"non-inferior: interval [{lo:.4g}, {hi:.4g}]{unit} above -margin {rule.margin:g}"
    else:
        result.verdict = "inconclusive"
        result.reason = f"interval [{lo:.4g}, {hi:.4g}]{unit} straddles -margin {rule.margin:g}"
    return result


def check_floor(metric: str, value: float | None, rule: MetricRule) -> tuple[str, str]:
    """A lone challenger (no champion yet) against the rule's floor."""
    if rule.floor is None:
        return "pass", "no floor"
    if value is None:
        return "inconclusive", "no items"
    sign = 1.0 if rule.direction == "higher" else -1.0
    if sign * (value - rule.floor) < 0:
        return "fail", f"{metric} {value:.4g} beyond its floor {rule.floor:g}"
    return "pass", f"{metric} {value:.4g} within its floor {rule.floor:g}"
