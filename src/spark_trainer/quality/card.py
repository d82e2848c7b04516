"""A Hugging Face dataset card (README.md with a YAML header) for the clean data."""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from spark_trainer.data.splits import SPLITS
from spark_trainer.params import CardParams


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((label for bound, label in bounds if n < bound), "n>10M")


def render(card: CardParams, splits: dict[str, list[dict]], metrics: dict[str, Any], provenance: dict[str, Any],
           limitations: list[str]) -> str:
    total = sum(len(v) for v in splits.values())
    header = {
        "pretty_name": card.pretty_name,
        "license": card.license,
        "language": list(card.language),
        "task_categories": list(card.task_categories),
        "size_categories": [size_category(total)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"{s}.jsonl"} for s in SPLITS]}],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {card.pretty_name}", "",
             (f"{total} text items after the quality gates, in the manifest schema (text in `text`, subject in "
             "`metadata.subject`, sha256 checksum and lineage on every line)."), "", "## Statistics", ""]
    subjects = sorted({it["metadata"]["subject"] for v in splits.values() for it in v})
    lines += ["| split | items | mean chars | " + " | ".join(subjects) + " |",
              "|---|---:|---:|" + "---:|" * len(subjects)]
    for split in SPLITS:
        items = splits[split]
        per = Counter(it["metadata"]["subject"] for it in items)
        mean = sum(len(it["text"]) for it in items) / len(items) if items else 0
        lines.append(f"| {split} | {len(items)} | {mean:.1f} | " + " | ".join(str(per[s]) for s in subjects) + " |")

    lines += ["", "## Provenance and lineage", ""]
    lines += [f"- {k}: {v}" for k, v in provenance.items()]

    lines += ["", "## Curation steps", "", "Gates in the order they ran; in = kept + rejected for every gate.", "",
              "| gate | in | kept | rejected | reasons | notes |", "|---|---:|---:|---:|---|---|"]
    for name, g in metrics["gates"].items():
        notes = "; ".join(f"{k}: {v}" for k, v in sorted(g.get("details", {}).items()) if not isinstance(v, dict))
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(g["reasons"].items())) or "-"
        lines.append(f"| {name} | {sum(g['in'].values())} | {sum(g['kept'].values())} | "
                     f"{sum(g['rejected'].values())} | {reasons} | {notes or '-'} |")
    if metrics.get("ground_truth"):
        lines += ["", "## Measured against planted labels", "", "| gate | precision | recall |", "|---|---:|---:|"]
        for name, m in metrics["ground_truth"].items():
            fmt = lambda v: "-" if v is None else f"{v:.3f}"
            lines.append(f"| {name} | {fmt(m['precision'])} | {fmt(m['recall'])} |")
    lines += ["", "## Known limitations", ""] + [f"- {item}" for item in limitations] + [""]
    return "\n".join(lines)
