"""LoRA training speed in fp32 against bf16 autocast on the CPU, and what bf16 does to the loss.

    .venv/bin/python benchmarks/train_precision.py --models models/imported config --steps 6

Each model in `--models` gets the same LoRA steps twice through the project's training loop
(`training_arguments`, the HF Trainer on packed blocks): once with
`efficiency.mixed_precision: fp32`, once with `bf16` (the Trainer's CPU autocast; the script
checks that a base projection really computed in bf16, and in fp32 in the other run). A model
is a Hugging Face folder, `config` (the model `train.model` builds from params.yaml, with the
tokenizer of `--tokenizer`) or `config@H` (the same at hidden size H, intermediate size 3 H).
Both runs load the model afresh and take the `lora` section's rank, alpha, dropout, targets,
learning rate and seed, the same blocks of data/clean/train.jsonl (random tokens when it is
missing), and no learning-rate warm-up.

Reported per model:

- tokens/s of each precision: tokens per step / the median step time, the first `--warmup`
  steps left out; and the bf16 speed-up in this process's CPU time too (on a machine other
  processes share, the wall clock moves with their load, CPU time much less, above all with
  `--threads 1`);
- the loss of every step in each precision, and their max and mean absolute difference;
- model FLOP utilisation against a peak measured here: a 2048 x 2048 matmul in the same dtype
  on the same threads. FLOPs per token for LoRA are 4 N + 6 A: forward 2 N + 2 A, backward
  through the activations 2 N + 2 A, weight gradients for the adapter only 2 A; N counts the
  base's matmul weights (its Linear layers, the head included), A the adapter's. Attention's
  score and value products (about 3 % for SmolLM2 at 128 tokens) are left out, as in the usual
  6 N for full training;
- what `mixed_precision: auto` picks for the model on this machine.

fp32 and bf16 runs alternate, `--repeats` times each; medians are reported. Run from the
repository root.
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
from spark_trainer.params import LoraParams, TrainParams, load_section
from spark_trainer.training import lora, packing, trainer

PRECISIONS = ("fp32", "bf16")
CONFIG = "config"  # a --models entry: the model train.model builds (config@H: at hidden size H)
RUN_KEYS = ("precision", "compute_dtype", "step_seconds", "step_cpu_seconds")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["models/imported", CONFIG],
                        help=f"Hugging Face model folders, '{CONFIG}' or '{CONFIG}@H'")
    parser.add_argument("--steps", type=int, default=6, help="LoRA steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run left out of the timing")
    parser.add_argument("--repeats", type=int, default=1, help="runs per model and precision")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks of lora.block_size tokens per step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: lora.torch_threads)")
    parser.add_argument("--tokenizer", default="models/base", help=f"the tokenizer of the '{CONFIG}' models")
    parser.add_argument("--data", type=Path, default=Path("data/clean/train.jsonl"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_precision.json"))
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup (some steps must be timed)")
    return args


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` n x n matmuls: the ceiling MFU is measured against."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # the first call pays for oneDNN's kernel selection
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(seconds)


class Model:
    """The same fresh base model (and its tokenizer) for every run."""

    def __init__(self, ref: str, params: Path, tokenizer: str) -> None:
        from transformers import AutoTokenizer

        self.ref = ref
        self.cfg: TrainParams | None = None
        if ref.split("@")[0] == CONFIG:
            self.cfg = load_section("train", params)
            if "@" in ref:
                width = int(ref.split("@")[1])
                sizes = {"hidden_size": width, "intermediate_size": 3 * width}
                self.cfg = self.cfg.model_copy(update={"model": self.cfg.model.model_copy(update=sizes)})
            self.tok = AutoTokenizer.from_pretrained(tokenizer)
        elif (Path(ref) / "config.json").is_file():
            self.tok = AutoTokenizer.from_pretrained(ref)
        else:
            sys.exit(f"{ref}: not a Hugging Face model folder. Import one first (`python scripts/exp_profile.py "
                     f"smollm2` writes models/imported), name another in --models, or use --models {CONFIG}")

    def load(self):
        if self.cfg is not None:
            return causal_lm.build_from_config(self.cfg.model, self.tok, self.cfg.seed)
        return causal_lm.load_pretrained(self.ref)


def blocks_for(tok, data: Path, block_size: int, n_blocks: int, seed: int):
    """The first `n_blocks` packed blocks of the clean training text, or random tokens without it."""
    import torch

    if data.is_file():
        texts = [item["text"] for item in read_manifest(data)]
        blocks = packing.pack(encode_documents(tok, texts), block_size).blocks
        if len(blocks) >= n_blocks:
            return blocks[:n_blocks], f"{data} ({n_blocks} of {len(blocks)} blocks)"
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(tok), (n_blocks, block_size), generator=generator), "random tokens"


def matmul_weights(model) -> tuple[int, int]:
    """(base, adapter) weights that multiply activations: the Linear layers, the head included."""
    import torch

    base = adapter = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if ".lora_" in name:
                adapter += module.weight.numel()
            else:
                base += module.weight.numel()
    return base, adapter


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []      # wall clock
            self.cpu_seconds: list[float] = []  # this process's CPU time
            self._t0 = self._c0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t0)
            self.cpu_seconds.append(time.process_time() - self._c0)

    return StepTimer()


def dtype_probe(model):
    """Records the dtype of a base projection's first output: bf16 shows that autocast ran."""
    import torch

    seen: list = []
    layer = next(m for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".lora_" not in n and not n.endswith("lm_head"))
    handle = layer.register_forward_hook(lambda mod, inputs, out: None if seen else seen.append(out.dtype))
    return seen, handle


