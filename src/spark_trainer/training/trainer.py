"""A resumable HF Trainer wrapper shared by the training stages.

Checkpoints go to `checkpoints/<stage>` (git-ignored, and not a DVC output: a resume
aid whose absence must not make a stage look changed), with a fingerprint of everything that shapes the run (params, data, tokenizer).
Re-running after an interruption resumes from the last checkpoint when the
fingerprint matches, and starts afresh (clearing stale checkpoints) when it does not.
Per-step loss, learning rate and tokens/s go to a dvclive folder for `dvc plots`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import ParamsError
from spark_trainer.params import EfficiencyParams, LoopParams

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class TrainOutcome:
    global_step: int
    resumed_from_step: int       # 0 when the run started afresh
    log_history: list[dict[str, Any]]
    model: Any = None            # the trained model, whole; None when it is the one passed in


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def resume_point(checkpoint_dir: Path, run_fingerprint: str) -> str | None:
    """The checkpoint to resume from, or None; clears checkpoints of a different run."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    marker = checkpoint_dir / FINGERPRINT_FILE
    previous = json.loads(marker.read_text())["fingerprint"] if marker.is_file() else None
    if previous != run_fingerprint:
        for child in checkpoint_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        marker.write_text(json.dumps({"fingerprint": run_fingerprint}) + "\n")
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """After a completed run the checkpoints have done their job; the fingerprint marker stays."""
    for child in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(child)


# On a CPU, bf16 autocast pays only where the matmuls are wide enough for the bf16 matrix
# units to win back the casts it adds to every step. Speed against fp32 by hidden size on an
# AMX Xeon (benchmarks/train_precision.py, LoRA, 8 x 128 tokens a step, one thread): 128 (the
# default model) 0.87x, 192 1.04x, 256 1.13x, 384 1.20x, 576 (SmolLM2-135M) 1.47x; full
# training crosses over at the same place (128: 0.94x, 256: 1.34x). Hidden size, not parameter
# count, decides: 16 layers at 128 (3.5M parameters) are slower in bf16, 4 at 256 (3.5M) faster.
CPU_BF16_MIN_HIDDEN_SIZE = 256


def cpu_has_bf16_matrix_units() -> bool:
    """AMX-BF16 tiles. AVX512-BF16 alone is not enough: torch's bf16 matmul there ran at
    about 0.6x its fp32 speed (2048 x 2048, oneDNN capped at AVX512_CORE_BF16)."""
    import torch

    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def model_hidden_size(model) -> int:
    """The narrowest hidden size among the model's configs (an encoder-decoder has two); 0 if none."""
    config = model.config
    parts = [config] + [getattr(config, k, None) for k in ("encoder", "decoder", "text_config", "vision_config")]
    return min((c.hidden_size for c in parts if c is not None and hasattr(c, "hidden_size")), default=0)


def precision_flags(mixed_precision: str, model=None, device=None) -> tuple[bool, bool]:
    """(bf16, fp16) for the Trainer on `device` (default: CUDA when present). `auto`: bf16, else
    fp16, on a GPU; on a CPU, bf16 autocast when it has bf16 matrix units and `model` is at
    least CPU_BF16_MIN_HIDDEN_SIZE wide, else fp32 (also when no model is given)."""
    import torch

    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if mixed_precision == "auto":
        if not cuda:
            wide = model is not None and model_hidden_size(model) >= CPU_BF16_MIN_HIDDEN_SIZE
            return wide and cpu_has_bf16_matrix_units(), False
        bf16 = torch.cuda.is_bf16_supported()
        return bf16, not bf16
    if mixed_precision == "fp16" and not cuda:
        raise ParamsError("efficiency.mixed_precision: fp16 needs a CUDA GPU; use auto, fp32 or bf16 on CPU")
    return mixed_precision == "bf16", mixed_precision == "fp16"


def apply_efficiency(model, efficiency: EfficiencyParams) -> None:
    """Settings that live on the model rather than in TrainingArguments."""
    model.set_attn_implementation(efficiency.attn_implementation)
    if efficiency.gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing


