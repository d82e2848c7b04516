"""The MLflow model registry: register bundles, resolve aliases, and keep the promotion
audit log (MLflow keeps no history of alias moves, so `registry/promotions.jsonl`,
tracked in git, does).

Versions are found through aliases (`champion`, `challenger`), never through the
deprecated registry stages, and moved only by `move_alias`, which writes the audit record
before the move. A version carries the bundle digest as a tag, so registering
the same bundle twice returns the existing version.

A version is an MLflow model in the transformers flavour (`mlflow models serve` and
`mlflow.pyfunc.load_model` load it) whose `model` folder is the bundle, byte for byte, so
the files MLflow serves are the files the manifest and signature cover. A quantized model
folder is the exception: no flavour loads it (see `unservable_reason`), so it is logged as
plain artifacts, the bundle at the version's source.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_trainer.errors import RegistryError
from spark_trainer.outputs import jsonl_line

log = logging.getLogger(__name__)

TAG_DIGEST = "spark_trainer.bundle_digest"
TAG_SIGNED = "spark_trainer.signed"
TAG_PROMOTED_FROM = "spark_trainer.promoted_from"   # on a champion: the version it replaced ('none')
TAG_APPROVED_BY = "spark_trainer.approved_by"
TAG_SIGNER = "spark_trainer.signer"
TAG_FLAVOR = "spark_trainer.flavor"            # how the version's files were logged: FLAVOR or ARTIFACTS
TAG_FLAVOR_REASON = "spark_trainer.flavor_reason"  # why a bundle was logged as plain artifacts
FLAVOR = "transformers"
ARTIFACTS = "artifacts"
BUNDLE_DIR = "model"  # the transformers flavour's model folder (MLmodel's model_binary): the bundle
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def signed(self) -> bool:
        """What register recorded: a version without the tag counts as unsigned."""
        return self.tags.get(TAG_SIGNED) == "true"

    @property
    def flavor(self) -> str:
        """A version registered before the flavour was logged holds plain artifacts."""
        return self.tags.get(TAG_FLAVOR, ARTIFACTS)

    @property
    def bundle_source(self) -> str:
        """Where the bundle's files are: the model folder of a transformers version."""
        return f"{self.source.rstrip('/')}/{BUNDLE_DIR}" if self.flavor == FLAVOR else self.source


def client(uri: str):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _version(mv) -> Version:
    return Version(mv.name, str(mv.version), mv.source, dict(mv.tags or {}))


