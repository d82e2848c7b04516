"""Read the sources named in `prepare.sources` into raw records, one per row.

Every row comes back either as a record or as a `BadRecord` with file, line and
reason, so the caller decides (params: `on_bad_record`) whether to stop or quarantine:
nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import InputDataError
from spark_trainer.params import SourceParams


@dataclass(frozen=True)
class Row:
    source: str
    line: int  # 1-based line (jsonl, csv with its header as line 1) or row number (parquet, hf)
    record: dict[str, Any]
    utf8_replaced: bool = False


@dataclass(frozen=True)
class BadRecord:
    source: str
    line: int
    reason: str
    raw: str


def read_source(src: SourceParams, index: int) -> Iterator[Row | BadRecord]:
    key = f"prepare.sources[{index}].path"
    if src.kind == "hf":
        yield from _read_hf(src, key)
        return
    path = Path(src.path)
    if not path.is_file():
        raise InputDataError(f"source file '{path}' not found (params key {key}); "
                             "fix the path or run the stage that produces it (`dvc repro sample`)")
    if src.kind == "jsonl":
        yield from _read_jsonl(path)
    elif src.kind == "csv":
        yield from _read_table(path, "csv")
    else:
        yield from _read_table(path, "parquet")


def _read_jsonl(path: Path) -> Iterator[Row | BadRecord]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines carry no record (a trailing newline, say)
            try:
                text, replaced = raw.decode("utf-8"), False
            except UnicodeDecodeError:
                text, replaced = raw.decode("utf-8", errors="replace"), True
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRecord(str(path), line_no, f"malformed JSON: {e.msg} at column {e.colno}", text[:500])
                continue
            if not isinstance(record, dict):
                yield BadRecord(str(path), line_no, f"expected a JSON object, got {type(record).__name__}", text[:500])
                continue
            yield Row(str(path), line_no, record, replaced)


def _read_table(path: Path, kind: str) -> Iterator[Row]:
    import pandas as pd

    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise InputDataError(f"cannot read {kind} file '{path}': {e}") from e
    first = 2 if kind == "csv" else 1  # a CSV's line 1 is its header
    for i, record in enumerate(frame.to_dict(orient="records")):
        yield Row(str(path), i + first, record)


def _read_hf(src: SourceParams, key: str) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(src.path, split=src.hf_split)
    except (OSError, ValueError, ConnectionError, FileNotFoundError) as e:
        raise InputDataError(f"cannot load Hugging Face dataset '{src.path}' (params key {key}): {e}. "
                             "Offline, download it first or point the source at local files.") from e
    for i, record in enumerate(dataset):
        yield Row(f"hf://{src.path}/{src.hf_split}", i + 1, dict(record))
