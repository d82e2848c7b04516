"""Each quality gate, each bad-input case, and the stage's counts and outputs."""

import json
import subprocess
import sys

import pytest
import torch

from spark_trainer.data.manifest import text_item
from spark_trainer.errors import ModelSourceError, ParamsError, ValidationFailed
from spark_trainer.outputs import sha256_file
from spark_trainer.params import validate_section
from spark_trainer.quality import dedup, gates, ground_truth, pii, toxicity
from tests.conftest import REPO, deep_merge, repo_params, venv_env

PASSAGE = ("Zorath lies on the river Ambel. Its banner is green, its merchants sell copper, and the town is "
           "ruled by Queen Mira, who keeps the old roads open for the traders of the north.")


def item(item_id, text, subject="world_facts", flags=None):
    it = text_item(item_id, text, subject, "src.jsonl", "", "t", {"source": "src.jsonl", "parent_ids": [],
                                                                   "stage": "prepare"})
    if flags:
        it["metadata"]["flags"] = list(flags)
    return it


def params(**overrides):
    return validate_section("quality_gates", deep_merge(repo_params()["quality_gates"], overrides))


# ------------------------------------------------------------------ dedup


def test_exact_duplicates_ignore_case_space_and_punctuation_and_mark_contamination():
    splits = {"train": [item("a", "The banner is green."), item("b", "Other text")],
              "val": [item("c", "the  BANNER is green")], "test": [item("d", "Other text!")]}
    found = dedup.exact_duplicates(splits)
    assert found == {"c": {"duplicate_of": "a", "reason": "contamination"},
                     "d": {"duplicate_of": "b", "reason": "contamination"}}


def test_near_duplicates_found_within_and_across_splits():
    edited = PASSAGE.replace("open for", "open indeed for")
    splits = {"train": [item("a", PASSAGE)], "val": [item("b", edited)], "test": [item("c", "Zorath trades salt.")]}
    found = dedup.near_duplicates(splits, 3, 128, 0.65, 15)
    assert found["b"]["duplicate_of"] == "a" and found["b"]["reason"] == "contamination"
    assert found["b"]["jaccard"] >= 0.85 and "c" not in found  # one inserted word: 3-gram Jaccard ~0.86
    same_split = dedup.near_duplicates({"train": [item("a", PASSAGE), item("b", edited)]}, 3, 128, 0.65, 15)
    assert same_split["b"]["reason"] == "duplicate"


def test_short_sentences_that_differ_in_one_word_are_different_facts():
    splits = {"train": [item("a", "Belmelzor is built on the banks of the Fennow."),
                        item("b", "Rungalvin is built on the banks of the Fennow.")]}
    assert dedup.near_duplicates(splits, 3, 128, 0.65, 15) == {}
    assert dedup.near_duplicates(splits, 3, 128, 0.65, 0) != {}  # what min_words guards against


def test_semantic_duplicates_with_the_packaged_minilm_encoder():
    splits = {"train": [item("a", "The cat sat on the mat in the sun."), item("b", "Copper is traded in Zorath.")],
              "val": [item("c", "A cat was sitting on the mat in the sunshine.")]}
    found = dedup.semantic_duplicates(splits, 0.8, 8)
    assert set(found) == {"c"} and found["c"]["duplicate_of"] == "a" and found["c"]["cosine"] >= 0.88


# ------------------------------------------------------------------ PII


@pytest.fixture(scope="module")
def pii_engine():
    return pii.build_engine("", ("US", "GB", "CA", "FR"))


@pytest.mark.parametrize(("text", "entity"), [
    ("Write to mara.velt@example.org today.", "EMAIL_ADDRESS"),
    ("Call (212) 555-0134 after noon.", "PHONE_NUMBER"),
    ("Her social security number is 536-22-8726.", "US_SSN"),
    ("Paid with card number 4111 1111 1111 1111 yesterday.", "CREDIT_CARD"),
    ("The server runs at 81.2.69.160 now.", "IP_ADDRESS"),
    ("Send it to IBAN DE89370400440532013000 please.", "IBAN_CODE"),
])
def test_each_pattern_entity_is_redacted_with_a_typed_placeholder(pii_engine, text, entity):
    results = pii.analyze(pii_engine, text, ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS",
                                             "IBAN_CODE"), 0.4)
    assert [r.entity_type for r in results] == [entity]
    assert f"<{entity}>" in pii.redact(pii_engine, text, results)


