"""Quantize the model named in `quantize.model` and measure what it costs.

    python stages/quantize.py models/lora/arithmetic/merged data/clean models/quantized metrics/quantize.json

The output reloads through `spark_trainer.modeling.quantize.load_quantized`. Metrics: on-disk and
in-memory size against fp32, val perplexity before and after, greedy-output agreement
with the unquantized model on a fixed prompt set. Forward latency goes to the timings file.
"""

import tempfile
import time
from pathlib import Path

import torch

from spark_trainer import devices, tracking
from spark_trainer.data.manifest import read_manifest
from spark_trainer.modeling import causal_lm, quantize
from spark_trainer.modeling.tokenizer import encode_documents, load_pretrained
from spark_trainer.outputs import atomic_path, write_metrics, write_timings
from spark_trainer.params import QuantizeParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.training import packing, trainer

EVAL_BLOCK = 128


@entrypoint
def main() -> None:
    args = path_args(__doc__, "model_dir", "data_dir", "out_dir", "metrics")
    p: QuantizeParams = load_section("quantize")
    device = devices.stage_device("quantize")
    method = quantize.choose_method(p.method, p.fallback, device)
    timer = Timer()

    reference = causal_lm.load_pretrained(str(args.model_dir), produced_by="lora").float().eval().to(device)
    tok = load_pretrained(str(args.model_dir))
    with timer.phase("quantize"), atomic_path(args.out_dir) as tmp:
        quantize.save_quantized(quantize.quantize(args.model_dir, method, device), method, tok, tmp)
    quantized = quantize.load_quantized(args.out_dir, device)

    with tempfile.TemporaryDirectory() as fp32_dir:
        reference.save_pretrained(fp32_dir)
        fp32_file = quantize.files_bytes(Path(fp32_dir))
    val_items = sorted(read_manifest(args.data_dir / "val.jsonl"), key=lambda it: it["id"])
    blocks = packing.pack(encode_documents(tok, [it["text"] for it in val_items]), EVAL_BLOCK).blocks
    prompts = [it["text"].split("\nAnswer:")[0] + "\nAnswer:" for it in val_items
               if it["text"].startswith("Question:")][: p.eval_prompts]

    def measure(model, folder: Path) -> dict:
        """What `model` (saved in `folder`) costs against the unquantized reference."""
        loss_q = trainer.mean_loss(model, blocks, 16)
        agreement = quantize.greedy_agreement(reference, model, tok, prompts, p.max_new_tokens)
        q_file, q_memory = quantize.files_bytes(folder), quantize.state_dict_bytes(model)
        return {
            "quantized_file_bytes": q_file,
            "file_size_ratio": q_file / fp32_file,
            "quantized_memory_bytes": q_memory,
            "memory_ratio": q_memory / fp32_memory,
            "val_perplexity_quantized": float(torch.exp(torch.tensor(loss_q))),
            "val_perplexity_change": float(torch.exp(torch.tensor(loss_q - loss_fp32))) - 1.0,
            "greedy_token_agreement": agreement["token_agreement"],
            "greedy_exact_match": agreement["exact_match"],
        }

    fp32_memory = quantize.state_dict_bytes(reference)
    with timer.phase("evaluate"):
        loss_fp32 = trainer.mean_loss(reference, blocks, 16)
        measured = measure(quantized, args.out_dir)
    latency = forward_latency_ms(reference, quantized, blocks[:16], p.latency_repeats)
    # Other methods, measured the same way and not kept (quantize.compare): NF4 against int8, say.
    compared = {}
    for other in (m for m in p.compare if m != method):
        with timer.phase(f"compare_{other}"), tempfile.TemporaryDirectory() as folder:
            model = quantize.quantize(args.model_dir, quantize.choose_method(other, "none", device), device)
            quantize.save_quantized(model, other, tok, Path(folder))
            compared[other] = measure(model, Path(folder))
            latency.update({k.replace("quantized", other): v for k, v in
                            forward_latency_ms(reference, model, blocks[:16], p.latency_repeats).items()
                            if not k.endswith("fp32")})
    metrics = {
        "method": method,
        "method_requested": p.method,
        "fp32_file_bytes": fp32_file,
        "fp32_memory_bytes": fp32_memory,
        "val_perplexity_fp32": float(torch.exp(torch.tensor(loss_fp32))),
        **measured,
        "prompts": len(prompts),
        "compared": compared,
    }
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, {**timer.total(), **latency})
    tracking.mirror_stage("quantize", p, args.metrics)


def forward_latency_ms(reference, quantized, batch, repeats: int) -> dict[str, float]:
    out = {}
    for name, model in (("fp32", reference), ("quantized", quantized)):
        inputs = batch.to(model.device)
        with torch.no_grad():
            model(input_ids=inputs)  # warm-up
            _synchronize(model.device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(input_ids=inputs)
            _synchronize(model.device)  # CUDA runs asynchronously: wait for the work timed
        out[f"forward_ms_{name}"] = (time.perf_counter() - t0) / repeats * 1000
    return out


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