def _missing(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower()


def register_bundle(uri: str, name: str, bundle: Path, digest: str, signed: bool, tags: dict[str, str],
                    experiment: str, alias: str | None, audit_path: str | Path,
                    git_commit: str, *, signer: str | None = None,
                    max_new_tokens: int = 64) -> tuple[Version, bool]:
    """Log the bundle as a new model version (or find the one with the same digest and
    flavour) and point `alias` at it, recorded in the audit log (`move_alias`); `alias` None
    (a DVC experiment) moves nothing. `max_new_tokens`: what the served model generates when
    a request does not say. Returns (version, created)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if not _missing(e):
            raise
        c.create_registered_model(name, description="Bundles built by the SparkTrainer package stage.")
    reason = unservable_reason(bundle)
    flavor = ARTIFACTS if reason else FLAVOR
    # A bundle registered as plain artifacts before the flavour was logged is registered
    # once more, servable; after that the digest finds it.
    same = [v for v in map(_version, c.search_model_versions(f"name='{name}'"))
            if v.tags.get(TAG_DIGEST) == digest and v.flavor == flavor]
    if same:
        version = min(same, key=lambda v: int(v.version))
        log.info("bundle %s is already version %s of '%s': not registering it again", digest, version.version, name)
        created = False
    else:
        tags = {TAG_DIGEST: digest, TAG_SIGNED: str(signed).lower(), TAG_SIGNER: signer or "none",
                TAG_FLAVOR: flavor, **({TAG_FLAVOR_REASON: reason} if reason else {}), **tags}
        exp = c.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
        run_id = c.create_run(exp_id, run_name=f"register {name}", tags=tags).info.run_id
        try:
            if reason:
                log.warning("%s is logged as plain artifacts, which `mlflow models serve` cannot serve: %s",
                            bundle, reason)
                _log_metrics(c, run_id, None, tags)
                c.log_artifacts(run_id, str(bundle), artifact_path="bundle")
                source, model_id = c.get_run(run_id).info.artifact_uri.rstrip("/") + "/bundle", None
            else:
                source, model_id = _log_transformers_model(c, exp_id, run_id, bundle, tags, max_new_tokens)
        except BaseException:
            c.set_terminated(run_id, "FAILED")
            raise
        c.set_terminated(run_id)
        # The logged model's own artifact location as source (not `models:/<id>`, which the
        # registry resolves through the process-wide tracking URI, not this client's).
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)
        version, created = _version(mv), True
        log.info("registered %s as version %s of '%s' (%s)", bundle, version.version, name, flavor)
    if alias is not None:
        move_alias(uri, name, alias, version.version, audit_path,
                   {"action": "register", "digest": digest, "git_commit": git_commit})
    return version, created


def unservable_reason(bundle: Path) -> str | None:
    """Why the bundle cannot be logged in the transformers flavour; None when it can."""
    from spark_trainer.modeling import quantize

    marker = bundle / quantize.MARKER
    if not marker.is_file():
        return None
    method = json.loads(marker.read_text(encoding="utf-8")).get("method")
    return (f"a {method} quantized model: transformers' from_pretrained, which the flavour loads with, "
            "does not rebuild torch dynamic int8 weights (stored unpacked) and loads bitsandbytes weights "
            "only on a CUDA machine; load it with spark_trainer.modeling.quantize.load_quantized")


def _log_metrics(c, run_id: str, model_id: str | None, tags: dict[str, str]) -> None:
    """The headline evaluation numbers as metrics of the run the version links to (and of
    its logged model), so the registry UI shows them as numbers, not only as string tags."""
    from mlflow.entities import Metric

    c.log_batch(run_id, metrics=[Metric(k.removeprefix("metric."), float(v), 0, 0, model_id=model_id)
                                 for k, v in sorted(tags.items()) if k.startswith("metric.")])


def _log_transformers_model(c, exp_id: str, run_id: str, bundle: Path, tags: dict[str, str],
                            max_new_tokens: int) -> tuple[str, str]:
    """Log the bundle as an MLflow model of the run; returns (its artifact location, model id)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    logged = c.create_logged_model(exp_id, name=BUNDLE_DIR, source_run_id=run_id, tags=tags, model_type="llm")
    try:
        _log_metrics(c, run_id, logged.model_id, tags)
        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
            path = Path(tmp) / "model"
            save_transformers_model(bundle, path, tags, max_new_tokens, logged.artifact_location, logged.model_id,
                                    run_id)
            c.log_model_artifacts(logged.model_id, str(path))
        c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        c.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    c.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.artifact_location, logged.model_id


def save_transformers_model(bundle: Path, path: Path, metadata: dict[str, str], max_new_tokens: int,
                            artifact_location: str | None = None, model_id: str | None = None,
                            run_id: str | None = None) -> None:
    """The bundle as an MLflow transformers-flavour text-generation model at `path`: a
    signature (a prompt in, its continuation out, param max_new_tokens), greedy decoding,
    the bundle's card, `metadata` (digest, signing state, lineage, headline metrics) in
    MLmodel, and the bundle itself as the model folder.

    Nothing that loads it runs code from the bundle: the weights are safetensors (a pickle
    would have failed verification), and MLflow passes trust_remote_code=True only for a
    model or tokenizer class transformers does not ship, which is refused here."""
    import importlib.metadata

    import mlflow.transformers
    import transformers
    from huggingface_hub import ModelCard
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from spark_trainer.errors import BundleError
    from spark_trainer.modeling import causal_lm, tokenizer

    local = str(bundle.resolve())  # absolute: MLflow looks a name like dist/x up on the hub (card, license)
    model, tok = causal_lm.load_pretrained(local), tokenizer.load_pretrained(local)
    for what, cls in (("model", type(model).__name__), ("tokenizer", type(tok).__name__)):
        if not hasattr(transformers, cls):
            raise BundleError(f"{bundle}: the {what} class {cls} is not part of transformers; MLflow would load "
                              "it with trust_remote_code=True, running code from the bundle. Package a model "
                              "whose architecture transformers ships")
    signature = ModelSignature(Schema([ColSpec("string")]), Schema([ColSpec("string")]),
                               ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)]))
    card = bundle / "README.md"
    mlflow.transformers.save_model(
        {"model": model, "tokenizer": tok}, str(path), task="text-generation", signature=signature,
        input_example=(["2 plus 3 is"], {"max_new_tokens": max_new_tokens}), metadata=metadata,
        mlflow_model=Model(artifact_path=artifact_location, run_id=run_id, model_id=model_id,
                           **({"model_uuid": model_id} if model_id else {})),
        model_card=ModelCard.load(card) if card.is_file() else None,
        model_config={"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False},
        # Pinned to this environment; MLflow's default list asks for torchvision, not installed.
        pip_requirements=[f"{p}=={importlib.metadata.version(p)}"
                          for p in ("mlflow", "transformers", "torch", "safetensors", "tokenizers")])
    # MLflow's route for a model folder (save_local_checkpoint) copies it as the model folder,
    # but fails on transformers 5 (check_task names the pipeline class as a string); do what
    # it does, so the weights served are the bundle's, byte for byte, manifest and signature beside.
    shutil.rmtree(path / BUNDLE_DIR)
    shutil.copytree(bundle, path / BUNDLE_DIR)
    mlmodel = Model.load(str(path))
    mlmodel.model_size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    mlmodel.save(str(path / "MLmodel"))


def resolve_alias(uri: str, name: str, alias: str) -> Version | None:
    """The version `alias` points at; None when the alias is not set. An unknown model
    name is an error that lists the registered models."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        model = c.get_registered_model(name)
    except MlflowException as e:
        if _missing(e):
            known = sorted(m.name for m in c.search_registered_models())
            raise RegistryError(f"no registered model '{name}' in {uri} (known: {known or 'none'}): run "
                                "`dvc repro -f -s register` or fix register.model_name") from e
        raise
    if alias not in (model.aliases or {}):
        return None
    try:
        return _version(c.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        raise RegistryError(f"alias '{alias}' of '{name}' points at a version that no longer exists: "
                            f"point it at a live version (scripts/approve.py) or delete the alias") from e


def get_version(uri: str, name: str, version: str) -> Version:
    from mlflow.exceptions import MlflowException

    try:
        return _version(client(uri).get_model_version(name, version))
    except MlflowException as e:
        raise RegistryError(f"'{name}' has no version {version} (deleted?): pick a live version; "
                            "`registry/promotions.jsonl` shows the history") from e


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    client(uri).set_registered_model_alias(name, alias, version)


def set_tag(uri: str, name: str, version: str, key: str, value: str) -> None:
    client(uri).set_model_version_tag(name, version, key, value)


def download_bundle(uri: str, version: Version, dst: Path | None = None) -> Path:
    """The version's bundle files in a local folder (a fresh temporary one by default)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    dst = dst or Path(tempfile.mkdtemp(prefix=f"bundle-{version.name}-v{version.version}-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.bundle_source, dst_path=str(dst),
                                                        tracking_uri=uri))
    except Exception as e:
        raise RegistryError(f"could not fetch the files of {version.uri} from {version.bundle_source}: {e}; "
                            "the artifact store may have lost them; register the bundle again") from e


