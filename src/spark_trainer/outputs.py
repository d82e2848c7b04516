"""Atomic outputs and stable metrics files.

An interrupted stage must never leave a half-written output that looks complete, so
every file and folder is written under a temporary name and renamed into place.
Metrics JSON has sorted keys and rounded floats and no timestamps, so two runs of
the same commit and params give byte-identical files; timings go to a separate file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METRIC_DIGITS = 6


def stable_round(value: Any, digits: int = METRIC_DIGITS) -> Any:
    """Round floats (recursively) so that float noise below `digits` does not show in diffs."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None  # JSON has no NaN; a null says "not computable"
        return round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, dict):
        return {str(k): stable_round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stable_round(v, digits) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return stable_round(value.item(), digits)
    return value


def dumps_stable(obj: Any) -> str:
    return json.dumps(stable_round(obj), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_pinned_sha256(path: str | Path, expected: str, key: str) -> None:
    """Refuse a file from outside the pipeline (a checkpoint params name) unless its sha256
    is the one params pin under `key`: checked before anything reads the file."""
    from spark_trainer.errors import ModelSourceError

    if not expected:
        raise ModelSourceError(f"refusing '{path}': {key} is empty; set it to the file's sha256 (`sha256sum {path}`)")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ModelSourceError(f"refusing '{path}': its sha256 is {actual}, but {key} is {expected}; the file "
                               "changed, or the param names another file")


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """`metrics/<stage>.json`: sorted keys, stable rounding, no timestamps."""
    return write_text_atomic(path, dumps_stable(metrics))


def write_timings(metrics_path: str | Path, timings: dict[str, float]) -> Path:
    """Wall-clock numbers live beside the metrics (`<stage>.timings.json`, git-ignored)
    because they change on every run and would make `dvc metrics diff` noisy."""
    metrics_path = Path(metrics_path)
    path = metrics_path.with_name(metrics_path.stem + ".timings.json")
    return write_text_atomic(path, json.dumps(stable_round(timings, 3), sort_keys=True, indent=2) + "\n")


def jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(jsonl_line(record))
            n += 1
    return n


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (file or folder) to write; on success it
    replaces `path` in one rename, on failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir():  # a folder cannot be replaced in one rename: swap it out
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
