"""The canary's Markdown report and its Evidently comparison of the two models' replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spark_trainer.canary import statistics
from spark_trainer.canary.replay import Reply
from spark_trainer.params import MetricRule

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


TIMINGS = "metrics/canary_promote.timings.json"
NO_CHAMPION = "n/a (no champion)"


def markdown(metrics: dict[str, Any], rules: dict[str, MetricRule] | None = None) -> str:
    """The git-tracked report, from the metrics file's content only (`steps` without the
    wall-clock numbers), so that reruns of the same inputs write it byte for byte."""
    challenger = f"version {metrics['challenger_version']}"
    lines = [f"# Canary: {metrics['model']}", "",
             f"- challenger: {challenger}{_signed(metrics['challenger_signed'], metrics.get('challenger_signing'))}",
             f"- compared with: {_champion(metrics)}"]
    if metrics.get("comparison"):
        lines.append(f"- comparison: {metrics['comparison']}")
    if "champion_alias_after" in metrics:
        after = metrics["champion_alias_after"]
        lines.append(f"- the registry's `champion` after this run: {f'version {after}' if after else 'unset'}")
    if "challenger_release_override" in metrics:
        lines.append(f"- release override of {challenger} (its bundle's lineage.json): "
                     f"{_override(metrics['challenger_release_override'])}")
    if metrics.get("champion_version") is not None and "champion_release_override" in metrics:
        lines.append(f"- release override of champion version {metrics['champion_version']}: "
                     f"{_override(metrics['champion_release_override'])}")
    if metrics.get("chat_template"):
        arms = [arm for arm, chat in metrics["chat_template"].items() if chat]
        lines.append("- safety probes sent through the chat template (`evaluate_safety.chat`) to: "
                     f"{', '.join(arms) if arms else 'neither model (plain text)'}")
    lines += [f"- mode: {metrics['mode']}, traffic steps: {metrics['steps_planned']} %",
              f"- **decision: {metrics['decision']}** → status `{metrics['status']}`",
              f"- reason: {metrics['reason']}", ""]
    if rules:
        lines += _rules(rules)
    volatile = sorted(statistics.VOLATILE)
    for s in metrics["steps"]:
        lines += [f"## Step {s['traffic_percent']} %: {s['outcome']}", "", s["reason"], ""]
        errors = ", ".join(f"{arm} {e['errors']}/{e['requests']} failed" for arm, e in sorted(s["errors"].items()))
        lines += [f"Requests: {errors}.", ""]
        rows = {m: r for m, r in sorted(s["metrics"].items()) if m not in volatile}
        floors = all(r.get("test") == "floor" for r in s["metrics"].values())
        if rows:
            lines += ["| metric | test | champion | challenger | gain | interval | statistic | p | verdict |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, m in rows.items():
                if floors:  # a lone challenger against its floor: nothing to pair it with
                    cells = [NO_CHAMPION, _f(m.get("challenger")), *[NO_CHAMPION] * 4]
                else:
                    interval = ("n/a" if m.get("ci_low") is None
                                else f"[{_f(m.get('ci_low'))}, {_f(m.get('ci_high'))}]")
                    cells = [_f(m.get("champion")), _f(m.get("challenger")), _f(m.get("gain")), interval,
                             _f(m.get("statistic")), _f(m.get("p_value"))]
                lines.append(f"| {name} | {m.get('test') or 'n/a'} | " + " | ".join(cells) + f" | {m['verdict']} |")
            lines.append("")
        for name in (m for m in volatile if m in s["metrics"]):
            lines += [(f"{name}: **{s['metrics'][name]['verdict']}** (wall-clock; its figures are in `{TIMINGS}` "
                       f"under `latency.step_{s['traffic_percent']}.{name}.*`)."), ""]
    lines += ["Wall-clock figures (latency, timings) change on every run: they are only in the git-ignored",
              f"`{TIMINGS}`, so this report and `metrics/canary_promote.json` are the same, byte for byte,",
              "on every rerun of the same inputs.", ""]
    return "\n".join(lines)


def _champion(metrics: dict[str, Any]) -> str:
    if metrics.get("champion_model"):
        return (f"local model `{metrics['champion_model']}` (canary_promote.serving.champion.model): a folder, not "
                "a registry version, so it carries no bundle signature")
    if metrics["champion_version"] is None:
        return f"{NO_CHAMPION} before version {metrics['challenger_version']}: the rules' floors only"
    return f"version {metrics['champion_version']}{_signed(metrics['champion_signed'], metrics.get('champion_signing'))}"


def _rules(rules: dict[str, MetricRule]) -> list[str]:
    lines = ["## Rules", "",
             ("The interval of each gain is read in the metric's good direction (relative: as a fraction of the "
              "champion's value). An objective passes with a significant gain of at least `min_gain` (with "
              "`min_gain` 0, also when non-inferior: interval above `-margin`); a guardrail passes when "
              "non-inferior; either fails when its interval lies below `-margin` or the challenger is beyond its "
              "`floor`. With no champion, only the floors apply."), "",
             "| metric | role | direction | min_gain | margin | relative | floor |",
             "|---|---|---|---:|---:|---|---:|"]
    for name, r in sorted(rules.items()):
        floor = "none" if r.floor is None else f"{r.floor:g}"
        lines.append(f"| {name} | {r.role} | {r.direction} | {r.min_gain:g} | {r.margin:g} | "
                     f"{'yes' if r.relative else 'no'} | {floor} |")
    return lines + [""]


def _override(override: Any) -> str:
    """lineage.json's `release_override`: null, or {gates, reason, failed: {gate: {pass_rate,
    min_pass_rate}}, unused: [gates that did not fail], ...} as package records it."""
    if not override:
        return "none"
    if not isinstance(override, dict):
        return f"**{override}**"
    gates = override.get("gates") or []
    parts = [f"**released despite its gates: {', '.join(f'`{g}`' for g in gates) or 'none named'}**",
             f"reason: {override.get('reason') or 'none given'}"]
    failed = override.get("failed")
    if isinstance(failed, dict) and failed:
        parts.append("failed: " + ", ".join(
            f"`{g}` (pass rate {_f(r.get('pass_rate'))}, min {_f(r.get('min_pass_rate'))})" if isinstance(r, dict)
            else f"`{g}`" for g, r in sorted(failed.items())))
    for key, value in sorted(override.items()):
        if key not in ("gates", "reason", "failed") and value not in (None, [], {}):
            parts.append(f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    return "; ".join(parts)


def _signed(signed: bool | None, state: str | None = None) -> str:
    """What verifying the fetched bundle proved (`state`), else the version's
    `spark_trainer.signed` tag (None: no version)."""
    if signed is None:
        return ""
    if not signed:
        return ", **UNSIGNED** (nothing proves who built it)"
    return f", {state}" if state else ", signed"


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
