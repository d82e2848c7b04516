"""Read the sources named in `prepare.sources` into raw records, one per row.

Every row comes back either as a record or as a `BadRecord` with file, line, a reason code
and the detail, so the caller decides (params: `on_bad_record`) whether to stop or
quarantine: nothing is dropped silently. A broken row is one bad record, never the end of
its file: a JSONL line longer than the cap is skipped without being read into memory, and
a CSV is parsed record by record, so an unterminated quote or a field over csv's limit
costs one record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from spark_trainer.errors import InputDataError
from spark_trainer.params import SourceParams


@dataclass(frozen=True)
class Row:
    source: str
    # 1-based: the line (jsonl), the record with the header as 1 (csv: a record with quoted
    # newlines spans several lines; ids made from it stay put), or the row (parquet, hf)
    line: int
    record: dict[str, Any]
    utf8_replaced: bool = False


@dataclass(frozen=True)
class BadRecord:
    source: str
    line: int
    reason: str  # a short code ([a-z0-9_]+): what the metrics count by
    detail: str  # what is wrong and which param to change, for people
    raw: str


def line_cap(max_chars: int) -> int:
    """The most bytes of one line read for a row whose text may hold `max_chars` characters:
    JSON can spend 12 bytes on a character (a `\\ud83d\\ude00` escape pair), plus 64 KiB for
    the other fields. A longer line is a bad record (`line_too_long`) and is never held whole."""
    return 12 * max_chars + (64 << 10)


def read_source(src: SourceParams, index: int, max_line_bytes: int | None) -> Iterator[Row | BadRecord]:
    """Rows of one source; `max_line_bytes` None reads lines of any length."""
    key = f"prepare.sources[{index}].path"
    if src.kind == "hf":
        yield from _read_hf(src, key)
        return
    path = Path(src.path)
    if not path.is_file():
        raise InputDataError(f"source file '{path}' not found (params key {key}); "
                             "fix the path or run the stage that produces it (`dvc repro sample`)")
    if src.kind == "jsonl":
        yield from _read_jsonl(path, max_line_bytes)
    elif src.kind == "csv":
        yield from _read_csv(path, max_line_bytes)
    else:
        yield from _read_parquet(path)


def _read_line(f: BinaryIO, cap: int | None) -> tuple[bytes, bool]:
    """The next line (b"" at the end) and whether it is longer than `cap` bytes; such a line
    comes back cut to `cap + 1` bytes and the rest of it is skipped a MiB at a time."""
    if cap is None:
        return f.readline(), False
    line = f.readline(cap + 1)
    if len(line) <= cap or line.endswith(b"\n"):
        return line, False
    while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
        pass
    return line, True


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text, invalid bytes replaced, and whether any were."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _too_long(cap: int) -> str:
    return (f"line longer than {cap} bytes (12 x prepare.max_chars + 64 KiB), skipped unread; raise "
            "prepare.max_chars if such rows belong")


def _read_jsonl(path: Path, cap: int | None) -> Iterator[Row | BadRecord]:
    source = str(path)
    with path.open("rb") as f:
        line_no = 0
        while True:
            raw, too_long = _read_line(f, cap)
            if not raw:
                return
            line_no += 1
            text, replaced = _decode(raw)
            if too_long:
                yield BadRecord(source, line_no, "line_too_long", _too_long(cap), text[:500])
                continue
            if not raw.strip():
                continue  # blank lines carry no record (a trailing newline, say)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRecord(source, line_no, "malformed_json", f"malformed JSON: {e.msg} at column {e.colno}",
                                text[:500])
                continue
            if not isinstance(record, dict):
                yield BadRecord(source, line_no, "not_an_object", f"expected a JSON object, got {type(record).__name__}",
                                text[:500])
                continue
            yield Row(source, line_no, record, replaced)


class _LineTooLong(Exception):
    pass


class _Lines:
    """The decoded lines of a binary file for csv.reader, counted; a line over the cap
    raises _LineTooLong out of the reader (it is skipped, not held)."""

    def __init__(self, f: BinaryIO, cap: int | None) -> None:
        self.f, self.cap, self.count, self.replaced = f, cap, 0, False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw, too_long = _read_line(self.f, self.cap)
        if not raw:
            raise StopIteration
        self.count += 1
        if too_long:
            raise _LineTooLong()
        text, replaced = _decode(raw)
        self.replaced |= replaced
        return text


def _read_csv(path: Path, cap: int | None) -> Iterator[Row | BadRecord]:
    """Record by record (csv's excel dialect, strict: a broken quote is an error, not a
    guess). After a broken record, reading starts again at the line after its first line:
    an unterminated quote would otherwise swallow the rest of the file as one field.
    Records are numbered as before (the header is 1, blank lines do not count); the detail
    of a bad one names its line in the file too."""
    source = str(path)
    number = 1
    with path.open("rb") as f:
        lines = _Lines(f, cap)
        try:
            header = next(csv.reader(lines, strict=True))
        except (StopIteration, csv.Error, _LineTooLong) as e:
            raise InputDataError(f"cannot read csv file '{path}': no readable header line "
                                 f"({type(e).__name__}: {e}); line 1 should name the columns") from e
        header[0] = header[0].removeprefix("\ufeff")  # a UTF-8 byte order mark
        reader = csv.reader(lines, strict=True)
        while True:
            start, first_line = f.tell(), lines.count + 1
            lines.replaced = False
            try:
                fields = next(reader)
            except StopIteration:
                return
            except (csv.Error, _LineTooLong) as e:
                number += 1
                f.seek(start)
                raw, _ = _read_line(f, cap)  # the record's first line: skipped, and shown
                lines.count = first_line
                reason, detail = (("line_too_long", _too_long(cap)) if isinstance(e, _LineTooLong)
                                  else ("malformed_csv", f"broken CSV record: {e}"))
                yield BadRecord(source, number, reason, f"{detail} (record from line {first_line} of the file)",
                                _decode(raw)[0][:500])
                reader = csv.reader(lines, strict=True)
                continue
            if not fields:
                continue  # a blank line
            number += 1
            if len(fields) != len(header):
                yield BadRecord(source, number, "malformed_csv", f"{len(fields)} fields where the header has "
                                f"{len(header)} (record from line {first_line} of the file)", ",".join(fields)[:500])
                continue
            yield Row(source, number, dict(zip(header, fields, strict=True)), lines.replaced)


def _read_parquet(path: Path) -> Iterator[Row]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError) as e:
        raise InputDataError(f"cannot read parquet file '{path}': {e}") from e
    for i, record in enumerate(frame.to_dict(orient="records")):
        yield Row(str(path), i + 1, record)


def _read_hf(src: SourceParams, key: str) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(src.path, split=src.hf_split)
    except (OSError, ValueError, ConnectionError, FileNotFoundError) as e:
        raise InputDataError(f"cannot load Hugging Face dataset '{src.path}' (params key {key}): {e}. "
                             "Offline, download it first or point the source at local files.") from e
    for i, record in enumerate(dataset):
        yield Row(f"hf://{src.path}/{src.hf_split}", i + 1, dict(record))
