"""MMLU questions/s of our scorer against lm-evaluation-harness, same model, data and dtype, one run.

    .venv/bin/python benchmarks/mmlu_throughput.py --model models/base --data data/sample/mmlu --k 0 5 --repeats 2

Both sides are timed end to end from a loaded Python process: loading the model and
tokenizer, building the prompts, scoring every test question, in each format and for each
number of few-shot examples given. Both load the model in `--dtype` (auto: as the
evaluate_mmlu stage resolves it for this model). The two alternate `--repeats` times, and
the medians are compared. The predictions must be identical, question by question: where
they differ the script says where and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from spark_trainer.evaluation import lm_eval_tasks, mmlu
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling.tokenizer import load_pretrained


def ours(model_dir: Path, data: Path, fmt: str, k: int, batch_size: int, dtype: str) -> list[dict]:
    model = mmlu.cast(causal_lm.load_for_inference(model_dir), dtype)
    tok = load_pretrained(str(model_dir))
    dev, test = mmlu.load_local(data)
    return mmlu.evaluate(model, tok, dev, test, fmt, k, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/base"))
    parser.add_argument("--data", type=Path, default=Path("data/sample/mmlu"))
    parser.add_argument("--formats", nargs="+", default=["continuation", "letter"])
    parser.add_argument("--k", type=int, nargs="+", default=[0], help="few-shot examples; several run in turn")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mmlu_throughput.json"))
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = mmlu.choose_dtype(args.dtype, causal_lm.load_for_inference(args.model))
    _, test = mmlu.load_local(args.data)
    n_questions = sum(len(v) for v in test.values())
    report = {"command": " ".join(sys.argv), "questions": n_questions, "dtype": dtype,
              "threads": torch.get_num_threads(), "runs": []}
    failed = []
    for k in args.k:
        for fmt in args.formats:
            times: dict[str, list[float]] = {"ours": [], "lm_eval": []}
            differ: list = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                records = ours(args.model, args.data, fmt, k, args.batch_size, dtype)
                times["ours"].append(time.perf_counter() - t0)
                with tempfile.TemporaryDirectory() as work:
                    t0 = time.perf_counter()
                    theirs = lm_eval_tasks.run(args.model, args.data, Path(work), fmt, k, args.batch_size, dtype)
                    times["lm_eval"].append(time.perf_counter() - t0)
                differ += [d for d in lm_eval_tasks.predictions_match(records, theirs) if d not in differ]
            qps = {side: n_questions / statistics.median(t) for side, t in times.items()}
            ratio = qps["ours"] / qps["lm_eval"]
            report["runs"].append({"k": k, "format": fmt, "seconds": times, "questions_per_second": qps,
                                   "ratio": ratio, "identical_predictions": not differ,
                                   "differing_questions": [list(d) for d in differ]})
            print(f"k={k} {fmt}: ours {qps['ours']:.2f} q/s, lm-eval {qps['lm_eval']:.2f} q/s, ratio {ratio:.2f}x, "
                  f"identical predictions: {not differ}", flush=True)
            if differ:
                failed.append(f"k={k} {fmt}: {len(differ)} questions, first {differ[:5]}")
            args.out.parent.mkdir(parents=True, exist_ok=True)  # after each run: a long one may be stopped
            args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    if failed:
        sys.exit("predictions differ from lm-eval's: " + "; ".join(failed))


if __name__ == "__main__":
    main()
