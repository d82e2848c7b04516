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
the sum of its tokens' log-probabilities.

Computed with less work and the same result: the tokens all prompts of a subject start
with (description, examples) run once, and their KV cache serves every question; a
question's context runs once for its four choices (`cached_loglikelihoods`); the output
layer and the softmax run only where a continuation's token is predicted. A prompt that
needs left truncation is scored whole, as lm-eval builds it (`loglikelihoods`).
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
# dtype auto: bf16 from this size up (measured, see docs/stages/evaluate_mmlu.md)
BF16_MIN_PARAMETERS = 10_000_000


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


def native_bf16(device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: a CPU with AMX or AVX512-BF16, a bf16 GPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return device.type == "cpu" and any(probe() for probe in probes if probe is not None)


def choose_dtype(setting: str, model, device=None) -> str:
    """`evaluate_mmlu.dtype` resolved: auto is bfloat16 on a device with native bf16 for a
    model of at least BF16_MIN_PARAMETERS, else float32 (below it bf16 saves nothing).
    `device`: where the model runs (compute.device); default: where its parameters are."""
    if setting != "auto":
        return setting
    from spark_trainer.modeling.causal_lm import parameter_count

    large = parameter_count(model) >= BF16_MIN_PARAMETERS
    return "bfloat16" if large and native_bf16(device or next(model.parameters()).device) else "float32"


def cast(model, dtype: str):
    """The model's floating-point parameters in `dtype`, as `from_pretrained(dtype=...)` (and
    so lm-eval's `dtype`) loads them: buffers such as the rotary frequencies stay float32,
    where `model.to(dtype)` would round them too and change every score."""
    import torch

    target = getattr(torch, dtype)
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(target)
    return model


def max_length(model, tokenizer) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    return min(int(tokenizer.model_max_length), 2048)


def _sums(logprobs, picks: list[list[tuple[int, int]]]) -> list[float]:
    """Per continuation, the sum of its tokens' log-probabilities; `picks` holds one
    (row of `logprobs`, token id) per token. Summed in the log-probabilities' dtype, as lm-eval sums."""
    import torch

    rows = torch.tensor([r for p in picks for r, _ in p], device=logprobs.device)
    tokens = torch.tensor([t for p in picks for _, t in p], device=logprobs.device)
    values = logprobs[rows, tokens]
    out, start = [], 0
    for p in picks:
        out.append(float(values[start:start + len(p)].sum()))
        start += len(p)
    return out


def _kept_logprobs(model, keep, **inputs):
    """Log-softmax over the vocabulary at the positions `keep` marks only (row-major order):
    the output layer and the softmax run on those rows alone. In the logits' dtype, as lm-eval."""
    import torch.nn.functional as F

    return F.log_softmax(model(logits_to_keep=keep, **inputs).logits, dim=-1)


def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], limit: int, batch_size: int) -> list[float]:
    """Sum of continuation log-probabilities for each (context ids, continuation ids), each
    input scored whole as lm-eval scores it (the plain path, and the one for truncated inputs).

    Inputs are left-truncated to `limit` tokens. Requests whose model input is the same
    (the four one-token letters of a question) share one forward pass. Inputs run
    right-padded in batches, longest first, so a batch wastes little on padding."""
    import torch

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
            keep = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.bool)
            for row, ids in enumerate(chunk):
                batch[row, : len(ids)] = torch.tensor(ids)
                keep[row, len(ids) - max(len(c) for _, c in groups[ids]): len(ids)] = True
            first = (keep.flatten().cumsum(0) - 1).view_as(keep)  # kept position -> row of the log-probs
            logprobs = _kept_logprobs(model, keep.to(device), input_ids=batch.to(device))
            owners, picks = [], []
            for row, ids in enumerate(chunk):
                for i, cont in groups[ids]:
                    owners.append(i)
                    picks.append([(int(first[row, len(ids) - len(cont) + t]), tok) for t, tok in enumerate(cont)])
            for i, value in zip(owners, _sums(logprobs, picks), strict=True):
                out[i] = value
    return out


