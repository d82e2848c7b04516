"""The MLflow model registry: register bundles, resolve aliases, and keep the promotion
audit log (MLflow keeps no history of alias moves, so `registry/promotions.jsonl`,
tracked in git, does).

Versions are found through aliases (`champion`, `challenger`), never through the
deprecated registry stages, and moved only by `move_alias`, which writes the audit record
before the move. A version carries the bundle digest as a tag, so registering
the same bundle twice returns the existing version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
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
                    git_commit: str) -> tuple[Version, bool]:
    """Log the bundle as a new model version (or find the one with the same digest) and
    point `alias` at it, recorded in the audit log (`move_alias`); `alias` None (a DVC
    experiment) moves nothing. Returns (version, created)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if not _missing(e):
            raise
        c.create_registered_model(name, description="Bundles built by the SparkTrainer package stage.")
    same = [v for v in c.search_model_versions(f"name='{name}'") if (v.tags or {}).get(TAG_DIGEST) == digest]
    if same:
        version = _version(min(same, key=lambda v: int(v.version)))
        log.info("bundle %s is already version %s of '%s': not registering it again", digest, version.version, name)
        created = False
    else:
        exp = c.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
        run = c.create_run(exp_id, run_name=f"register {name}", tags={TAG_DIGEST: digest, **tags})
        # The headline evaluation numbers as metrics of the run the version links to, so the
        # registry UI shows them as numbers, not only as the version's string tags.
        from mlflow.entities import Metric

        c.log_batch(run.info.run_id, metrics=[Metric(k.removeprefix("metric."), float(v), 0, 0)
                                              for k, v in sorted(tags.items()) if k.startswith("metric.")])
        c.log_artifacts(run.info.run_id, str(bundle), artifact_path="bundle")
        c.set_terminated(run.info.run_id)
        source = c.get_run(run.info.run_id).info.artifact_uri.rstrip("/") + "/bundle"
        mv = c.create_model_version(name, source=source, run_id=run.info.run_id,
                                    tags={TAG_DIGEST: digest, TAG_SIGNED: str(signed).lower(), **tags})
        version, created = _version(mv), True
        log.info("registered %s as version %s of '%s'", bundle, version.version, name)
    if alias is not None:
        move_alias(uri, name, alias, version.version, audit_path,
                   {"action": "register", "digest": digest, "git_commit": git_commit})
    return version, created


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
                                "`dvc repro -f register` or fix register.model_name") from e
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
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst),
                                                        tracking_uri=uri))
    except Exception as e:
        raise RegistryError(f"could not fetch the files of {version.uri} from {version.source}: {e}; "
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
        raise BundleError(f"{version.uri} fetched from {version.source} does not verify:\n  " + "\n  ".join(problems))
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

    fix = "run `dvc repro -f register` to register this workspace's bundle there"
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
        raise RegistryError(f"'{name}' has no '{CHALLENGER}' alias: run `dvc repro -f register` first")
    if challenger.version != version:
        raise RegistryError(f"alias '{CHALLENGER}' of '{name}' is version {challenger.version}, but this workspace "
                            f"registered version {version} ({marker}): another run moved it; run "
                            "`dvc repro -f register` to point it back at this workspace's bundle")
