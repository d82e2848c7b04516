"""LoRA / QLoRA adapters with PEFT: one base model, one adapter per specialisation.

    python stages/lora.py arithmetic models/base data/clean models/lora/arithmetic ...

`load_with_adapters` loads the base once with every adapter, and `model.set_adapter(name)`
switches between them; that is how later stages serve several specialisations.
"""

from __future__ import annotations

from pathlib import Path

from spark_trainer.errors import ModelSourceError

ADAPTER_DIR, MERGED_DIR = "adapter", "merged"


def linear_module_names(model) -> list[str]:
    """Names (last component) of the Linear projections LoRA can target; the output
    head is left out, as usual, since it is tied to the embedding here."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and not full_name.endswith("lm_head"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model, requested: tuple[str, ...]) -> list[str]:
    available = linear_module_names(model)
    if not requested:
        return available
    missing = [m for m in requested if m not in available]
    if missing:
        raise ModelSourceError(f"lora.target_modules {missing} are not modules of this model; "
                               f"its Linear modules are: {', '.join(available)}")
    return list(requested)


def load_base(path: str | Path, qlora: bool, device=None):
    """The base model in fp32, or in 4-bit NF4 through bitsandbytes for QLoRA, on `device`
    (compute.device resolved; default: CUDA when present)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not Path(path).is_dir():
        raise ModelSourceError(f"base model folder '{path}' does not exist; it is produced by the 'train' "
                               "stage: run `dvc repro train`")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not qlora:
        return AutoModelForCausalLM.from_pretrained(path).to(device)
    from peft import prepare_model_for_kbit_training

    cuda = device.type == "cuda"
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    # one whole copy per process: each DDP rank's 4-bit base sits on its own device
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map={"": device})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def attach(model, rank: int, alpha: float, dropout: float, target_modules: list[str], seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(seed)  # LoRA's A matrices are drawn here, before the Trainer seeds anything

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; bitsandbytes packs two 4-bit weights per element."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)


def save(peft_model, base_path: str | Path, tokenizer, out_dir: Path) -> None:
    """`out_dir/adapter` (the adapter alone) and `out_dir/merged` (base + adapter merged,
    fp32, Hugging Face layout). A QLoRA adapter is merged into the fp32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for config in peft_model.peft_config.values():
        # PEFT keeps target_modules as a set and writes it in hash order, which differs
        # between processes: a sorted list makes adapter_config.json byte-stable.
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
    peft_model.save_pretrained(out_dir / ADAPTER_DIR)
    tokenizer.save_pretrained(out_dir / ADAPTER_DIR)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    merged = PeftModel.from_pretrained(base, out_dir / ADAPTER_DIR).merge_and_unload()
    merged.save_pretrained(out_dir / MERGED_DIR)
    tokenizer.save_pretrained(out_dir / MERGED_DIR)


def load_with_adapters(base_path: str | Path, adapters: dict[str, str | Path]):
    """The base model loaded once, with every adapter attached under its name; switch
    with `model.set_adapter(name)` (the first one is active)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not adapters:
        raise ValueError("give at least one adapter: {name: folder}")
    for name, folder in adapters.items():
        if not Path(folder).is_dir():
            raise ModelSourceError(f"adapter '{name}' not found at '{folder}'; it is produced by the "
                                   f"'lora@{name}' stage: run `dvc repro lora@{name}`")
    base = AutoModelForCausalLM.from_pretrained(base_path)
    (first, first_path), *rest = adapters.items()
    model = PeftModel.from_pretrained(base, first_path, adapter_name=first)
    for name, folder in rest:
        model.load_adapter(folder, adapter_name=name)
    model.set_adapter(first)
    return model
