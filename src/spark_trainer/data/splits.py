"""Stratified, deterministic train/val/test splits.

Within each subject, items are ordered by a seeded hash of their id, so an item keeps
its split when other items are added or removed, and the same seed gives the same split.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

SPLITS = ("train", "val", "test")


def stratified_split(items: list[dict[str, Any]], seed: int, val_fraction: float,
                     test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_subject[item["metadata"]["subject"]].append(item)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for subject in sorted(by_subject):
        group = sorted(by_subject[subject], key=lambda it: hashlib.sha256(f"{seed}:{it['id']}".encode()).digest())
        n_test = round(len(group) * test_fraction)
        n_val = round(len(group) * val_fraction)
        out["test"] += group[:n_test]
        out["val"] += group[n_test:n_test + n_val]
        out["train"] += group[n_test + n_val:]
    for split in SPLITS:
        out[split].sort(key=lambda it: it["id"])
    return out
