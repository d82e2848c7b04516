"""Full fine-tuning throughput (tokens/s) and model FLOP utilisation on a GPU, or tokens/s on the CPU.

    .venv/bin/python benchmarks/gpu_throughput.py --model models/imported               # on a GPU
    .venv/bin/python benchmarks/gpu_throughput.py --model models/imported --device cpu --steps 3 --seq-len 128

The model (a Hugging Face folder: `models/imported` after `python scripts/exp_profile.py smollm2`)
is loaded in fp32 and trained with AdamW under bf16 autocast (`--dtype fp32` turns autocast
off), as the training stages do with `efficiency.mixed_precision: bf16`, on seeded random
tokens: the speed of a step does not depend on which tokens it sees. The first `--warmup`
steps (allocator, kernel selection, cuDNN/cuBLAS heuristics) are left out; each timed step
ends with a device synchronise, so its time is the GPU's work.

MFU = 6 N x tokens/s / the GPU's dense bf16 peak: N the model's parameters (a tied embedding
counted once: it is the output head's matmul), 6 N the usual forward and backward FLOPs per
token; attention's score and value products are left out. The peak comes from a small table by
GPU name (`PEAK_TFLOPS`) or from `--peak-tflops`; on the CPU, or on a GPU the table lacks, MFU
is not reported. The JSON goes to `--out`, by default `$OUT/gpu_throughput.json` when OUT is
set, else benchmarks/results/gpu_throughput.json. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

# Dense (no sparsity) bf16 tensor-core TFLOPS from NVIDIA's data sheets; the first pattern that
# matches torch's device name wins, so the more specific come first.
PEAK_TFLOPS: list[tuple[str, float]] = [
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH[12]00\b.*\bNVL\b", 835.0),
    (r"\bGH200\b", 989.0),
    (r"\bH[12]00\b", 989.0),  # SXM: "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),
    (r"\bA30\b", 165.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None when the table does not know it."""
    return next((peak for pattern, peak in PEAK_TFLOPS if re.search(pattern, device_name)), None)


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_throughput.json" if out else Path("benchmarks/results/gpu_throughput.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/imported", help="a Hugging Face causal LM folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (as compute.device)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="bf16: autocast; fp32: none")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps in all, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak in TFLOPS (overrides the table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="the JSON report (default: see above)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup (some steps must be timed)")
    return args


def run(args: argparse.Namespace) -> dict:
    import torch

    from spark_trainer.devices import resolve
    from spark_trainer.modeling.causal_lm import load_pretrained, parameter_count

    device = resolve(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = load_pretrained(args.model).to(device, dtype=torch.float32)  # fp32 weights, as the stages train
    model.train()
    params = parameter_count(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    vocab = model.get_input_embeddings().num_embeddings
    batches = torch.randint(0, vocab, (args.steps, args.batch_size, args.seq_len),
                            generator=torch.Generator().manual_seed(args.seed))
    sync = torch.cuda.synchronize if cuda else (lambda *a: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses = [], []
    for step in range(args.steps):
        ids = batches[step].to(device, non_blocking=True)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        sync(device)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    tokens_per_step = args.batch_size * args.seq_len
    tokens_per_s = tokens_per_step / statistics.median(seconds[args.warmup:])
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak, source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else (None, None)
    if peak is None and cuda:
        peak = peak_tflops(name)
        source = "PEAK_TFLOPS table" if peak else None
    achieved = 6 * params * tokens_per_s / 1e12
    return {
        "model": args.model, "parameters": params, "device": str(device), "device_name": name,
        "dtype": args.dtype, "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
        "warmup": args.warmup, "tokens_per_step": tokens_per_step,
        "median_step_s": round(statistics.median(seconds[args.warmup:]), 5),
        "tokens_per_s": round(tokens_per_s, 1), "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak, "peak_source": source,
        "mfu": round(achieved / peak, 4) if peak else None,
        "max_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if cuda else None,
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "step_seconds": [round(s, 5) for s in seconds],
        "tf32": torch.backends.cuda.matmul.allow_tf32 if cuda else None,  # torch's default: off
        "torch": torch.__version__, "command": shlex.join([sys.executable, *sys.argv]),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    mfu = f"{report['mfu']:.1%}" if report["mfu"] is not None else "n/a (no peak for this device)"
    print(f"{report['model']} ({report['parameters'] / 1e6:.1f}M parameters) on {report['device_name']}, "
          f"{report['dtype']}, {report['tokens_per_step']} tokens/step: {report['tokens_per_s']:,.0f} tokens/s, "
          f"{report['achieved_tflops']:.1f} TFLOPS (6N), MFU {mfu}; loss {report['loss_first']} -> "
          f"{report['loss_last']}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
