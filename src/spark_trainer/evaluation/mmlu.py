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
the sum of its tokens' log-probabilities. The few-shot prefix of a subject is encoded once
and its KV cache reused for every question, wherever the whole prompt's tokens start with
the prefix's own tokens and no truncation applies; elsewhere questions are scored whole,
in batches.
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


def fewshot_counts(dev: dict[str, list[Question]], k: int, short_dev: str) -> dict[str, int]:
    """k per subject. A subject with fewer than k dev questions is an error, or, with
    short_dev: reduce, gets as many as it has (the counts are recorded in metrics)."""
    counts = {}
    for subject, examples in sorted(dev.items()):
        if len(examples) < k and short_dev == "error":
            raise InputDataError(f"subject '{subject}' has {len(examples)} dev questions, fewer than "
                                 f"evaluate_mmlu.num_fewshot={k}; lower it or set evaluate_mmlu.short_dev: reduce")
        counts[subject] = min(len(examples), k)
    return counts


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


def fewshot_prefix(subject: str, shots: list[Question], fmt: str) -> str:
    """The description and the k examples: the part of the prompt every question of a subject shares."""
    return description(subject, fmt) + "".join(doc_text(s, fmt) + continuations(s, fmt)[s.answer] + "\n\n"
                                               for s in shots)


def context(q: Question, shots: list[Question], fmt: str) -> str:
    return fewshot_prefix(q.subject, shots, fmt) + doc_text(q, fmt)


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


def prefix_cache(model, prefix_ids: list[int]):
    """The KV cache of a subject's few-shot prefix (description and examples), computed once."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True).past_key_values


def cached_loglikelihoods(model, cache, items: list[tuple[list[int], list[list[int]]]],
                          batch_size: int) -> list[list[float]]:
    """Log-likelihoods of the choices of several questions of one subject, all run on its
    prefix cache: a row is a question's own tokens plus a continuation (all but its last
    token); rows are right-padded and run `batch_size` at a time on copies of the cache."""
    import copy

    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    rows: list[list[int]] = []
    owner: list[list[int]] = []  # per item, the row of each choice
    for suffix_ids, conts in items:
        if all(len(c) == 1 for c in conts):  # one-token continuations (letters) share their only input
            owner.append([len(rows)] * len(conts))
            rows.append(suffix_ids)
        else:
            owner.append(list(range(len(rows), len(rows) + len(conts))))
            rows += [suffix_ids + c[:-1] for c in conts]
    row_logprobs: dict[int, Any] = {}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = torch.zeros(len(chunk), max(len(r) for r in chunk), dtype=torch.long, device=device)
            for i, r in enumerate(chunk):
                batch[i, : len(r)] = torch.tensor(r, device=device)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            logprobs = F.log_softmax(model(input_ids=batch, past_key_values=past).logits.float(), dim=-1)
            for i in range(len(chunk)):
                row_logprobs[start + i] = logprobs[i]
    out = []
    for (suffix_ids, conts), rows_of in zip(items, owner, strict=True):
        first = len(suffix_ids) - 1  # this position predicts a continuation's first token
        out.append([sum(float(row_logprobs[r][first + t, tok]) for t, tok in enumerate(c))
                    for r, c in zip(rows_of, conts, strict=True)])
    return out


def evaluate(model, tokenizer, dev: dict[str, list[Question]], test: dict[str, list[Question]], fmt: str,
             k: int, batch_size: int) -> list[dict[str, Any]]:
    """One record per test question: log-likelihoods, probabilities, prediction(s)."""
    limit = max_length(model, tokenizer)
    owners: list[Question] = []
    lls: list[float] = []
    fallback = []  # (position, (context ids, continuation ids)) scored whole, in batches
    for subject in sorted(test):
        shots = dev[subject][:k]
        # Reused only where encoding the whole prompt starts with the prefix's own tokens.
        prefix_ids = tokenizer.encode(fewshot_prefix(subject, shots, fmt))
        cached: list[tuple[int, tuple[list[int], list[list[int]]]]] = []  # (position, (suffix, continuations))
        for q in test[subject]:
            pairs = [encode_pair(tokenizer, context(q, shots, fmt), choice) for choice in continuations(q, fmt)]
            ctx_ids = pairs[0][0]
            reusable = (all(ctx == ctx_ids for ctx, _ in pairs) and ctx_ids[: len(prefix_ids)] == prefix_ids
                        and len(ctx_ids) > len(prefix_ids)
                        and len(ctx_ids) + max(len(c) for _, c in pairs) <= limit + 1)
            if reusable:
                cached.append((len(lls), (ctx_ids[len(prefix_ids):], [c for _, c in pairs])))
            else:
                fallback += [(len(lls) + j, pair) for j, pair in enumerate(pairs)]
            lls += [0.0] * 4
            owners.append(q)
        if cached:
            scored = cached_loglikelihoods(model, prefix_cache(model, prefix_ids), [item for _, item in cached],
                                           batch_size)
            for (position, _), values in zip(cached, scored, strict=True):
                lls[position: position + 4] = values
    for (position, _), value in zip(fallback, loglikelihoods(model, [pair for _, pair in fallback], limit,
                                                             batch_size), strict=True):
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