def test_a_configured_spacy_pipeline_that_is_missing_is_an_error():
    with pytest.raises(ModelSourceError, match=r"quality_gates\.pii\.spacy_model: no spaCy pipeline at"):
        pii.build_engine("models/external/spacy/en_core_web_xx_missing", ("US",))
    engine = pii.build_engine("", ("US",))
    assert engine.backend == "presidio:pattern-only" and "no spaCy pipeline configured" in engine.note


def test_pii_numbers_in_plain_text_are_not_phone_numbers(pii_engine):
    for text in ("So 28 hours make 1680 minutes.", "How many seconds are in 45 minutes?\nAnswer: 2700"):
        assert pii.analyze(pii_engine, text, ("PHONE_NUMBER", "US_SSN", "CREDIT_CARD"), 0.4) == []


# ------------------------------------------------------------------ toxicity


def sample_comments(planted_toxic=40):
    """The sample's planted toxic lines and clean controls, with the repo's sample params."""
    from spark_trainer.data.sample import generate

    s = validate_section("sample", repo_params()["sample"])
    data = generate(s.seed, s.subjects, s.qa_per_subject, s.world_towns, s.fact_phrasings, s.passages_per_subject,
                    s.mmlu_dev_per_subject, s.mmlu_test_per_subject, {**s.planted.model_dump(), "toxic": planted_toxic})
    by_id = {d["id"]: d for d in data.corpus}
    planted = [lab for lab in data.labels if "toxic" in lab]
    return [by_id[lab["id"]] for lab in planted], planted


def test_profanity_check_scores_only_toxicity_and_separates_clean_from_toxic():
    scorer = toxicity.build_scorer("profanity_check", "original", "", "", "error", 8)
    assert scorer.backend == "profanity_check" and scorer.note == "configured backend"
    toxic, clean, empty = scorer.score(["Fuck off, you worthless piece of shit.", "Zorath trades copper.", ""])
    assert set(toxic) == {"toxicity"}  # one score, mapped to the toxicity category
    assert toxic["toxicity"] > 0.9 and clean["toxicity"] < 0.2 and empty["toxicity"] < 0.2
    assert toxicity.flagged(toxic, {"toxicity": 0.5, "insult": 0.5}) == {"toxicity": pytest.approx(toxic["toxicity"],
                                                                                                   abs=1e-4)}
    assert scorer.score([]) == []


def test_missing_checkpoint_falls_back_to_profanity_check_by_default(tmp_path):
    t = params().toxicity
    assert t.fallback == "profanity_check"
    scorer = toxicity.build_scorer("detoxify", "original", str(tmp_path / "none.ckpt"), "", t.fallback, 8)
    assert scorer.backend == "profanity_check" and "fallback: no Detoxify checkpoint at" in scorer.note


def test_profanity_check_needs_a_toxicity_threshold():
    raw = repo_params()["quality_gates"]
    raw["toxicity"]["thresholds"] = {"insult": 0.5}   # replaced, not merged
    with pytest.raises(ParamsError, match="profanity_check scores only the `toxicity` category"):
        validate_section("quality_gates", raw)
    raw["toxicity"]["fallback"] = "wordlist"
    assert validate_section("quality_gates", raw).toxicity.thresholds == {"insult": 0.5}


def test_a_detoxify_checkpoint_needs_its_sha256_in_params():
    ckpt = {"checkpoint": "models/external/detoxify/original.ckpt", "huggingface_config_path": "models/external/detoxify/bert"}
    with pytest.raises(ParamsError, match="checkpoint and checkpoint_sha256 go together"):
        params(toxicity=ckpt)
    with pytest.raises(ParamsError, match="checkpoint_sha256"):
        params(toxicity={**ckpt, "checkpoint_sha256": "not-a-digest"})
    assert params(toxicity={**ckpt, "checkpoint_sha256": "ab" * 32}).toxicity.checkpoint_sha256 == "ab" * 32


def _measured(scorer, toxic, clean):
    flags = [bool(toxicity.flagged(s, {"toxicity": 0.5})) for s in scorer.score(toxic + clean)]
    tp, fp = sum(flags[:len(toxic)]), sum(flags[len(toxic):])
    return tp / len(toxic), (tp / (tp + fp) if tp + fp else None)


