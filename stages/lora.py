"""Train one LoRA (or QLoRA) adapter on the base model for one specialisation.

    python stages/lora.py arithmetic models/base data/clean models/lora/arithmetic \\
        checkpoints/lora/arithmetic plots/lora/arithmetic metrics/lora/arithmetic.json

dvc.yaml runs it once per entry of `lora.specialisations` (foreach). Writes the adapter
alone (`adapter/`) and the base with the adapter merged (`merged/`, Hugging Face layout).
Metrics: the trainable-parameter fraction and val loss per subject before and after,
as gain on the target subjects and forgetting on the others.
"""

import logging

from spark_trainer import devices, tracking
from spark_trainer.data.manifest import read_manifest
from spark_trainer.errors import ParamsError
from spark_trainer.modeling.tokenizer import encode_documents, load_pretrained
from spark_trainer.outputs import atomic_path, write_metrics, write_timings
from spark_trainer.params import LoraParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.training import launch, lora, packing, sft, trainer

log = logging.getLogger("lora")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "name", "base", "data_dir", "out_dir", "checkpoints", "plots", "metrics")
    p: LoraParams = load_section("lora")
    name = str(args.name)
    if name not in p.specialisations:
        raise ParamsError(f"no specialisation '{name}' in lora.specialisations ({', '.join(p.specialisations)})")
    subjects = set(p.specialisations[name].subjects)
    device = launch.start(f"lora@{name}", p.launcher)
    if p.qlora and launch.shards_parameters(p.launcher):
        raise ParamsError("lora.qlora with a sharding launcher config (ZeRO-3, FSDP): the 4-bit base cannot be "
                          "sharded here; use configs/accelerate/ddp.yaml or deepspeed_zero2.yaml")
    if p.torch_threads:
        import torch

        torch.set_num_threads(p.torch_threads)
    timer = Timer()

    model = lora.load_base(args.base, p.qlora, device)
    tok = load_pretrained(str(args.base))
    train_items = [it for it in read_manifest(args.data_dir / "train.jsonl") if it["metadata"]["subject"] in subjects]
    val_items = read_manifest(args.data_dir / "val.jsonl")
    if not train_items:
        raise ParamsError(f"lora.specialisations.{name}.subjects {sorted(subjects)} match no training items")
    if p.format == "chat":
        sft.require_chat_template(tok, str(args.base))
        train_records, skipped = sft.conversations(train_items)
        val_records, _ = sft.conversations(val_items)
        if not train_records:
            raise ParamsError(f"lora.format chat: no question/answer document among the {len(train_items)} training "
                              f"items of {sorted(subjects)}; use lora.format: text")
        target_val = [r for r in val_records if r["subject"] in subjects]
        evaluate = lambda: sft.answer_losses(model, tok, val_records, p.block_size, p.batch_size)
        log.info("%s: %d question/answer conversations (%d other documents left out)", name, len(train_records),
                 skipped)
    else:
        blocks = packing.pack(encode_documents(tok, [it["text"] for it in train_items]), p.block_size).blocks
        # The target subjects' validation text: what early stopping (efficiency.early_stopping_patience) watches.
        target_val = [it["text"] for it in val_items if it["metadata"]["subject"] in subjects]
        val_blocks = packing.pack(encode_documents(tok, target_val), p.block_size).blocks if target_val else None
        evaluate = lambda: trainer.subject_losses(model, tok, val_items, p.block_size, p.batch_size)

    with timer.phase("evaluate_before"), trainer.autocast(p.efficiency.mixed_precision, model):
        before = evaluate() if devices.is_main_process() else {}  # the other ranks only train
    model = lora.attach(model, p.rank, p.alpha, p.dropout, lora.resolve_target_modules(model, p.target_modules),
                       p.seed)
    trainable, total = lora.parameter_counts(model)
    log.info("%s: %d of %d parameters trainable, %s", name, trainable, total, sorted(subjects))

    data_checksums = [it["checksum"] for it in train_items]
    run_fingerprint = trainer.fingerprint(name, p.model_dump(mode="json"), data_checksums)
    with timer.phase("train"):
        if p.format == "chat":
            from trl import SFTConfig, SFTTrainer

            outcome = trainer.train_model(
                model, sft.as_dataset(train_records), p, args.checkpoints, args.plots, run_fingerprint,
                eval_dataset=sft.as_dataset(target_val) if target_val else None, trainer_class=SFTTrainer,
                trainer_kwargs={"processing_class": tok, "data_collator": None}, args_class=SFTConfig,
                args_extra=sft.sft_settings(p.block_size),
                tokens_per_step=p.batch_size * p.gradient_accumulation_steps * p.block_size,
                system_metrics=tracking.system_metrics(f"lora@{name}"), device=device)
        else:
            outcome = trainer.train_model(model, packing.BlockDataset(blocks), p, args.checkpoints, args.plots,
                                          run_fingerprint, eval_dataset=None if val_blocks is None
                                          else packing.BlockDataset(val_blocks),
                                          system_metrics=tracking.system_metrics(f"lora@{name}"), device=device)
        model = outcome.model or model  # gathered on rank 0 when the weights were sharded
    if not devices.is_main_process():
        return  # rank 0 evaluates and writes the outputs
    with timer.phase("evaluate_after"), trainer.autocast(p.efficiency.mixed_precision, model):
        after = evaluate()

    with timer.phase("save"), atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        lora.save(model, args.base, tok, tmp)
    trainer.clear_checkpoints(args.checkpoints)

    others = sorted(set(before) - subjects)
    targets = sorted(set(before) & subjects)
    mean = lambda losses, keys: sum(losses[k] for k in keys) / len(keys) if keys else None
    metrics = {
        "specialisation": name,
        "target_subjects": targets,
        "qlora": p.qlora,
        "format": p.format,
        "loss": "answer tokens, chat template" if p.format == "chat" else "all tokens",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_fraction": trainable / total,
        "steps": outcome.global_step,
        "processes": devices.world_size(),
        "global_batch_size": trainer.global_batch(p),
        "val_loss_before": before,
        "val_loss_after": after,
        "target_loss_before": mean(before, targets),
        "target_loss_after": mean(after, targets),
        "target_gain": mean(before, targets) - mean(after, targets),
        "forgetting": mean(after, others) - mean(before, others) if others else None,
    }
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage(f"lora@{name}", p, args.metrics, step_metrics_dir=args.plots)


if __name__ == "__main__":
    main()
