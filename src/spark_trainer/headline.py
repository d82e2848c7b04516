"""The headline numbers: about a dozen flat values, read from the stages' metrics files, that say
whether a change made the pipeline better.

`dvc exp show` lists every metric of every stage (over a thousand columns); these keys are
unique across all metrics files and name their stage and what they measure, so a regex
on them keeps a readable table (`make review`) and `dvc metrics diff` can put them first.

Each value comes from one source file, named by its role (the stage script's argument):
`HEADLINE` lists key, role, and how to read the value. Every value is a number, so DVC
can sort and diff it: the canary's decision is 1 (Successful), 0 (Inconclusive), -1 (Failed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import InputDataError
from spark_trainer.params import dotted_get

CANARY_DECISIONS = {"Successful": 1, "Inconclusive": 0, "Failed": -1}
# The MMLU models whose continuation accuracy is headlined (evaluate_mmlu's foreach keys).
MMLU_MODELS = ("base", "lora_arithmetic", "quantized", "distilled")


@dataclass(frozen=True)
class Headline:
    key: str                      # the flat, unique key in metrics/headline.json
    role: str                     # which source file (the stage script's argument name)
    read: Callable[[dict[str, Any], str], float | int]   # (the file's JSON, where it came from) -> value
    better: str                   # "higher" or "lower": how a reviewer reads a change


def node(data: dict[str, Any], dotted: str, source: str) -> Any:
    """The value at `a.b.c` in a metrics file; a missing key names the file and the key."""
    try:
        return dotted_get(data, dotted)
    except KeyError as e:
        raise InputDataError(f"{source}: no key '{dotted}' (missing '{e.args[0]}'); rerun the stage that writes "
                             "it (`dvc repro`), or update spark_trainer/headline.py if it was renamed") from None


def number(data: dict[str, Any], dotted: str, source: str) -> float | int:
    value = node(data, dotted, source)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputDataError(f"{source}: '{dotted}' is {value!r}, not a number")
    return value


def at(dotted: str) -> Callable[[dict[str, Any], str], float | int]:
    """A reader of the number at `a.b.c`."""
    return lambda data, source: number(data, dotted, source)


def canary_decision(data: dict[str, Any], source: str) -> int:
    decision = node(data, "decision", source)
    if decision not in CANARY_DECISIONS:
        raise InputDataError(f"{source}: decision is {decision!r}; expected one of {', '.join(CANARY_DECISIONS)}")
    return CANARY_DECISIONS[decision]


def safety_pass_rate(data: dict[str, Any], source: str) -> float:
    """Passed probe items over all probe items, every probe set (toxicity, bias, jailbreak,
    prompt injection) together."""
    sets = node(data, "probes", source)
    items = sum(number(data, f"probes.{name}.items", source) for name in sets)
    failures = sum(number(data, f"probes.{name}.failures", source) for name in sets)
    if items == 0:
        raise InputDataError(f"{source}: the probe sets hold no items; check data/probes")
    return (items - failures) / items


def quality_kept_fraction(data: dict[str, Any], source: str) -> float:
    """Items the quality gates kept over items that came in, all splits together."""
    splits = node(data, "counts.in", source)
    came_in = sum(number(data, f"counts.in.{split}", source) for split in splits)
    kept = sum(number(data, f"counts.out.{split}", source) for split in splits)
    if came_in == 0:
        raise InputDataError(f"{source}: counts.in is zero: the quality gates received no items")
    return kept / came_in


def headlines(mmlu_format: str = "continuation") -> tuple[Headline, ...]:
    """Every headline, with the MMLU accuracies of `mmlu_format` (headline.mmlu_format)."""
    return (
        Headline("train_val_loss", "train", at("val_loss"), "lower"),
        *(Headline(f"mmlu_{m}_{mmlu_format}_acc", f"mmlu_{m}", at(f"{mmlu_format}.acc.overall.acc"), "higher")
          for m in MMLU_MODELS),
        Headline("lora_arithmetic_target_gain", "lora_arithmetic", at("target_gain"), "higher"),
        Headline("quantize_greedy_agreement", "quantize", at("greedy_token_agreement"), "higher"),
        Headline("quantize_val_perplexity_change", "quantize", at("val_perplexity_change"), "lower"),
        Headline("distill_perplexity_ratio", "distill", at("perplexity_ratio"), "lower"),
        Headline("safety_pass_rate", "safety", safety_pass_rate, "higher"),
        Headline("canary_decision", "canary", canary_decision, "higher"),
        Headline("coco_cider_d", "coco", at("model.CIDEr-D"), "higher"),
        Headline("quality_kept_fraction", "quality_gates", quality_kept_fraction, "higher"),
    )


HEADLINE = headlines()  # the default params' headlines (key names for docs and checks)
ROLES: tuple[str, ...] = tuple(dict.fromkeys(h.role for h in HEADLINE))


def collect(sources: Mapping[str, Path], mmlu_format: str = "continuation") -> dict[str, float | int]:
    """{headline key: value}, each read from `sources[role]` (a metrics JSON file)."""
    missing = [role for role in ROLES if role not in sources]
    if missing:
        raise InputDataError(f"no metrics file given for {', '.join(missing)}")
    loaded: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        path = Path(sources[role])
        try:
            loaded[role] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise InputDataError(f"{path} not found: run the stage that writes it (`dvc repro`)") from e
        except json.JSONDecodeError as e:
            raise InputDataError(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from e
    return {h.key: h.read(loaded[h.role], str(sources[h.role])) for h in headlines(mmlu_format)}
