"""Turn raw source rows into manifest items: the work behind `stages/prepare.py`."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from spark_trainer.data.manifest import parse_timestamp, text_item
from spark_trainer.data.sources import BadRecord, Row, line_cap, read_source
from spark_trainer.errors import InputDataError
from spark_trainer.params import SourceParams

SUBJECT_NOT_ALLOWED = "subject not in prepare.allowed_subjects"
# Quarantine reasons are short codes ([a-z0-9_]+: metric names in MLflow); each record's
# `detail` says what was wrong. The readers add malformed_json, not_an_object,
# malformed_csv and line_too_long (sources.py).
SUBJECT_DEFAULTED = "subject_defaulted"  # the item's flag: its subject is prepare.default_subject


@dataclass
class Collected:
    """Every row read, per source (`source_key`): rows_in == items_out + quarantined, each source."""

    items: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    rows_in: Counter = field(default_factory=Counter)
    items_out: Counter = field(default_factory=Counter)
    quarantined_per_source: Counter = field(default_factory=Counter)
    default_subject_rows: Counter = field(default_factory=Counter)  # items that got prepare.default_subject
    utf8_replaced: int = 0


def source_key(src: SourceParams) -> str:
    """How metrics name a source: its path, plus the split for a Hugging Face dataset."""
    return f"hf://{src.path}/{src.hf_split}" if src.kind == "hf" else src.path


def collect(sources: tuple[SourceParams, ...], on_bad_record: str, created_at: str, *,
            allowed_subjects: tuple[str, ...] | None = None, default_subject: str = "",
            max_chars: int | None = None) -> Collected:
    """Read every source; a bad row stops with file and line, or is quarantined with its
    reason code and detail.

    `created_at` is the time of items whose row gives none (manifest.build_timestamp);
    `allowed_subjects` None allows any subject; `default_subject` "" makes a row without a
    subject a bad record; `max_chars` None allows text (and lines) of any length.
    """
    out = Collected()
    max_line_bytes = line_cap(max_chars) if max_chars is not None else None
    for index, src in enumerate(sources):
        key = source_key(src)
        for row in read_source(src, index, max_line_bytes):
            out.rows_in[key] += 1
            if isinstance(row, Row):
                item, reason, detail = _to_item(row, src, index, created_at, allowed_subjects, default_subject,
                                                max_chars)
                if item is not None:
                    out.utf8_replaced += row.utf8_replaced
                    out.items.append(item)
                    out.items_out[key] += 1
                    if SUBJECT_DEFAULTED in item["metadata"].get("flags", ()):
                        out.default_subject_rows[key] += 1
                    continue
                row = BadRecord(row.source, row.line, reason, detail, str(row.record)[:500])
            if on_bad_record == "error":
                raise InputDataError(f"{row.source}, line {row.line}: {row.detail}. Fix the file, or set "
                                     "prepare.on_bad_record: quarantine to set such rows aside and go on")
            out.quarantined.append({"source": row.source, "line": row.line, "reason": row.reason,
                                    "detail": row.detail, "raw": row.raw})
            out.quarantined_per_source[key] += 1
    return out


def _missing(value: Any) -> bool:
    """No value: absent, null, blank text, or one of pandas' nulls (NaN, NaT, NA) from a table."""
    if value is None or (isinstance(value, str) and not value.strip()) or type(value).__name__ in ("NaTType", "NAType"):
        return True
    return isinstance(value, float) and math.isnan(value)


def _to_item(row: Row, src: SourceParams, index: int, created_at: str, allowed_subjects: tuple[str, ...] | None,
             default_subject: str, max_chars: int | None) -> tuple[dict[str, Any] | None, str, str]:
    """(item, "", "") or (None, reason code, detail)."""
    record = row.record
    keys = f"prepare.sources[{index}]"
    if record.get(src.text_field) is None:
        return None, "missing_text", f"missing field '{src.text_field}' (params: {keys}.text_field)"
    text = record[src.text_field]
    if not isinstance(text, str):
        return None, "text_not_a_string", f"field '{src.text_field}' should be a string, got {type(text).__name__}"
    if max_chars is not None and len(text) > max_chars:
        return None, "text_too_long", (f"field '{src.text_field}' holds {len(text)} characters, over "
                                       f"prepare.max_chars ({max_chars}); raise it if such rows belong")

    subject = record.get(src.subject_field) if src.subject_field else None
    defaulted = _missing(subject)
    if defaulted:
        if not default_subject:
            return None, "missing_subject", (f"missing field '{src.subject_field}' (params: {keys}.subject_field; "
                                             "or set prepare.default_subject for rows without a subject)")
        subject = default_subject
    subject = str(subject)
    if allowed_subjects is not None and subject not in allowed_subjects:
        return None, "subject_not_allowed", (f"{SUBJECT_NOT_ALLOWED}: '{subject}' (allowed: "
                                             f"{', '.join(allowed_subjects)}); add it to prepare.allowed_subjects "
                                             "if it belongs")

    if src.id_field:
        if _missing(record.get(src.id_field)):
            return None, "missing_id", (f"missing field '{src.id_field}' (params: {keys}.id_field; \"\" makes ids "
                                        "from line numbers)")
        item_id = str(record[src.id_field])
    else:
        item_id = f"{_source_name(src.path)}-{row.line:07d}"

    if src.created_at_field and not _missing(record.get(src.created_at_field)):
        try:
            created_at = parse_timestamp(record[src.created_at_field])
        except ValueError as e:
            return None, "bad_created_at", (f"bad time in field '{src.created_at_field}': {e} "
                                            f"(params: {keys}.created_at_field)")

    flags = [flag for flag, on in (("invalid_utf8_replaced", row.utf8_replaced), (SUBJECT_DEFAULTED, defaulted)) if on]
    metadata: dict[str, Any] = {"flags": flags} if flags else {}
    lineage = {"source": row.source, "source_line": row.line, "parent_ids": [], "stage": "prepare"}
    return text_item(item_id, text, subject, row.source, "", created_at, lineage, metadata), "", ""


def _source_name(path: str) -> str:
    return path.rstrip("/").split("/")[-1].split(".")[0]