def prefix_cache(model, prefix_ids: list[int]):
    """The KV cache of the tokens a subject's prompts share (description and examples), computed once."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True,
                     logits_to_keep=1).past_key_values


class _Trie:
    """Token sequences merged into one tree: an opening several sequences share is one path of nodes."""

    def __init__(self) -> None:
        self.children: dict[int, dict[int, int]] = {-1: {}}  # node -> {token: child}; -1 is the root
        self.tokens: list[int] = []
        self.parent: list[int] = []

    def missing(self, sequences: list[list[int]]) -> int:
        """How many nodes adding `sequences` would create."""
        new: dict[tuple[int, int], int] = {}  # (parent, token) -> a would-be node, numbered below -1
        for seq in sequences:
            node = -1
            for token in seq:
                child = self.children.get(node, {}).get(token)
                node = child if child is not None else new.setdefault((node, token), -2 - len(new))
        return len(new)

    def add(self, seq: list[int]) -> list[int]:
        """The nodes along `seq`, created where missing."""
        node, path = -1, []
        for token in seq:
            if token not in self.children[node]:
                self.children[node][token] = len(self.tokens)
                self.children[len(self.tokens)] = {}
                self.tokens.append(token)
                self.parent.append(node)
            node = self.children[node][token]
            path.append(node)
        return path

    def layout(self) -> tuple[dict[int, int], list[int], list[int], list[int]]:
        """The nodes depth first, so that a node's descendants are the columns right after it:
        each node's column, and per column its token, depth and end (one past its last descendant)."""
        order, stack = [], list(reversed(self.children[-1].values()))
        while stack:
            order.append(stack.pop())
            stack.extend(reversed(self.children[order[-1]].values()))
        depth, size = {-1: -1}, [1] * len(self.tokens)
        for node in order:
            depth[node] = depth[self.parent[node]] + 1
        for node in reversed(order):
            if self.parent[node] >= 0:
                size[self.parent[node]] += size[node]
        return ({node: c for c, node in enumerate(order)}, [self.tokens[n] for n in order],
                [depth[n] for n in order], [c + size[n] for c, n in enumerate(order)])


def _inputs(item: tuple[list[int], list[list[int]]]) -> list[list[int]]:
    """A question's model inputs: its context, then a continuation but its last token."""
    ctx, conts = item
    return [ctx + cont[:-1] for cont in conts]


def _batches(items: list[tuple[list[int], list[list[int]]]], batch_size: int) -> list[list[tuple[_Trie, list[int]]]]:
    """Questions merged into rows, rows into forward passes. Questions join a row in token
    order (neighbours open alike) up to twice the largest question's nodes; rows go longest
    first, about `batch_size` questions to a pass."""
    width = 2 * max(_Trie().missing(_inputs(item)) for item in items)
    rows: list[tuple[_Trie, list[int]]] = []  # (tree, its questions)
    for i in sorted(range(len(items)), key=lambda i: items[i][0]):
        if not rows or len(rows[-1][0].tokens) + rows[-1][0].missing(_inputs(items[i])) > width:
            rows.append((_Trie(), []))
        rows[-1][1].append(i)
        for seq in _inputs(items[i]):
            rows[-1][0].add(seq)
    batches: list[list[tuple[_Trie, list[int]]]] = []
    for row in sorted(rows, key=lambda row: -len(row[0].tokens)):
        if not batches or sum(len(questions) for _, questions in batches[-1]) + len(row[1]) > batch_size:
            batches.append([])
        batches[-1].append(row)
    return batches


