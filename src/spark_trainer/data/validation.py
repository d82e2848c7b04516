"""Great Expectations suites, run in-process with an ephemeral context.

A failed suite stops the stage with a `ValidationFailed` that lists every failed
expectation and an example of the values that broke it.
"""

from __future__ import annotations

import logging
from typing import Any

from spark_trainer.errors import ValidationFailed

log = logging.getLogger(__name__)


def manifest_expectations(allowed_subjects: tuple[str, ...], min_chars: int, max_chars: int) -> list[Any]:
    """The suite for a text manifest: schema, non-null, lengths, allowed subjects."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "text", "subject", "checksum", "content_type",
                                                     "source_path", "size_bytes"], exact_match=True),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", "text", "subject", "checksum")],
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=min_chars, max_value=max_chars),
        gxe.ExpectColumnValuesToBeInSet(column="subject", value_set=list(allowed_subjects)),
        gxe.ExpectColumnValuesToBeInSet(column="content_type", value_set=["text"]),
        gxe.ExpectColumnValuesToMatchRegex(column="checksum", regex=r"^sha256:[0-9a-f]{64}$"),
    ]


# Independent of Presidio on purpose: a second opinion on what redaction may have missed.
LEFTOVER_PII_PATTERNS = {
    "email": r"[\w.+-]+@[\w-]+\.[\w.-]+",
    "us_ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "card": r"\b(?:\d{4}[ -]?){3}\d{4}\b",
    "ipv4": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
    "iban": r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b",
    "us_phone": r"\(\d{3}\) ?\d{3}-\d{4}",
}


def clean_expectations(allowed_subjects: tuple[str, ...] | None = None) -> list[Any]:
    """The suite for the quality gates' output: schema, no empty text, no leftover pattern PII."""
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "text", "subject", "checksum", "content_type",
                                                     "source_path", "size_bytes"], exact_match=True),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", "text", "subject", "checksum")],
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        *[gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=rx, meta={"pii": name})
          for name, rx in LEFTOVER_PII_PATTERNS.items()],
        gxe.ExpectColumnValuesToMatchRegex(column="checksum", regex=r"^sha256:[0-9a-f]{64}$"),
    ]
    if allowed_subjects:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="subject", value_set=list(allowed_subjects)))
    return expectations


def manifest_frame(items: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame({
        "id": [it["id"] for it in items],
        "text": [it["text"] for it in items],
        "subject": [it["metadata"].get("subject") for it in items],
        "checksum": [it["checksum"] for it in items],
        "content_type": [it["content_type"] for it in items],
        "source_path": [it["source_path"] for it in items],
        "size_bytes": [it["size_bytes"] for it in items],
    })


def run_suite(name: str, frame, expectations: list[Any]) -> dict[str, Any]:
    """Validate `frame`; return a summary for metrics, or raise listing the failures."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch_definition = (context.data_sources.add_pandas(f"{name}_source")
                        .add_dataframe_asset(f"{name}_frame")
                        .add_batch_definition_whole_dataframe(f"{name}_batch"))
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)

    failed = [r for r in result.results if not r.success]
    summary = {"suite": name, "evaluated": len(result.results), "failed": len(failed), "success": bool(result.success)}
    if failed:
        lines = [_describe(r) for r in failed]
        raise ValidationFailed(f"Great Expectations suite '{name}' failed {len(failed)} of "
                               f"{len(result.results)} expectations:\n  " + "\n  ".join(lines))
    log.info("suite %s: %d expectations passed", name, len(result.results))
    return summary


def _describe(r: Any) -> str:
    config = r.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    detail = r.result or {}
    shown = {k: v for k, v in kwargs.items() if k != "value_set" or len(v) <= 8}
    example = detail.get("partial_unexpected_list") or detail.get("observed_value")
    count = detail.get("unexpected_count")
    more = f", {count} unexpected" if count is not None else ""
    return f"{config.type} {shown}{more}; e.g. {str(example)[:200]}"
