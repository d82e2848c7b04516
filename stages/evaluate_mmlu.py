"""Score one model on an MMLU-format set exactly as lm-evaluation-harness does.

    python stages/evaluate_mmlu.py base models/base metrics/evaluate_mmlu/base.json \\
        metrics/evaluate_mmlu/base.predictions.jsonl plots/evaluate_mmlu/base

dvc.yaml runs it once per entry of `evaluate_mmlu.models` (foreach). For each format in
params: accuracy overall, per subject and per category with standard errors (and acc_norm
for the continuation format), expected calibration error, and reliability-diagram data
for `dvc plots`. Per-question predictions and choice probabilities go to the JSONL file.
The model runs on `compute.device`, in `evaluate_mmlu.dtype` (recorded as `dtype`; a quantized
model as it is).
"""

from pathlib import Path

from spark_trainer import devices, tracking
from spark_trainer.evaluation import calibration, mmlu
from spark_trainer.modeling import causal_lm, quantize
from spark_trainer.modeling.tokenizer import load_pretrained
from spark_trainer.outputs import dumps_stable, write_jsonl_atomic, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import EvaluateMmluParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args

PRODUCERS = {"base": "train", "quantized": "quantize", "distilled": "distill"}


@entrypoint
def main() -> None:
    args = path_args(__doc__, "name", "model_dir", "metrics", "predictions", "plots")
    p: EvaluateMmluParams = load_section("evaluate_mmlu")
    name = str(args.name)
    device = devices.stage_device(f"evaluate_mmlu@{name}")
    timer = Timer()

    if p.hub_dataset:
        dev, test = mmlu.load_hub(p.hub_dataset, p.hub_subjects)
    else:
        dev, test = mmlu.load_local(Path(p.source))
    shots = mmlu.fewshot_counts(dev, p.num_fewshot, p.short_dev)

    produced_by = PRODUCERS.get(name, "lora" if name.startswith("lora") else None)
    model = causal_lm.load_for_inference(args.model_dir, produced_by=produced_by, device=device)
    tok = load_pretrained(str(args.model_dir))
    if (Path(args.model_dir) / quantize.MARKER).is_file():
        dtype = "quantized"  # scored as its quantization computes; evaluate_mmlu.dtype does not apply
    else:
        dtype = mmlu.choose_dtype(p.dtype, model, device)
        mmlu.cast(model, dtype)

    metrics = {"model": name, "num_fewshot": p.num_fewshot, "fewshot_used": shots, "dtype": dtype,
               "questions": sum(len(v) for v in test.values())}
    predictions = []
    for fmt in p.formats:
        with timer.phase(f"score_{fmt}"):
            records = []
            for subject in sorted(test):
                records += mmlu.evaluate(model, tok, {subject: dev[subject]}, {subject: test[subject]}, fmt,
                                         shots[subject], p.batch_size)
        ece, bins = calibration.reliability(records, p.calibration_bins)
        metrics[fmt] = {**mmlu.summarise(records, p.categories), "ece": ece}
        predictions += records
        write_text_atomic(args.plots / f"calibration_{fmt}.json",
                          dumps_stable(bins))
    write_jsonl_atomic(args.predictions, predictions)
    write_metrics(args.metrics, metrics)
    timings = timer.total()
    for fmt in p.formats:
        timings[f"questions_per_second_{fmt}"] = metrics["questions"] / max(timings[f"score_{fmt}"], 1e-9)
    write_timings(args.metrics, timings)
    tracking.mirror_stage(f"evaluate_mmlu@{name}", p, args.metrics, artifacts=[args.predictions, args.plots])


if __name__ == "__main__":
    main()
