"""Distil the teacher named in `distill.teacher` into a smaller student.

    python stages/distill.py models/lora/arithmetic/merged data/clean models/distilled \\
        checkpoints/distill plots/distill metrics/distill.json

The student is built from `distill.student` (or loaded pretrained) and trained on the
clean train split with (1 - a)·CE + a·T²·KL(teacher || student). Resumes like `train`.
Metrics: student/teacher parameter ratio, val perplexity of both, next-token agreement.
"""

import math

from spark_trainer import devices, tracking
from spark_trainer.data.manifest import read_manifest
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling.tokenizer import encode_documents, load_pretrained
from spark_trainer.outputs import atomic_path, write_metrics, write_timings
from spark_trainer.params import DistillParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.training import distill, launch, packing, trainer


@entrypoint
def main() -> None:
    args = path_args(__doc__, "teacher", "data_dir", "out_dir", "checkpoints", "plots", "metrics")
    p: DistillParams = load_section("distill")
    device = launch.start("distill", p.launcher)
    if p.torch_threads:
        import torch

        torch.set_num_threads(p.torch_threads)
    timer = Timer()

    teacher = causal_lm.load_pretrained(str(args.teacher), produced_by="lora").float().to(device)
    tok = load_pretrained(str(args.teacher))
    student = distill.build_student(p.student, teacher, tok, p.seed)
    train_texts = [it["text"] for it in read_manifest(args.data_dir / "train.jsonl")]
    val_texts = [it["text"] for it in read_manifest(args.data_dir / "val.jsonl")]
    train = packing.pack(encode_documents(tok, train_texts), p.block_size).blocks
    val = packing.pack(encode_documents(tok, val_texts), p.block_size).blocks

    run_fingerprint = trainer.fingerprint(p.model_dump(mode="json"), train_texts, str(args.teacher))
    with timer.phase("train"):
        outcome = trainer.train_model(student, packing.BlockDataset(train), p, args.checkpoints, args.plots,
                                      run_fingerprint, eval_dataset=packing.BlockDataset(val),
                                      trainer_class=distill.distillation_trainer(teacher, p.alpha, p.temperature),
                                      system_metrics=tracking.system_metrics("distill"), device=device)
        student = outcome.model or student  # gathered on rank 0 when the weights were sharded
    if not devices.is_main_process():
        return  # rank 0 evaluates and writes the outputs
    student.to(device)
    with timer.phase("evaluate"), trainer.autocast(p.efficiency.mixed_precision, student):
        student_loss = trainer.mean_loss(student, val, p.batch_size)
        teacher_loss = trainer.mean_loss(teacher, val, p.batch_size)
        agreement = distill.next_token_agreement(student, teacher, val, p.batch_size)

    with atomic_path(args.out_dir) as tmp:
        student.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    trainer.clear_checkpoints(args.checkpoints)

    student_params, teacher_params = causal_lm.parameter_count(student), causal_lm.parameter_count(teacher)
    metrics = {
        "student_parameters": student_params,
        "teacher_parameters": teacher_params,
        "parameter_ratio": student_params / teacher_params,
        "student_source": p.student.source,
        "steps": outcome.global_step,
        "processes": devices.world_size(),
        "global_batch_size": trainer.global_batch(p),
        "val_perplexity_student": math.exp(student_loss),
        "val_perplexity_teacher": math.exp(teacher_loss),
        "perplexity_ratio": math.exp(student_loss - teacher_loss),
        "next_token_agreement": agreement,
        "alpha": p.alpha,
        "temperature": p.temperature,
    }
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("distill", p, args.metrics, step_metrics_dir=args.plots)


if __name__ == "__main__":
    main()
