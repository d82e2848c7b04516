"""Score the gates against the planted labels of the `sample` stage.

Duplicates are scored as pairs: the gate keeps the first of two copies, whichever of
them that is, so a planted pair counts as found when one is rejected as a duplicate of
the other. PII is scored per entity (same type, overlapping span); toxicity per item,
against every item (precision counts any clean item flagged) and apart on the planted clean
controls (`toxic: false`, lines with borderline words), with the backend that scored them.
"""

from __future__ import annotations

from typing import Any


def _pr(true_positive: int, predicted: int, actual: int) -> dict[str, Any]:
    return {
        "precision": true_positive / predicted if predicted else None,
        "recall": true_positive / actual if actual else None,
        "true_positives": true_positive,
        "predicted": predicted,
        "actual": actual,
    }


def evaluate(labels: list[dict[str, Any]], rejected: list[dict[str, Any]],
             pii_detections: dict[str, list[dict]], gates_run: set[str],
             backends: dict[str, str] | None = None) -> dict[str, Any]:
    """Precision/recall per gate; `backends` (gate -> backend that ran, `gates.backends`) names
    which backend the numbers belong to."""
    out: dict[str, Any] = {}
    by_gate: dict[str, list[dict]] = {}
    for r in rejected:
        by_gate.setdefault(r["gate"], []).append(r)

    for gate, key in (("exact_dedup", "exact_duplicate_of"), ("near_dedup", "near_duplicate_of")):
        if gate not in gates_run:
            continue
        truth = {frozenset((lab["id"], lab[key])) for lab in labels if key in lab}
        predicted = {frozenset((r["id"], r["scores"]["duplicate_of"])) for r in by_gate.get(gate, [])}
        out[gate] = _pr(len(truth & predicted), len(predicted), len(truth))

    if "pii" in gates_run:
        planted = {lab["id"]: lab["pii"] for lab in labels if "pii" in lab}
        hits, found = 0, set()
        detected = 0
        for item_id, entities in pii_detections.items():
            for e in entities:
                detected += 1
                match = [i for i, t in enumerate(planted.get(item_id, []))
                         if t["type"] == e["type"] and e["start"] < t["end"] and t["start"] < e["end"]]
                if match:
                    hits += 1
                    found.add((item_id, match[0]))
        actual = sum(len(v) for v in planted.values())
        out["pii"] = {**_pr(hits, detected, actual), "recall": len(found) / actual if actual else None}

    if "toxicity" in gates_run:
        truth = {lab["id"] for lab in labels if lab.get("toxic")}
        predicted = {r["id"] for r in by_gate.get("toxicity", [])}
        out["toxicity"] = _pr(len(truth & predicted), len(predicted), len(truth))
        controls = {lab["id"] for lab in labels if lab.get("toxic") is False}
        if controls:
            out["toxicity"]["clean_controls"] = {"planted": len(controls), "flagged": len(controls & predicted)}
    for gate, backend in (backends or {}).items():
        if gate in out:
            out[gate]["backend"] = backend
    return out
