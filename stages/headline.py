"""Headline metrics: a dozen flat numbers, read from the other stages' metrics files, that
say whether a change is better (`make review` shows them; spark_trainer/headline.py says
where each comes from).

    python stages/headline.py metrics/train.json metrics/evaluate_mmlu/base.json \\
        metrics/evaluate_mmlu/lora_arithmetic.json metrics/evaluate_mmlu/quantized.json \\
        metrics/evaluate_mmlu/distilled.json metrics/lora/arithmetic.json metrics/quantize.json \\
        metrics/distill.json metrics/evaluate_safety.json metrics/canary_promote.json \\
        metrics/evaluate_coco.json metrics/quality_gates.json metrics/headline.json

Params: `headline.mmlu_format`, which MMLU format's accuracy is headlined (it is part of
those keys). Which numbers are headlined is code: the keys must stay comparable across
experiments.
"""

from spark_trainer import headline, tracking
from spark_trainer.outputs import write_metrics, write_timings
from spark_trainer.params import HeadlineParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, *headline.ROLES, "metrics")
    p: HeadlineParams = load_section("headline")  # type: ignore[assignment]
    timer = Timer()
    with timer.phase("collect"):
        values = headline.collect({role: getattr(args, role) for role in headline.ROLES}, p.mmlu_format)
    write_metrics(args.metrics, values)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("headline", p, args.metrics)


if __name__ == "__main__":
    main()
