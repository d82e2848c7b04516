"""The captioner trains through the same loop as the language models, so every
efficiency param it accepts applies, and it accepts none that it would ignore."""

from __future__ import annotations

import pytest

from spark_trainer.errors import ParamsError
from spark_trainer.modeling import captioner
from spark_trainer.params import validate_section
from spark_trainer.training import captioning, trainer
from tests.conftest import deep_merge, repo_params


def _params(**overrides):
    return validate_section("train_captioner", deep_merge(repo_params()["train_captioner"], overrides))


@pytest.mark.parametrize("key", ["early_stopping_patience", "eval_steps"])
def test_captioner_refuses_early_stopping_it_has_no_validation_split_for(key):
    with pytest.raises(ParamsError, match=rf"train_captioner\.efficiency\.{key}: unknown key"):
        _params(efficiency={key: 3})


def test_attention_and_checkpointing_settings_reach_the_captioner(tmp_path):
    import torch

    p = _params(max_steps=2, logging_steps=1, save_steps=2, warmup_steps=0,
                efficiency={"attn_implementation": "eager", "gradient_checkpointing": True})
    tok = captioner.build_tokenizer(["a red square", "a blue circle"])
    model = captioner.build_model(tok, p.image_size, p.encoder, p.decoder, p.block_size, p.seed)
    assert model.config.encoder._attn_implementation == "sdpa"  # the builder's default, before training
    frames = [{"caption": c, "jpeg": captioner_jpeg(i)} for i, c in enumerate(["a red square", "a blue circle"] * 4)]
    data = captioning.encode(frames, captioner.build_image_processor(p.image_size), tok, p.block_size)
    outcome = trainer.train_model(model, data, p, tmp_path / "ckpt", None, "fp")
    assert outcome.global_step == 2
    assert model.encoder.config._attn_implementation == "eager"
    assert model.decoder.config._attn_implementation == "eager"
    assert model.config.use_cache is False  # set for gradient checkpointing
    assert torch.isfinite(torch.tensor(outcome.log_history[-1]["train_loss"]))


def captioner_jpeg(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 30 % 255, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()