def training_arguments(p: LoopParams, output_dir: Path, evaluate: bool = False, args_class=None,
                       model=None, device=None, **extra: Any):
    """TrainingArguments from the loop params (or `args_class`, a subclass such as TRL's
    SFTConfig, with its own `extra` settings) for `device` (compute.device resolved; default:
    CUDA when present); `model` sizes `mixed_precision: auto` on a CPU. Under a launcher,
    batch_size is per process: the global batch is batch_size x processes x accumulation."""
    import torch
    from transformers import TrainingArguments

    from spark_trainer.training import launch

    cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
    bf16, fp16 = precision_flags(p.efficiency.mixed_precision, model, device)
    early = evaluate and p.efficiency.early_stopping_patience > 0
    return (args_class or TrainingArguments)(
        output_dir=str(output_dir),
        max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler,
        warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay,
        max_grad_norm=p.max_grad_norm,
        logging_steps=p.logging_steps,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=1,
        eval_strategy="steps" if early else "no",
        eval_steps=p.efficiency.eval_steps if early else None,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        activation_checkpointing=p.efficiency.gradient_checkpointing,
        bf16=bf16,
        fp16=fp16,
        report_to=[],
        seed=p.seed,
        data_seed=p.seed,
        use_cpu=cpu,
        deepspeed=launch.deepspeed_config(p.launcher),
        ddp_backend="gloo" if cpu and launch.launched() else None,
        ddp_find_unused_parameters=False,  # every parameter that trains takes part in every step
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
        **extra,
    )


@contextmanager
def autocast(mixed_precision: str, model) -> Iterator[None]:
    """Evaluation in the precision training uses (`efficiency.mixed_precision`), on the model's device."""
    import torch

    bf16, fp16 = precision_flags(mixed_precision, model, model.device)
    device = model.device.type
    with torch.autocast(device, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=bf16 or fp16):
        yield


def global_batch(p: LoopParams) -> int:
    """Blocks per optimizer step over all processes: batch_size is per process."""
    from spark_trainer import devices

    return p.batch_size * devices.world_size() * p.gradient_accumulation_steps


def write_empty_curve(live_dir: Path) -> None:
    """The dvclive layout without a step: what `dvc plots` reads when nothing was trained."""
    folder = live_dir / "plots" / "metrics" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loss.tsv").write_text("step\tloss\n")


def live_callback(live, tokens_per_step: int):
    """A TrainerCallback sending the Trainer's logs (loss, learning rate, grad norm) and
    tokens/s to dvclive. On resume the Trainer restores its log history from the
    checkpoint; it is replayed so the curve in `dvc plots` is whole."""
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        def __init__(self) -> None:
            self._t0, self._step0 = 0.0, 0

        def _log(self, entry: dict[str, Any], step: int) -> None:
            live.step = step
            for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
                if entry.get(key) is not None:
                    live.log_metric(f"train/{key}", float(entry[key]))
            live.next_step()

        def on_train_begin(self, args, state, control, **kwargs):
            for entry in state.log_history:
                if "loss" in entry:
                    self._log(entry, entry["step"])
            self._t0, self._step0 = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            elapsed, steps = time.perf_counter() - self._t0, state.global_step - self._step0
            entry = dict(logs)
            if elapsed > 0 and steps > 0:
                entry["tokens_per_second"] = steps * tokens_per_step / elapsed
            self._log(entry, state.global_step)
            self._t0, self._step0 = time.perf_counter(), state.global_step

    return LiveCallback()


