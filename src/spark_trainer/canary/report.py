"""The canary's Markdown report and its Evidently comparison of the two models' replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spark_trainer.canary.replay import Reply

COLUMNS = ("correct", "answer_f1", "safety_pass", "latency_ms", "reply_chars")


def frame(replies: list[Reply]):
    import pandas as pd

    rows = [{"correct": r.scores.get("correct"), "answer_f1": r.scores.get("answer_f1"),
             "safety_pass": r.scores.get("safety_pass"), "latency_ms": r.latency_ms, "reply_chars": len(r.text)}
            for r in replies if not r.error]
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(float)


def evidently_html(champion: list[Reply], challenger: list[Reply], path: Path) -> dict[str, Any]:
    """Data drift of the challenger's replies (current) against the champion's (reference);
    with no champion, a summary of the challenger's replies alone."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    ref, cur = frame(champion), frame(challenger)
    if cur.empty:  # every challenger request failed: nothing to describe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("<html><body><h1>No Evidently report</h1><p>The challenger answered no request "
                        "successfully; see reports/canary.md for the errors.</p></body></html>\n", encoding="utf-8")
        return {}
    definition = DataDefinition(numerical_columns=list(COLUMNS))
    current = Dataset.from_pandas(cur, data_definition=definition)
    if ref.empty:
        snapshot = Report([DataSummaryPreset()]).run(current_data=current)
    else:
        snapshot = Report([DataDriftPreset()]).run(
            current_data=current, reference_data=Dataset.from_pandas(ref, data_definition=definition))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    snapshot.save_html(str(tmp))
    tmp.replace(path)
    return snapshot.dict()


def markdown(metrics: dict[str, Any]) -> str:
    lines = [f"# Canary: {metrics['model']}", "",
             f"- challenger: version {metrics['challenger_version']}{_signed(metrics['challenger_signed'])}",
             f"- compared with: {_version(metrics['champion_version'])}{_signed(metrics['champion_signed'])}",
             f"- mode: {metrics['mode']}, traffic steps: {metrics['steps_planned']} %",
             f"- **decision: {metrics['decision']}** → status `{metrics['status']}`",
             f"- reason: {metrics['reason']}", ""]
    for s in metrics["steps"]:
        lines += [f"## Step {s['traffic_percent']} %: {s['outcome']}", "", s["reason"], ""]
        errors = ", ".join(f"{arm} {e['errors']}/{e['requests']} failed" for arm, e in sorted(s["errors"].items()))
        lines += [f"Requests: {errors}.", ""]
        if s["metrics"]:
            lines += ["| metric | test | champion | challenger | gain | interval | statistic | p | verdict |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, m in sorted(s["metrics"].items()):
                lines.append(f"| {name} | {m.get('test', '')} | {_f(m.get('champion'))} | {_f(m.get('challenger'))} "
                             f"| {_f(m.get('gain'))} | [{_f(m.get('ci_low'))}, {_f(m.get('ci_high'))}] "
                             f"| {_f(m.get('statistic'))} | {_f(m.get('p_value'))} | {m['verdict']} |")
            lines.append("")
    lines += ["Latency numbers vary from run to run; they are in the report and the timings file, not in",
              "`metrics/canary_promote.json`, which two runs of the same commit reproduce byte for byte.", ""]
    return "\n".join(lines)


def _version(v: Any) -> str:
    return f"version {v}" if v is not None else "nothing (no champion yet: absolute floors only)"


def _signed(signed: bool | None) -> str:
    """From the version's `spark_trainer.signed` tag (None: no version)."""
    if signed is None:
        return ""
    return ", signed" if signed else ", **UNSIGNED** (nothing proves who built it)"


def _f(x: Any) -> str:
    return "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