# --------------------------------------------------------------------------- audit log

AUDIT_KEYS = ("time", "model", "action")   # a line without them is not a record
MOVE_FAILED = "move_failed"                  # follows a write-ahead record whose move raised
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")  # user:password in a URL an error message may quote


def move_alias(uri: str, name: str, alias: str, version: str, audit_path: str | Path,
               record: dict[str, Any]) -> bool:
    """Point `alias` of `name` at `version`, the one way SparkTrainer moves an alias, so the
    audit log cannot miss a move.

    Write-ahead: `record` plus what is about to move (alias, version, previous version) is
    appended before the alias moves; if the move raises, a `move_failed` record follows and
    the error is re-raised. An alias that already points at `version` is left alone and
    nothing is recorded (reruns do not grow the log). Returns whether the alias moved."""
    previous = (client(uri).get_registered_model(name).aliases or {}).get(alias)
    previous = None if previous is None else str(previous)
    if previous == str(version):
        log.info("alias '%s' of '%s' already points at version %s", alias, name, version)
        return False
    intent = {**record, "model": name, "registry": identity(uri, name), "alias": alias, "version": str(version),
              "previous": previous}
    append_audit(audit_path, intent)
    try:
        set_alias(uri, name, alias, str(version))
    except Exception as e:
        error = _USERINFO.sub(r"\1***@", f"{type(e).__name__}: {e}")
        append_audit(audit_path, {**intent, "action": MOVE_FAILED, "failed_action": intent["action"], "error": error})
        raise
    log.info("alias '%s' of '%s' -> version %s (was %s)", alias, name, version, previous or "unset")
    return True


def append_audit(path: str | Path, record: dict[str, Any]) -> bool:
    """Append one record as a single write of one line, flushed to disk; a record equal
    to the model's last one (except for its time) is not repeated, so rerunning a stage
    does not grow the log."""
    path = Path(path)
    last = last_audit(path, record.get("model"))
    if last is not None and {k: v for k, v in last.items() if k != "time"} == record:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    line = jsonl_line({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **record}).encode("utf-8")
    with path.open("ab+") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut short by a crash: start ours on a line of its own
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The log's records, oldest first. A malformed line (cut short by a crash, edited by
    hand) is skipped with a warning naming file:line, never a reason to stop recording."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError
            problem = f"not JSON ({e})"
        else:
            if not isinstance(record, dict):
                problem = f"a JSON {type(record).__name__}, not an object"
            elif missing := [k for k in AUDIT_KEYS if k not in record]:
                problem = f"no {', '.join(missing)}"
            else:
                records.append(record)
                continue
        log.warning("%s:%d: skipped a malformed audit record: %s; fix or delete that line", path, number, problem)
    return records


