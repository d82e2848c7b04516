"""MMLU questions/s of our scorer against lm-evaluation-harness, same model and data, one run.

    .venv/bin/python benchmarks/mmlu_throughput.py --model models/base --data data/sample/mmlu --repeats 2

Both sides are timed end to end from a loaded Python process: loading the model and
tokenizer, building the prompts, scoring every test question, in each format given.
The two alternate `--repeats` times, and the medians are compared. The predictions must
be identical, question by question, or the script says where they differ.
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


def ours(model_dir: Path, data: Path, fmt: str, k: int, batch_size: int) -> list[dict]:
    model = causal_lm.load_for_inference(model_dir)
    tok = load_pretrained(str(model_dir))
    dev, test = mmlu.load_local(data)
    return mmlu.evaluate(model, tok, dev, test, fmt, k, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/base"))
    parser.add_argument("--data", type=Path, default=Path("data/sample/mmlu"))
    parser.add_argument("--formats", nargs="+", default=["continuation", "letter"])
    parser.add_argument("--k", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mmlu_throughput.json"))
    args = parser.parse_args()

    _, test = mmlu.load_local(args.data)
    n_questions = sum(len(v) for v in test.values())
    report = {"command": " ".join(sys.argv), "questions": n_questions, "k": args.k, "formats": {}}
    for fmt in args.formats:
        times = {"ours": [], "lm_eval": []}
        differ: list = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            records = ours(args.model, args.data, fmt, args.k, args.batch_size)
            times["ours"].append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as work:
                t0 = time.perf_counter()
                theirs = lm_eval_tasks.run(args.model, args.data, Path(work), fmt, args.k, args.batch_size)
                times["lm_eval"].append(time.perf_counter() - t0)
            differ = lm_eval_tasks.predictions_match(records, theirs)
        qps = {side: n_questions / statistics.median(t) for side, t in times.items()}
        report["formats"][fmt] = {"seconds": times, "questions_per_second": qps, "ratio": qps["ours"] / qps["lm_eval"],
                                  "identical_predictions": not differ, "differing_questions": [list(d) for d in differ]}
        print(f"{fmt}: ours {qps['ours']:.1f} q/s, lm-eval {qps['lm_eval']:.1f} q/s, ratio "
              f"{qps['ours'] / qps['lm_eval']:.2f}x, identical predictions: {not differ}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
