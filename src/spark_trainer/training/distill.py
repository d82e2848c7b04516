"""Knowledge distillation: a smaller student learns from a teacher's next-token distribution.

    python stages/distill.py models/lora/arithmetic/merged data/clean models/distilled ...

Loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(teacher_T || student_T), where
`_T` are the distributions at temperature T; T^2 keeps the KL gradients on the CE's scale.
"""

from __future__ import annotations

from spark_trainer.params import ModelParams, StudentParams


def build_student(cfg: StudentParams, teacher, tokenizer, seed: int):
    """A student from the sizes in params (same vocabulary and context as the teacher),
    or a pretrained one, which must share the teacher's vocabulary."""
    from spark_trainer.errors import ModelSourceError
    from spark_trainer.modeling import causal_lm

    if cfg.source == "pretrained":
        student = causal_lm.load_pretrained(cfg.pretrained)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ModelSourceError(f"student '{cfg.pretrained}' has vocab size {student.config.vocab_size}, the "
                                   f"teacher {teacher.config.vocab_size}: distillation needs the same vocabulary")
        return student
    if cfg.source == "teacher_layers":
        return from_teacher_layers(teacher, cfg.num_layers)
    sizes = ModelParams(**cfg.model_dump(), max_position_embeddings=teacher.config.max_position_embeddings)
    return causal_lm.build_from_config(sizes, tokenizer, seed)


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """`student_layers` indices spread evenly over the teacher's, first and last included."""
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def from_teacher_layers(teacher, num_layers: int):
    """A copy of the teacher keeping `num_layers` of its decoder layers (embeddings, final
    norm and head kept): a student that starts from what the teacher knows."""
    import copy

    from spark_trainer.errors import ParamsError

    layers = teacher.model.layers
    if num_layers >= len(layers):
        raise ParamsError(f"distill.student.num_layers {num_layers} must be below the teacher's {len(layers)} layers "
                          "for source teacher_layers")
    keep = kept_layers(len(layers), num_layers)
    student = copy.deepcopy(teacher)
    student.model.layers = type(layers)([student.model.layers[i] for i in keep])
    for new_index, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
    student.config.num_hidden_layers = num_layers
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    for param in student.parameters():
        param.requires_grad_(True)
    return student


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """(total, ce, kl) over next-token positions."""
    import torch.nn.functional as F

    s, t, y = student_logits[:, :-1].float(), teacher_logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1))
    kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                  log_target=True, reduction="none").sum(-1).mean()
    return (1 - alpha) * ce + alpha * temperature**2 * kl, ce, kl


def distillation_trainer(teacher, alpha: float, temperature: float):
    """A Trainer class whose loss is `distillation_loss` against the frozen teacher."""
    import torch
    from transformers import Trainer

    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(input_ids=inputs["input_ids"])
            if teacher.device != inputs["input_ids"].device:  # the Trainer placed the student and the batch
                teacher.to(inputs["input_ids"].device)
            with torch.no_grad():
                teacher_logits = teacher(input_ids=inputs["input_ids"]).logits
            loss, _, _ = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def next_token_agreement(student, teacher, blocks, batch_size: int) -> float:
    """Share of positions where the student's most likely next token is the teacher's."""
    import torch

    same = total = 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            batch = blocks[i:i + batch_size].to(student.device)
            a = student(input_ids=batch).logits.argmax(-1)
            b = teacher(input_ids=batch.to(teacher.device)).logits.argmax(-1).to(a.device)
            same += int((a == b).sum())
            total += a.numel()
    return same / total
