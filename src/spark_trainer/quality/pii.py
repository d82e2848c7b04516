"""PII detection and redaction with Presidio, offline by default.

Presidio's default engine downloads a spaCy model. Offline, the analyzer runs on a
blank English spaCy pipeline, so only the pattern recognizers work (email, phone, US
SSN, credit card, IP, IBAN); a configured spaCy pipeline that is installed adds the
NER entities (PERSON, LOCATION). Which one ran is recorded as the backend.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import ModelSourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiiEngine:
    analyzer: Any
    anonymizer: Any
    backend: str        # "presidio:spacy:<model>" or "presidio:pattern-only"
    note: str           # why that backend


def build_engine(spacy_model: str, phone_regions: tuple[str, ...]) -> PiiEngine:
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer
    from presidio_anonymizer import AnonymizerEngine

    # The email recognizer validates domains with tldextract, whose default extractor
    # fetches the public suffix list over the network; use the snapshot it ships.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)

    if spacy_model and not (Path(spacy_model) / "meta.json").is_file():
        # Configured but absent: an error, not a quiet fall back to fewer entities.
        raise ModelSourceError(f"quality_gates.pii.spacy_model: no spaCy pipeline at '{spacy_model}' (no meta.json); "
                               "save one there (nlp.to_disk) or set it to \"\" for pattern recognizers only")
    if spacy_model:
        model_name, backend, note = spacy_model, f"presidio:spacy:{spacy_model}", "NER and pattern recognizers"
    else:
        note = "no spaCy pipeline configured; pattern recognizers only (no PERSON/LOCATION)"
        folder = Path(tempfile.mkdtemp(prefix="spacy_blank_en_"))
        spacy.blank("en").to_disk(folder)
        model_name, backend = str(folder), "presidio:pattern-only"
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model_name}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    analyzer.registry.remove_recognizer("PhoneRecognizer")
    analyzer.registry.add_recognizer(PhoneRecognizer(supported_regions=tuple(phone_regions)))
    return PiiEngine(analyzer, AnonymizerEngine(), backend, note)


def analyze(engine: PiiEngine, text: str, entities: tuple[str, ...], score_threshold: float) -> list:
    results = engine.analyzer.analyze(text=text, language="en", entities=list(entities),
                                      score_threshold=score_threshold)
    return resolve_overlaps(results)


def resolve_overlaps(results: list) -> list:
    """One entity per span: where detections overlap, the higher score wins (an IP
    address also parses as a phone number, at a lower score), as in the anonymizer."""
    kept: list = []
    for r in sorted(results, key=lambda r: (-r.score, r.entity_type, r.start)):
        if all(r.end <= k.start or k.end <= r.start for k in kept):
            kept.append(r)
    return sorted(kept, key=lambda r: (r.start, r.end, r.entity_type))


def redact(engine: PiiEngine, text: str, results: list) -> str:
    """Replace each entity with a typed placeholder such as `<EMAIL_ADDRESS>`."""
    from presidio_anonymizer.entities import OperatorConfig

    if not results:
        return text
    return engine.anonymizer.anonymize(text=text, analyzer_results=results,
                                       operators={"DEFAULT": OperatorConfig("replace")}).text


def as_records(results: list) -> list[dict[str, Any]]:
    return [{"type": r.entity_type, "start": r.start, "end": r.end, "score": round(r.score, 4)} for r in results]
