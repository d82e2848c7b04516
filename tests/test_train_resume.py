"""Interrupt training after a checkpoint, resume, and end with the same model and metrics."""

import math

import pytest
import torch
from transformers import TrainerCallback

from spark_trainer.modeling.causal_lm import build_from_config
from spark_trainer.modeling.tokenizer import encode_documents, train_bpe
from spark_trainer.params import validate_section
from spark_trainer.training import packing, trainer
from tests.conftest import smoke_params

TEXTS = [f"Question: What is {i % 17} plus {i % 5}?\nAnswer: {i % 17 + i % 5}" for i in range(300)]


class Interrupt(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated interruption")


@pytest.fixture(scope="module")
def setup():
    raw = smoke_params()["train"]
    raw.update(max_steps=12, save_steps=4, logging_steps=2)
    p = validate_section("train", raw)
    tok = train_bpe(TEXTS, p.tokenizer.vocab_size, p.tokenizer.min_frequency)
    blocks = packing.pack(encode_documents(tok, TEXTS), p.block_size).blocks
    return p, tok, blocks


def _run(p, tok, blocks, ckpt, live, callbacks=()):
    model = build_from_config(p.model, tok, p.seed)
    outcome = trainer.train_model(model, packing.BlockDataset(blocks), p, ckpt, live, "fp-1", tuple(callbacks))
    return model, outcome


def test_resume_after_interruption_matches_uninterrupted_run(setup, tmp_path):
    torch.set_num_threads(1)  # one thread: bitwise-reproducible CPU kernels
    p, tok, blocks = setup
    straight, _ = _run(p, tok, blocks, tmp_path / "ckpt_a", tmp_path / "live_a")

    with pytest.raises(KeyboardInterrupt):
        _run(p, tok, blocks, tmp_path / "ckpt_b", tmp_path / "live_b", [Interrupt(6)])
    assert (tmp_path / "ckpt_b" / "checkpoint-4").is_dir()
    resumed, outcome = _run(p, tok, blocks, tmp_path / "ckpt_b", tmp_path / "live_b")

    assert outcome.resumed_from_step == 4 and outcome.global_step == 12
    loss_a = trainer.mean_loss(straight, blocks, 8)
    loss_b = trainer.mean_loss(resumed, blocks, 8)
    assert math.isclose(loss_a, loss_b, rel_tol=0, abs_tol=1e-6)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    # The dvclive curve is whole after resume: the restored history is replayed.
    steps = [line.split("\t")[0] for line in (tmp_path / "live_b/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6", "8", "10", "12"]


class StopAtTheEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("stopped after the last step, before the model was saved")


def test_a_run_stopped_after_its_last_step_resumes_to_the_same_step_and_weights(setup, tmp_path):
    # Stopped during the final evaluation: no checkpoint at max_steps to resume from (the
    # Trainer would take a step past it), so the last steps are redone from the one before.
    torch.set_num_threads(1)
    p, tok, blocks = setup
    straight, first = _run(p, tok, blocks, tmp_path / "ckpt_a", None)
    with pytest.raises(KeyboardInterrupt):
        _run(p, tok, blocks, tmp_path / "ckpt_b", None, [StopAtTheEnd()])
    assert [c.name for c in (tmp_path / "ckpt_b").glob("checkpoint-*")] == ["checkpoint-8"]
    resumed, outcome = _run(p, tok, blocks, tmp_path / "ckpt_b", None)
    assert (outcome.resumed_from_step, outcome.global_step) == (8, 12) and first.global_step == 12
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_changed_run_does_not_resume_a_stale_checkpoint(setup, tmp_path):
    p, tok, blocks = setup
    with pytest.raises(KeyboardInterrupt):
        _run(p, tok, blocks, tmp_path / "ckpt", None, [Interrupt(6)])
    assert trainer.resume_point(tmp_path / "ckpt", "fp-1") is not None
    assert trainer.resume_point(tmp_path / "ckpt", "fp-2") is None
    assert not list((tmp_path / "ckpt").glob("checkpoint-*"))


def test_trained_model_beats_unigram_baseline(setup, tmp_path):
    p, tok, blocks = setup
    p = p.model_copy(update={"max_steps": 60, "save_steps": 100})
    model, _ = _run(p, tok, blocks, tmp_path / "ckpt", None)
    untrained = build_from_config(p.model, tok, p.seed)
    unigram = trainer.unigram_loss(blocks, blocks, len(tok))
    assert trainer.mean_loss(model, blocks, 8) < 0.5 * unigram < trainer.mean_loss(untrained, blocks, 8)
