"""The dataset manifest schema (docs/stages/prepare.md): one JSON object per line.

Text items keep their text in a top-level `text` field, everywhere in the project.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from datetime import UTC, date, datetime
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


# `created_at`: where an item's time comes from. Outputs depend only on declared inputs (dvc.yaml
# deps and params), so the same inputs give the same bytes whatever the commit or the clock:
#   1. the item's own time, when its source row carries one (`prepare.sources[].created_at_field`);
#   2. else SOURCE_DATE_EPOCH, when set (the reproducible-builds convention: whole seconds since
#      1970-01-01 UTC; it stands in for "now", so it never overrides a time the data gives). DVC does
#      not track environment variables: after changing it, rerun with `dvc repro -f`;
#   3. else UNKNOWN_TIME, the Unix epoch: "no time known", the same on every run.
# Never the wall clock, never git state (a README-only commit must not change data/prepared).
UNKNOWN_TIME = "1970-01-01T00:00:00Z"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def build_timestamp() -> str:
    """The `created_at` of items whose data gives no time: SOURCE_DATE_EPOCH, else UNKNOWN_TIME
    (see the rule above)."""
    from spark_trainer.errors import InputDataError

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return UNKNOWN_TIME
    try:
        return parse_timestamp(int(epoch))
    except ValueError:
        raise InputDataError(f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds since "
                             "1970-01-01 UTC; set it to one (e.g. 1767225600) or unset it") from None


def parse_timestamp(value: Any) -> str:
    """A source row's own time as a `created_at` string (UTC, whole seconds). Accepts ISO 8601
    text (no offset: taken as UTC), epoch seconds (a number, or digits in text), or a datetime
    or date (Parquet and Hugging Face timestamp columns). Raises ValueError for anything else."""
    try:
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value.strip())
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if value < 0:
                raise ValueError("epoch seconds must not be negative")
            return _format(datetime.fromtimestamp(float(value), tz=UTC))
        if isinstance(value, str):
            value = datetime.fromisoformat(value.strip())
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, datetime):
            return _format(value if value.tzinfo else value.replace(tzinfo=UTC))
    except (ValueError, OverflowError, OSError) as e:
        raise ValueError(f"{value!r} is not a time ({e}); expected ISO 8601 or epoch seconds") from None
    raise ValueError(f"{value!r} ({type(value).__name__}) is not a time; expected ISO 8601 or epoch seconds")


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


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
