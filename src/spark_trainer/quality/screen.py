"""The first gate: bad input is counted and handled, never a crash.

Empty text is rejected; over-long text is rejected or truncated (params); text not in
the expected language (py3langid) is flagged or rejected; invalid UTF-8 that `prepare`
replaced is counted. Every decision lands in the item's flags or the rejected file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def screen_item(item: dict[str, Any], max_chars: int, long_action: str, language: str,
                non_language_action: str, min_language_chars: int, classify) -> tuple[str | None, dict, Counter]:
    """(reason to reject or None, scores, counters) for one item; flags go onto the item."""
    counts: Counter = Counter()
    flags = item["metadata"].setdefault("flags", [])
    if "invalid_utf8_replaced" in flags:
        counts["invalid_utf8_replaced"] += 1
    text = item["text"]
    if not text.strip():
        counts["empty_text"] += 1
        return "empty_text", {"chars": len(text)}, counts
    if len(text) > max_chars:
        counts["too_long"] += 1
        if long_action == "reject":
            return "too_long", {"chars": len(text), "max_chars": max_chars}, counts
        item["text"] = text[:max_chars]
        flags.append(f"truncated_from_{len(text)}_chars")
    if len(item["text"]) >= min_language_chars:
        detected, _ = classify(item["text"])
        item["quality_scores"]["language"] = detected
        if detected != language:
            counts["other_language"] += 1
            if non_language_action == "reject":
                return "other_language", {"language": detected}, counts
            flags.append(f"language_{detected}")
    return None, {}, counts


def language_classifier():
    """py3langid's `classify(text) -> (language code, score)` over ~100 languages."""
    import py3langid

    return py3langid.classify
