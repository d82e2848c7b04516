"""Train the base causal LM: tokenizer, model from config (or pretrained), HF Trainer.

    python stages/train.py data/clean models/base checkpoints/train plots/train metrics/train.json

Resumes from the last checkpoint in `checkpoints/train` after an interruption and ends
with the same metrics as an uninterrupted run. Per-step loss, learning rate and tokens/s
go to `plots/train` (dvclive); `models/base` gets the Hugging Face layout.
"""

import logging
import math

from spark_trainer import devices, tracking
from spark_trainer.data.manifest import read_manifest
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling import tokenizer as tokenizers
from spark_trainer.outputs import atomic_path, write_metrics, write_timings
from spark_trainer.params import TrainParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.training import launch, packing, trainer

log = logging.getLogger("train")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "data_dir", "model_out", "checkpoints", "plots", "metrics")

    p: TrainParams = load_section("train")
    device = launch.start("train", p.launcher)
    import torch

    if p.torch_threads:
        torch.set_num_threads(p.torch_threads)
    timer = Timer()
    train_items = read_manifest(args.data_dir / "train.jsonl")
    val_items = read_manifest(args.data_dir / "val.jsonl")
    train_texts, val_texts = [it["text"] for it in train_items], [it["text"] for it in val_items]

    with timer.phase("tokenizer"):
        if p.tokenizer.kind == "bpe":
            tok = tokenizers.train_bpe(train_texts, p.tokenizer.vocab_size, p.tokenizer.min_frequency)
        else:
            tok = tokenizers.load_pretrained(p.tokenizer.pretrained)
        train = packing.pack(tokenizers.encode_documents(tok, train_texts), p.block_size)
        val = packing.pack(tokenizers.encode_documents(tok, val_texts), p.block_size)

    if p.model.source == "config":
        model = causal_lm.build_from_config(p.model, tok, p.seed)
    else:
        model = causal_lm.load_pretrained(p.model.pretrained)
    model.to(device)
    log.info("model: %d parameters; %d train blocks, %d val blocks of %d tokens",
             causal_lm.parameter_count(model), len(train.blocks), len(val.blocks), p.block_size)

    run_fingerprint = trainer.fingerprint(p.model_dump(mode="json"), [it["checksum"] for it in train_items],
                                      tok.backend_tokenizer.to_str())
    with timer.phase("train"):
        if p.max_steps:
            outcome = trainer.train_model(model, packing.BlockDataset(train.blocks), p, args.checkpoints,
                                          args.plots, run_fingerprint, eval_dataset=packing.BlockDataset(val.blocks),
                                          device=device, system_metrics=tracking.system_metrics("train"))
            model = outcome.model or model  # gathered on rank 0 when the weights were sharded
        else:  # the pretrained model is the base as it is: evaluated, not trained
            log.info("max_steps 0: %s passes through untrained", p.model.pretrained)
            outcome = trainer.TrainOutcome(0, 0, [])
            trainer.write_empty_curve(args.plots)
    if not devices.is_main_process():
        return  # rank 0 evaluates and writes the outputs

    with timer.phase("evaluate"), trainer.autocast(p.efficiency.mixed_precision, model):
        val_loss = trainer.mean_loss(model, val.blocks, p.batch_size)
        train_loss = trainer.mean_loss(model, train.blocks[: len(val.blocks)], p.batch_size)
        unigram = trainer.unigram_loss(train.blocks, val.blocks, len(tok))

    with atomic_path(args.model_out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    trainer.clear_checkpoints(args.checkpoints)

    global_batch = trainer.global_batch(p)
    tokens_seen = outcome.global_step * global_batch * p.block_size
    metrics = {
        "parameters": causal_lm.parameter_count(model),
        "source": p.model.source,
        "steps": outcome.global_step,
        "processes": devices.world_size(),
        "global_batch_size": global_batch,
        "tokens_seen": tokens_seen,
        "train_tokens": train.tokens_total,
        "train_tokens_dropped": train.tokens_dropped,
        "vocab_size": len(tok),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "unigram_val_perplexity": math.exp(unigram),
        "perplexity_ratio_to_unigram": math.exp(val_loss - unigram),
    }
    write_metrics(args.metrics, metrics)
    timings = timer.total()
    timings["tokens_per_second"] = (outcome.global_step - outcome.resumed_from_step) * global_batch \
        * p.block_size / max(timer.seconds["train"], 1e-9)
    timings["resumed_from_step"] = outcome.resumed_from_step
    write_timings(args.metrics, timings)
    tracking.mirror_stage("train", p, args.metrics, artifacts=[args.model_out / "config.json", args.plots],
                          step_metrics_dir=args.plots)


if __name__ == "__main__":
    main()
