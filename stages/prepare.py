"""Read the sources named in `prepare` params into manifest items, validate, split.

    python stages/prepare.py data/prepared metrics/prepare.json

Writes `train.jsonl`, `val.jsonl`, `test.jsonl` (manifest items, stratified by
subject) and `quarantine.jsonl` (rows set aside with their reason, when
`on_bad_record: quarantine`). Counts in = out + quarantined, per source.
"""

from collections import Counter

from spark_trainer import tracking
from spark_trainer.data import prepare, validation
from spark_trainer.data.manifest import build_timestamp
from spark_trainer.data.splits import SPLITS, stratified_split
from spark_trainer.errors import InputDataError
from spark_trainer.outputs import atomic_path, write_jsonl_atomic, write_metrics, write_timings
from spark_trainer.params import PrepareParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "out_dir", "metrics")

    p: PrepareParams = load_section("prepare")
    timer = Timer()
    with timer.phase("read"):
        collected = prepare.collect(p.sources, p.on_bad_record, build_timestamp())
    if not collected.items:
        raise InputDataError("no usable records in prepare.sources; check the paths and field names")

    with timer.phase("validate"):
        gx_summary = validation.run_suite(
            "prepare_manifest", validation.manifest_frame(collected.items),
            validation.manifest_expectations(p.allowed_subjects, p.min_chars, p.max_chars))

    splits = stratified_split(collected.items, p.seed, p.val_fraction, p.test_fraction)
    with timer.phase("write"), atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            for item in splits[split]:
                item["processed_path"] = str(args.out_dir / f"{split}.jsonl")
            write_jsonl_atomic(tmp / f"{split}.jsonl", splits[split])
        write_jsonl_atomic(tmp / "quarantine.jsonl", collected.quarantined)

    rows_in = sum(collected.rows_in.values())
    metrics = {
        "rows_in": rows_in,
        "rows_in_per_source": dict(collected.rows_in),
        "items_out": len(collected.items),
        "quarantined": len(collected.quarantined),
        "quarantine_reasons": dict(Counter(q["reason"].split(":")[0] for q in collected.quarantined)),
        "counts_balance": rows_in == len(collected.items) + len(collected.quarantined),
        "utf8_replaced": collected.utf8_replaced,
        "splits": {s: len(splits[s]) for s in SPLITS},
        "split_subjects": {s: dict(sorted(Counter(it["metadata"]["subject"] for it in splits[s]).items()))
                           for s in SPLITS},
        "validation": gx_summary,
    }
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("prepare", p, args.metrics)


if __name__ == "__main__":
    main()
