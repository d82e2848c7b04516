"""A pull-request report comparing two revisions (git revisions or DVC experiment names):
which stages reran, the params that changed, the metrics that changed (headline first),
and the plots that changed, rendered to PNG offline. `scripts/review.py` writes it.

Everything comes from DVC's own commands (`dvc params diff`, `dvc metrics diff --json`,
`dvc plots diff --json`) and from the two revisions' dvc.lock, read with `git show`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spark_trainer.errors import InputDataError
from spark_trainer.headline import HEADLINE
from spark_trainer.outputs import write_text_atomic

HEADLINE_FILE = "metrics/headline.json"
LOCK_SECTIONS = ("deps", "params", "outs")


@dataclass(frozen=True)
class Revision:
    name: str   # as the user gave it
    sha: str    # the commit DVC and git read it at

    @property
    def label(self) -> str:
        return self.name if self.sha.startswith(self.name) else f"{self.name} ({self.sha[:7]})"


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def resolve(root: Path, name: str) -> Revision:
    """A git revision (sha, branch, tag, HEAD~1) or an experiment name (`dvc exp show`'s
    Experiment column, stored by DVC under refs/exps/)."""
    found = git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if found.returncode == 0:
        return Revision(name, found.stdout.strip())
    refs = git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/").stdout.split("\n")
    shas = {sha for ref, _, sha in (line.partition(" ") for line in refs if line)
            if ref.rsplit("/", 1)[-1] == name}
    if len(shas) == 1:
        return Revision(name, shas.pop())
    if len(shas) > 1:
        raise InputDataError(f"experiment name '{name}' names {len(shas)} experiments (on different baselines); "
                             "pass one of their commits instead: " + ", ".join(sorted(s[:7] for s in shas)))
    raise InputDataError(f"unknown revision '{name}': neither a git revision nor a DVC experiment name "
                         "(`git log --oneline` and `dvc exp list --all-commits` list them)")


def dvc(root: Path, *args: str) -> str:
    """Run a dvc command of the current environment; its stdout, or an error with its stderr."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise InputDataError(f"`dvc {' '.join(args)}` failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


# --------------------------------------------------------------------------- stages


def lock_at(root: Path, rev: Revision) -> dict[str, Any]:
    shown = git(root, "show", f"{rev.sha}:dvc.lock")
    if shown.returncode != 0:
        raise InputDataError(f"{rev.label} has no dvc.lock: nothing was reproduced there ({shown.stderr.strip()})")
    return (yaml.safe_load(shown.stdout) or {}).get("stages", {})


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _fingerprint(entries: Any) -> Any:
    """What decides a rerun: paths and hashes (deps, outs) or values (params); sizes and
    file counts follow from the hashes."""
    if isinstance(entries, list):
        return {e["path"]: e.get("md5") or e.get("hash") or e.get("etag") for e in entries}
    return entries or {}


def stage_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """{stage: (status, what differs)} for every stage of either lock. Status: `rerun` (its
    command, deps, params or outs differ), `unchanged`, `added` or `removed`."""
    out: dict[str, tuple[str, list[str]]] = {}
    for stage in sorted(old.keys() | new.keys()):
        if stage not in old or stage not in new:
            out[stage] = ("added" if stage in new else "removed", [])
            continue
        what = ["cmd"] if old[stage].get("cmd") != new[stage].get("cmd") else []
        for section in LOCK_SECTIONS:
            a, b = _fingerprint(old[stage].get(section)), _fingerprint(new[stage].get(section))
            if section == "params":  # {params file: {section: values}}: name the leaf that changed
                a = {k: v for values in a.values() for k, v in _leaves(values).items()}
                b = {k: v for values in b.values() for k, v in _leaves(values).items()}
            what += [f"{section}: {key}" for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]
        out[stage] = ("rerun" if what else "unchanged", what)
    return out


