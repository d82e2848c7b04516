"""Headline metrics: a dozen flat numbers, read from the other stages' metrics files, that
say whether a change is better (`make review` shows them; spark_trainer/headline.py says
where each comes from).

    python stages/headline.py metrics/train.json metrics/evaluate_mmlu/base.json \\
        metrics/evaluate_mmlu/lora_arithmetic.json metrics/evaluate_mmlu/quantized.json \\
        metrics/evaluate_mmlu/distilled.json metrics/lora/arithmetic.json metrics/quantize.json \\
        metrics/distill.json metrics/evaluate_safety.json metrics/canary_promote.json \\
        metrics/evaluate_coco.json metrics/quality_gates.json metrics/headline.json

No params section: the stage only copies numbers. Which numbers are headlined is code, not a
setting, because the keys must stay the same across experiments to be compared, sorted and
diffed; the values themselves change only when their source files do (its deps). The MLflow
run it mirrors therefore carries no params.
"""

from spark_trainer import headline, tracking
from spark_trainer.outputs import write_metrics, write_timings
from spark_trainer.params import Section
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, *headline.ROLES, "metrics")
    timer = Timer()
    with timer.phase("collect"):
        values = headline.collect({role: getattr(args, role) for role in headline.ROLES})
    write_metrics(args.metrics, values)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("headline", Section(), args.metrics)


if __name__ == "__main__":
    main()