def no_final_checkpoint():
    """A TrainerCallback that keeps the Trainer from saving a checkpoint at max_steps. A run
    stopped after that save (during its evaluation or saving) would resume from it, and the
    Trainer then takes one step past max_steps (transformers 5.23: global_step max_steps + 1,
    and with a non-zero learning rate there, changed weights). Without it the run resumes
    from the previous checkpoint and redoes its last steps, as an uninterrupted run did."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False

    return NoFinalCheckpoint()


def train_model(model, train_dataset, p: LoopParams, checkpoint_dir: Path, live_dir: Path | None,
                    run_fingerprint: str, extra_callbacks: tuple = (), eval_dataset=None,
                    trainer_class=None, trainer_kwargs: dict | None = None, args_class=None,
                    args_extra: dict | None = None, tokens_per_step: int | None = None,
                    device=None, system_metrics=None) -> TrainOutcome:
    """Train `model` on packed blocks with the HF Trainer (or `trainer_class`, a subclass
    with its own loss or data handling such as TRL's SFTTrainer, with `args_class` and
    `args_extra`) on `device`, resuming when possible. With early stopping on, `eval_dataset`
    is evaluated every `efficiency.eval_steps` and the best checkpoint is kept.

    Under a launcher every process calls this; rank 0 alone clears stale checkpoints (the
    others wait for it) and writes the dvclive curve. `tokens_per_step` is per process."""
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback, Trainer, default_data_collator

    from spark_trainer import devices
    from spark_trainer.training import launch

    apply_efficiency(model, p.efficiency)
    state = PartialState(cpu=device is not None and device.type == "cpu")
    with state.main_process_first():
        resume = resume_point(checkpoint_dir, run_fingerprint)
    if resume:
        log.info("resuming from %s", resume)
    if tokens_per_step is None:
        tokens_per_step = p.batch_size * p.gradient_accumulation_steps * int(train_dataset.blocks.shape[1])
    tokens_per_step *= devices.world_size()  # the callers' figure is per process
    callbacks = list(extra_callbacks)
    early = eval_dataset is not None and p.efficiency.early_stopping_patience > 0
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=p.efficiency.early_stopping_patience))
    else:  # with early stopping the last step's checkpoint may be the best one, which must be kept
        callbacks.append(no_final_checkpoint())
    live = None
    if live_dir is not None and devices.is_main_process():
        from dvclive import Live

        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)  # system monitor: below
        callbacks.insert(0, live_callback(live, tokens_per_step))
    # With ZeRO-3 or FSDP every process keeps a shard of the weights: rank 0 keeps a whole copy
    # to load the gathered weights into, for evaluation and saving.
    sharded = launch.shards_parameters(p.launcher)
    whole = copy.deepcopy(model) if sharded and devices.is_main_process() else None
    kwargs = {"data_collator": default_data_collator, **(trainer_kwargs or {})}
    trainer = (trainer_class or Trainer)(
        model=model, args=training_arguments(p, checkpoint_dir, early, args_class, model, device, **(args_extra or {})),
        train_dataset=train_dataset, eval_dataset=eval_dataset if early else None, callbacks=callbacks, **kwargs)
    try:  # CPU, RAM and GPU use to MLflow and dvclive (`tracking.system_metrics`; None: not sampled)
        with system_metrics.sampling(live) if system_metrics else nullcontext():
            trainer.train(resume_from_checkpoint=resume)
    finally:
        if live is not None:
            live.end()
    start = int(Path(resume).name.split("-")[-1]) if resume else 0
    if sharded:
        gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every process takes part
        if whole is not None:
            missing, unexpected = whole.load_state_dict(gathered, strict=False)
            tied = {k for k in missing if k.endswith("lm_head.weight")}
            if unexpected or set(missing) - tied:
                raise RuntimeError(f"gathered weights do not fit the model: missing {missing}, unexpected {unexpected}")
            whole.tie_weights()
    return TrainOutcome(trainer.state.global_step, start, list(trainer.state.log_history), whole)


def mean_loss(model, blocks, batch_size: int) -> float:
    """Mean next-token cross-entropy over all predicted tokens of `blocks`."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            batch = blocks[i:i + batch_size].to(model.device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += targets.numel()
    return total / count


def unigram_loss(train_blocks, eval_blocks, vocab_size: int) -> float:
    """Cross-entropy of an add-one unigram model fitted on the training tokens, on the
    same targets the LM predicts: the baseline a trained LM has to beat."""
    counts = Counter(train_blocks[:, 1:].reshape(-1).tolist())
    total = sum(counts.values()) + vocab_size
    targets = eval_blocks[:, 1:].reshape(-1).tolist()
    return -sum(math.log((counts.get(t, 0) + 1) / total) for t in targets) / len(targets)


def subject_losses(model, tokenizer, items: list[dict[str, Any]], block_size: int, batch_size: int) -> dict[str, float]:
    """Mean next-token loss per subject on `items` (packed per subject; a subject with
    less than one block of text is scored as one shorter block)."""
    import torch

    from spark_trainer.modeling.tokenizer import encode_documents

    by_subject: dict[str, list[str]] = {}
    for it in items:
        by_subject.setdefault(it["metadata"]["subject"], []).append(it["text"])
    losses = {}
    for subject in sorted(by_subject):
        stream = [t for doc in encode_documents(tokenizer, by_subject[subject]) for t in doc]
        size = min(block_size, len(stream))
        n = len(stream) // size
        blocks = torch.tensor(stream[: n * size], dtype=torch.long).view(n, size)
        losses[subject] = mean_loss(model, blocks, batch_size)
    return losses
