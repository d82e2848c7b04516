"""Quantize a causal LM and load it back through one function.

    python stages/quantize.py models/lora/arithmetic/merged data/clean models/quantized metrics/quantize.json

Methods: bitsandbytes NF4 (4-bit) and int8, saved in the Hugging Face layout with their
quantization config; torch dynamic int8 (CPU only), saved as a state dict beside the
config because safetensors cannot hold its packed weights. `load_quantized` reads the
method from `quantization.json` and rebuilds either kind, so evaluation stages call it
without knowing which one they got.
"""

from __future__ import annotations

import json
from pathlib import Path

from spark_trainer.errors import ModelSourceError

METHODS = ("bnb_nf4", "bnb_int8", "dynamic_int8")
MARKER = "quantization.json"
DYNAMIC_WEIGHTS = "dynamic_int8_state_dict.pt"


def _bnb_config(method: str):
    import torch
    from transformers import BitsAndBytesConfig

    if method == "bnb_nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def _device_map() -> str:
    import torch

    return "auto" if torch.cuda.is_available() else "cpu"


def supported_methods() -> list[str]:
    """The methods this machine can run, found by running each on a tiny layer."""
    import torch

    found = []
    if not torch.cuda.is_available():
        found.append("dynamic_int8")  # torch's dynamic quantization has CPU kernels only
    try:
        import bitsandbytes as bnb
    except ImportError:
        return found
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 64, device=device)
    for method, layer in (("bnb_nf4", lambda: bnb.nn.Linear4bit(64, 64, quant_type="nf4",
                                                                  compute_dtype=torch.float32)),
                          ("bnb_int8", lambda: bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False))):
        try:
            with torch.no_grad():
                layer().to(device)(x.to(torch.float16) if method == "bnb_int8" and device == "cuda" else x)
            found.append(method)
        except (RuntimeError, NotImplementedError, ValueError, AssertionError):
            continue
    return found


def choose_method(method: str, fallback: str) -> str:
    """`method` if this machine runs it, else the fallback params name, else an error."""
    supported = supported_methods()
    if method in supported:
        return method
    if fallback != "none" and fallback in supported:
        return fallback
    raise ModelSourceError(f"quantize.method '{method}' cannot run on this machine; it can run: "
                           f"{', '.join(supported) or 'none'}. Choose one of those, or set quantize.fallback")


def quantize(model_dir: str | Path, method: str):
    """The model of `model_dir`, quantized with `method`."""
    import torch
    from transformers import AutoModelForCausalLM

    if not Path(model_dir).is_dir():
        raise ModelSourceError(f"model folder '{model_dir}' does not exist; the merged LoRA models come from the "
                               "'lora' stages (`dvc repro lora`), the base model from 'train'")
    if method == "dynamic_int8":
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=_bnb_config(method),
                                                device_map=_device_map())


def save_quantized(model, method: str, tokenizer, out_dir: Path) -> None:
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "dynamic_int8":
        model.config.save_pretrained(out_dir)
        torch.save(model.state_dict(), out_dir / DYNAMIC_WEIGHTS)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"method": method}, indent=2) + "\n")


def load_quantized(path: str | Path):
    """Load a model written by `save_quantized`, whichever method made it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / MARKER).is_file():
        raise ModelSourceError(f"'{path}' holds no quantized model ({MARKER} missing); it is produced by the "
                               "'quantize' stage: run `dvc repro quantize`")
    method = json.loads((path / MARKER).read_text())["method"]
    if method == "dynamic_int8":
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).eval()
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        # Our own file: packed int8 weights are not plain tensors, so weights_only loading cannot read them.
        model.load_state_dict(torch.load(path / DYNAMIC_WEIGHTS, weights_only=False))
        return model
    return AutoModelForCausalLM.from_pretrained(path, device_map=_device_map())


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
        with torch.no_grad():
            ref = reference.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            own = candidate.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            predicted = candidate(input_ids=ref[:, :-1]).logits.argmax(-1)[0, start - 1:]
        target = ref[0, start:]
        tokens += target.numel()
        matches += int((predicted == target).sum())
        exact += ref.shape == own.shape and bool((ref == own).all())
    return {"token_agreement": matches / tokens if tokens else 1.0, "exact_match": exact / len(prompts)}