def run_once(source: Model, p: LoraParams, precision: str, blocks, args) -> dict:
    from transformers import Trainer, default_data_collator
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    model = source.load()
    auto = "bf16" if trainer.precision_flags("auto", model)[0] else "fp32"
    model = lora.attach(model, p.rank, p.alpha, p.dropout, lora.resolve_target_modules(model, p.target_modules),
                        p.seed)
    efficiency = p.efficiency.model_copy(update={"mixed_precision": precision})
    run_p = p.model_copy(update={"max_steps": args.steps, "warmup_steps": 0, "logging_steps": 1,
                                 "batch_size": args.batch_size, "save_steps": args.steps, "efficiency": efficiency})
    trainer.apply_efficiency(model, run_p.efficiency)
    timer = step_timer()
    seen, handle = dtype_probe(model)
    with tempfile.TemporaryDirectory(prefix=f"bench-precision-{precision}-") as tmp:
        targs = dataclasses.replace(trainer.training_arguments(run_p, Path(tmp), model=model),
                                    save_strategy="no", disable_tqdm=True)
        hf = Trainer(model=model, args=targs, train_dataset=packing.BlockDataset(blocks),
                     data_collator=default_data_collator, callbacks=[timer])
        hf.remove_callback(PrinterCallback)  # with tqdm off it prints every log line into the timing
        hf.remove_callback(ProgressCallback)
        hf.train()
    handle.remove()
    dtype = str(seen[0]).removeprefix("torch.")
    if dtype != {"fp32": "float32", "bf16": "bfloat16"}[precision]:
        raise RuntimeError(f"{source.ref}: the {precision} run computed in {dtype}")
    base, adapter = matmul_weights(model)
    return {"model": source.ref, "precision": precision, "compute_dtype": dtype, "auto_picks": auto,
            "step_seconds": timer.seconds, "step_cpu_seconds": timer.cpu_seconds,
            "median_step_s": statistics.median(timer.seconds[args.warmup:]),
            "median_step_cpu_s": statistics.median(timer.cpu_seconds[args.warmup:]),
            "losses": [e["loss"] for e in hf.state.log_history if "loss" in e],
            "base_matmul_weights": base, "adapter_weights": adapter}


