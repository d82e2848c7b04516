"""Llama-style causal LMs: built from a small config, or loaded from a path or hub id."""

from __future__ import annotations

from pathlib import Path

from spark_trainer.errors import ModelSourceError
from spark_trainer.params import ModelParams


def build_from_config(cfg: ModelParams, tokenizer, seed: int):
    """A freshly initialised LlamaForCausalLM; every Linear input is a multiple of 64
    (params enforce it) so bitsandbytes 4-bit kernels work on it later."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_pretrained(name_or_path: str, produced_by: str | None = None):
    """A causal LM from a local folder or hub id, with an error that says where it comes from."""
    from transformers import AutoModelForCausalLM

    local = Path(name_or_path)
    nothing_imported(local)
    if produced_by and not local.exists():
        raise ModelSourceError(f"model folder '{name_or_path}' does not exist; it is produced by the "
                               f"'{produced_by}' stage: run `dvc repro {produced_by}`")
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"cannot load model '{name_or_path}': {e}. Offline, give a local folder "
                               "in the Hugging Face layout") from e


def nothing_imported(folder: Path) -> None:
    """import_model with `source: none` leaves a folder that holds no model: say why."""
    if (folder / "IMPORT.md").is_file() and not (folder / "config.json").is_file():
        raise ModelSourceError(f"'{folder}' holds no model: import_model.source is none. Set import_model "
                               "(docs/stages/import_model.md), e.g. `python scripts/exp_profile.py smollm2`")


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_for_inference(path: str | Path, produced_by: str | None = None, device="cpu"):
    """Any model a stage of this project wrote: plain (Hugging Face layout) or quantized, on
    `device` (a dynamic int8 model on the CPU: see quantize.load_quantized)."""
    from spark_trainer.modeling import quantize

    if (Path(path) / quantize.MARKER).is_file():
        return quantize.load_quantized(path, device)
    return load_pretrained(str(path), produced_by=produced_by).eval().to(device)
