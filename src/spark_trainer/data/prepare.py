"""Turn raw source rows into manifest items: the work behind `stages/prepare.py`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from spark_trainer.data.manifest import text_item
from spark_trainer.data.sources import BadRecord, Row, read_source
from spark_trainer.errors import InputDataError
from spark_trainer.params import SourceParams


@dataclass
class Collected:
    items: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    rows_in: Counter = field(default_factory=Counter)        # per source
    utf8_replaced: int = 0


def collect(sources: tuple[SourceParams, ...], on_bad_record: str, created_at: str) -> Collected:
    """Read every source; a bad row stops with file and line, or is quarantined with its reason."""
    out = Collected()
    for index, src in enumerate(sources):
        for row in read_source(src, index):
            out.rows_in[src.path] += 1
            if isinstance(row, Row):
                item, problem = _to_item(row, src, created_at)
                if item is not None:
                    out.utf8_replaced += row.utf8_replaced
                    out.items.append(item)
                    continue
                row = BadRecord(row.source, row.line, problem, str(row.record)[:500])
            if on_bad_record == "error":
                raise InputDataError(f"{row.source}, line {row.line}: {row.reason}. Fix the file, or set "
                                     "prepare.on_bad_record: quarantine to set such rows aside and go on")
            out.quarantined.append({"source": row.source, "line": row.line, "reason": row.reason, "raw": row.raw})
    return out


def _to_item(row: Row, src: SourceParams, created_at: str) -> tuple[dict[str, Any] | None, str]:
    record = row.record
    for name in (src.text_field, src.subject_field):
        if name not in record or record[name] is None:
            return None, f"missing field '{name}' (params: text_field / subject_field)"
    text, subject = record[src.text_field], record[src.subject_field]
    if not isinstance(text, str):
        return None, f"field '{src.text_field}' should be a string, got {type(text).__name__}"
    if src.id_field:
        if record.get(src.id_field) in (None, ""):
            return None, f"missing field '{src.id_field}' (params: id_field; \"\" makes ids from line numbers)"
        item_id = str(record[src.id_field])
    else:
        item_id = f"{_source_name(src.path)}-{row.line:07d}"
    metadata = {"flags": ["invalid_utf8_replaced"]} if row.utf8_replaced else {}
    lineage = {"source": row.source, "source_line": row.line, "parent_ids": [], "stage": "prepare"}
    return text_item(item_id, text, str(subject), row.source, "", created_at, lineage, metadata), ""


def _source_name(path: str) -> str:
    return path.rstrip("/").split("/")[-1].split(".")[0]
