"""Training throughput (tokens/s) of SparkTrainer's packed-block path vs a plain HF Trainer.

    .venv/bin/python benchmarks/train_throughput.py --steps 60 --repeats 2

Both contenders train a fresh model from `build_from_config` (same params, same seed, so
the same init) on the texts of data/prepared/train.jsonl, with the same batch size,
optimiser, scheduler, steps and seed, in the same process:

- spark_trainer: encode_documents + pack into blocks of train.block_size, BlockDataset,
  default_data_collator, `training_arguments(p, ...)`. Every token of a block is real, so
  tokens = steps * batch_size * grad_accum * block_size.
- plain_hf_trainer: each document tokenised on its own (truncated, EOS appended) in a
  datasets.Dataset, DataCollatorForLanguageModeling(mlm=False) padding each batch. Tokens
  are the non-pad ones (attention_mask sums) of the batches the Trainer consumed.

Only `trainer.train()` is timed (wall clock). Each contender first runs `--warmup` steps
in an untimed train() on a throwaway model, so one-off costs (thread pools, allocator,
lazy imports) land on neither side. Timed runs alternate spark, plain, spark, plain, ...
`--repeats` times; the medians and their ratio (spark / plain) are reported. Saving is
off and progress output is silenced for both, so neither pays for I/O the other skips.
Run from the repository root after `dvc repro train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from spark_trainer.data.manifest import read_manifest
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling.tokenizer import encode_documents
from spark_trainer.params import TrainParams, load_section
from spark_trainer.training import packing
from spark_trainer.training.trainer import training_arguments

CONTENDERS = ("spark_trainer", "plain_hf_trainer")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed optimiser steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before timing")
    parser.add_argument("--tokenizer", default="models/base")
    parser.add_argument("--data", type=Path, default=Path("data/prepared/train.jsonl"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    return parser.parse_args()


def quiet(trainer):
    # With tqdm off the Trainer prints every log line instead; neither belongs in a timing.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def spark_trainer(p: TrainParams, tok, texts: list[str], steps: int, tmp: Path):
    """A Trainer on packed blocks, and a function giving the tokens it trained on."""
    from transformers import Trainer, default_data_collator

    blocks = packing.pack(encode_documents(tok, texts), p.block_size).blocks
    run_p = p.model_copy(update={"max_steps": steps, "save_steps": steps * 10})
    args = dataclasses.replace(training_arguments(run_p, tmp), save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=causal_lm.build_from_config(p.model, tok, p.seed), args=args,
                      train_dataset=packing.BlockDataset(blocks), data_collator=default_data_collator)
    tokens = steps * p.batch_size * p.gradient_accumulation_steps * p.block_size
    return quiet(trainer), lambda: (tokens, tokens)


class CountingCollator:
    """Pads like DataCollatorForLanguageModeling and records real/total tokens per batch."""

    def __init__(self, tok) -> None:
        from transformers import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(tok, mlm=False)
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.inner(features)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.sum()), mask.numel()))
        return batch


def plain_trainer(p: TrainParams, tok, texts: list[str], steps: int, tmp: Path):
    """What a typical user writes: per-document examples, padded per batch."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    # Truncate one short so the appended EOS keeps every example within block_size.
    enc = tok(texts, truncation=True, max_length=p.block_size - 1)
    eos = tok.eos_token_id
    data = Dataset.from_dict({"input_ids": [ids + [eos] for ids in enc["input_ids"]],
                              "attention_mask": [m + [1] for m in enc["attention_mask"]]})
    args = TrainingArguments(
        output_dir=str(tmp), max_steps=steps, per_device_train_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps, learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler, warmup_steps=p.warmup_steps, weight_decay=p.weight_decay,
        max_grad_norm=p.max_grad_norm, logging_steps=p.logging_steps, seed=p.seed,
        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", disable_tqdm=True)
    collator = CountingCollator(tok)
    trainer = Trainer(model=causal_lm.build_from_config(p.model, tok, p.seed), args=args,
                      train_dataset=data, data_collator=collator)
    consumed = steps * p.gradient_accumulation_steps

    def tokens() -> tuple[int, int]:
        # The dataloader looks one batch ahead; batches are collated in order, so the
        # first `consumed` are exactly the ones trained on.
        used = collator.batches[:consumed]
        return sum(r for r, _ in used), sum(t for _, t in used)

    return quiet(trainer), tokens


BUILDERS = {"spark_trainer": spark_trainer, "plain_hf_trainer": plain_trainer}


def run_once(name: str, p: TrainParams, tok, texts: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        trainer, tokens = BUILDERS[name](p, tok, texts, steps, Path(tmp))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    if trainer.state.global_step != steps:
        raise RuntimeError(f"{name}: trained {trainer.state.global_step} steps, expected {steps}")
    real, total = tokens()
    return {"contender": name, "seconds": seconds, "real_tokens": real, "total_tokens": total,
            "tokens_per_s": real / seconds}


def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoTokenizer

    p: TrainParams = load_section("train", args.params)
    if p.torch_threads:
        torch.set_num_threads(p.torch_threads)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    texts = [item["text"] for item in read_manifest(args.data)]

    for name in CONTENDERS:
        if args.warmup:
            run_once(name, p, tok, texts, args.warmup)
    runs = [run_once(name, p, tok, texts, args.steps) for _ in range(args.repeats) for name in CONTENDERS]

    report = summarise(args, p, tok, runs)
    print_table(runs, report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def summarise(args: argparse.Namespace, p: TrainParams, tok, runs: list[dict]) -> dict:
    import torch

    median = {n: statistics.median(r["tokens_per_s"] for r in runs if r["contender"] == n) for n in CONTENDERS}
    plain = [r for r in runs if r["contender"] == "plain_hf_trainer"]
    pad = sum(r["total_tokens"] - r["real_tokens"] for r in plain) / sum(r["total_tokens"] for r in plain)
    return {
        "steps": args.steps,
        "repeats": args.repeats,
        "batch_size": p.batch_size,
        "block_size": p.block_size,
        "parameters": causal_lm.parameter_count(causal_lm.build_from_config(p.model, tok, p.seed)),
        "spark_trainer_tokens_per_s": round(median["spark_trainer"], 1),
        "plain_hf_trainer_tokens_per_s": round(median["plain_hf_trainer"], 1),
        "ratio": round(median["spark_trainer"] / median["plain_hf_trainer"], 3),
        "plain_padding_fraction": round(pad, 4),
        "torch_threads": torch.get_num_threads(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
    }


def print_table(runs: list[dict], report: dict) -> None:
    print(f"\n{'contender':<18} {'seconds':>8} {'real tokens':>12} {'tokens/s':>10}")
    for r in runs:
        print(f"{r['contender']:<18} {r['seconds']:>8.2f} {r['real_tokens']:>12} {r['tokens_per_s']:>10.0f}")
    print(f"\nmedian tokens/s: spark_trainer {report['spark_trainer_tokens_per_s']:.0f}, "
          f"plain_hf_trainer {report['plain_hf_trainer_tokens_per_s']:.0f}; ratio {report['ratio']:.2f}x; "
          f"plain padding {report['plain_padding_fraction']:.1%}; {report['torch_threads']} threads\n")


if __name__ == "__main__":
    main()
