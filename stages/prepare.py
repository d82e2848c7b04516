"""Read the sources named in `prepare` params into manifest items, validate, split.

    python stages/prepare.py data/prepared metrics/prepare.json

Writes `train.jsonl`, `val.jsonl`, `test.jsonl` (manifest items, stratified by
subject) and `quarantine.jsonl` (rows set aside with their reason code and detail, when
`on_bad_record: quarantine`). Counts in = out + quarantined, per source.

Items' `created_at` comes from the data (a source's `created_at_field`), else
SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z: never the clock or the commit (see
`build_timestamp` in spark_trainer/data/manifest.py), so the same inputs give the same bytes.
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
    created_at = build_timestamp()  # checks SOURCE_DATE_EPOCH before any work
    timer = Timer()
    with timer.phase("read"):
        collected = prepare.collect(p.sources, p.on_bad_record, created_at, allowed_subjects=p.allowed_subjects,
                                    default_subject=p.default_subject, max_chars=p.max_chars)
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
    per_source = {key: {"rows_in": n, "items_out": collected.items_out[key],
                        "quarantined": collected.quarantined_per_source[key],
                        "default_subject": collected.default_subject_rows[key]}
                  for key, n in collected.rows_in.items()}
    metrics = {
        "rows_in": rows_in,
        "rows_in_per_source": dict(collected.rows_in),
        "items_out": len(collected.items),
        "quarantined": len(collected.quarantined),
        "quarantine_reasons": dict(sorted(Counter(q["reason"] for q in collected.quarantined).items())),  # codes
        "counts_balance": rows_in == len(collected.items) + len(collected.quarantined) and all(
            s["rows_in"] == s["items_out"] + s["quarantined"] for s in per_source.values()),
        "per_source": per_source,
        # rows without a subject of their own that got prepare.default_subject (flag subject_defaulted)
        "default_subject": {"subject": p.default_subject, "rows": sum(collected.default_subject_rows.values())},
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
