"""Quantize a causal LM and load it back through one function.

    python stages/quantize.py models/lora/arithmetic/merged data/clean models/quantized metrics/quantize.json

Methods: bitsandbytes NF4 (4-bit) and int8, saved in the Hugging Face layout with their
quantization config; torch dynamic int8 (CPU only), whose packed weights safetensors cannot
hold, saved unpacked (int8 values, scale, zero point) in safetensors beside the config and
repacked on load: nothing a stage loads is a pickle. `load_quantized` reads the
method from `quantization.json` and rebuilds either kind, so evaluation stages call it
without knowing which one they got.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spark_trainer.errors import ModelSourceError

log = logging.getLogger(__name__)

METHODS = ("bnb_nf4", "bnb_int8", "dynamic_int8")
MARKER = "quantization.json"
DYNAMIC_WEIGHTS = "dynamic_int8.safetensors"


def _bnb_config(method: str, device):
    import torch
    from transformers import BitsAndBytesConfig

    if method == "bnb_nf4":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def _device_map(device):
    """The whole model on `device` (one GPU, as compute.device names it, never spread over several)."""
    return "cpu" if device.type == "cpu" else {"": str(device)}


def supported_methods(device="cpu") -> list[str]:
    """The methods that run on `device`, found by running each on a tiny layer there."""
    import torch

    device = torch.device(device)
    found = []
    if device.type == "cpu":
        found.append("dynamic_int8")  # torch's dynamic quantization has CPU kernels only
    try:
        import bitsandbytes as bnb
    except ImportError:
        return found
    x = torch.randn(2, 64, device=device)
    for method, layer in (("bnb_nf4", lambda: bnb.nn.Linear4bit(64, 64, quant_type="nf4",
                                                                  compute_dtype=torch.float32)),
                          ("bnb_int8", lambda: bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False))):
        try:
            with torch.no_grad():
                layer().to(device)(x.to(torch.float16) if method == "bnb_int8" and device.type == "cuda" else x)
            found.append(method)
        except (RuntimeError, NotImplementedError, ValueError, AssertionError):
            continue
    return found


def choose_method(method: str, fallback: str, device="cpu") -> str:
    """`method` if it runs on `device`, else the fallback params name, else an error."""
    supported = supported_methods(device)
    if method in supported:
        return method
    if fallback != "none" and fallback in supported:
        return fallback
    raise ModelSourceError(f"quantize.method '{method}' cannot run on {device} (compute.device); it can run: "
                           f"{', '.join(supported) or 'none'}. Choose one of those, or set quantize.fallback")


def quantize(model_dir: str | Path, method: str, device="cpu"):
    """The model of `model_dir`, quantized with `method`, on `device` (dynamic int8: the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not Path(model_dir).is_dir():
        raise ModelSourceError(f"model folder '{model_dir}' does not exist; the merged LoRA models come from the "
                               "'lora' stages (`dvc repro lora`), the base model from 'train'")
    if method == "dynamic_int8":
        return _quantize_dynamic(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    device = torch.device(device)
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=_bnb_config(method, device),
                                                device_map=_device_map(device))


def save_quantized(model, method: str, tokenizer, out_dir: Path) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    description: dict = {"method": method}
    if method == "dynamic_int8":
        from safetensors.torch import save_file

        model.config.save_pretrained(out_dir)
        tensors, description["quantized_linear"] = _unpack_dynamic(model)
        save_file(tensors, str(out_dir / DYNAMIC_WEIGHTS))
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps(description, indent=2) + "\n")


def _quantize_dynamic(model):
    """torch's dynamic int8 on every Linear but the output head: the head is tied to the
    embedding, and one int8 scale for the whole vocabulary's rows costs a real model most of
    its accuracy (SmolLM2-135M with the head quantized: val perplexity 21.4 -> 100)."""
    import torch

    names = {name for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}
    return torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)


def _dynamic_linears(model) -> dict:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def _unpack_dynamic(model) -> tuple[dict, list[str]]:
    """Plain tensors for safetensors: each dynamic Linear as int8 values + scale + zero point
    (+ bias), and every other tensor of the state dict as it is."""
    import torch

    linears = _dynamic_linears(model)
    tensors = {}
    for name, module in linears.items():
        weight, bias = module.weight(), module.bias()
        if weight.qscheme() != torch.per_tensor_affine:
            raise ModelSourceError(f"{name}: only per-tensor int8 weights can be saved (got {weight.qscheme()})")
        tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
        tensors[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 2 if "._packed_params." in key else 1)[0]
        if isinstance(value, torch.Tensor) and owner not in linears:
            tensors[key] = value.detach().clone().contiguous()  # clone: tied weights share storage
    return tensors, sorted(linears)