def test_profanity_check_beats_the_wordlist_on_the_held_out_set():
    """Why profanity_check is the offline fallback (benchmarks/toxicity_fallback.py prints the same):
    measured at the default threshold on sentences written apart from the term list and the sample
    (observed: profanity_check recall 0.609, precision 0.894; wordlist recall 0.246, precision 0.895)."""
    from benchmarks.toxicity_fallback import HELD_OUT_CLEAN, HELD_OUT_TOXIC

    assert len(HELD_OUT_TOXIC) >= 60 and len(HELD_OUT_CLEAN) >= 60
    assert not set(HELD_OUT_TOXIC) & set(HELD_OUT_CLEAN)
    pc_recall, pc_precision = _measured(toxicity.profanity_check_scorer("t"), HELD_OUT_TOXIC, HELD_OUT_CLEAN)
    wl_recall, wl_precision = _measured(toxicity.wordlist_scorer("t"), HELD_OUT_TOXIC, HELD_OUT_CLEAN)
    assert pc_recall >= 0.58 and pc_precision >= 0.85          # floors just under what was observed
    assert wl_recall <= 0.30                                   # the word list misses most of them
    assert pc_recall >= wl_recall + 0.25 and pc_precision >= wl_precision - 0.05


def test_fallback_recall_on_the_planted_sample_is_measured_through_the_gate():
    """The gate on the sample's planted comments (40 toxic, 40 clean controls with borderline words),
    scored by ground_truth against labels.jsonl's labels. Observed with profanity_check: recall
    13/40 = 0.325 (every obscene line, a third of the insults, no threat or identity attack without
    a swear word), 5 of 40 controls flagged; the word list recalls 2/40."""
    docs, labels = sample_comments()
    splits = {"train": [item(d["id"], d["text"]) for d in docs], "val": [], "test": []}
    outcome = gates.run_gates(splits, params(order=["toxicity"]))
    scored = ground_truth.evaluate(labels, outcome.rejected, {}, set(outcome.reports), gates.backends(outcome))
    t = scored["toxicity"]
    assert t["backend"] == "profanity_check" and t["actual"] == 40
    assert 0.30 <= t["recall"] < 1.0                     # measured, not true by construction
    assert t["precision"] >= 0.70 and t["clean_controls"] == {"planted": 40, "flagged": t["predicted"] - t["true_positives"]}
    assert t["clean_controls"]["flagged"] <= 6
    wordlist = gates.run_gates(splits, params(order=["toxicity"], toxicity={"backend": "wordlist"}))
    wl = ground_truth.evaluate(labels, wordlist.rejected, {}, {"toxicity"}, gates.backends(wordlist))["toxicity"]
    assert wl["backend"] == "wordlist" and wl["recall"] <= 0.15 < t["recall"]


def test_wordlist_scorer_is_transparent():
    scorer = toxicity.wordlist_scorer("configured backend")
    hateful, clean = scorer.score(["You are a worthless idiot, Omar.", "Zorath trades copper."])
    assert hateful["insult"] == 1.0 and hateful["toxicity"] == 1.0
    assert clean["toxicity"] == 0.0
    assert toxicity.flagged(hateful, {"insult": 0.5, "threat": 0.5}) == {"insult": 1.0}


