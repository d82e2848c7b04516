"""Params profiles: a named set of `-S` overrides in configs/profiles/<name>.yaml, run as one DVC experiment.

    python scripts/exp_profile.py smollm2            # dvc exp run -n smollm2 -S key=value ... (this workspace)
    python scripts/exp_profile.py smollm2 --queue    # the same, queued (`dvc queue start` runs it)
    python scripts/exp_profile.py smollm2 --save     # its metrics and reports into results/smollm2/ (for git)

A profile file mirrors params.yaml's nesting and holds only what changes; every leaf becomes
one `-S section.key=value`. The merged params are validated before DVC starts, so a typo or a
bad value stops here with the key named, not minutes later in a stage.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from spark_trainer.errors import ParamsError
from spark_trainer.params import PARAMS_FILE, dotted_get, read_yaml, validate_section
from spark_trainer.search import check_override

PROFILES_DIR = Path("configs/profiles")
RESULTS_DIR = Path("results")
# What --save copies from the experiment's commit: the metrics DVC tracks in git, and the reports.
SAVED = ("metrics", "reports", "dvc.lock")


def available(repo: Path = Path(".")) -> list[str]:
    return sorted(p.stem for p in (repo / PROFILES_DIR).glob("*.yaml"))


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every non-mapping value of `tree`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_set(text: str) -> tuple[str, Any]:
    """`key=value` as DVC reads it (the value as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"-S {text!r}: expected key=value")
    return key.strip(), yaml.safe_load(value)


def load(name: str, repo: Path = Path("."), params_file: str = PARAMS_FILE,
         extra: list[str] = ()) -> dict[str, Any]:
    """The profile's overrides, then `extra` ones (`key=value`, replacing the profile's),
    checked against params.yaml: each key must exist, and each section they touch must
    validate with all of them applied together."""
    path = repo / PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"no profile '{name}' ({path}); profiles: {', '.join(available(repo)) or 'none'}")
    tree = read_yaml(path) or {}
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: a profile is a mapping like params.yaml")
    overrides = {**leaves(tree), **dict(parse_set(text) for text in extra)}
    params = read_yaml(repo / params_file)
    for key, value in overrides.items():  # unknown keys, named with the closest valid one
        try:
            dotted_get(params, key)
        except KeyError:
            check_override(params, key, value, path)  # raises with the closest key
    merged = copy.deepcopy(params)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = merged
        for part in parents:
            node = node[part]
        node[last] = value
    for section in sorted({key.split(".")[0] for key in overrides}):
        validate_section(section, merged[section], source=f"{path} applied to {params_file}")
    return overrides