def _repack_dynamic(model, tensors: dict, names: list[str]) -> None:
    import torch

    linears = _dynamic_linears(model)
    if sorted(linears) != names:
        raise ModelSourceError("the saved dynamic int8 model does not match its config's architecture")
    for name, module in linears.items():
        weight = torch._make_per_tensor_quantized_tensor(tensors.pop(f"{name}.weight_int8"),
                                                         float(tensors.pop(f"{name}.weight_scale")),
                                                         int(tensors.pop(f"{name}.weight_zero_point")))
        module.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
    # The rest (embeddings, norms) in place; a dynamic Linear's own state dict loader
    # would expect its packed form, so load_state_dict is not used.
    expected = {k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)
                and k.rsplit(".", 2 if "._packed_params." in k else 1)[0] not in linears}
    if set(tensors) != expected:
        raise ModelSourceError(f"dynamic int8 weights do not fit the model: missing {sorted(expected - set(tensors))[:5]}, "
                               f"unexpected {sorted(set(tensors) - expected)[:5]}")
    with torch.no_grad():
        for key, value in tensors.items():
            owner, attr = key.rsplit(".", 1)
            getattr(model.get_submodule(owner), attr).copy_(value)


def load_quantized(path: str | Path, device="cpu"):
    """Load a model written by `save_quantized`, whichever method made it, on `device`; a
    dynamic int8 model stays on the CPU, the only device with kernels for it (callers put
    inputs on the model's own device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / MARKER).is_file():
        raise ModelSourceError(f"'{path}' holds no quantized model ({MARKER} missing); it is produced by the "
                               "'quantize' stage: run `dvc repro quantize`")
    description = json.loads((path / MARKER).read_text())
    if description["method"] == "dynamic_int8":
        from safetensors.torch import load_file

        model = _quantize_dynamic(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).eval())
        _repack_dynamic(model, load_file(str(path / DYNAMIC_WEIGHTS)), description["quantized_linear"])
        if torch.device(device).type != "cpu":
            log.warning("%s: a dynamic int8 model has CPU kernels only; it runs on the CPU, not %s", path, device)
        return model
    return AutoModelForCausalLM.from_pretrained(path, device_map=_device_map(torch.device(device)))


def state_dict_bytes(model) -> int:
    """Bytes held by the state dict, packed int8 weights included (which
    `get_memory_footprint()` does not see)."""
    import torch

    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.element_size() * value.numel()
        if isinstance(value, (tuple, list)):  # dynamic int8 keeps (packed weight, bias) pairs
            return sum(size(v) for v in value)
        return 0  # dtypes and other bookkeeping entries

    return sum(size(v) for v in model.state_dict().values())


def files_bytes(folder: Path, weights_only: bool = True) -> int:
    """On-disk size of a model folder's weight files (tokenizer and configs left out)."""
    suffixes = (".safetensors", ".bin", ".pt")
    return sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and (not weights_only or f.suffix in suffixes))


def greedy_agreement(reference, candidate, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """How closely `candidate` follows `reference`'s greedy output.

    token_agreement: along the reference's greedy continuation, the share of tokens that
    are also the candidate's argmax given the same prefix (one early difference does not
    count against every later token). exact_match: the share of prompts for which the
    candidate's own greedy continuation is identical.
    """
    import torch

    tokens = matches = exact = 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        start = ids["input_ids"].shape[1]
        with torch.no_grad():  # each model on its own device (dynamic int8 stays on the CPU)
            ref = reference.generate(**ids.to(reference.device), max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id).cpu()
            own = candidate.generate(**ids.to(candidate.device), max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id).cpu()
            predicted = candidate(input_ids=ref[:, :-1].to(candidate.device)).logits.argmax(-1)[0, start - 1:].cpu()
        target = ref[0, start:]
        tokens += target.numel()
        matches += int((predicted == target).sum())
        exact += ref.shape == own.shape and bool((ref == own).all())
    return {"token_agreement": matches / tokens if tokens else 1.0, "exact_match": exact / len(prompts)}
