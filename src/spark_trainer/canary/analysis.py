"""One canary step's analysis: request errors first, then every metric under its rule.

Outcome: Failed when the challenger's errors pass `failure_limit` or
`consecutive_error_limit`, or any metric fails; Inconclusive when the champion's
endpoint fails (nothing to compare with) or any metric is inconclusive (too few items,
an interval that straddles the margin); Successful when every metric passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_trainer.canary import statistics
from spark_trainer.canary.replay import Reply, error_summary
from spark_trainer.params import AnalysisParams, MetricRule


def values(replies: list[Reply], metric: str) -> dict[str, float]:
    """item id -> the per-item value a metric is computed from (successful replies only)."""
    key = statistics.BINARY.get(metric) or statistics.CONTINUOUS[metric]
    if key == "latency_ms":
        return {r.item.id: r.latency_ms for r in replies if not r.error}
    return {r.item.id: float(r.scores[key]) for r in replies if not r.error and key in r.scores}


def over_limits(errors: dict[str, Any], a: AnalysisParams) -> bool:
    """More failed requests than `failure_limit` allows, or `consecutive_error_limit` in a row."""
    return bool(errors["requests"]) and (errors["errors"] / errors["requests"] > a.failure_limit
                                         or errors["max_consecutive_errors"] >= a.consecutive_error_limit)


def step(replies: dict[str, list[Reply]], paired: bool, rules: dict[str, MetricRule], a: AnalysisParams,
         percent: int) -> dict[str, Any]:
    errors = {arm: error_summary(rs) for arm, rs in replies.items()}
    out: dict[str, Any] = {"traffic_percent": percent, "errors": errors, "metrics": {}}
    chal = errors["challenger"]
    if over_limits(chal, a):
        out["outcome"] = "Failed"
        out["reason"] = (f"challenger requests failed: {chal['errors']}/{chal['requests']} (limit "
                         f"{a.failure_limit:g}), {chal['max_consecutive_errors']} in a row (limit "
                         f"{a.consecutive_error_limit}); first: {chal['first_error']}")
        return out
    champ = errors["champion"]
    if over_limits(champ, a):
        out["outcome"] = "Inconclusive"
        out["reason"] = f"champion requests failed ({champ['errors']}/{champ['requests']}; first: " \
                        f"{champ['first_error']}): nothing to compare with"
        return out

    for metric, rule in sorted(rules.items()):
        by_arm = {arm: values(rs, metric) for arm, rs in replies.items()}
        if paired:
            ids = sorted(set(by_arm["champion"]) & set(by_arm["challenger"]))
            x, y = (np.array([by_arm[arm][i] for i in ids]) for arm in ("champion", "challenger"))
        else:
            x, y = (np.array([v for _, v in sorted(by_arm[arm].items())]) for arm in ("champion", "challenger"))
        result = statistics.compare(metric, x, y, paired, a.alpha, a.bootstrap_resamples, a.seed)
        out["metrics"][metric] = statistics.judge(result, rule, a.alpha, a.min_samples).as_dict()

    verdicts = {m: r["verdict"] for m, r in out["metrics"].items()}
    if "fail" in verdicts.values():
        out["outcome"] = "Failed"
        out["reason"] = _reasons(out["metrics"], "fail")
    elif "inconclusive" in verdicts.values():
        out["outcome"] = "Inconclusive"
        out["reason"] = _reasons(out["metrics"], "inconclusive")
    else:
        out["outcome"] = "Successful"
        out["reason"] = "every metric passes its rule"
    return out


def _reasons(metrics: dict[str, dict[str, Any]], verdict: str) -> str:
    """The reasons of the metrics with this verdict; a wall-clock metric's numbers stay
    out of it (they differ on every run), its report row has them."""
    return "; ".join(f"{m}: {r['reason']}" if m not in statistics.VOLATILE else f"{m}: {verdict} (see the report)"
                     for m, r in sorted(metrics.items()) if r["verdict"] == verdict)


def split_volatile(steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steps without the numbers of wall-clock metrics (for the metrics file), and those
    numbers by step (for the timings file)."""
    stable, volatile = [], {}
    for s in steps:
        s = {**s, "metrics": dict(s["metrics"])}
        for m in statistics.VOLATILE & set(s["metrics"]):
            volatile[f"step_{s['traffic_percent']}.{m}"] = s["metrics"][m]
            s["metrics"][m] = {"verdict": s["metrics"][m]["verdict"], "test": s["metrics"][m].get("test")}
        stable.append(s)
    return stable, volatile


def first_champion(replies: list[Reply], rules: dict[str, MetricRule], a: AnalysisParams) -> dict[str, Any]:
    """No champion yet: the challenger alone against the rules' absolute floors."""
    errors = error_summary(replies)
    out: dict[str, Any] = {"traffic_percent": 100, "errors": {"challenger": errors}, "metrics": {}}
    if over_limits(errors, a):
        out["outcome"] = "Failed"
        out["reason"] = f"challenger requests failed: {errors['errors']}/{errors['requests']}; " \
                        f"first: {errors['first_error']}"
        return out
    for metric, rule in sorted(rules.items()):
        vals = np.array(list(values(replies, metric).values()))
        value = (statistics.p95(vals) if metric == "latency_p95_ms" else float(vals.mean())) if len(vals) else None
        verdict, reason = statistics.check_floor(metric, value, rule)
        out["metrics"][metric] = {"challenger": value, "n_challenger": len(vals), "floor": rule.floor,
                                  "verdict": verdict, "reason": reason, "test": "floor"}
    verdicts = [m["verdict"] for m in out["metrics"].values()]
    out["outcome"] = "Failed" if "fail" in verdicts else "Inconclusive" if "inconclusive" in verdicts \
        else "Successful"
    out["reason"] = "; ".join(_reasons(out["metrics"], v) for v in ("fail", "inconclusive")
                              if v in verdicts) or "every floor passes"
    return out
