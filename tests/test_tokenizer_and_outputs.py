import json

import pytest

from spark_trainer.modeling.tokenizer import encode_documents, train_bpe
from spark_trainer.outputs import atomic_path, dumps_stable, write_metrics

TEXTS = [f"Question: What is {i} plus {i + 2}?\nAnswer: {2 * i + 2}" for i in range(200)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=320, min_frequency=2)


def test_post_processor_adds_bos_only(tok):
    ids = tok("Answer: 4")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "Answer: 4"


def test_training_documents_end_with_eos(tok):
    docs = encode_documents(tok, ["Answer: 4", "Question: x"])
    assert all(d[0] == tok.bos_token_id and d[-1] == tok.eos_token_id for d in docs)
    assert sum(t == tok.eos_token_id for t in docs[0]) == 1


def test_context_then_continuation_keeps_the_context_tokens(tok):
    """Log-likelihood scoring encodes context + continuation together and splits at the
    context's length: the context must not gain a trailing special token."""
    context, continuation = "Question: What is 3 plus 5?\nAnswer:", " 8"
    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    assert whole[: len(ctx)] == ctx


def test_bpe_training_is_deterministic(tok):
    again = train_bpe(TEXTS, vocab_size=320, min_frequency=2)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_every_byte_is_encodable(tok):
    text = "ünïcödé ✓ 日本"
    assert tok.unk_token_id not in tok(text)["input_ids"]
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_metrics_are_sorted_rounded_and_stable(tmp_path):
    write_metrics(tmp_path / "m.json", {"b": 1 / 3, "a": {"z": -0.0, "y": float("nan")}, "c": True})
    text = (tmp_path / "m.json").read_text()
    assert text == dumps_stable({"a": {"y": None, "z": 0.0}, "b": 0.333333, "c": True})
    assert list(json.loads(text)) == ["a", "b", "c"]


def test_atomic_path_leaves_old_output_when_interrupted(tmp_path):
    out = tmp_path / "out"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "f.txt").write_text("complete")
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "f.txt").write_text("half")
        raise KeyboardInterrupt
    assert (out / "f.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