def last_audit(path: str | Path, model: str | None) -> dict[str, Any] | None:
    records = [r for r in read_audit(path) if model is None or r.get("model") == model]
    return records[-1] if records else None


def completed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without the write-ahead records of moves that failed (nor the failures)."""
    done: list[dict[str, Any]] = []
    for r in records:
        if r.get("action") != MOVE_FAILED:
            done.append(r)
            continue
        ours = [i for i, d in enumerate(done) if d.get("model") == r.get("model")]
        intent = done[ours[-1]] if ours else {}
        if (intent.get("action"), intent.get("alias"), intent.get("version")) == (
                r.get("failed_action"), r.get("alias"), r.get("version")):
            del done[ours[-1]]
    return done


def fetch_verified(uri: str, version: Version, p, extra_keys: tuple = ()) -> Path:
    """Download a version's bundle and check it is the bundle that was registered, under
    the release policy of `p` (RegisterParams: trusted keys, allow_unsigned)."""
    from spark_trainer.errors import BundleError
    from spark_trainer.registry import release

    local = download_bundle(uri, version)
    check = release.verify_release(local, p, tuple(extra_keys))
    expected = version.tags.get(TAG_DIGEST)
    if check.problems or (expected and check.digest != expected):
        problems = check.problems or [f"digest {check.digest} != registered {expected}"]
        raise BundleError(f"{version.uri} fetched from {version.bundle_source} does not verify:\n  "
                          + "\n  ".join(problems))
    return local


# Records that leave `champion` on their `challenger` version.
PROMOTING = ("promote", "approve", "approve_forced")


def identity(uri: str, name: str) -> str:
    """Which registry a record belongs to: the model name and its creation time, so a
    fresh store (a new clone) does not inherit the audit log's claims about another one."""
    return f"{name}@{client(uri).get_registered_model(name).creation_timestamp}"


def check_champion_unset(uri: str, name: str, audit_path: str | Path) -> None:
    """No `champion` alias: fine for a new model, an error when the audit log says this
    registry had one (its version was deleted, or the alias removed by hand)."""
    me = identity(uri, name)
    promoted = [r for r in completed(read_audit(audit_path))
                if r.get("registry") == me and r.get("action") in PROMOTING]
    if not promoted:
        return
    version = str(promoted[-1]["challenger"])
    try:
        get_version(uri, name, version)
    except RegistryError as e:
        raise RegistryError(f"alias '{CHAMPION}' of '{name}' pointed at version {version} ({audit_path}), which no "
                            f"longer exists: promote a live version with `python scripts/approve.py {name} "
                            "<version> --by <you> --force`") from e
    raise RegistryError(f"alias '{CHAMPION}' of '{name}' is unset, but {audit_path} says version {version} holds "
                        f"it: restore it with `python scripts/approve.py {name} {version} --by <you> --force`")


def registered_version(uri: str, marker: str | Path) -> Version:
    """The version the register stage of this workspace registered (its marker file), in
    the store it was registered into; another store (a fresh clone, a deleted mlflow.db)
    is an error that says how to register there."""
    reported = json.loads(Path(marker).read_text(encoding="utf-8"))
    name, version = reported["name"], str(reported["version"])
    from mlflow.exceptions import MlflowException

    fix = "run `dvc repro -f -s register` to register this workspace's bundle there"
    try:
        found = identity(uri, name)
    except MlflowException as e:
        if not _missing(e):
            raise
        raise RegistryError(f"{marker} says version {version} of '{name}' was registered, but {uri} has no model "
                            f"'{name}' (a fresh clone or a new store): {fix}") from e
    if reported.get("registry") != found:
        raise RegistryError(f"{marker} says version {version} of '{name}' was registered in another store "
                            f"(registered model {reported.get('registry')}; {uri} holds {found}): {fix}")
    return get_version(uri, name, version)


def check_registered(challenger: Version | None, uri: str, marker: str | Path) -> None:
    """The `challenger` alias must point at the version the register stage reported, in
    the store it registered into, or the registry changed behind this workspace's back
    (another run, a hand edit, a new store)."""
    registered = registered_version(uri, marker)
    name, version = registered.name, registered.version
    if challenger is None:
        raise RegistryError(f"'{name}' has no '{CHALLENGER}' alias: run `dvc repro -f -s register` first")
    if challenger.version != version:
        raise RegistryError(f"alias '{CHALLENGER}' of '{name}' is version {challenger.version}, but this workspace "
                            f"registered version {version} ({marker}): another run moved it; run "
                            "`dvc repro -f -s register` to point it back at this workspace's bundle")
