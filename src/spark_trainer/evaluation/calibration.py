"""Expected calibration error and reliability-diagram data from choice probabilities."""

from __future__ import annotations

from typing import Any


def reliability(records: list[dict[str, Any]], bins: int) -> tuple[float, list[dict[str, float]]]:
    """(ECE, one row per non-empty bin: confidence, accuracy, count). Confidence is the
    probability of the predicted choice; ECE weighs each bin's |accuracy - confidence|."""
    rows: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for r in records:
        confidence = r["probabilities"][r["prediction"]]
        rows[min(int(confidence * bins), bins - 1)].append((confidence, r["correct"]))
    n = len(records)
    ece, table = 0.0, []
    for i, row in enumerate(rows):
        if not row:
            continue
        confidence = sum(c for c, _ in row) / len(row)
        acc = sum(ok for _, ok in row) / len(row)
        ece += len(row) / n * abs(acc - confidence)
        table.append({"bin": (i + 0.5) / bins, "confidence": confidence, "accuracy": acc, "count": len(row)})
    return ece, table