def override_value(value: Any) -> str:
    """A value in DVC's (Hydra's) override grammar: strings and lists as JSON, mappings as
    `{key: value, ...}` with bare keys, null, true/false, numbers as they are."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def set_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments that DVC's override grammar reads."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={override_value(value)}"]
    return args


def experiment_ref(name: str, repo: Path = Path(".")) -> str:
    """The git ref of the newest experiment called `name` (DVC keeps them under refs/exps)."""
    out = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for ref in out:
        if ref.rsplit("/", 1)[-1] == name:
            return ref
    raise ParamsError(f"no experiment named '{name}' (`dvc exp show`): run `python scripts/exp_profile.py {name}` first")


def _holds(params: dict, dotted: str, value: Any) -> bool:
    try:
        return dotted_get(params, dotted) == value
    except KeyError:
        return False


def stale_stages(lock: dict, params: dict) -> dict[str, list[str]]:
    """The stages of a dvc.lock whose recorded params.yaml values differ from `params`, with their
    outputs: an experiment run with targets leaves the other stages' entries (and metrics) as the
    baseline wrote them, under params that no longer produce them."""
    stale = {}
    for stage, entry in (lock.get("stages") or {}).items():
        recorded = (entry.get("params") or {}).get(PARAMS_FILE, {})
        if not all(_holds(params, key, value) for key, value in recorded.items()):
            stale[stage] = [out["path"] for out in entry.get("outs", [])]
    return stale


def _git_show(ref: str, rel: str, repo: Path) -> bytes:
    return subprocess.run(["git", "show", f"{ref}:{rel}"], cwd=repo, capture_output=True, check=True).stdout


def save_results(name: str, repo: Path = Path(".")) -> list[Path]:
    """Copy the experiment's git-tracked metrics, reports and dvc.lock into results/<name>/, leaving out
    the outputs of stages the experiment did not run under its params (listed on the summary page)."""
    ref = experiment_ref(name, repo)
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, "--", *SAVED], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    stale = stale_stages(yaml.safe_load(_git_show(ref, "dvc.lock", repo)) or {},
                         yaml.safe_load(_git_show(ref, PARAMS_FILE, repo)) or {})
    left_out = [out for outs in stale.values() for out in outs]
    folder = repo / RESULTS_DIR / name
    for old in (*SAVED, "README.md"):  # what an earlier save wrote: a stage left out now must not linger
        path = folder / old
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    written = []
    for rel in files:
        if any(rel == out or rel.startswith(out.rstrip("/") + "/") for out in left_out):
            continue
        data = _git_show(ref, rel, repo)
        target = repo / RESULTS_DIR / name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    page = repo / RESULTS_DIR / name / "README.md"
    text = summary(page.parent, name)
    if stale:
        text += ("\n\nNot run in this experiment, so left out (their dvc.lock entries are the baseline's): "
                 + ", ".join(f"`{stage}`" for stage in sorted(stale)) + ".")
    page.write_text(text + "\n")
    return [*written, page]


def _load(folder: Path, rel: str) -> dict[str, Any] | None:
    path = folder / "metrics" / rel
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary(folder: Path, name: str) -> str:
    """A Markdown page of the figures a reviewer compares, read from the saved metrics:
    every LM-branch effect against the imported (or trained) base."""
    lines = [f"# Results of the `{name}` profile", "",
             (f"Metrics of `python scripts/exp_profile.py {name}` (configs/profiles/{name}.yaml), saved with "
              f"`python scripts/exp_profile.py {name} --save`. Each figure is read from the files beside this page."),
             ""]
    imported = _load(folder, "import_model.json") or {}
    train = _load(folder, "train.json") or {}
    if imported.get("imported"):
        trained = "untrained here" if train.get("steps") == 0 else f"trained {train.get('steps')} steps"
        lines += [(f"Base: `{imported['reference']}` ({imported['parameters']:,} parameters, {imported['dtype']}, "
                   f"license {imported['license']}, sha256 `{imported['sha256'][:16]}…`), {trained}; "
                   f"val perplexity {_fmt(train.get('val_perplexity'))}."), ""]
    models = [m for m in ("base", "lora_arithmetic", "lora_world_facts", "quantized", "distilled")
              if _load(folder, f"evaluate_mmlu/{m}.json")]
    mmlu = {m: _load(folder, f"evaluate_mmlu/{m}.json") for m in models}
    if models:
        k = mmlu[models[0]].get("num_fewshot")
        lines += [f"## MMLU-format accuracy ({k}-shot)", "", "| model | format | overall | " +
                  " | ".join(sorted(mmlu[models[0]]["letter"]["acc"]["subjects"])) + " |",
                  "|---|---|---|" + "---|" * len(mmlu[models[0]]["letter"]["acc"]["subjects"])]
        for m in models:
            for fmt in ("continuation", "letter"):
                acc = mmlu[m].get(fmt, {}).get("acc")
                if acc:
                    lines.append(f"| {m} | {fmt} | {_fmt(acc['overall']['acc'])} | " +
                                 " | ".join(_fmt(v["acc"]) for _, v in sorted(acc["subjects"].items())) + " |")
        lines.append("")
    adapters = sorted((folder / "metrics/lora").glob("*.json")) if (folder / "metrics/lora").is_dir() else []
    if adapters:
        lines += ["## Fine-tuning (LoRA), val loss per subject", "",
                  "| specialisation | format | steps | target loss before → after | forgetting (others' loss change) |",
                  "|---|---|---|---|---|"]
        for path in adapters:
            a = json.loads(path.read_text())
            lines.append(f"| {a['specialisation']} | {a.get('format', 'text')} | {a['steps']} | "
                         f"{_fmt(a['target_loss_before'])} → {_fmt(a['target_loss_after'])} | {_fmt(a['forgetting'])} |")
        lines.append("")
    q = _load(folder, "quantize.json")
    if q:
        lines += ["## Quantization (against the fp32 model)", "",
                  "| method | file size ratio | memory ratio | perplexity change | greedy token agreement |",
                  "|---|---|---|---|---|"]
        for method, m in [(q["method"], q), *sorted(q.get("compared", {}).items())]:
            lines.append(f"| {method} | {_fmt(m['file_size_ratio'])} | {_fmt(m['memory_ratio'])} | "
                         f"{_fmt(m['val_perplexity_change'])} | {_fmt(m['greedy_token_agreement'])} |")
        lines.append("")
    d = _load(folder, "distill.json")
    if d:
        teacher, student = mmlu.get("lora_arithmetic"), mmlu.get("distilled")
        retention = {fmt: student[fmt]["acc"]["overall"]["acc"] / teacher[fmt]["acc"]["overall"]["acc"]
                     for fmt in ("continuation", "letter") if teacher and student and fmt in teacher
                     and teacher[fmt]["acc"]["overall"]["acc"]}
        lines += ["## Distillation", "",
                  f"Student: {d['student_parameters']:,} parameters ({_fmt(d['parameter_ratio'])} of the teacher's), "
                  f"source {d.get('student_source', 'config')}, {d['steps']} steps. Val perplexity "
                  f"{_fmt(d['val_perplexity_student'])} against the teacher's {_fmt(d['val_perplexity_teacher'])} "
                  f"(ratio {_fmt(d['perplexity_ratio'])}); next-token agreement {_fmt(d['next_token_agreement'])}; "
                  "MMLU accuracy retained: " + (", ".join(f"{fmt} {_fmt(r)}" for fmt, r in retention.items()) or "n/a")
                  + ".", ""]
    s = _load(folder, "evaluate_safety.json")
    if s:
        lines += ["## Safety probes", "", "| probe set | pass rate | passed |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['pass_rate'])} | {v['passed']} |" for k, v in sorted(s["probes"].items())]
        lines.append("")
    c = _load(folder, "canary_promote.json")
    if c:
        compared = c.get("comparison") or (f"champion version {_fmt(c.get('champion_version'))}, challenger "
                                           f"version {_fmt(c.get('challenger_version'))}")
        lines += ["## Canary", "", (f"Decision: **{c['decision']}** ({c.get('reason', '')}). {compared}. "
                                    "The full comparison is in reports/canary.md beside this page."), ""]
    return "\n".join(lines)
