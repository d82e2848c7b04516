"""A resumable HF Trainer wrapper shared by the training stages.

Checkpoints go to a persisted folder (`checkpoints/<stage>`, DVC `persist: true`)
with a fingerprint of everything that shapes the run (params, data, tokenizer).
Re-running after an interruption resumes from the last checkpoint when the
fingerprint matches, and starts afresh (clearing stale checkpoints) when it does not.
Per-step loss, learning rate and tokens/s go to a dvclive folder for `dvc plots`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.params import TrainParams

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class TrainOutcome:
    global_step: int
    resumed_from_step: int       # 0 when the run started afresh
    log_history: list[dict[str, Any]]


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
    """After a completed run the checkpoints have done their job; the marker stays so
    the (persisted, DVC-declared) folder exists."""
    for child in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(child)


def training_arguments(p: TrainParams, output_dir: Path):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size,
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
        eval_strategy="no",
        report_to=[],
        seed=p.seed,
        data_seed=p.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )


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


def train_causal_lm(model, train_dataset, p: TrainParams, checkpoint_dir: Path, live_dir: Path | None,
                    run_fingerprint: str, extra_callbacks: tuple = ()) -> TrainOutcome:
    """Train `model` on packed blocks with the HF Trainer, resuming when possible."""
    from transformers import Trainer, default_data_collator

    resume = resume_point(checkpoint_dir, run_fingerprint)
    if resume:
        log.info("resuming from %s", resume)
    tokens_per_step = p.batch_size * p.gradient_accumulation_steps * int(train_dataset.blocks.shape[1])
    callbacks = list(extra_callbacks)
    live = None
    if live_dir is not None:
        from dvclive import Live

        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, monitor_system=False)
        callbacks.insert(0, live_callback(live, tokens_per_step))
    trainer = Trainer(model=model, args=training_arguments(p, checkpoint_dir), train_dataset=train_dataset,
                      data_collator=default_data_collator, callbacks=callbacks)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if live is not None:
            live.end()
    start = int(Path(resume).name.split("-")[-1]) if resume else 0
    return TrainOutcome(trainer.state.global_step, start, list(trainer.state.log_history))


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