def summarise_model(runs: list[dict], tokens_per_step: int, peaks: dict[str, float], data: str) -> dict:
    by = {prec: [r for r in runs if r["precision"] == prec] for prec in PRECISIONS}
    first = runs[0]
    flops_per_token = 4 * first["base_matmul_weights"] + 6 * first["adapter_weights"]
    out = {key: first[key] for key in ("model", "auto_picks", "base_matmul_weights", "adapter_weights")}
    out.update(data=data, tokens_per_step=tokens_per_step, flops_per_token=flops_per_token)
    cpu = {}
    for prec in PRECISIONS:
        tokens_per_s = tokens_per_step / statistics.median(r["median_step_s"] for r in by[prec])
        out[f"{prec}_tokens_per_s"] = round(tokens_per_s, 1)
        out[f"{prec}_mfu"] = round(tokens_per_s * flops_per_token / peaks[prec], 4)
        cpu[prec] = statistics.median(r["median_step_cpu_s"] for r in by[prec])
    out["speedup_bf16"] = round(out["bf16_tokens_per_s"] / out["fp32_tokens_per_s"], 3)
    out["speedup_bf16_cpu_time"] = round(cpu["fp32"] / cpu["bf16"], 3)
    fp32, bf16 = by["fp32"][0]["losses"], by["bf16"][0]["losses"]
    diffs = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    out.update(loss_fp32=[round(x, 5) for x in fp32], loss_bf16=[round(x, 5) for x in bf16],
               loss_max_abs_diff=round(max(diffs), 5), loss_mean_abs_diff=round(sum(diffs) / len(diffs), 5))
    out["runs"] = [{k: r[k] for k in RUN_KEYS} for r in runs]
    return out


def main() -> None:
    args = parse_args()
    import torch

    if torch.cuda.is_available():
        sys.exit("this benchmark measures the CPU; hide the GPU (CUDA_VISIBLE_DEVICES=) to run it")
    p: LoraParams = load_section("lora", args.params)
    if args.threads or p.torch_threads:
        torch.set_num_threads(args.threads or p.torch_threads)
    sources = [Model(ref, args.params, args.tokenizer) for ref in args.models]  # a bad entry fails before timing
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048 x 2048, {torch.get_num_threads()} threads): fp32 {peaks['fp32'] / 1e9:.0f}, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    results = []
    for source in sources:
        blocks, data = blocks_for(source.tok, args.data, p.block_size, args.batch_size * args.steps, p.seed)
        runs = [run_once(source, p, prec, blocks, args) for _ in range(args.repeats) for prec in PRECISIONS]
        results.append(summarise_model(runs, args.batch_size * p.block_size, peaks, data))
        print_model(results[-1])
    caps = torch.cpu.get_capabilities()
    report = {
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "batch_size": args.batch_size,
        "block_size": p.block_size, "lora_rank": p.rank, "torch_threads": torch.get_num_threads(),
        "cpu": {k: bool(caps.get(k)) for k in ("amx_bf16", "avx512_bf16")},
        "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "command": shlex.join([sys.executable, *sys.argv]), "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_model(s: dict) -> None:
    print(f"\n{s['model']}: {s['base_matmul_weights'] / 1e6:.2f}M base matmul weights, "
          f"{s['adapter_weights'] / 1e6:.2f}M adapter; {s['tokens_per_step']} tokens/step; data: {s['data']}")
    print(f"{'precision':<10} {'tokens/s':>9} {'MFU':>7}")
    for prec in PRECISIONS:
        print(f"{prec:<10} {s[prec + '_tokens_per_s']:>9.0f} {s[prec + '_mfu']:>7.1%}")
    print(f"bf16 / fp32: {s['speedup_bf16']:.2f}x (CPU time: {s['speedup_bf16_cpu_time']:.2f}x); loss |bf16 - fp32| "
          f"per step: max {s['loss_max_abs_diff']:.4f}, mean {s['loss_mean_abs_diff']:.4f}; "
          f"mixed_precision: auto picks {s['auto_picks']} here")


if __name__ == "__main__":
    main()
