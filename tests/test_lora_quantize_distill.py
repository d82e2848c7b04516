"""LoRA/QLoRA, quantization and distillation on a tiny model built from a config."""

import json

import pytest
import torch

from spark_trainer.errors import ModelSourceError, ParamsError
from spark_trainer.modeling import causal_lm, quantize
from spark_trainer.modeling.tokenizer import encode_documents, train_bpe
from spark_trainer.params import validate_section
from spark_trainer.training import distill, lora, packing, sft, trainer
from tests.conftest import deep_merge, smoke_params

TEXTS = [f"Question: What is {i % 13} plus {i % 7}?\nAnswer: {i % 13 + i % 7}" for i in range(240)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny trained base model saved in the Hugging Face layout, with its tokenizer and blocks."""
    root = tmp_path_factory.mktemp("base")
    p = validate_section("train", deep_merge(smoke_params()["train"], {"max_steps": 30, "save_steps": 100}))
    tok = train_bpe(TEXTS, p.tokenizer.vocab_size, p.tokenizer.min_frequency)
    blocks = packing.pack(encode_documents(tok, TEXTS), p.block_size).blocks
    model = causal_lm.build_from_config(p.model, tok, p.seed)
    trainer.train_model(model, packing.BlockDataset(blocks), p, root / "ckpt", None, "base")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model", tok, blocks


def loop_params(section, **overrides):
    return validate_section(section, deep_merge(smoke_params()[section], overrides))


# ------------------------------------------------------------------ LoRA


def test_target_modules_are_detected_and_wrong_ones_listed(base):
    model = lora.load_base(base[0], qlora=False)
    assert lora.resolve_target_modules(model, ()) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                      "up_proj", "v_proj"]
    with pytest.raises(ModelSourceError, match=r"\['c_attn'\] are not modules of this model; its Linear modules "
                                               r"are: down_proj, gate_proj"):
        lora.resolve_target_modules(model, ("q_proj", "c_attn"))


def test_missing_models_name_the_stage_that_makes_them(tmp_path):
    with pytest.raises(ModelSourceError, match="produced by the 'train' stage"):
        lora.load_base(tmp_path / "nope", qlora=False)
    with pytest.raises(ModelSourceError, match="'lora' stage"):
        causal_lm.load_pretrained(str(tmp_path / "nope"), produced_by="lora")
    with pytest.raises(ModelSourceError, match="'quantize' stage"):
        quantize.load_quantized(tmp_path)
    with pytest.raises(ModelSourceError, match=r"'lora@world' stage"):
        lora.load_with_adapters(tmp_path, {"world": tmp_path / "missing"})


def _train_adapter(base, tmp_path, name, seed, qlora=False, steps=6):
    path, tok, blocks = base
    p = loop_params("lora", max_steps=steps, seed=seed, qlora=qlora)
    model = lora.load_base(path, qlora)
    model = lora.attach(model, p.rank, p.alpha, p.dropout, lora.resolve_target_modules(model, p.target_modules),
                       p.seed)
    trainer.train_model(model, packing.BlockDataset(blocks), p, tmp_path / f"ckpt_{name}", None, name)
    lora.save(model, path, tok, tmp_path / name)
    return model


def test_adapter_training_lowers_loss_and_merge_matches(base, tmp_path):
    path, tok, blocks = base
    before = trainer.mean_loss(lora.load_base(path, False), blocks, 8)
    model = _train_adapter(base, tmp_path, "a", seed=1, steps=20)
    trainable, total = lora.parameter_counts(model)
    assert 0 < trainable / total < 0.5
    assert trainer.mean_loss(model, blocks, 8) < before
    merged = causal_lm.load_pretrained(str(tmp_path / "a" / "merged"))
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=blocks[:2]).logits, model(input_ids=blocks[:2]).logits, atol=1e-4)
    saved = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(saved["target_modules"])  # byte-stable across processes


def test_one_base_many_adapters_switched_by_name(base, tmp_path):
    _train_adapter(base, tmp_path, "a", seed=1)
    _train_adapter(base, tmp_path, "b", seed=2)
    model = lora.load_with_adapters(base[0], {"a": tmp_path / "a/adapter", "b": tmp_path / "b/adapter"})
    batch = base[2][:2]
    outputs = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        with torch.no_grad():
            outputs[name] = model(input_ids=batch).logits
        merged = causal_lm.load_pretrained(str(tmp_path / name / "merged"))
        with torch.no_grad():
            assert torch.allclose(outputs[name], merged(input_ids=batch).logits, atol=1e-4)
    assert not torch.allclose(outputs["a"], outputs["b"])


def test_qlora_step_on_a_4bit_base(base, tmp_path):
    path, _, blocks = base
    model = _train_adapter(base, tmp_path, "q", seed=3, qlora=True, steps=2)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    # Two steps move the loss little; a 4-bit load that garbled the weights would not be near it
    # (observed: 2.538 against the fp32 base's 2.525; an untrained model's is ~ln(320) = 5.8).
    base_loss = trainer.mean_loss(lora.load_base(path, False), blocks[:4], 4)
    assert abs(trainer.mean_loss(model, blocks[:4], 4) - base_loss) < 0.05 * base_loss
    assert (tmp_path / "q" / "merged" / "model.safetensors").is_file()


# ------------------------------------------------------------------ quantization


@pytest.mark.parametrize("method", quantize.METHODS)
def test_each_supported_method_saves_reloads_and_stays_close(base, tmp_path, method):
    if method not in quantize.supported_methods():
        pytest.skip(f"{method} cannot run on this machine")
    path, tok, blocks = base
    quantize.save_quantized(quantize.quantize(path, method), method, tok, tmp_path / method)
    reloaded = quantize.load_quantized(tmp_path / method)
    reference = causal_lm.load_pretrained(str(path))
    assert quantize.state_dict_bytes(reloaded) < quantize.state_dict_bytes(reference)
    loss_ref, loss_q = trainer.mean_loss(reference, blocks, 8), trainer.mean_loss(reloaded, blocks, 8)
    assert abs(loss_q - loss_ref) < 0.02 * loss_ref  # observed: 0.09% (nf4), 0.003% (int8)
    agreement = quantize.greedy_agreement(reference, reloaded, tok, ["Question: What is 3 plus 4?\nAnswer:"], 6)
    # Observed 1.0 (6 of 6 greedy tokens) for every method; one flip is allowed for other kernels.
    assert agreement["token_agreement"] >= 5 / 6


def test_dynamic_int8_is_stored_without_pickle_and_reloads_exactly(base, tmp_path):
    """Packed int8 weights go to safetensors unpacked (int8 values, scale, zero point), so
    loading the folder runs no code; the reloaded model computes the same logits."""
    path, tok, blocks = base
    model = quantize.quantize(path, "dynamic_int8")
    quantize.save_quantized(model, "dynamic_int8", tok, tmp_path / "q")
    names = {p.name for p in (tmp_path / "q").iterdir()}
    assert quantize.DYNAMIC_WEIGHTS in names and not {n for n in names if n.endswith((".pt", ".bin", ".pkl"))}
    reloaded = quantize.load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(model(blocks[:2]).logits, reloaded(blocks[:2]).logits)


def test_a_dynamic_int8_file_that_does_not_fit_is_refused(base, tmp_path):
    from safetensors.torch import load_file, save_file

    path, tok, _ = base
    quantize.save_quantized(quantize.quantize(path, "dynamic_int8"), "dynamic_int8", tok, tmp_path / "q")
    tensors = load_file(str(tmp_path / "q" / quantize.DYNAMIC_WEIGHTS))
    tensors.pop(next(k for k in tensors if k.endswith("norm.weight")))
    save_file(tensors, str(tmp_path / "q" / quantize.DYNAMIC_WEIGHTS))
    with pytest.raises(ModelSourceError, match="do not fit the model: missing"):
        quantize.load_quantized(tmp_path / "q")


def test_no_project_code_unpickles():
    """Nothing loaded from data, a bundle or a checkpoint may run code."""
    from tests.conftest import REPO

    for folder in ("src", "stages", "scripts", "benchmarks"):
        for file in (REPO / folder).rglob("*.py"):
            text = file.read_text(encoding="utf-8")
            for pattern in ("weights_only=False", "pickle.load", "joblib.load", "torch.load("):
                if pattern == "torch.load(" and "weights_only=True" in text:
                    continue
                assert pattern not in text, f"{file.relative_to(REPO)} uses {pattern}"


def test_nf4_file_is_much_smaller_than_fp32(base, tmp_path):
    if "bnb_nf4" not in quantize.supported_methods():
        pytest.skip("bitsandbytes NF4 cannot run here")
    path, tok, _ = base
    quantize.save_quantized(quantize.quantize(path, "bnb_nf4"), "bnb_nf4", tok, tmp_path / "nf4")
    assert quantize.files_bytes(tmp_path / "nf4") < 0.5 * quantize.files_bytes(path)


def test_unsupported_method_names_the_ones_that_run(monkeypatch):
    monkeypatch.setattr(quantize, "supported_methods", lambda device: ["dynamic_int8"])
    with pytest.raises(ModelSourceError, match=r"'bnb_nf4' cannot run on cpu \(compute.device\); it can run: dynamic_int8"):
        quantize.choose_method("bnb_nf4", "none")
    assert quantize.choose_method("bnb_nf4", "dynamic_int8") == "dynamic_int8"


def test_dynamic_int8_memory_counts_packed_weights(base):
    model = quantize.quantize(base[0], "dynamic_int8")
    # get_memory_footprint() misses the packed int8 weights; the state dict does not.
    assert quantize.state_dict_bytes(model) > model.get_memory_footprint()


# ------------------------------------------------------------------ distillation


def test_distillation_loss_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    total, ce, kl = distill.distillation_loss(logits, logits, labels, alpha=0.5, temperature=2.0)
    assert kl.abs() < 1e-6 and torch.isclose(total, 0.5 * ce)
    total0, ce0, _ = distill.distillation_loss(logits, torch.randn(2, 5, 11), labels, alpha=0.0, temperature=2.0)
    assert torch.isclose(total0, ce0)


def test_student_learns_from_the_teacher(base, tmp_path):
    path, tok, blocks = base
    p = loop_params("distill", max_steps=25)
    teacher = causal_lm.load_pretrained(str(path))
    student = distill.build_student(p.student, teacher, tok, p.seed)
    assert causal_lm.parameter_count(student) < causal_lm.parameter_count(teacher)
    before = distill.next_token_agreement(student, teacher, blocks, 8)
    trainer.train_model(student, packing.BlockDataset(blocks), p, tmp_path / "ckpt", None, "d",
                            trainer_class=distill.distillation_trainer(teacher, p.alpha, p.temperature))
    assert distill.next_token_agreement(student, teacher, blocks, 8) > before
    assert distill.next_token_agreement(teacher, teacher, blocks, 8) == 1.0


# ------------------------------------------------------------------ efficiency toggles


def test_mixed_precision_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert trainer.precision_flags("auto") == (False, False)
    assert trainer.precision_flags("bf16") == (True, False)
    with pytest.raises(ParamsError, match="fp16 needs a CUDA GPU"):
        trainer.precision_flags("fp16")


def test_checkpointing_eager_attention_accumulation_and_early_stopping_run(base, tmp_path):
    path, tok, blocks = base
    p = loop_params("train", max_steps=40, save_steps=2, gradient_accumulation_steps=2, learning_rate=0.5,
                    efficiency={"gradient_checkpointing": True, "attn_implementation": "eager",
                                "early_stopping_patience": 1, "eval_steps": 2})
    model = causal_lm.load_pretrained(str(path))
    outcome = trainer.train_model(model, packing.BlockDataset(blocks), p, tmp_path / "ckpt", None, "e",
                                      eval_dataset=packing.BlockDataset(blocks[:4]))
    assert model.config._attn_implementation == "eager" and model.is_activation_checkpointing
    assert any("eval_loss" in entry for entry in outcome.log_history)
    assert outcome.global_step < 40  # a learning rate of 0.5 diverges: early stopping ends the run


# ------------------------------------------------------------------ chat SFT and a student cut from the teacher

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def _items(texts, subject="arithmetic"):
    return [{"text": t, "metadata": {"subject": subject}} for t in texts]


def test_question_answer_documents_become_conversations_and_others_are_counted():
    records, skipped = sft.conversations(_items(TEXTS[:3] + ["A passage with no question."]))
    assert skipped == 1 and len(records) == 3
    assert records[0]["prompt"] == [{"role": "user", "content": "What is 0 plus 0?"}]
    assert records[0]["completion"] == [{"role": "assistant", "content": "0"}]


def test_chat_format_needs_a_chat_template(base):
    with pytest.raises(ModelSourceError, match=r"no chat template: use lora.format: text"):
        sft.require_chat_template(base[1], "models/base")


def test_chat_sft_lowers_the_answer_loss_and_scores_only_answer_tokens(base, tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path, _, _ = base
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    records, _ = sft.conversations(_items(TEXTS))
    model = lora.load_base(path, qlora=False)
    before = sft.answer_losses(model, tok, records[:40], 64, 8)["arithmetic"]
    p = loop_params("lora", max_steps=30, learning_rate=0.01, format="chat")
    model = lora.attach(model, p.rank, p.alpha, p.dropout, lora.resolve_target_modules(model, ()), p.seed)
    trainer.train_model(model, sft.as_dataset(records), p, tmp_path / "ckpt", None, "sft",
                        trainer_class=SFTTrainer, trainer_kwargs={"processing_class": tok, "data_collator": None},
                        args_class=SFTConfig, args_extra=sft.sft_settings(64), tokens_per_step=8 * 64)
    after = sft.answer_losses(model, tok, records[:40], 64, 8)["arithmetic"]
    assert after < before * 0.8
    ids, start = sft._encode(tok, records[0], 64)
    prompt_only = tok.apply_chat_template(records[0]["prompt"], add_generation_prompt=True, tokenize=True,
                                          return_dict=False)
    assert ids[:start] == list(prompt_only)[:start] and 0 < start <= len(prompt_only) and start < len(ids)
    assert tok.decode(ids[start:]).strip().endswith("0</s>")  # the scored part is the answer (and its end)


def test_a_student_cut_from_the_teacher_keeps_evenly_spaced_layers(base):
    path, tok, blocks = base
    teacher = causal_lm.load_pretrained(str(path))
    assert distill.kept_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    student = distill.from_teacher_layers(teacher, 1)
    assert student.config.num_hidden_layers == 1 and len(student.model.layers) == 1
    kept = distill.kept_layers(len(teacher.model.layers), 1)[0]
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[kept].mlp.up_proj.weight)
    assert causal_lm.parameter_count(student) < causal_lm.parameter_count(teacher)
    out = student.generate(input_ids=blocks[:1, :8], max_new_tokens=3, min_new_tokens=3, do_sample=False)  # KV cache
    assert out.shape == (1, 11)
    with pytest.raises(ParamsError, match="must be below the teacher's 2 layers"):
        distill.from_teacher_layers(teacher, 2)
