"""The bundle's model card: a Hugging Face README.md with YAML metadata (license, base
model, datasets, model-index results) and sections for the release gates, intended use,
limitations, evaluation (against the base model where its metrics are given), safety and
signature, built with huggingface_hub's ModelCardData. An unsigned bundle says so in its
metadata tags and in its own section; a release override is shown with its reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from spark_trainer.errors import BundleError, ParamsError
from spark_trainer.packaging.gates import Gate
from spark_trainer.params import PackageParams

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
FORMATS = ("continuation", "letter")


def base_model(value: str) -> tuple[str | None, str]:
    """(the hub id for the card's `base_model` metadata or None, the base model in words)
    from `package.base_model`: '', a hub id, or the import_model metrics JSON."""
    if not value:
        return None, "none (the pipeline built the model from a config, `train.model.source: config`)"
    if value.endswith(".json"):
        path = Path(value)
        if not path.is_file():
            raise BundleError(f"package.base_model: {value} not found: run the import_model stage, or give a hub "
                              "id, or '' for a model built from a config")
        info = json.loads(path.read_text(encoding="utf-8"))
        if not info.get("imported"):
            raise ParamsError(f"package.base_model names {value}, but import_model imported nothing (source "
                              f"{info.get('source')!r}): set package.base_model to '' for a model built from a "
                              "config, or import the base model first")
        ref = str(info["reference"])
        facts = [f"sha256 {info['sha256']}", f"license {info.get('license') or 'unknown'}"]
        if info.get("package"):
            facts.insert(0, f"package {info['package']} {info.get('package_version') or ''}".rstrip())
        if info.get("parameters"):
            facts.append(f"{info.get('architecture') or 'model'} with {info['parameters'] / 1e6:.1f}M parameters, "
                         f"saved as {info.get('dtype')}")
        hub = ref if info.get("source") == "hub" and HUB_ID.fullmatch(ref) else None
        return hub, f"`{ref}`, imported by the import_model stage from its {info['source']} source ({'; '.join(facts)})"
    if HUB_ID.fullmatch(value) and not Path(value).exists():
        return value, f"[{value}](https://huggingface.co/{value})"
    raise ParamsError(f"package.base_model {value!r} is neither a hub id (owner/name) nor the import_model "
                      "metrics JSON: a local folder means nothing to a reader of the card. Give the hub id it came "
                      "from, metrics/import_model.json for an imported model, or '' for one built from a config")


def eval_results(p: PackageParams, evaluations: dict[str, Any]) -> list:
    """model-index entries from the MMLU and safety summaries that the bundle carries."""
    from huggingface_hub import EvalResult

    results = []
    for name, data in sorted(evaluations.items()):
        for fmt in FORMATS:
            overall = _accuracy(data, fmt).get("overall")
            if overall:
                results.append(EvalResult(task_type="multiple-choice", dataset_type="mmlu", dataset_name=name,
                                          metric_type="accuracy", metric_value=overall["acc"],
                                          metric_name=f"{fmt} accuracy"))
        for probe, summary in sorted(data.get("probes", {}).items()):
            results.append(EvalResult(task_type="text-generation", dataset_type="safety-probes",
                                      dataset_name=name, metric_type="pass_rate",
                                      metric_value=summary["pass_rate"], metric_name=f"{probe} pass rate"))
    return results


def _accuracy(data: dict[str, Any], fmt: str) -> dict[str, Any]:
    """An MMLU summary's `acc` block for one format ({} when absent)."""
    block = data.get(fmt)
    return (block.get("acc") or {}) if isinstance(block, dict) else {}


def base_comparison(evaluations: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Candidate against base per format, overall and per subject, then one plain sentence
    per format saying whether the candidate is below the base."""
    lines, verdicts = [], []
    for name, reference in sorted(base.items()):
        for fmt in FORMATS:
            ours, theirs = _accuracy(evaluations[name], fmt), _accuracy(reference, fmt)
            if not (ours.get("overall") and theirs.get("overall")):
                continue
            rows = [("overall", ours["overall"], theirs["overall"])]
            rows += [(s, ours["subjects"][s], (theirs.get("subjects") or {}).get(s))
                     for s in sorted(ours.get("subjects") or {})]
            for subject, a, b in rows:
                if b is None:
                    lines.append(f"| {name} | {fmt} | {subject} | {a['acc']:.4f} | n/a | n/a |")
                else:
                    lines.append(f"| {name} | {fmt} | {subject} | {a['acc']:.4f} | {b['acc']:.4f} | "
                                 f"{a['acc'] - b['acc']:+.4f} |")
            a, b = ours["overall"], theirs["overall"]
            diff = a["acc"] - b["acc"]
            # On the same questions a difference is a number of questions: small ones are within noise.
            count = f", {abs(round(diff * a['n']))} of {a['n']} questions" if a.get("n") == b.get("n") else ""
            below = [s for s, x, y in rows[1:] if y is not None and x["acc"] < y["acc"]]
            where = "**below the base model**" if diff < 0 else "above the base model" if diff > 0 else (
                "level with the base model")
            verdicts.append(f"- The candidate is {where} in {name} {fmt} accuracy: "
                            f"{a['acc']:.4f} against {b['acc']:.4f} ({diff:+.4f}{count}).")
            if below:
                verdicts[-1] += f" Below it in {len(below)} of {len(rows) - 1} subjects: {', '.join(below)}."
    if not lines:
        return []
    return [*verdicts, "", "| evaluation | format | subject | candidate | base | difference |",
            "|---|---|---|---:|---:|---:|", *lines]


def gate_lines(found: list[Gate], override: dict[str, Any] | None) -> list[str]:
    if not found:
        return ["No release gates: no safety evaluation was bundled."]
    lines = ["A gate is a safety probe's pass rate against the minimum its evaluation recorded.", "",
             "| gate | pass rate | min pass rate | result |", "|---|---:|---:|---|"]
    for g in found:
        bar = "not recorded" if g.min_pass_rate is None else f"{g.min_pass_rate:.2f}"
        result = "pass" if g.passed else ("**FAIL**, overridden" if override else "**FAIL**")
        lines.append(f"| {g.name} | {g.pass_rate:.2f} | {bar} | {result} |")
    lines.append("")
    if override is None:
        lines.append("Every gate passed.")
        return lines
    failed = [g for g in found if not g.passed]
    if failed:
        lines.append(f"**Released despite {len(failed)} failed gate(s)** ({', '.join(g.name for g in failed)}), "
                     "by an explicit override (`package.release_override`). Its reason:")
    else:
        lines.append("No gate failed; the override (`package.release_override`) was not needed. Its reason:")
    lines += ["", f"> {override['reason'].strip()}"]
    if override["unused"]:
        lines += ["", f"The override also names gates that did not fail (unused): {', '.join(override['unused'])}."]
    return lines


def safety_lines(evaluations: dict[str, Any]) -> list[str]:
    lines = []
    for name, data in sorted(evaluations.items()):
        for probe, s in sorted(data.get("probes", {}).items()):
            verdict = "pass" if s["passed"] else f"FAIL ({s['severity']})"
            bar = s.get("min_pass_rate")
            bar = "not recorded" if bar is None else f"{bar:.2f}"
            lines.append(f"| {name} | {probe} | {s['pass_rate']:.2f} | {bar} | {s['items']} | {verdict} |")
        if "critical_issues" in data:
            lines.append(f"| {name} | critical issues | {data['critical_issues']} | | | |")
    return lines


def signature_lines(signer: str | None) -> list[str]:
    if signer is None:
        return [("**Unsigned.** No signing key was configured (`package.signing_key`), so the bundle has no "
                 "`model.sig` and nothing proves who built it: `MANIFEST.json` detects changed files, not a "
                 "substituted bundle. A release policy with trusted keys (`register.trusted_public_keys`) "
                 "refuses it.")]
    return [(f"Signed in the OpenSSF model-signing format by the key with fingerprint `{signer}` (the sha256 of "
             "its public key, the key hint in `model.sig`): `model.sig` covers every file, `MANIFEST.json` "
             "included. The signature proves who signed only when checked against that public key:"), "",
            "```bash",
            "model_signing verify key <bundle> --signature <bundle>/model.sig --public_key signing.pub",
            "python scripts/verify_bundle.py <bundle> --trusted-key signing.pub",
            "```"]


def render(p: PackageParams, evaluations: dict[str, Any], lineage: dict[str, Any], signer: str | None,
           found: list[Gate], base: dict[str, Any]) -> str:
    """`signer`: sha256:<fingerprint> of the signing key, None for an unsigned bundle;
    `found`: the release gates; `base`: the base model's summaries by evaluation name."""
    from huggingface_hub import ModelCardData

    override = lineage.get("release_override")
    hub_id, base_text = base_model(p.base_model)
    tags = ["spark-trainer", *(["unsigned"] if signer is None else []), *(["release-override"] if override else [])]
    data = ModelCardData(license=p.license, base_model=hub_id, datasets=list(p.datasets),
                         library_name="transformers", pipeline_tag="text-generation", tags=tags,
                         model_name=p.name, eval_results=eval_results(p, evaluations) or None)
    results = [f"| {r.dataset_name} | {r.metric_name} | {r.metric_value:.4f} |" for r in (data.eval_results or [])]
    safety = safety_lines(evaluations)
    comparison = base_comparison(evaluations, base)
    parts = [
        "---", data.to_yaml(), "---", "",
        f"# {p.name}", "",
        (f"Built by the SparkTrainer pipeline from `{p.model}`. Base model: {base_text}. "
         "`lineage.json` lists the DVC hash of every input of the package stage (model, data, evaluations, "
         "code) and a hash of its params; "
         "`MANIFEST.json` lists the sha256 of every file (`python scripts/verify_bundle.py <bundle>` checks "
         "them)."), "",
        "## Release gates", "", *gate_lines(found, override), "",
        "## Intended use", "", p.intended_use, "",
        "## Limitations", "", *[f"- {item}" for item in p.limitations], "",
        "## Evaluation", "",
        *(["| evaluation | metric | value |", "|---|---|---|", *results] if results else ["No evaluations."]), "",
        *(["### Against the base model", "", *comparison, ""] if comparison else []),
        "## Safety", "",
        *(["| evaluation | probe | pass rate | min pass rate | items | verdict |", "|---|---|---|---|---|---|",
           *safety] if safety else ["No safety evaluation was bundled."]), "",
        "## Signature", "", *signature_lines(signer), "",
    ]
    return "\n".join(parts)