def cached_loglikelihoods(model, cache, items: list[tuple[list[int], list[list[int]]]],
                          batch_size: int) -> list[list[float]]:
    """Log-likelihoods of the choices of several questions of one subject, on its prefix cache.

    A row is a tree of tokens: the inputs of a few questions (context, then each
    continuation but its last token) merged where they open alike, so a question's context
    runs once for its four choices and an opening several questions share runs once. An
    attention mask lets a token see the prefix and its own ancestors only, at its depth
    after the prefix as position: what it sees, where, in its own prompt. The output layer
    runs only where a continuation's token is predicted. Rows are right-padded; padding sees
    the prefix and itself, and nothing sees it."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype
    n_prefix = cache.get_seq_length()
    out: list[list[float]] = [[] for _ in items]
    with torch.no_grad():
        for batch in _batches(items, batch_size):
            width = len(batch[0][0].tokens)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            positions = torch.full((len(batch), width), n_prefix, dtype=torch.long)
            end = torch.arange(1, width + 1).repeat(len(batch), 1)
            keep = torch.zeros(len(batch), width, dtype=torch.bool)
            picks = []  # per continuation, per token: (row, column predicting it, token id)
            for b, (trie, questions) in enumerate(batch):
                column, tokens, depths, ends = trie.layout()
                ids[b, : len(tokens)] = torch.tensor(tokens)
                positions[b, : len(tokens)] += torch.tensor(depths)
                end[b, : len(tokens)] = torch.tensor(ends)
                for i in questions:
                    ctx, conts = items[i]
                    for cont, path in zip(conts, map(trie.add, _inputs(items[i])), strict=True):
                        # token t is predicted at the input's token len(ctx) - 1 + t
                        picks.append([(b, column[path[len(ctx) - 1 + t]], token) for t, token in enumerate(cont)])
                        keep[b, [c for _, c, _ in picks[-1]]] = True
            kept_row = (keep.flatten().cumsum(0) - 1).view_as(keep)  # (row, column) -> row of the log-probs
            key, query = torch.arange(width)[None, None, :], torch.arange(width)[None, :, None]
            sees = (key <= query) & (query < end[:, None, :])  # the key is the query or one of its ancestors
            sees = torch.cat([torch.ones(len(batch), width, n_prefix, dtype=torch.bool), sees], dim=-1)
            mask = torch.zeros(sees.shape, dtype=dtype).masked_fill(~sees, torch.finfo(dtype).min)[:, None]
            past = DynamicCache(config=model.config, ddp_cache_data=[
                (layer.keys.expand(len(batch), -1, -1, -1), layer.values.expand(len(batch), -1, -1, -1))
                for layer in cache.layers])
            logprobs = _kept_logprobs(model, keep.to(device), input_ids=ids.to(device), attention_mask=mask.to(device),
                                      position_ids=positions.to(device), past_key_values=past)
            sums = iter(_sums(logprobs, [[(int(kept_row[b, c]), token) for b, c, token in p] for p in picks]))
            for _, questions in batch:
                for i in questions:
                    out[i] = [next(sums) for _ in items[i][1]]
    return out


def evaluate(model, tokenizer, dev: dict[str, list[Question]], test: dict[str, list[Question]], fmt: str,
             k: int, batch_size: int, reuse_prefix: bool = True) -> list[dict[str, Any]]:
    """One record per test question: log-likelihoods, probabilities, prediction(s).
    reuse_prefix=False scores every question whole (the plain path, for comparisons)."""
    limit = max_length(model, tokenizer)
    owners: list[Question] = []
    lls: list[float] = []
    fallback = []  # (position, (context ids, continuation ids)) scored whole, in batches
    for subject in sorted(test):
        shots = dev[subject][:k]
        cached: list[tuple[int, tuple[list[int], list[list[int]]]]] = []  # (position, (context, continuations))
        for q in test[subject]:
            pairs = [encode_pair(tokenizer, context(q, shots, fmt), choice) for choice in continuations(q, fmt)]
            ctx_ids = pairs[0][0]
            if (reuse_prefix and all(ctx == ctx_ids for ctx, _ in pairs)
                    and len(ctx_ids) + max(len(c) for _, c in pairs) <= limit + 1):
                cached.append((len(lls), (ctx_ids, [c for _, c in pairs])))
            else:  # left-truncated as lm-eval truncates: scored whole
                fallback += [(len(lls) + j, pair) for j, pair in enumerate(pairs)]
            lls += [0.0] * 4
            owners.append(q)
        # The prefix is the tokens every context starts with (description, examples, and more
        # where they agree), taken from the tokens themselves, not from encoding the prefix
        # text: "\n\n" at its end merges differently with what follows. At least one context
        # token stays with each question, to predict its continuations.
        first = cached[0][1][0] if cached else []
        n_prefix = min((len(ctx) - 1 for _, (ctx, _) in cached), default=0)
        for _, (ctx, _) in cached:
            n_prefix = next((n for n in range(n_prefix) if ctx[n] != first[n]), n_prefix)
        if n_prefix == 0:
            fallback += [(position + j, (ctx, cont)) for position, (ctx, conts) in cached
                         for j, cont in enumerate(conts)]
        else:
            scored = cached_loglikelihoods(model, prefix_cache(model, first[:n_prefix]),
                                           [(ctx[n_prefix:], conts) for _, (ctx, conts) in cached], batch_size)
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
