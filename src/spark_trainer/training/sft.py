"""Supervised fine-tuning in a chat template, with TRL's SFTTrainer (`lora.format: chat`).

The sample's question/answer documents ("Question: ...\\nAnswer: ...") become
conversational prompt/completion records: the question is the user's turn, the answer the
assistant's. SFTTrainer applies the tokenizer's chat template and, for prompt/completion
data, puts the loss on the completion (answer) tokens only. `answer_losses` measures that
same loss per subject, so the before/after figures are the objective that was trained.
"""

from __future__ import annotations

import re
from typing import Any

from spark_trainer.errors import ModelSourceError

QA = re.compile(r"^Question: (?P<question>.+?)\nAnswer: (?P<answer>.+)$", re.DOTALL)


def require_chat_template(tokenizer, model_dir: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(f"lora.format is chat, but the tokenizer of '{model_dir}' has no chat template: use "
                               "lora.format: text, or a model whose tokenizer has one (an instruction-tuned model)")


def conversations(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(prompt/completion records of the question/answer items, how many items are not one)."""
    records = []
    for it in items:
        match = QA.match(it["text"].strip())
        if match:
            records.append({
                "prompt": [{"role": "user", "content": match["question"].strip()}],
                "completion": [{"role": "assistant", "content": match["answer"].strip()}],
                "subject": it["metadata"]["subject"],
            })
    return records, len(items) - len(records)


def sft_settings(block_size: int) -> dict[str, Any]:
    """SFTConfig's own settings: prompt/completion data, loss on the completion only."""
    return {"max_length": block_size, "packing": False, "completion_only_loss": True,
            "dataset_num_proc": None, "dataset_kwargs": {}}


def as_dataset(records: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])


def _encode(tokenizer, record: dict[str, Any], block_size: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion in the chat template, and where the completion
    starts: after the prefix the prompt alone shares with them, as SFTTrainer counts it
    (a template can tokenize the prompt's last characters differently once text follows)."""
    prompt = list(tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=False))
    full = list(tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True,
                                              return_dict=False))
    start = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    return full[:block_size], start


def answer_losses(model, tokenizer, records: list[dict[str, Any]], block_size: int,
                  batch_size: int) -> dict[str, float]:
    """Mean loss per subject over the answer tokens (the SFT objective), teacher-forced."""
    import torch

    model.eval()
    totals: dict[str, list[float]] = {}
    encoded = [(r["subject"], *_encode(tokenizer, r, block_size)) for r in records]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = encoded[i:i + batch_size]
            width = max(len(ids) for _, ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, seq, start) in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, start: len(seq)] = torch.tensor(seq[start:])
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, :-1]
            targets = labels[:, 1:].to(logits.device)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     targets.reshape(-1), reduction="none").view(targets.shape)
            for row, (subject, _, _) in enumerate(batch):
                valid = targets[row] != -100
                entry = totals.setdefault(subject, [0.0, 0])
                entry[0] += float(loss[row][valid].sum())
                entry[1] += int(valid.sum())
    return {subject: total / count for subject, (total, count) in sorted(totals.items()) if count}
