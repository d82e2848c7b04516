"""What every stage script shares at its entry point: logging, clean errors, timing."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from spark_trainer.errors import SparkTrainerError

F = TypeVar("F", bound=Callable[..., object])


def entrypoint(main: F) -> F:
    """Run `main` with logging set up; a SparkTrainerError ends the stage with its
    message (which says how to fix it) instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        # Libraries we call are chatty at INFO; keep the stage's own progress readable.
        for noisy in ("great_expectations", "alembic", "mlflow", "urllib3", "filelock", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return main(*args, **kwargs)
        except SparkTrainerError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def path_args(doc: str, *names: str) -> argparse.Namespace:
    """The stage's paths, positional on its `cmd` line in dvc.yaml (settings come from params)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in names:
        parser.add_argument(name, type=Path)
    return parser.parse_args()


class Timer:
    """Wall-clock seconds per phase, for the `<stage>.timings.json` file."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._start}
