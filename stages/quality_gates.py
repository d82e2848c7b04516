"""Quality gates between `prepare` and `train`: screen, dedup, PII, toxicity, validation.

    python stages/quality_gates.py data/prepared data/sample/labels.jsonl data/clean metrics/quality_gates.json

Writes `train.jsonl`, `val.jsonl`, `test.jsonl` (the items that passed), `rejected.jsonl`
(id, split, gate, reason, scores) and a dataset card `README.md`. When the labels file
exists (the `sample` stage's planted problems), metrics report each gate's precision
and recall against it.
"""

import json

from spark_trainer import devices, tracking
from spark_trainer.data import validation
from spark_trainer.data.manifest import read_manifest, sha256_bytes
from spark_trainer.data.splits import SPLITS
from spark_trainer.errors import InputDataError
from spark_trainer.outputs import atomic_path, write_jsonl_atomic, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import QualityGatesParams, load_section
from spark_trainer.quality import card, gates, ground_truth
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "data_dir", "labels", "out_dir", "metrics")
    p: QualityGatesParams = load_section("quality_gates")
    device = devices.stage_device("quality_gates")  # semantic dedup's encoder and Detoxify, when they run
    timer = Timer()
    splits = {s: read_manifest(args.data_dir / f"{s}.jsonl") for s in SPLITS}
    counts_in = {s: len(v) for s, v in splits.items()}
    inputs = {f"{s}.jsonl": sha256_bytes((args.data_dir / f"{s}.jsonl").read_bytes()) for s in SPLITS}

    outcome = gates.run_gates(splits, p, timer, device)
    clean = [item for s in SPLITS for item in outcome.splits[s]]
    if not clean:
        raise InputDataError("every item was rejected; see the gate counts in the log and relax the gates")
    metrics = gates.summary(outcome, counts_in)

    if p.validate_output:
        with timer.phase("validate"):
            metrics["validation"] = validation.run_suite("clean_output", validation.manifest_frame(clean),
                                                         validation.clean_expectations())
    if args.labels.is_file():
        labels = [json.loads(line) for line in args.labels.read_text(encoding="utf-8").splitlines() if line]
        metrics["ground_truth"] = ground_truth.evaluate(labels, outcome.rejected, outcome.pii_detections,
                                                        set(outcome.reports), gates.backends(outcome))
    metrics["ground_truth_labels"] = str(args.labels) if args.labels.is_file() else "none"

    provenance = {"input manifests (sha256)": ", ".join(f"{k} {v[7:19]}" for k, v in inputs.items()),
                  "stages": "sample -> prepare -> quality_gates (dvc.lock has the exact hashes)",
                  "sources": ", ".join(sorted({it["lineage"]["source"] for it in clean}))}
    # No git commit in the card: data/clean depends only on declared inputs, whatever the commit.
    card_text = card.render(p.card, outcome.splits, metrics, provenance, limitations(outcome, p))

    with atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            write_jsonl_atomic(tmp / f"{split}.jsonl", outcome.splits[split])
        write_jsonl_atomic(tmp / "rejected.jsonl", outcome.rejected)
        write_text_atomic(tmp / "README.md", card_text)

    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("quality_gates", p, args.metrics, artifacts=[args.out_dir / "README.md"])


def limitations(outcome: gates.GatesOutcome, p: QualityGatesParams) -> list[str]:
    details = {name: r.details for name, r in outcome.reports.items()}
    notes = []
    if "pii" in details:
        notes.append(f"PII backend {details['pii']['backend']}: {details['pii']['backend_note']}.")
    if "toxicity" in details:
        notes.append(f"Toxicity backend {details['toxicity']['backend']} ({details['toxicity']['backend_note']}).")
    if "near_dedup" in details:
        notes.append(f"Documents under {p.near_dedup.min_words} words are only exact-deduplicated.")
    if "screen" in details:
        notes.append(f"Language is identified only for texts of {p.screen.min_language_chars}+ characters.")
    off = [g for g in p.order if g not in details]
    if off:
        notes.append(f"Gates switched off: {', '.join(off)}.")
    notes.append("The embedded default is generated text about a fictional world; it says nothing about real data.")
    return notes


if __name__ == "__main__":
    main()
