"""Toxicity scoring: Detoxify from a local checkpoint, or an offline fallback.

Detoxify normally downloads its checkpoint; here it loads one from the path params name
(under models/external/detoxify/, a dvc.yaml dep), never from a cache dvc.yaml does not see,
and only once its sha256 matches `checkpoint_sha256` in params (a mismatch is an error,
never a reason to fall back: the file is not the one the params were written for).
When none loads, the configured fallback runs and the backend that actually scored the data
is recorded (`detoxify`, `profanity_check` or `wordlist`), with why.

Offline fallbacks: `profanity_check` (alt-profanity-check, a linear classifier over word and
character n-grams shipped inside its pinned wheel; one score, mapped to `toxicity`) and
`wordlist` (a transparent list, toxic_terms.tsv; one 0/1 score per category).
benchmarks/toxicity_fallback.py compares them on a held-out set and the planted sample.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_trainer.errors import ModelSourceError
from spark_trainer.outputs import check_pinned_sha256

log = logging.getLogger(__name__)

TERMS_FILE = Path(__file__).with_name("toxic_terms.tsv")
Scores = dict[str, float]


@dataclass(frozen=True)
class ToxicityScorer:
    backend: str                                   # detoxify | profanity_check | wordlist
    note: str                                      # where the model came from, or why the fallback ran
    score: Callable[[Sequence[str]], list[Scores]]  # texts -> per-category scores in [0, 1]


def wordlist_scorer(note: str) -> ToxicityScorer:
    """1.0 for a category when one of its listed terms occurs as whole words, else 0.0;
    `toxicity` is the maximum over categories."""
    terms: dict[str, list[str]] = {}
    for line in TERMS_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            category, term = line.split("\t")
            terms.setdefault(category, []).append(term)
    patterns = {c: re.compile(r"\b(?:" + "|".join(re.escape(t) for t in ts) + r")\b", re.IGNORECASE)
                for c, ts in terms.items()}

    def score(texts: Sequence[str]) -> list[Scores]:
        out = []
        for text in texts:
            scores = {c: 1.0 if p.search(text) else 0.0 for c, p in patterns.items()}
            scores["toxicity"] = max(scores.values())
            out.append(scores)
        return out

    return ToxicityScorer("wordlist", note, score)


def profanity_check_scorer(note: str) -> ToxicityScorer:
    """alt-profanity-check's probability that a text is offensive, as the `toxicity` score.
    It has one score only: the other categories are absent, so their thresholds never fire."""
    # Importing the package loads its model and vectorizer with joblib (pickle) from its own
    # installed package files: the package's own shipped code, pinned in constraints.txt, not
    # data or a checkpoint from users (nothing user-supplied is unpickled here).
    from profanity_check import predict_prob

    def score(texts: Sequence[str]) -> list[Scores]:
        if not texts:
            return []
        return [{"toxicity": float(p)} for p in predict_prob(list(texts))]

    return ToxicityScorer("profanity_check", note, score)


OFFLINE = {"wordlist": wordlist_scorer, "profanity_check": profanity_check_scorer}


def detoxify_scorer(model_type: str, checkpoint: Path, huggingface_config_path: str,
                    batch_size: int, device="cpu") -> ToxicityScorer:
    import pickle

    import torch
    from detoxify import Detoxify

    # Detoxify unpickles its checkpoint with the full unpickler. The restricted one runs
    # first: a file that passes it holds only tensors and plain data, so the full load
    # that follows cannot run code.
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ModelSourceError(f"refusing Detoxify checkpoint '{checkpoint}': it holds more than tensors and plain "
                               f"data, so loading it could run code ({str(e).splitlines()[0]})") from e
    try:
        model = Detoxify(model_type=model_type, checkpoint=str(checkpoint), device=device,
                         huggingface_config_path=huggingface_config_path or None)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelSourceError(f"Detoxify could not load checkpoint '{checkpoint}': {e}") from e

    def score(texts: Sequence[str]) -> list[Scores]:
        out: list[Scores] = []
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i:i + batch_size])
            # Detoxify squeezes its scores: a batch of one comes back as scalars, not lists.
            predicted = {c: v if isinstance(v, list) else [v] for c, v in model.predict(batch).items()}
            out += [{c: float(v[j]) for c, v in predicted.items()} for j in range(len(batch))]
        return out

    return ToxicityScorer("detoxify", f"checkpoint {checkpoint}", score)


def build_scorer(backend: str, model_type: str, checkpoint: str, huggingface_config_path: str,
                 fallback: str, batch_size: int, checkpoint_sha256: str = "", device="cpu") -> ToxicityScorer:
    """The scorer params ask for, or the fallback with the reason; never silently. A
    checkpoint that exists is loaded only if its sha256 is `checkpoint_sha256`. Detoxify
    runs on `device` (compute.device); the offline fallbacks run on the CPU."""
    if backend in OFFLINE:
        return OFFLINE[backend]("configured backend")
    found = Path(checkpoint) if checkpoint and Path(checkpoint).is_file() else None
    if found is not None:
        check_pinned_sha256(found, checkpoint_sha256, "quality_gates.toxicity.checkpoint_sha256")
    problem = (f"no Detoxify checkpoint at '{checkpoint}'" if checkpoint else
               "no Detoxify checkpoint configured (quality_gates.toxicity.checkpoint is empty)")
    if found is not None:
        try:
            return detoxify_scorer(model_type, found, huggingface_config_path, batch_size, device)
        except ModelSourceError as e:
            problem = str(e)
    if fallback == "error":
        raise ModelSourceError(f"{problem}; set quality_gates.toxicity.checkpoint to a Detoxify .ckpt, "
                               "or fallback: profanity_check | wordlist")
    log.warning("toxicity: %s; scoring with %s instead (fallback: %s)", problem, fallback, fallback)
    return OFFLINE[fallback](f"fallback: {problem}")


def flagged(scores: Scores, thresholds: dict[str, float]) -> dict[str, float]:
    """The categories whose score reaches its threshold (categories the backend lacks are skipped)."""
    return {c: round(scores[c], 4) for c, t in thresholds.items() if c in scores and scores[c] >= t}
