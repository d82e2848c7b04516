"""MMLU scoring that reproduces lm-evaluation-harness question by question.

    python stages/evaluate_mmlu.py base models/base data/sample/mmlu metrics/evaluate_mmlu/base.json ...

Two formats, as lm-eval's `mmlu` (letters) and `mmlu_continuation` tasks:
- letter: "The following are multiple choice questions (with answers) about <subject>.\\n\\n",
  k dev examples `<q>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: <letter>` joined by blank lines,
  then the test question ending in `Answer:`; continuations " A" .. " D".
- continuation: "The following are questions (with answers) about <subject>.\\n\\n", examples
  `Question: <q>\\nAnswer: <answer text>`; continuations " <choice text>"; acc and acc_norm
  (log-likelihood divided by the choice's length in characters).

Scoring as lm-eval's HF model does: context and continuation are encoded together (the
tokenizer's own special tokens) and split at the context's length; the input is
left-truncated to the model's maximum length; the log-likelihood of a continuation is
the sum of its tokens' log-probabilities. Questions are scored in batches.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import InputDataError

LETTERS = ("A", "B", "C", "D")
FORMATS = ("letter", "continuation")


@dataclass(frozen=True)
class Question:
    subject: str
    index: int
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def read_csv(path: Path, subject: str) -> list[Question]:
    """Rows `question, A, B, C, D, answer` (no header), as in the original MMLU files."""
    questions = []
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if len(row) != 6:
                raise InputDataError(f"{path}, line {line}: expected 6 columns (question, A, B, C, D, answer), "
                                     f"got {len(row)}")
            if row[5].strip() not in LETTERS:
                raise InputDataError(f"{path}, line {line}: answer must be one of A, B, C, D, got {row[5]!r}")
            questions.append(Question(subject, line - 1, row[0], tuple(row[1:5]), LETTERS.index(row[5].strip())))
    return questions


def load_local(folder: Path) -> tuple[dict[str, list[Question]], dict[str, list[Question]]]:
    """(dev, test) per subject from `<folder>/dev/<subject>_dev.csv` and `<folder>/test/<subject>_test.csv`."""
    test_files = sorted((folder / "test").glob("*_test.csv"))
    if not test_files:
        raise InputDataError(f"no <subject>_test.csv files under {folder / 'test'}; the embedded set comes from "
                             "the 'sample' stage (`dvc repro sample`)")
    dev, test = {}, {}
    for path in test_files:
        subject = path.name[: -len("_test.csv")]
        test[subject] = read_csv(path, subject)
        dev_path = folder / "dev" / f"{subject}_dev.csv"
        dev[subject] = read_csv(dev_path, subject) if dev_path.is_file() else []
    return dev, test


def load_hub(dataset_id: str, subjects: tuple[str, ...]) -> tuple[dict[str, list[Question]], dict[str, list[Question]]]:
    """The `cais/mmlu` layout from the Hugging Face hub (question, choices, answer index)."""
    import datasets

    dev, test = {}, {}
    for subject in subjects:
        try:
            data = datasets.load_dataset(dataset_id, subject)
        except (OSError, ValueError, ConnectionError) as e:
            raise InputDataError(f"cannot load '{dataset_id}' subject '{subject}': {e}. Offline, point "
                                 "evaluate_mmlu at a local folder in the MMLU CSV layout") from e
        for split, target in (("dev", dev), ("test", test)):
            target[subject] = [Question(subject, i, r["question"], tuple(r["choices"]), int(r["answer"]))
                               for i, r in enumerate(data[split])]
    return dev, test


def description(subject: str, fmt: str) -> str:
    name = subject.replace("_", " ")
    if fmt == "letter":
        return f"The following are multiple choice questions (with answers) about {name}.\n\n"
    return f"The following are questions (with answers) about {name}.\n\n"


def doc_text(q: Question, fmt: str) -> str:
    if fmt == "letter":
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True))
        return f"{q.question.strip()}{options}\nAnswer:"
    return f"Question: {q.question.strip()}\nAnswer:"


def continuations(q: Question, fmt: str) -> list[str]:
    return [f" {c}" for c in (LETTERS if fmt == "letter" else q.choices)]


def context(q: Question, shots: list[Question], fmt: str) -> str:
    examples = "".join(doc_text(s, fmt) + continuations(s, fmt)[s.answer] + "\n\n" for s in shots)
    return description(q.subject, fmt) + examples + doc_text(q, fmt)


def encode_pair(tokenizer, ctx: str, continuation: str) -> tuple[list[int], list[int]]:
    """Trailing context spaces move to the continuation; the pair is encoded whole and
    split at the context's length, so merges across the boundary count as lm-eval counts them."""
    spaces = len(ctx) - len(ctx.rstrip())
    if spaces:
        ctx, continuation = ctx[:-spaces], ctx[-spaces:] + continuation
    whole = tokenizer.encode(ctx + continuation)
    ctx_ids = tokenizer.encode(ctx)
    return ctx_ids, whole[len(ctx_ids):]


def max_length(model, tokenizer) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    return min(int(tokenizer.model_max_length), 2048)


