"""Build a model bundle: the model in the Hugging Face layout, a model card, the
evaluation summaries, lineage, a manifest, and an OpenSSF model-signing signature.

    dist/<name>/
      config.json, model.safetensors, tokenizer files   (loadable with from_pretrained)
      model.onnx                input_ids -> logits, when package.onnx is true
      README.md                 Hugging Face model card with YAML metadata
      evaluation/<name>.json    copies of the evaluate stages' metrics
      evaluation/base/<name>.json  the base model's, where package.base_evaluations names them
      lineage.json              dvc.lock hashes of upstream stages, params hash, data hash, and the
                                release override (null when package.release_override is not set)
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

import yaml

from spark_trainer.errors import BundleError
from spark_trainer.outputs import atomic_path, dumps_stable
from spark_trainer.packaging import card, gates, signing
from spark_trainer.params import PackageParams, read_yaml

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


def lineage(stage: str, data_path: str, params_path: str = "params.yaml") -> dict[str, Any]:
    """Where the bundle came from: the dvc.lock entries of every stage upstream of
    `stage`, a hash of params.yaml, and the DVC hash of the dataset.

    No git commit or dirty flag: the bundle depends only on declared inputs, so the same
    deps give the same digest on any commit (the code is in the stages' dvc.lock deps;
    the register run's MLflow tags name the commit)."""
    params = read_yaml(params_path)
    out: dict[str, Any] = {
        "params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest(),
        "stages": {}, "data": {"path": data_path, "md5": None},
    }
    lock_path = Path("dvc.lock")
    if not (Path("dvc.yaml").is_file() and lock_path.is_file()):
        out["stages"] = None  # built outside a DVC project: nothing to record
        return out
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")).get("stages", {})
    for name, cached in upstream_stages(stage).items():
        entry = lock.get(name)
        if entry is None:
            continue
        out["stages"][name] = {
            "deps": {d["path"]: d.get("md5") or d.get("hash") for d in entry.get("deps", [])},
            "outs": {o["path"]: o.get("md5") or o.get("hash") for o in entry.get("outs", []) if o["path"] in cached},
        }
        for o in entry.get("outs", []):
            if o["path"].rstrip("/") == data_path.rstrip("/"):
                out["data"]["md5"] = o.get("md5")
    return out


def upstream_stages(stage: str) -> dict[str, set[str]]:
    """Every stage `stage` depends on, directly or not (DVC's graph points from a stage
    to the stages it depends on), with the outs DVC caches: data and models. Metrics and
    plots (cache: false) are left out; training plots hold wall-clock speeds, which would
    change the lineage, and so the bundle digest, on every run."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            (target,) = repo.stage.collect(stage)
            graph = repo.index.graph
            return {s.addressing: {o.def_path for o in s.outs if o.use_cache}
                    for s in sorted(nx.descendants(graph, target), key=lambda s: s.addressing) if getattr(s, "cmd", None)}
    except (DvcException, ValueError) as e:
        log.warning("lineage: could not read stage '%s' from dvc.yaml (%s); recording no upstream stages", stage, e)
        return {}
