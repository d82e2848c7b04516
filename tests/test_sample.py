import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spark_trainer.data.sample import _TOXIC_COMMENTS, PII_TYPES, SUBJECTS, generate, mmlu_csv, summary
from tests.conftest import REPO, venv_env

PLANTED = {"exact_duplicates": 6, "near_duplicates": 6, "pii": 12, "toxic": 5}


def _generate(seed=7):
    return generate(seed, SUBJECTS, 80, 8, 2, 10, 5, 12, PLANTED)


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_stage_is_byte_identical_for_one_seed(project):
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(REPO / "stages/sample.py"), out, f"media_{out}", f"metrics_{out}.json"],
                       check=True, env={**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert _tree_digest(project / "a") == _tree_digest(project / "b")
    assert _tree_digest(project / "media_a") == _tree_digest(project / "media_b")  # videos included
    assert {"video_00.mp4", "ground_truth.json", "empty.mp4", "corrupt.mp4"} <= set(_tree_digest(project / "media_a"))
    assert (project / "metrics_a.json").read_bytes() == (project / "metrics_b.json").read_bytes()
    files = set(_tree_digest(project / "a"))
    assert {"corpus.jsonl", "labels.jsonl", "mmlu/dev/arithmetic_dev.csv", "mmlu/test/world_facts_test.csv"} <= files


def test_another_seed_gives_other_data():
    assert _generate(7).corpus != _generate(8).corpus


def test_mmlu_layout_and_balanced_letters():
    data = _generate()
    assert set(data.mmlu) == set(SUBJECTS)
    for subject, splits in data.mmlu.items():
        rows = list(csv.reader(mmlu_csv(splits["test"]).splitlines()))
        assert len(rows) == 12 and all(len(r) == 6 for r in rows)
        assert rows[0][0] != "question"  # no header, as in the original MMLU files
        assert Counter(r[5] for r in rows) == Counter({"A": 3, "B": 3, "C": 3, "D": 3})
        for r in rows:
            assert len(set(r[1:5])) == 4, f"{subject}: choices must be distinct: {r}"
        assert len(splits["dev"]) == 5


def test_held_out_skill_questions_are_not_in_the_corpus():
    data = _generate()
    corpus = "\n".join(d["text"] for d in data.corpus)
    for subject in ("arithmetic", "string_manipulation", "unit_conversion"):
        for row in data.mmlu[subject]["test"]:
            assert f"Question: {row[0]}\n" not in corpus


def test_planted_labels_are_ground_truth():
    data = _generate()
    by_id = {d["id"]: d for d in data.corpus}
    kinds = Counter(p for label in data.labels for p in label["problems"])
    assert kinds == {"exact_duplicate": 6, "near_duplicate": 6, "pii": 12, "toxic": 5}
    for label in data.labels:
        text = by_id[label["id"]]["text"]
        if "exact_duplicate_of" in label:
            assert " ".join(text.lower().split()) == " ".join(by_id[label["exact_duplicate_of"]]["text"].lower().split())
        if "near_duplicate_of" in label:
            source = by_id[label["near_duplicate_of"]]["text"]
            assert text != source and len(set(text.split()) ^ set(source.split())) == 1
        for entity in label.get("pii", []):
            assert text[entity["start"]:entity["end"]] == entity["value"]
    assert {e["type"] for label in data.labels for e in label.get("pii", [])} == set(PII_TYPES)


def _planted_comments(data):
    by_id = {d["id"]: d["text"] for d in data.corpus}
    toxic = [(label, by_id[label["id"]]) for label in data.labels if label.get("toxic") is True]
    controls = [(label, by_id[label["id"]]) for label in data.labels if label.get("toxic") is False]
    return toxic, controls


def test_planted_toxic_lines_come_with_as_many_labelled_clean_controls():
    toxic, controls = _planted_comments(_generate())
    assert len(toxic) == PLANTED["toxic"] == len(controls)
    assert all(label["problems"] == ["toxic"] and label["category"] in
               {"insult", "threat", "obscene", "identity_attack"} for label, _ in toxic)
    assert all(label["problems"] == [] and label["borderline"] for label, _ in controls)
    assert len({text for _, text in toxic + controls}) == 2 * PLANTED["toxic"]
    assert summary(_generate())["planted"]["toxic"] == PLANTED["toxic"]  # controls are not problems


def test_planted_toxic_lines_are_not_built_from_the_word_list():
    """The word-list fallback must not see the planted comments: if terms are copied across
    (into toxic_terms.tsv or into sample.py's comments), its recall becomes true by construction."""
    from spark_trainer.quality import toxicity

    every = len(_TOXIC_COMMENTS)  # the first cycle plants each comment template once
    data = generate(7, SUBJECTS, 80, 8, 2, 10, 5, 12, {**PLANTED, "toxic": every})
    toxic, _ = _planted_comments(data)
    assert len({label["category"] for label, _ in toxic}) == 4
    scores = toxicity.wordlist_scorer("test").score([text for _, text in toxic])
    without_a_term = sum(s["toxicity"] == 0.0 for s in scores)
    assert without_a_term >= 0.8 * every, f"only {without_a_term}/{every} planted lines avoid the term list"
    terms = {line.split("\t")[1].lower() for line in toxicity.TERMS_FILE.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")}
    words = {w.lower() for _, template in _TOXIC_COMMENTS for w in re.findall(r"[A-Za-z']+", template)}
    assert len(terms & words) <= 3, sorted(terms & words)  # observed: {"idiot"}


def test_planted_card_numbers_pass_luhn_and_ibans_pass_mod97():
    data = _generate()
    entities = [e for label in data.labels for e in label.get("pii", [])]
    for e in entities:
        if e["type"] == "CREDIT_CARD":
            digits = [int(c) for c in e["value"].replace(" ", "")][::-1]
            total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
            assert total % 10 == 0, e
        if e["type"] == "IBAN_CODE":
            v = e["value"]
            numeric = "".join(str(int(c, 36)) for c in v[4:] + v[:4])
            assert int(numeric) % 97 == 1, e


def test_clean_corpus_has_no_duplicates_of_its_own():
    data = _generate()
    planted = {label["id"] for label in data.labels if set(label["problems"]) & {"exact_duplicate"}}
    texts = Counter(" ".join(d["text"].lower().split()) for d in data.corpus if d["id"] not in planted)
    assert max(texts.values()) == 1


def test_too_many_questions_asked_names_the_param():
    with pytest.raises(ValueError, match="sample.qa_per_subject"):
        generate(1, ("unit_conversion",), 5000, 8, 1, 0, 5, 12, {**PLANTED, "near_duplicates": 0})


def test_corpus_lines_are_json_objects_with_id_subject_text(project):
    subprocess.run([sys.executable, str(REPO / "stages/sample.py"), "out", "media", "m.json"], check=True,
                   env={**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    lines = (project / "out/corpus.jsonl").read_text().splitlines()
    assert all(set(json.loads(line)) == {"id", "subject", "text"} for line in lines)
    metrics = json.loads((project / "m.json").read_text())
    assert metrics["corpus_documents"] == len(lines)