def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], limit: int, batch_size: int) -> list[float]:
    """Sum of continuation log-probabilities for each (context ids, continuation ids).

    Inputs are left-truncated to `limit` tokens. Requests whose model input is the same
    (the four one-token letters of a question) share one forward pass. Inputs run
    right-padded in batches, longest first, so a batch wastes little on padding."""
    import torch
    import torch.nn.functional as F

    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (ctx_ids, cont_ids) in enumerate(requests):
        full = (ctx_ids + cont_ids)[-(limit + 1):]
        groups.setdefault(tuple(full[:-1]), []).append((i, cont_ids))
    inputs = sorted(groups, key=lambda ids: -len(ids))
    out = [0.0] * len(requests)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            batch = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
            for row, ids in enumerate(chunk):
                batch[row, : len(ids)] = torch.tensor(ids)
            logprobs = F.log_softmax(model(input_ids=batch.to(device)).logits.float(), dim=-1)
            for row, ids in enumerate(chunk):
                for i, cont in groups[ids]:
                    positions = torch.arange(len(ids) - len(cont), len(ids), device=device)
                    out[i] = float(logprobs[row, positions, torch.tensor(cont, device=device)].sum())
    return out


def shared_context_loglikelihoods(model, ctx_ids: list[int], conts: list[list[int]], limit: int) -> list[float] | None:
    """The choices of one question share its context: encode the context once and run
    only the continuations on its KV cache. None when left truncation would cut the
    context differently for different choices (then each is scored whole)."""
    import torch
    import torch.nn.functional as F

    if len(ctx_ids) + max(len(c) for c in conts) > limit + 1:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ctx_ids], device=device), use_cache=True)
        first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
        lls = [float(first[c[0]]) for c in conts]
        width = max(len(c) for c in conts) - 1
        if width == 0:
            return lls
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(conts))
        batch = torch.zeros(len(conts), width, dtype=torch.long, device=device)
        for row, c in enumerate(conts):
            batch[row, : len(c) - 1] = torch.tensor(c[:-1], device=device)
        logprobs = F.log_softmax(model(input_ids=batch, past_key_values=cache).logits.float(), dim=-1)
        for row, c in enumerate(conts):
            for t in range(1, len(c)):
                lls[row] += float(logprobs[row, t - 1, c[t]])
    return lls


def evaluate(model, tokenizer, dev: dict[str, list[Question]], test: dict[str, list[Question]], fmt: str,
             k: int, batch_size: int) -> list[dict[str, Any]]:
    """One record per test question: log-likelihoods, probabilities, prediction(s)."""
    limit = max_length(model, tokenizer)
    pairs, owners = [], []
    for subject in sorted(test):
        shots = dev[subject][:k]
        for q in test[subject]:
            ctx = context(q, shots, fmt)
            pairs.append([encode_pair(tokenizer, ctx, choice) for choice in continuations(q, fmt)])
            owners.append(q)
    lls: list[float] = [0.0] * (4 * len(owners))
    batched = []  # (position, request) for questions scored in shared batches
    for n, question_pairs in enumerate(pairs):
        single_token = all(len(cont) == 1 for _, cont in question_pairs)
        same_context = len({tuple(ctx) for ctx, _ in question_pairs}) == 1
        shared = None
        if same_context and not single_token:
            shared = shared_context_loglikelihoods(model, question_pairs[0][0], [c for _, c in question_pairs], limit)
        if shared is None:
            batched += [(4 * n + j, pair) for j, pair in enumerate(question_pairs)]
        else:
            lls[4 * n: 4 * n + 4] = shared
    for (position, _), value in zip(batched, loglikelihoods(model, [pair for _, pair in batched], limit, batch_size),
                                    strict=True):
        lls[position] = value
    records = []
    for n, q in enumerate(owners):
        ll = lls[4 * n: 4 * n + 4]
        top = max(ll)
        weights = [math.exp(x - top) for x in ll]
        probs = [w / sum(weights) for w in weights]
        pred = max(range(4), key=lambda i: (ll[i], -i))  # first maximum, as numpy's argmax
        record = {"subject": q.subject, "index": q.index, "format": fmt, "answer": q.answer, "prediction": pred,
                  "correct": pred == q.answer, "loglikelihoods": ll, "probabilities": probs}
        if fmt == "continuation":
            lengths = [float(len(c)) for c in q.choices]
            normed = [x / n_chars for x, n_chars in zip(ll, lengths, strict=True)]
            record["prediction_norm"] = max(range(4), key=lambda i: (normed[i], -i))
            record["correct_norm"] = record["prediction_norm"] == q.answer
        records.append(record)
    return records


def accuracy(flags: list[bool]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)), as lm-eval reports them."""
    n = len(flags)
    p = sum(flags) / n if n else 0.0
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
    return {"acc": p, "acc_stderr": stderr, "n": n}


def summarise(records: list[dict[str, Any]], categories: dict[str, str]) -> dict[str, Any]:
    """Accuracy overall, per subject and per category (and acc_norm for continuation)."""
    keys = ["correct"] + (["correct_norm"] if records and "correct_norm" in records[0] else [])
    out: dict[str, Any] = {}
    for key in keys:
        name = "acc" if key == "correct" else "acc_norm"
        groups: dict[str, dict[str, list[bool]]] = {"subject": {}, "category": {}}
        for r in records:
            groups["subject"].setdefault(r["subject"], []).append(r[key])
            groups["category"].setdefault(categories.get(r["subject"], "other"), []).append(r[key])
        out[name] = {
            "overall": accuracy([r[key] for r in records]),
            "subjects": {s: accuracy(v) for s, v in sorted(groups["subject"].items())},
            "categories": {c: accuracy(v) for c, v in sorted(groups["category"].items())},
        }
    return out
