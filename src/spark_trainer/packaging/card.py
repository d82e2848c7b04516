"""The bundle's model card: a Hugging Face README.md with YAML metadata (license, base
model, datasets, model-index results) and sections for intended use, limitations,
evaluation, safety and signature, built with huggingface_hub's ModelCardData. An unsigned
bundle says so in its metadata tags and in its own section."""

from __future__ import annotations

from typing import Any

from spark_trainer.params import PackageParams


def eval_results(p: PackageParams, evaluations: dict[str, Any]) -> list:
    """model-index entries from the MMLU and safety summaries that the bundle carries."""
    from huggingface_hub import EvalResult

    results = []
    for name, data in sorted(evaluations.items()):
        for fmt in ("continuation", "letter"):
            overall = data.get(fmt, {}).get("acc", {}).get("overall") if isinstance(data.get(fmt), dict) else None
            if overall:
                results.append(EvalResult(task_type="multiple-choice", dataset_type="mmlu", dataset_name=name,
                                          metric_type="accuracy", metric_value=overall["acc"],
                                          metric_name=f"{fmt} accuracy"))
        for probe, summary in sorted(data.get("probes", {}).items()):
            results.append(EvalResult(task_type="text-generation", dataset_type="safety-probes",
                                      dataset_name=name, metric_type="pass_rate",
                                      metric_value=summary["pass_rate"], metric_name=f"{probe} pass rate"))
    return results


def safety_lines(evaluations: dict[str, Any]) -> list[str]:
    lines = []
    for name, data in sorted(evaluations.items()):
        for probe, s in sorted(data.get("probes", {}).items()):
            verdict = "pass" if s["passed"] else f"FAIL ({s['severity']})"
            lines.append(f"| {name} | {probe} | {s['pass_rate']:.2f} | {s['items']} | {verdict} |")
        if "critical_issues" in data:
            lines.append(f"| {name} | critical issues | {data['critical_issues']} | | |")
    return lines


def signature_lines(signed: bool) -> list[str]:
    if not signed:
        return [("**Unsigned.** No signing key was configured (`package.signing_key`), so nothing proves who "
                 "built this bundle: `MANIFEST.json` detects changed files, not a substituted bundle. A release "
                 "policy with trusted keys (`register.trusted_public_keys`) refuses it.")]
    return [("Signed in the OpenSSF model-signing format: `model.sig` covers every file, `MANIFEST.json` "
             "included. Check it against the signer's public key:"), "",
            "```bash",
            "model_signing verify key <bundle> --signature <bundle>/model.sig --public_key signing.pub",
            "python scripts/verify_bundle.py <bundle> --trusted-key signing.pub",
            "```"]


def render(p: PackageParams, evaluations: dict[str, Any], lineage: dict[str, Any], signed: bool) -> str:
    from huggingface_hub import ModelCardData

    tags = ["spark-trainer"] if signed else ["spark-trainer", "unsigned"]
    data = ModelCardData(license=p.license, base_model=p.base_model, datasets=list(p.datasets),
                         library_name="transformers", pipeline_tag="text-generation", tags=tags,
                         model_name=p.name, eval_results=eval_results(p, evaluations) or None)
    results = [f"| {r.dataset_name} | {r.metric_name} | {r.metric_value:.4f} |" for r in (data.eval_results or [])]
    safety = safety_lines(evaluations)
    parts = [
        "---", data.to_yaml(), "---", "",
        f"# {p.name}", "",
        (f"Built by the SparkTrainer pipeline from `{p.model}` (base model: `{p.base_model}`). "
         "`lineage.json` lists the DVC hashes of every upstream stage (code, data and models); "
         "`MANIFEST.json` lists the sha256 of every file (`python scripts/verify_bundle.py <bundle>` checks "
         "them)."), "",
        "## Intended use", "", p.intended_use, "",
        "## Limitations", "", *[f"- {item}" for item in p.limitations], "",
        "## Evaluation", "",
        *(["| evaluation | metric | value |", "|---|---|---|", *results] if results else ["No evaluations."]), "",
        "## Safety", "",
        *(["| evaluation | probe | pass rate | items | verdict |", "|---|---|---|---|---|", *safety]
          if safety else ["No safety evaluation was bundled."]), "",
        "## Signature", "", *signature_lines(signed), "",
    ]
    return "\n".join(parts)