def build_tiny_detoxify(root):
    """A Detoxify checkpoint of a 1-layer BERT whose `insult` logit is fixed high: the real
    loading and predict code runs, and the expected scores are known."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = root / "bert-tiny"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "a", "copper", "idiot"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=6)
    config.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-5.0, -5.0, -5.0, -5.0, 5.0, -5.0]))
    checkpoint = root / "toxic_tiny.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": 6}},
                           "dataset": {"args": {"classes": ["toxic", "severe_toxic", "obscene", "threat", "insult",
                                                            "identity_hate"]}}},
                "state_dict": model.state_dict()}, checkpoint)
    return checkpoint, folder


def test_detoxify_loads_a_local_checkpoint_and_scores(tmp_path):
    checkpoint, folder = build_tiny_detoxify(tmp_path)
    scorer = toxicity.build_scorer("detoxify", "original", str(checkpoint), str(folder), "error", 2,
                                   sha256_file(checkpoint))
    assert scorer.backend == "detoxify" and str(checkpoint) in scorer.note
    scores = scorer.score(["you are a idiot", "copper", "you are"])  # 3 texts, batch 2: a batch of one too
    assert len(scores) == 3
    assert set(scores[0]) == {"toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"}
    assert scores[0]["insult"] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), abs=1e-5)
    assert toxicity.flagged(scores[1], {"insult": 0.5, "toxicity": 0.5}) == {"insult": pytest.approx(0.9933, abs=1e-4)}


def test_missing_checkpoint_falls_back_to_the_wordlist_and_says_so(tmp_path):
    scorer = toxicity.build_scorer("detoxify", "original", str(tmp_path / "none.ckpt"), "", "wordlist", 8)
    assert scorer.backend == "wordlist" and "no Detoxify checkpoint at" in scorer.note
    with pytest.raises(ModelSourceError, match="set quality_gates.toxicity.checkpoint"):
        toxicity.build_scorer("detoxify", "original", str(tmp_path / "none.ckpt"), "", "error", 8)


def test_a_checkpoint_that_would_run_code_is_refused_before_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"config": {}, "state_dict": {}, "x": Payload()}, evil)
    scorer = toxicity.build_scorer("detoxify", "original", str(evil), str(tmp_path), "wordlist", 8, sha256_file(evil))
    assert scorer.backend == "wordlist" and "could run code" in scorer.note
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_is_loaded_only_when_its_sha256_matches_params(tmp_path):
    """A file that is not the one params pin is refused before anything reads it, whatever
    the fallback: falling back would hide that the checkpoint was swapped."""
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    checkpoint, folder = build_tiny_detoxify(tmp_path)
    pinned = sha256_file(checkpoint)
    swapped = tmp_path / "swapped.ckpt"
    torch.save({"config": {}, "state_dict": {}, "x": Payload()}, swapped)
    for fallback in ("error", "wordlist"):
        with pytest.raises(ModelSourceError, match="sha256 is [0-9a-f]{64}, but quality_gates.toxicity.checkpoint_sha256"):
            toxicity.build_scorer("detoxify", "original", str(swapped), str(folder), fallback, 2, pinned)
        with pytest.raises(ModelSourceError, match="checkpoint_sha256 is empty"):
            toxicity.build_scorer("detoxify", "original", str(checkpoint), str(folder), fallback, 2)
    assert not (tmp_path / "ran").exists()
    assert toxicity.build_scorer("detoxify", "original", str(checkpoint), str(folder), "error", 2,
                                 pinned.upper()).backend == "detoxify"


def test_broken_checkpoint_is_reported_not_used(tmp_path):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    scorer = toxicity.build_scorer("detoxify", "original", str(bad), "", "wordlist", 8, sha256_file(bad))
    assert scorer.backend == "wordlist" and "could not load" in scorer.note


# ------------------------------------------------------------------ the whole gate run, bad input


def test_bad_input_is_counted_and_nothing_crashes():
    splits = {"train": [item("empty", "   "), item("utf8", "caf\ufffd is a word in this sentence, nothing more.",
                                                     flags=["invalid_utf8_replaced"]),
                        item("long", "copper " * 2000), item("de", "Der Fluss fliesst langsam durch die alte Stadt "
                                                                   "und die Händler verkaufen dort Kupfer und Salz."),
                        item("ok", PASSAGE)], "val": [], "test": []}
    outcome = gates.run_gates(splits, params())
    summary = gates.summary(outcome, {"train": 5, "val": 0, "test": 0})
    screen = summary["gates"]["screen"]
    assert screen["details"]["bad_input"] == {"empty_text": 1, "too_long": 1, "other_language": 1,
                                              "invalid_utf8_replaced": 1}
    assert screen["reasons"] == {"empty_text": 1, "too_long": 1}
    assert summary["counts"]["balanced"] and all(g["balanced"] for g in summary["gates"].values())
    kept = {it["id"]: it for it in outcome.splits["train"]}
    assert set(kept) == {"utf8", "de", "ok"}
    assert "language_de" in kept["de"]["metadata"]["flags"]


def test_truncate_and_reject_options():
    long_text = " ".join([PASSAGE] * 40)
    splits = {"train": [item("long", long_text), item("de", "Der Fluss fliesst langsam durch die alte Stadt "
                                                            "und die Händler verkaufen dort Kupfer.")]}
    outcome = gates.run_gates(splits, params(screen={"long_action": "truncate", "non_language_action": "reject"}))
    (kept,) = outcome.splits["train"]
    assert kept["id"] == "long" and len(kept["text"]) == 5000
    assert f"truncated_from_{len(long_text)}_chars" in kept["metadata"]["flags"]
    assert [r["reason"] for r in outcome.rejected] == ["other_language"]


def test_gates_can_be_switched_off_and_validation_catches_leftover_pii():
    from spark_trainer.data.validation import clean_expectations, manifest_frame, run_suite

    splits = {"train": [item("a", "Write to mara.velt@example.org today, please, before noon."), item("b", PASSAGE)]}
    outcome = gates.run_gates(splits, params(pii={"enabled": False}))
    assert "pii" not in outcome.reports
    with pytest.raises(ValidationFailed, match="expect_column_values_to_not_match_regex"):
        run_suite("clean", manifest_frame(outcome.splits["train"]), clean_expectations())
    redacted = gates.run_gates(splits, params())
    assert "<EMAIL_ADDRESS>" in redacted.splits["train"][0]["text"]
    assert redacted.splits["train"][0]["annotations"]["pii"][0]["type"] == "EMAIL_ADDRESS"
    run_suite("clean", manifest_frame(redacted.splits["train"]), clean_expectations())


def test_pii_drop_action_rejects_the_item():
    splits = {"train": [item("a", "Call (212) 555-0134 about the copper."), item("b", PASSAGE)]}
    outcome = gates.run_gates(splits, params(pii={"action": "drop"}))
    assert [(r["id"], r["gate"], r["reason"]) for r in outcome.rejected] == [("a", "pii", "pii")]


def test_ground_truth_scores_pairs_entities_and_items():
    labels = [{"id": "x2", "exact_duplicate_of": "x1"}, {"id": "n2", "near_duplicate_of": "n1"},
              {"id": "p", "pii": [{"type": "EMAIL_ADDRESS", "start": 0, "end": 5}]}, {"id": "t", "toxic": True},
              {"id": "t2", "toxic": True}, {"id": "c1", "toxic": False}, {"id": "c2", "toxic": False}]
    rejected = [{"id": "x1", "gate": "exact_dedup", "scores": {"duplicate_of": "x2"}},   # either copy may go
                {"id": "q", "gate": "near_dedup", "scores": {"duplicate_of": "r"}},      # a false positive
                {"id": "t", "gate": "toxicity", "scores": {}}, {"id": "c1", "gate": "toxicity", "scores": {}}]
    detections = {"p": [{"type": "EMAIL_ADDRESS", "start": 1, "end": 4}, {"type": "US_SSN", "start": 9, "end": 12}]}
    scored = ground_truth.evaluate(labels, rejected, detections, {"exact_dedup", "near_dedup", "pii", "toxicity"},
                                   {"pii": "presidio:pattern-only", "toxicity": "profanity_check"})
    assert (scored["exact_dedup"]["precision"], scored["exact_dedup"]["recall"]) == (1.0, 1.0)
    assert (scored["near_dedup"]["precision"], scored["near_dedup"]["recall"]) == (0.0, 0.0)
    assert (scored["pii"]["precision"], scored["pii"]["recall"]) == (0.5, 1.0)
    assert (scored["toxicity"]["precision"], scored["toxicity"]["recall"]) == (0.5, 0.5)
    assert scored["toxicity"]["clean_controls"] == {"planted": 2, "flagged": 1}
    assert scored["toxicity"]["backend"] == "profanity_check" and scored["pii"]["backend"] == "presidio:pattern-only"
    assert "backend" not in scored["exact_dedup"]


def test_stage_writes_clean_splits_rejected_card_and_balanced_metrics(project):
    prepared = project / "prepared"
    prepared.mkdir()
    rows = {"train": [item("a", PASSAGE), item("b", PASSAGE.upper()), item("c", "   "),
                      item("d", "You are a worthless idiot, Omar."),
                      item("e", "Tax record for Ivan Novak: social security number 536-22-8726.")],
            "val": [item("f", PASSAGE.replace("open for", "open indeed for"))], "test": [item("g", "Zorath trades salt.")]}
    for split, items in rows.items():
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    run = subprocess.run([sys.executable, str(REPO / "stages/quality_gates.py"), "prepared", "no-labels.jsonl",
                          "clean", "m.json"], capture_output=True, text=True,
                         env={**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((project / "m.json").read_text())
    assert metrics["counts"] == {"balanced": True, "in": {"test": 1, "train": 5, "val": 1},
                                 "out": {"test": 1, "train": 2, "val": 0}, "rejected": {"test": 0, "train": 3, "val": 1}}
    assert metrics["contamination"] == {"test": 0, "val": 1}
    assert metrics["gates"]["toxicity"]["details"]["backend"] == "profanity_check"
    assert "fallback: no Detoxify checkpoint configured" in metrics["gates"]["toxicity"]["details"]["backend_note"]
    assert metrics["ground_truth_labels"] == "none" and metrics["validation"]["success"]
    rejected = [json.loads(line) for line in (project / "clean/rejected.jsonl").read_text().splitlines()]
    assert {(r["id"], r["gate"], r["reason"]) for r in rejected} == {
        ("b", "exact_dedup", "duplicate"), ("c", "screen", "empty_text"), ("d", "toxicity", "toxic"),
        ("f", "near_dedup", "contamination")}
    train = [json.loads(line) for line in (project / "clean/train.jsonl").read_text().splitlines()]
    assert "<US_SSN>" in train[1]["text"] and train[1]["lineage"]["stage"] == "quality_gates"
    card = (project / "clean/README.md").read_text()
    assert card.startswith("---\npretty_name:") and "size_categories:\n- n<1K" in card
    assert "## Curation steps" in card and "## Known limitations" in card