def stages_table(changes: dict[str, tuple[str, list[str]]]) -> str:
    rows = ["| Stage | Status | What differs |", "|---|---|---|"]
    for stage, (status, what) in changes.items():
        shown = ", ".join(f"`{w}`" for w in what[:6]) + (f" and {len(what) - 6} more" if len(what) > 6 else "")
        rows.append(f"| {stage} | **{status}** | {shown} |" if status != "unchanged" else f"| {stage} | {status} | |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- metrics


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """`dvc metrics diff --json`'s nested keys down to each {old, new, diff}."""
    if isinstance(value, dict) and not ({"old", "new"} & value.keys()):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def headline_at(root: Path, rev: Revision) -> dict[str, Any]:
    """metrics/headline.json at `rev` (in git: the headline stage's metrics are not cached)."""
    shown = git(root, "show", f"{rev.sha}:{HEADLINE_FILE}")
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def headline_table(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Every headline value at both revisions: one that did not move is news to a reviewer too."""
    rows = ["| Metric | A | B | Change | Better |", "|---|---|---|---|---|"]
    for h in HEADLINE:
        a, b = old.get(h.key), new.get(h.key)
        change = (f"**{b - a:+.6g}**" if isinstance(a, (int, float)) and isinstance(b, (int, float))
                  else "**new**" if a is None else "**gone**") if a != b else ""
        rows.append(f"| `{h.key}` | {_cell(a)} | {_cell(b)} | {change} | {h.better} |")
    return "\n".join(rows)


def metrics_tables(diff: dict[str, Any]) -> tuple[str, int]:
    """(the table of every changed metric outside the headline file, how many those are)
    from `dvc metrics diff --json`, which lists only what changed."""
    other_rows = []
    for path in sorted(diff):
        if path == HEADLINE_FILE:
            continue
        for key, d in sorted(_flat(diff[path]).items()):
            other_rows.append(f"| `{path}` | `{key}` | {_cell(d.get('old'))} | {_cell(d.get('new'))} | "
                              f"{_cell(d.get('diff'))} |")
    other = ("| File | Metric | A | B | Change |\n|---|---|---|---|---|\n" + "\n".join(other_rows)
             if other_rows else "No other metric changed.")
    return other, len(other_rows)


# --------------------------------------------------------------------------- plots


def changed_plots(plots: dict[str, Any], a: Revision, b: Revision) -> dict[str, dict[str, Any]]:
    """{plot id: its Vega-Lite spec} for the plots whose data differ between the revisions
    (`dvc plots diff --json`: each spec holds both revisions' rows, told apart by `rev`)."""
    out = {}
    for plot_id, renders in plots.get("data", {}).items():
        if "/system/" in plot_id:  # CPU/RAM/GPU use during training differs on every run; it says nothing of the model
            continue
        for render in renders:
            if render.get("type") != "vega":
                continue
            spec = render["content"]
            rows: dict[str, list[str]] = {}
            for row in spec.get("data", {}).get("values", []):
                rev = str(row.get("rev", ""))
                rows.setdefault(rev, []).append(json.dumps({k: v for k, v in row.items() if k != "rev"},
                                                           sort_keys=True))
            sides = [sorted(v) for k, v in rows.items() if k.split("::")[0] in (a.sha, b.sha)]
            if len(sides) != 2 or sides[0] != sides[1]:
                out[plot_id] = spec
    return out


def _slug(plot_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", plot_id).strip("_")


def render_png(spec: dict[str, Any], path: Path) -> Path:
    """A Vega-Lite spec to PNG with vl-convert (bundled Vega, no network)."""
    import vl_convert

    path.parent.mkdir(parents=True, exist_ok=True)
    static = {k: v for k, v in spec.items() if k != "params"}  # the smoothing slider needs a browser
    static["params"] = [{k: v for k, v in p.items() if k != "bind"} for p in spec.get("params", [])]
    path.write_bytes(vl_convert.vegalite_to_png(static, scale=1.5))
    return path


# --------------------------------------------------------------------------- report


def write_report(root: Path, a_name: str, b_name: str, out: Path) -> dict[str, Any]:
    """Write the Markdown report to `out` and its PNGs to `<out stem>_plots/`; return a summary."""
    a, b = resolve(root, a_name), resolve(root, b_name)
    changes = stage_changes(lock_at(root, a), lock_at(root, b))
    params_md = dvc(root, "params", "diff", a.sha, b.sha, "--md").strip() or "No param changed."
    params_md = params_md.replace(a.sha, f"A: {a.name}").replace(b.sha, f"B: {b.name}")
    headline_md = headline_table(headline_at(root, a), headline_at(root, b))
    other_md, n_other = metrics_tables(json.loads(dvc(root, "metrics", "diff", a.sha, b.sha, "--json") or "{}"))
    plots = changed_plots(json.loads(dvc(root, "plots", "diff", a.sha, b.sha, "--json")), a, b)
    image_dir = out.parent / f"{out.stem}_plots"
    images = [render_png(spec, image_dir / f"{_slug(plot_id)}.png") for plot_id, spec in sorted(plots.items())]

    rerun = [s for s, (status, _) in changes.items() if status != "unchanged"]
    lines = [f"# Review: {a.label} → {b.label}", "",
             (f"Stages that differ: {', '.join(rerun) or 'none'}. "
             f"Plots that changed: {len(images)}. Other metrics that changed: {n_other}."), "",
             "## Params that changed", "", params_md, "",
             f"## Headline metrics ({HEADLINE_FILE}; changes in bold)", "", headline_md, "",
             "## Stages", "", ("A stage is **rerun** when its command, deps, params or outs in dvc.lock differ "
             "between the two revisions."), "", stages_table(changes), "",
             "## Plots that changed", ""]
    lines += [f"![{plot_id}]({image.relative_to(out.parent).as_posix()})" for plot_id, image in
              zip(sorted(plots), images, strict=True)] or ["No plot changed."]
    lines += ["", "## Other metrics that changed", "", f"<details><summary>{n_other} metrics</summary>", "",
              other_md, "", "</details>", ""]
    write_text_atomic(out, "\n".join(lines))
    return {"stages": changes, "images": images, "other_metrics": n_other}
