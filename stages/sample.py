"""Generate the embedded default data deterministically from `sample` params.

    python stages/sample.py data/sample metrics/sample.json

Writes `corpus.jsonl` (id, subject, text), `labels.jsonl` (the planted problems:
duplicates, PII, toxic lines; an id absent from it is clean) and an MMLU-format set
(`mmlu/dev/<subject>_dev.csv`, `mmlu/test/<subject>_test.csv`).
"""


from spark_trainer import tracking
from spark_trainer.data import sample
from spark_trainer.outputs import atomic_path, write_jsonl_atomic, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import SampleParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "out_dir", "metrics")

    p: SampleParams = load_section("sample")
    timer = Timer()
    with timer.phase("generate"):
        data = sample.generate(p.seed, p.subjects, p.qa_per_subject, p.world_towns, p.fact_phrasings,
                               p.passages_per_subject, p.mmlu_dev_per_subject, p.mmlu_test_per_subject,
                               p.planted.model_dump())

    with timer.phase("write"), atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        write_jsonl_atomic(tmp / "corpus.jsonl", data.corpus)
        write_jsonl_atomic(tmp / "labels.jsonl", data.labels)
        for subject, splits in data.mmlu.items():
            for split, rows in splits.items():
                write_text_atomic(tmp / "mmlu" / split / f"{subject}_{split}.csv", sample.mmlu_csv(rows))

    write_metrics(args.metrics, sample.summary(data))
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("sample", p, args.metrics)


if __name__ == "__main__":
    main()
