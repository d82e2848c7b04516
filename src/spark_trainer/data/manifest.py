"""The dataset manifest schema of DESIGN.md: one JSON object per line.

Text items keep their text in a top-level `text` field, everywhere in the project.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import datetime, timezone
from typing import Any

REQUIRED_FIELDS = {
    "id": str,
    "source_path": str,
    "processed_path": str,
    "content_type": str,
    "mime_type": str,
    "size_bytes": int,
    "checksum": str,
    "metadata": dict,
    "annotations": dict,
    "quality_scores": dict,
    "created_at": str,
    "lineage": dict,
}
CONTENT_TYPES = ("text", "image", "audio", "video")


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def text_item(item_id: str, text: str, subject: str, source_path: str, processed_path: str, created_at: str,
              lineage: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    data = text.encode("utf-8")
    return {
        "id": item_id,
        "text": text,
        "source_path": source_path,
        "processed_path": processed_path,
        "content_type": "text",
        "mime_type": "text/plain",
        "size_bytes": len(data),
        "checksum": sha256_bytes(data),
        "metadata": {"subject": subject, **(metadata or {})},
        "annotations": {},
        "quality_scores": {},
        "created_at": created_at,
        "lineage": lineage,
    }


def schema_problems(item: dict[str, Any]) -> list[str]:
    """What makes `item` break the schema (empty list: it conforms)."""
    problems = [f"missing field '{k}'" for k in REQUIRED_FIELDS if k not in item]
    problems += [f"field '{k}' should be {t.__name__}, got {type(item[k]).__name__}"
                 for k, t in REQUIRED_FIELDS.items() if k in item and not isinstance(item[k], t)]
    if item.get("content_type") not in CONTENT_TYPES:
        problems.append(f"content_type must be one of {CONTENT_TYPES}")
    if isinstance(item.get("checksum"), str) and not item["checksum"].startswith("sha256:"):
        problems.append("checksum must look like sha256:<hex>")
    if item.get("content_type") == "text":
        if not isinstance(item.get("text"), str):
            problems.append("a text item needs a string field 'text'")
        elif isinstance(item.get("checksum"), str) and sha256_bytes(item["text"].encode()) != item["checksum"]:
            problems.append("checksum does not match the text")
    lineage = item.get("lineage")
    if isinstance(lineage, dict):
        problems += [f"lineage needs '{k}'" for k in ("source", "parent_ids", "stage") if k not in lineage]
    return problems


def build_timestamp() -> str:
    """A reproducible `created_at`: SOURCE_DATE_EPOCH if set, else the HEAD commit time,
    so the same commit writes byte-identical manifests."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        try:
            epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], capture_output=True, text=True,
                                   check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            epoch = ""
    return datetime.fromtimestamp(int(epoch or 0), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_manifest(path) -> list[dict[str, Any]]:
    """Items of a manifest JSONL written by a stage of this project."""
    import json
    from pathlib import Path

    from spark_trainer.errors import InputDataError

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"manifest '{path}' not found; run the stage that writes it (`dvc repro`)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
