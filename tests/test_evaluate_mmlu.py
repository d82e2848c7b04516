"""Our MMLU scorer against lm-evaluation-harness on the same tiny model and local data."""

import pytest

from spark_trainer.data.sample import SUBJECTS, generate, mmlu_csv
from spark_trainer.errors import InputDataError
from spark_trainer.evaluation import calibration, lm_eval_tasks, mmlu
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling.tokenizer import encode_documents, train_bpe
from spark_trainer.params import validate_section
from spark_trainer.training import packing, trainer
from tests.conftest import deep_merge, smoke_params

PLANTED = {"exact_duplicates": 0, "near_duplicates": 0, "pii": 0, "toxic": 0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmlu")
    data = generate(5, SUBJECTS, 60, 8, 2, 6, 5, 12, PLANTED)
    for subject, splits in data.mmlu.items():
        for split, rows in splits.items():
            (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text(mmlu_csv(rows))
    p = validate_section("train", deep_merge(smoke_params()["train"], {"max_steps": 60, "save_steps": 100}))
    texts = [d["text"] for d in data.corpus]
    tok = train_bpe(texts, p.tokenizer.vocab_size, p.tokenizer.min_frequency)
    model = causal_lm.build_from_config(p.model, tok, p.seed)
    trainer.train_model(model, packing.BlockDataset(packing.pack(encode_documents(tok, texts), p.block_size).blocks),
                            p, root / "ckpt", None, "mmlu")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def long_model(setup):
    """The same model with room for few-shot prompts (RoPE learns no positions, so only
    what gets truncated changes): at 64 positions nearly every prompt is left-truncated
    and scored whole; at 1024 none is, and every question runs on the prefix cache."""
    from transformers import AutoModelForCausalLM

    from spark_trainer.modeling.tokenizer import load_pretrained

    AutoModelForCausalLM.from_pretrained(setup / "model", max_position_embeddings=1024).save_pretrained(
        setup / "model_long")
    load_pretrained(str(setup / "model")).save_pretrained(setup / "model_long")
    return setup / "model_long"


@pytest.mark.parametrize("folder", ["model", "model_long"])
@pytest.mark.parametrize(("fmt", "k"), [("letter", 2), ("continuation", 0), ("continuation", 3)])
def test_every_prediction_matches_lm_eval(setup, long_model, folder, fmt, k):
    model = causal_lm.load_for_inference(setup / folder)
    from spark_trainer.modeling.tokenizer import load_pretrained

    tok = load_pretrained(str(setup / folder))
    dev, test = mmlu.load_local(setup / "mmlu")
    ours = {(r["subject"], r["index"]): r for r in mmlu.evaluate(model, tok, dev, test, fmt, k, 7)}
    theirs = lm_eval_tasks.run(setup / folder, setup / "mmlu", setup, fmt, k, batch_size=4)
    assert set(ours) == set(theirs) and len(ours) == 48
    assert lm_eval_tasks.predictions_match(list(ours.values()), theirs) == []
    for key, lls in theirs.items():
        record = ours[key]
        assert record["prediction"] == max(range(4), key=lambda i: (lls[i], -i)), key
        assert record["loglikelihoods"] == pytest.approx(lls, abs=1e-4), key
    # A constant model would make the comparison meaningless. In the letter format a tiny
    # model picks one letter throughout (as the README says), but its scores still vary.
    assert len({tuple(round(x, 3) for x in r["loglikelihoods"]) for r in ours.values()}) > 40
    if fmt == "continuation":
        assert len({r["prediction"] for r in ours.values()}) > 1


@pytest.mark.parametrize(("fmt", "k"), [("letter", 3), ("continuation", 0), ("continuation", 3)])
def test_prefix_cache_gives_the_plain_paths_loglikelihoods(setup, long_model, monkeypatch, fmt, k):
    from spark_trainer.modeling.tokenizer import load_pretrained

    model, tok = causal_lm.load_for_inference(long_model), load_pretrained(str(long_model))
    dev, test = mmlu.load_local(setup / "mmlu")
    through_cache = []
    cached_loglikelihoods = mmlu.cached_loglikelihoods
    monkeypatch.setattr(mmlu, "cached_loglikelihoods", lambda m, cache, items, b: (
        through_cache.extend(items), cached_loglikelihoods(m, cache, items, b))[1])
    cached = mmlu.evaluate(model, tok, dev, test, fmt, k, 5)
    plain = mmlu.evaluate(model, tok, dev, test, fmt, k, 5, reuse_prefix=False)
    assert len(through_cache) == len(plain) == 48
    if fmt == "continuation":  # choices of several tokens: the tree rows, not only the prefix, are tested
        assert sum(len(c) > 1 for _, conts in through_cache for c in conts) > 100
    for ours, reference in zip(cached, plain, strict=True):
        assert ours["loglikelihoods"] == pytest.approx(reference["loglikelihoods"], rel=1e-6, abs=1e-5)
        assert ours["prediction"] == reference["prediction"]


def test_prompt_layout_is_lm_evals():
    q = mmlu.Question("world_facts", 0, " Who rules Zor? ", ("A1", "B1", "C1", "D1"), 2)
    shot = mmlu.Question("world_facts", 1, "What does Zor trade?", ("salt", "wool", "silk", "iron"), 1)
    assert mmlu.context(q, [shot], "letter") == (
        "The following are multiple choice questions (with answers) about world facts.\n\n"
        "What does Zor trade?\nA. salt\nB. wool\nC. silk\nD. iron\nAnswer: B\n\n"
        "Who rules Zor?\nA. A1\nB. B1\nC. C1\nD. D1\nAnswer:")
    assert mmlu.context(q, [shot], "continuation") == (
        "The following are questions (with answers) about world facts.\n\n"
        "Question: What does Zor trade?\nAnswer: wool\n\n"
        "Question: Who rules Zor?\nAnswer:")
    assert mmlu.continuations(q, "continuation") == [" A1", " B1", " C1", " D1"]


def test_bad_rows_name_file_and_line(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "x_test.csv").write_text('q1,a,b,c,d,A\n"q2",a,b,c,E\n')
    with pytest.raises(InputDataError, match=r"x_test.csv, line 2: expected 6 columns"):
        mmlu.load_local(tmp_path)
    (tmp_path / "test" / "x_test.csv").write_text("q1,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(InputDataError, match=r"x_test.csv, line 2: answer must be one of A, B, C, D, got 'E'"):
        mmlu.load_local(tmp_path)
    with pytest.raises(InputDataError, match="no <subject>_test.csv"):
        mmlu.load_local(tmp_path / "nothing")


def test_subject_with_too_few_dev_questions():
    q = mmlu.Question("s", 0, "q", ("a", "b", "c", "d"), 0)
    dev = {"long": [q] * 5, "short": [q] * 2}
    with pytest.raises(InputDataError, match="subject 'short' has 2 dev questions, fewer than "
                                             "evaluate_mmlu.num_fewshot=5.*short_dev: reduce"):
        mmlu.fewshot_counts(dev, 5, "error")
    assert mmlu.fewshot_counts(dev, 5, "reduce") == {"long": 5, "short": 2}


def test_calibration_and_summary():
    records = [{"subject": "s", "prediction": 0, "answer": 0, "correct": True, "probabilities": [0.95, 0.05, 0, 0]},
               {"subject": "s", "prediction": 1, "answer": 0, "correct": False, "probabilities": [0.1, 0.9, 0, 0]},
               {"subject": "t", "prediction": 2, "answer": 2, "correct": True, "probabilities": [0.2, 0.2, 0.4, 0.2]}]
    ece, bins = calibration.reliability(records, 10)
    assert [b["count"] for b in bins] == [1, 2]
    assert ece == pytest.approx((1 * abs(1 - 0.4) + 2 * abs(0.5 - 0.925)) / 3)
    summary = mmlu.summarise(records, {"s": "stem"})
    assert summary["acc"]["overall"]["acc"] == pytest.approx(2 / 3)
    assert summary["acc"]["categories"] == {"other": {"acc": 1.0, "acc_stderr": 0.0, "n": 1},
                                            "stem": {"acc": 0.5, "acc_stderr": 0.5, "n": 2}}


def test_cast_matches_loading_in_that_dtype(setup):
    """lm-eval loads with from_pretrained(dtype=...); a cast that rounded the rotary
    frequencies too (model.to) would score every question differently."""
    import torch
    from transformers import AutoModelForCausalLM

    ours = mmlu.cast(causal_lm.load_for_inference(setup / "model"), "bfloat16")
    loaded = AutoModelForCausalLM.from_pretrained(setup / "model", dtype=torch.bfloat16)
    theirs = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    for name, tensor in [*ours.named_parameters(), *ours.named_buffers()]:
        assert tensor.dtype == theirs[name].dtype and torch.equal(tensor, theirs[name]), name
    assert any(b.dtype == torch.float32 for b in ours.buffers())


def test_dtype_auto_is_float32_for_a_tiny_model(setup, monkeypatch):
    import torch

    model = causal_lm.load_for_inference(setup / "model")
    assert mmlu.choose_dtype("auto", model) == "float32"  # far below BF16_MIN_PARAMETERS
    assert mmlu.choose_dtype("bfloat16", model) == "bfloat16"
    monkeypatch.setattr(mmlu, "BF16_MIN_PARAMETERS", 0)
    assert mmlu.choose_dtype("auto", model) == ("bfloat16" if mmlu.native_bf16(torch.device("cpu")) else "float32")
