"""Build a model bundle: the model in the Hugging Face layout, a model card, the
evaluation summaries, lineage, a manifest, and an OpenSSF model-signing signature.

    dist/<name>/
      config.json, model.safetensors, tokenizer files   (loadable with from_pretrained)
      model.onnx                input_ids -> logits, when package.onnx is true
      README.md                 Hugging Face model card with YAML metadata
      evaluation/<name>.json    copies of the evaluate stages' metrics
      evaluation/base/<name>.json  the base model's, where package.base_evaluations names them
      lineage.json              DVC hashes of the stage's declared deps, params hash, data hash, and
                                the release override (null when package.release_override is not set)
      MANIFEST.json             sha256 of every file above; its own sha256 is the bundle digest
      model.sig                 model_signing's signature of every file, MANIFEST.json included
                                (absent: unsigned, and MANIFEST.json, the card and the metrics say so)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from spark_trainer.errors import BundleError
from spark_trainer.outputs import atomic_path, dumps_stable
from spark_trainer.packaging import card, gates, signing
from spark_trainer.params import PARAMS_FILE, PackageParams, read_yaml

log = logging.getLogger(__name__)

# What a model folder must hold to be served: weights, config, tokenizer.
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def check_inputs(p: PackageParams, model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise BundleError(f"model folder {model_dir} (package.model) not found: run `dvc repro` for the stage "
                          "that writes it, or point package.model at a Hugging Face model folder")
    missing = [f for f in REQUIRED_MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise BundleError(f"{model_dir} lacks {missing}: package.model must be a Hugging Face layout folder "
                          "with safetensors weights and a tokenizer")
    for key, entries in (("evaluations", p.evaluations), ("base_evaluations", p.base_evaluations)):
        for name, path in entries.items():
            if not Path(path).is_file():
                raise BundleError(f"evaluation summary '{name}' ({path}, package.{key}.{name}) not found: "
                                  "run its evaluate stage first or remove the entry")
    card.base_model(p.base_model)  # a base model the card cannot name stops the stage here


def read_json(paths: dict[str, str]) -> dict[str, Any]:
    return {name: json.loads(Path(path).read_text(encoding="utf-8")) for name, path in paths.items()}


def build(p: PackageParams, model_dir: Path, out_dir: Path, lineage: dict[str, Any]) -> dict[str, Any]:
    """Write the bundle atomically; return a summary for the stage's metrics. A failed release
    gate that package.release_override does not name stops it before any work."""
    check_inputs(p, model_dir)
    evaluations, base = read_json(p.evaluations), read_json(p.base_evaluations)
    found = gates.gates(evaluations)
    lineage = {**lineage, "release_override": gates.check(p, found)}
    key = signing.load_private_key(p.signing_key)  # checked before any work
    if key is None:
        log.warning("no signing key configured (package.signing_key=%r): the bundle is marked unsigned",
                    p.signing_key)
    signer = f"sha256:{key.fingerprint}" if key else None

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for src in sorted(model_dir.iterdir()):
            if src.is_file():
                shutil.copyfile(src, tmp / src.name)
        for name, data in evaluations.items():
            (tmp / "evaluation").mkdir(exist_ok=True)
            (tmp / "evaluation" / f"{name}.json").write_text(dumps_stable(data), encoding="utf-8")
        for name, data in base.items():  # the card's comparison, checkable from the bundle alone
            (tmp / "evaluation" / "base").mkdir(parents=True, exist_ok=True)
            (tmp / "evaluation" / "base" / f"{name}.json").write_text(dumps_stable(data), encoding="utf-8")
        (tmp / "lineage.json").write_text(dumps_stable(lineage), encoding="utf-8")
        readme = card.render(p, evaluations, lineage, signer, found, base)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        onnx = None
        if p.onnx:
            from spark_trainer.packaging import onnx_export

            log.info("exporting %s to ONNX", model_dir)
            onnx = onnx_export.export(model_dir, tmp / "model.onnx")
        digest = signing.write_manifest(tmp, p.name, signed=key is not None)
        if key is not None:
            signing.sign_bundle(tmp, key)

    files = signing.bundle_files(out_dir)
    return {"name": p.name, "digest": digest, "signed": key is not None, "signer": signer, "files": len(files),
            "bytes": sum((out_dir / f).stat().st_size for f in files),
            "evaluations": sorted(evaluations), "base_evaluations": sorted(base), "onnx": onnx,
            "gates": {g.name: g.record() for g in found}, "release_override": lineage["release_override"]}


# --------------------------------------------------------------------------- lineage


def lineage(stage: str, data_path: str) -> dict[str, Any]:
    """Where the bundle came from: the DVC hash of every dep `stage` declares in dvc.yaml
    (the model, the dataset, the evaluation metrics and the packaging code, as its dvc.lock
    entry will record them), a hash of its declared params, and the dataset's hash.

    Only declared inputs, so the same deps give the same bundle digest on any commit and
    when DVC restores the stage from its run cache. The stages upstream are not read:
    dvc.lock is no dep, and their code can change without changing their outputs. The
    commit's dvc.lock maps these hashes to the stages that made them; the register run's
    MLflow tags name the commit."""
    deps = declared_deps(stage)
    if deps is None:  # built outside a DVC project: the stage's own params section, no input hashes
        deps = {PARAMS_FILE: {stage: read_yaml(PARAMS_FILE).get(stage)}}
    params = {k: v for k, v in deps.items() if isinstance(v, dict)}
    inputs = {path: value for path, value in deps.items() if not isinstance(value, dict)}
    return {"params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest(),
            "inputs": inputs or None, "data": {"path": data_path, "md5": inputs.get(data_path.rstrip("/"))}}


def declared_deps(stage: str) -> dict[str, Any] | None:
    """path -> DVC hash of each file or folder dep of `stage` (md5, `.dir` for folders), and
    params file -> {key: value} of its declared params; None outside a DVC project."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not Path("dvc.yaml").is_file():
        return None
    try:
        with Repo(".") as repo:
            (target,) = repo.stage.collect(stage)
            found: dict[str, Any] = {}
            for dep in target.deps:
                value = dep.get_hash().value
                found[dep.def_path.rstrip("/")] = dict(value) if isinstance(value, dict) else value
            return found
    except (DvcException, ValueError) as e:
        raise BundleError(f"lineage: could not read the deps of stage '{stage}' from dvc.yaml ({e}); "
                          "run the stage with `dvc repro`") from e
