"""Import a pretrained LM into models/imported (Hugging Face layout): a GGUF file (at a path or
inside an installed package), a local Hugging Face folder, or a hub id.

    python stages/import_model.py models/imported metrics/import_model.json

`import_model.source: none` (the embedded profile) imports nothing: the folder then holds
only IMPORT.md saying so, and a stage pointed at it fails with that reason. Metrics:
provenance (source, sha256, license, package version, architecture, quantization) and the
imported model's parameter count and dtype.
"""

import logging
from pathlib import Path

from spark_trainer import tracking
from spark_trainer.errors import ModelSourceError
from spark_trainer.modeling import causal_lm, importing
from spark_trainer.outputs import atomic_path, sha256_file, write_metrics, write_timings
from spark_trainer.params import ImportModelParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args

log = logging.getLogger("import_model")

NOTHING_IMPORTED = """# Nothing imported

`import_model.source` is `none`: this profile builds its models from config, so there is no
pretrained model here. To import one, set `import_model` in params.yaml (see
docs/stages/import_model.md), for example the real-model profile: `python scripts/exp_profile.py smollm2`.
"""


def resolve(p: ImportModelParams) -> importing.Source:
    """The source on this machine, its digest checked against `import_model.sha256`."""
    if p.source == "gguf":
        if p.package:
            path, version = importing.locate_package_file(p.package, p.file)
            reference = f"{p.package}:{p.file}"
        else:
            path, version, reference = Path(p.file), None, p.file
        if not path.is_file():
            raise ModelSourceError(f"import_model.file: GGUF file '{path}' does not exist")
        digest = sha256_file(path)
        importing.check_sha256(digest, p.sha256, f"GGUF file '{path}'")
        return importing.Source("gguf", reference, path, digest, p.package or None, version)
    folder = Path(p.folder) if p.source == "folder" else importing.resolve_hub(p.hub_id, p.revision)
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"import_model: '{folder}' is not a Hugging Face model folder (no config.json)")
    digest = importing.folder_sha256(folder)
    importing.check_sha256(digest, p.sha256, f"model folder '{folder}'")
    return importing.Source(p.source, p.folder or p.hub_id, folder, digest)


@entrypoint
def main() -> None:
    args = path_args(__doc__, "out_dir", "metrics")
    p: ImportModelParams = load_section("import_model")
    timer = Timer()
    if p.source == "none":
        with atomic_path(args.out_dir) as tmp:
            tmp.mkdir()
            (tmp / "IMPORT.md").write_text(NOTHING_IMPORTED)
        write_metrics(args.metrics, {"source": "none", "imported": False})
        write_timings(args.metrics, timer.total())
        tracking.mirror_stage("import_model", p, args.metrics)
        return

    with timer.phase("check"):
        source = resolve(p)
        summary = importing.gguf_summary(source.path) if source.kind == "gguf" else {}
    log.info("importing %s (%s, sha256 %s)", source.reference, source.kind, source.sha256[:12])
    with timer.phase("load"):
        model, tokenizer = importing.load(source, p.dtype)
    with timer.phase("save"), atomic_path(args.out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    config = model.config
    metrics = {
        "source": source.kind,
        "imported": True,
        "reference": source.reference,
        "sha256": source.sha256,
        "package": source.package,
        "package_version": source.package_version,
        "license": summary.get("license") or p.license or "unknown",
        "architecture": summary.get("architecture") or config.model_type,
        "source_name": summary.get("name"),
        "source_tensor_types": summary.get("tensor_types"),
        "parameters": causal_lm.parameter_count(model),
        "dtype": p.dtype,
        "layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "context_length": int(config.max_position_embeddings),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "size_bytes": sum(f.stat().st_size for f in args.out_dir.rglob("*") if f.is_file()),
    }
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("import_model", p, args.metrics, artifacts=[args.out_dir / "config.json"])


if __name__ == "__main__":
    main()
