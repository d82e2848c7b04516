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


# ------------------------------------------------------------------ mixed precision on a CPU


def _llama(hidden: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=32))


def _width(hidden: int):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden))


@pytest.fixture
def cpu_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")


@pytest.mark.parametrize("units, hidden, expected", [
    (True, trainer.CPU_BF16_MIN_HIDDEN_SIZE, (True, False)),
    (True, trainer.CPU_BF16_MIN_HIDDEN_SIZE - 64, (False, False)),
    (False, 4 * trainer.CPU_BF16_MIN_HIDDEN_SIZE, (False, False)),  # no bf16 matrix units
])
def test_auto_on_cpu_picks_bf16_only_with_matrix_units_and_a_wide_model(cpu_only, monkeypatch, units, hidden,
                                                                      expected):
    monkeypatch.setattr(trainer, "cpu_has_bf16_matrix_units", lambda: units)
    assert trainer.precision_flags("auto", _width(hidden)) == expected
    assert trainer.precision_flags("auto") == (False, False)  # no model to size: fp32
    assert trainer.precision_flags("bf16", _width(64)) == (True, False)
    with pytest.raises(ParamsError, match=r"efficiency\.mixed_precision: fp16 needs a CUDA GPU"):
        trainer.precision_flags("fp16", _width(hidden))


@pytest.mark.parametrize("section, keys", [
    ("train", ("model", "hidden_size")), ("distill", ("student", "hidden_size")),
    ("train_captioner", ("encoder", "hidden_size")), ("train_captioner", ("decoder", "hidden_size")),
])
def test_the_default_models_train_in_fp32_under_auto_even_with_bf16_units(cpu_only, monkeypatch, section, keys):
    # On these widths fp32 is the faster (benchmarks/train_precision.py); it keeps their metrics as they are.
    monkeypatch.setattr(trainer, "cpu_has_bf16_matrix_units", lambda: True)
    value = repo_params()[section]
    for key in keys:
        value = value[key]
    assert repo_params()[section]["efficiency"]["mixed_precision"] == "auto"
    assert trainer.precision_flags("auto", _width(value)) == (False, False)


def test_model_hidden_size_sees_through_adapters_and_takes_the_narrower_of_encoder_and_decoder():
    from peft import LoraConfig, get_peft_model

    assert trainer.model_hidden_size(_llama(128)) == 128
    assert trainer.model_hidden_size(get_peft_model(_llama(128), LoraConfig(r=2, target_modules=["q_proj"]))) == 128
    p = _params(encoder={"hidden_size": 128})
    tok = captioner.build_tokenizer(["a red square"])
    model = captioner.build_model(tok, p.image_size, p.encoder, p.decoder, p.block_size, p.seed)
    assert trainer.model_hidden_size(model) == min(128, p.decoder.hidden_size)


@pytest.mark.parametrize("mixed_precision, hidden, expected", [
    ("bf16", 64, "bfloat16"),                                      # the Trainer really autocasts on a CPU
    ("auto", trainer.CPU_BF16_MIN_HIDDEN_SIZE, "bfloat16"),        # the model reaches precision_flags
    ("auto", trainer.CPU_BF16_MIN_HIDDEN_SIZE - 64, "float32"),
])
def test_the_training_loop_computes_in_the_precision_picked(cpu_only, monkeypatch, tmp_path, mixed_precision,
                                                           hidden, expected):
    import torch

    from spark_trainer.training import packing
    from tests.conftest import smoke_params

    monkeypatch.setattr(trainer, "cpu_has_bf16_matrix_units", lambda: True)
    p = validate_section("train", deep_merge(smoke_params()["train"], {
        "max_steps": 2, "batch_size": 2, "block_size": 16, "logging_steps": 1, "save_steps": 2, "warmup_steps": 0,
        "efficiency": {"mixed_precision": mixed_precision}}))
    model = _llama(hidden)
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    blocks = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    trainer.train_model(model, packing.BlockDataset(blocks), p, tmp_path / "ckpt", None, "fp")
    assert seen and {str(d).removeprefix("torch.") for d in seen} == {expected}
    assert all(w.dtype == torch.float32 for w in model.parameters())  # autocast: the weights stay fp32
    with trainer.autocast(mixed_precision, model), torch.no_grad():
        seen.clear()
        model(input_ids=blocks[:1])
    assert str(seen[0]).removeprefix("torch.") == expected  # evaluation follows training's precision
