"""Generate the embedded default data deterministically from `sample` params.

    python stages/sample.py data/sample data/sample_media metrics/sample.json

Writes `corpus.jsonl` (id, subject, text), `labels.jsonl` (the planted problems:
duplicates, PII, toxic lines; an id absent from it is clean) and an MMLU-format set
(`mmlu/dev/<subject>_dev.csv`, `mmlu/test/<subject>_test.csv`). The media folder gets
short videos with planted scene cuts and reference captions, bad files, a photo with
GPS tags and a WAV file, with `ground_truth.json` (a separate output, so the text
branch of the DAG does not rerun when the videos change).
"""


from spark_trainer import tracking
from spark_trainer.data import sample
from spark_trainer.outputs import (
    atomic_path,
    dumps_stable,
    write_jsonl_atomic,
    write_metrics,
    write_text_atomic,
    write_timings,
)
from spark_trainer.params import SampleParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.video import synthetic


@entrypoint
def main() -> None:
    args = path_args(__doc__, "out_dir", "media_dir", "metrics")

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

    m = p.media
    with timer.phase("media"), atomic_path(args.media_dir) as tmp:
        tmp.mkdir()
        truth = synthetic.generate(tmp, p.seed, m.videos, m.scenes_per_video, m.scene_seconds, m.fps, m.size,
                                   m.static_every)
        write_text_atomic(tmp / "ground_truth.json", dumps_stable(truth))

    write_metrics(args.metrics, {**sample.summary(data), "media": synthetic.summary(truth)})
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("sample", p, args.metrics)


if __name__ == "__main__":
    main()
