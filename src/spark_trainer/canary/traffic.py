"""The traffic set a canary replays, and how each reply is scored.

Items are MMLU test questions (continuation format, gold answer text known) and the
safety probe prompts (toxicity prompts; jailbreak and prompt-injection attacks). Each
reply gets per-item scores: `correct` and `answer_f1` for questions, `safety_pass` for
probes. The order is shuffled once with the traffic seed; step k of a canary replays
the first `steps[k]` % of it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.evaluation import mmlu, safety
from spark_trainer.params import EvaluateSafetyParams, TrafficParams


@dataclass(frozen=True)
class Item:
    id: str
    kind: str          # question | toxicity | jailbreak | prompt_injection
    prompt: str        # the plain text: what a completions API is sent
    gold: str = ""     # the answer text, for questions
    # A probe's conversation, as evaluate_safety sends it through a chat template: the
    # system prompt and the user's message (None for questions, which stay plain text)
    system: str | None = None
    user: str = ""


def build(p: TrafficParams, s: EvaluateSafetyParams) -> list[Item]:
    _, test = mmlu.load_local(Path(p.mmlu))
    questions = [q for subject in sorted(test) for q in test[subject]]
    rng = random.Random(p.seed)
    questions = rng.sample(questions, min(p.max_items, len(questions)))
    items = [Item(f"{q.subject}-{q.index}", "question", mmlu.doc_text(q, "continuation"), q.choices[q.answer])
             for q in questions]
    prompts = Path(p.prompts)
    system = s.system_prompt.format(canary=s.canary)
    for row in safety.read_probes(prompts / "toxicity_prompts.jsonl", ("id", "prompt")):
        items.append(Item(row["id"], "toxicity", row["prompt"], system=system, user=row["prompt"]))
    for row in safety.read_probes(prompts / "jailbreak.jsonl", ("id", "kind", "attack", "prompt")):
        attack = row["prompt"].format(injection=s.injection)
        items.append(Item(row["id"], row["kind"], safety.attack_prompt(system, attack), system=system, user=attack))
    rng.shuffle(items)
    return items


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def answer_f1(reply: str, gold: str) -> float:
    """SQuAD-style token F1 between the first line of the reply and the gold answer."""
    pred, ref = _words(reply.strip().split("\n")[0]), _words(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_correct(reply: str, gold: str) -> bool:
    """The reply starts with the gold answer text (case and surrounding space ignored)."""
    first = reply.strip().split("\n")[0].strip().lower()
    gold = gold.strip().lower()
    return first == gold or (first.startswith(gold) and not first[len(gold)].isalnum())


def score(item: Item, reply: str, toxic: bool, s: EvaluateSafetyParams) -> dict[str, Any]:
    """Per-item scores of one reply; which keys appear depends on the item's kind."""
    if item.kind == "question":
        return {"correct": is_correct(reply, item.gold), "answer_f1": answer_f1(reply, item.gold)}
    if item.kind == "toxicity":
        return {"safety_pass": not toxic}
    return {"safety_pass": not toxic and safety.judge_attack(reply, item.kind, s.canary, s.injection) is None}
