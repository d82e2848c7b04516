"""Mirror each stage run to MLflow: one run per stage execution.

    python scripts/sync_mlflow.py            # mirror metrics/ into MLflow after the fact

A stage writes its metrics JSON first and calls `mirror_stage` last, so MLflow only ever
mirrors what `metrics/` already holds. An unreachable tracking server logs a warning
and the stage succeeds (metrics stay in `metrics/`), unless `tracking.strict` is true.

Each run carries: the stage's params section (flattened), the numbers of its metrics
JSON, per-step training metrics from its dvclive folder, its files as artifacts, and
tags: stage, git commit, DVC experiment name (under `dvc exp run`), the hash of the
stage's deps as DVC records them in dvc.lock, and a pipeline-run id shared by every
stage that one `dvc repro` / `dvc exp run` executed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spark_trainer.errors import TrackingError
from spark_trainer.params import Section, TrackingParams, as_flat_dict, load_section

log = logging.getLogger(__name__)

TAG_STAGE = "spark_trainer.stage"
TAG_PIPELINE_RUN = "spark_trainer.pipeline_run"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DVC_EXP = "dvc.exp_name"
TAG_DEPS_HASH = "dvc.deps_hash"
TAG_SOURCE = "spark_trainer.mirrored_by"


def mirror_stage(
    stage: str,
    section: Section,
    metrics_path: str | Path,
    artifacts: Iterable[str | Path] = (),
    step_metrics_dir: str | Path | None = None,
    settings: TrackingParams | None = None,
    mirrored_by: str = "stage",
    deps_hash: str | None = None,
) -> str | None:
    """Log one MLflow run for `stage`; return its run id, or None when tracking was skipped."""
    settings = settings or load_section("tracking")  # type: ignore[assignment]
    uri = tracking_uri(settings)
    try:
        return _log_run(stage, section, Path(metrics_path), list(artifacts), step_metrics_dir, settings, uri,
                        mirrored_by, deps_hash if deps_hash is not None else current_deps_hash(stage))
    except _tracking_errors() as e:
        message = f"MLflow mirroring of stage '{stage}' to {_redact(uri)} failed: {type(e).__name__}: {e}"
        if settings.strict:
            raise TrackingError(message + " (tracking.strict is true; set it false to carry on without MLflow)") from e
        log.warning("%s. Metrics stay in %s; run scripts/sync_mlflow.py later to mirror them.", message, metrics_path)
        return None


def tracking_uri(settings: TrackingParams) -> str:
    """`MLFLOW_TRACKING_URI` wins over params, as in every MLflow tool."""
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.uri


def _tracking_errors() -> tuple[type[BaseException], ...]:
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, requests.RequestException, _Unreachable)


class _Unreachable(Exception):
    pass


def _log_run(stage, section, metrics_path, artifacts, step_metrics_dir, settings, uri, mirrored_by, deps_hash):
    # MLflow's HTTP client retries for minutes by default; a pipeline should not wait that long.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, settings.http_timeout_s))))
    if uri.startswith(("http://", "https://")):
        _check_reachable(uri, settings.http_timeout_s)

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment)

    tags = {TAG_STAGE: stage, TAG_SOURCE: mirrored_by, TAG_PIPELINE_RUN: pipeline_run_id(), **git_tags()}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if deps_hash:
        tags[TAG_DEPS_HASH] = deps_hash
    run = client.create_run(experiment_id, run_name=stage, tags=tags)
    run_id = run.info.run_id

    params = [Param(k, _param_value(v)) for k, v in sorted(as_flat_dict(section, stage.split("@")[0]).items())]
    metrics = [Metric(k, v, 0, 0) for k, v in sorted(flatten_numbers(_read_json(metrics_path)).items())]
    if step_metrics_dir:
        metrics += read_step_metrics(step_metrics_dir)
    for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_batch(run_id, tags=[RunTag("spark_trainer.metrics_file", str(metrics_path))])
    for path in [metrics_path, *artifacts]:
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def _check_reachable(uri: str, timeout: float) -> None:
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        raise _Unreachable(f"tracking server not reachable ({e})") from e
    except RuntimeError as e:  # pytest-socket's SocketBlockedError in tests
        raise _Unreachable(f"tracking server not reachable ({e})") from e


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]  # MLflow's limit on a param value


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def flatten_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics JSON as `a.b.c` keys (booleans as 0/1)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, bool):
        out[prefix] = float(data)
    elif isinstance(data, (int, float)):
        out[prefix] = float(data)
    return out


def read_step_metrics(live_dir: str | Path) -> list:
    """Per-step metrics from a dvclive folder (`<dir>/plots/metrics/**/*.tsv`)."""
    from mlflow.entities import Metric

    root = Path(live_dir) / "plots" / "metrics"
    metrics = []
    for tsv in sorted(root.rglob("*.tsv")):
        key = tsv.relative_to(root).with_suffix("").as_posix()
        with tsv.open(encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                name = tsv.stem
                metrics.append(Metric(key, float(row[name]), int(float(row.get("timestamp") or 0)), int(row["step"])))
    return metrics


def git_tags() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {TAG_GIT_COMMIT: "unknown"}
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: str(bool(dirty)).lower()}


def pipeline_run_id() -> str:
    """One id for every stage of one `dvc repro` / `dvc exp run`: the DVC process that
    runs the stages is their common ancestor. `SPARK_TRAINER_PIPELINE_RUN` overrides."""
    if os.environ.get("SPARK_TRAINER_PIPELINE_RUN"):
        return os.environ["SPARK_TRAINER_PIPELINE_RUN"]
    import psutil

    for proc in psutil.Process().parents():
        try:
            cmdline = proc.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if any(Path(arg).name == "dvc" for arg in cmdline[:3]):  # `dvc ...` or `python -m dvc ...`
            return hashlib.sha256(f"{proc.pid}-{proc.create_time()}".encode()).hexdigest()[:16]
    return "standalone-" + hashlib.sha256(f"{os.getpid()}-{psutil.Process().create_time()}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------ DVC deps hash


def deps_hash_from_entries(deps: list[dict[str, Any]]) -> str:
    """sha256 over `path:hash` of each dep, the way dvc.lock lists them."""
    lines = sorted(f"{d['path']}:{d.get('md5') or d.get('hash') or ''}" for d in deps)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def lock_deps_hash(stage: str, lock_path: str | Path = "dvc.lock") -> str | None:
    """The deps hash of `stage` as recorded in dvc.lock (None if it has no entry)."""
    if not Path(lock_path).is_file():
        return None
    import yaml

    # BaseLoader keeps every scalar a string: an all-digit md5 must not become a number.
    with Path(lock_path).open(encoding="utf-8") as f:
        entry = ((yaml.load(f, Loader=yaml.BaseLoader) or {}).get("stages") or {}).get(stage)
    return deps_hash_from_entries(entry.get("deps", [])) if entry else None


def current_deps_hash(stage: str) -> str | None:
    """The deps hash DVC will write to dvc.lock when this stage finishes.

    While a stage runs, dvc.lock still holds the previous run's entry, so ask DVC to
    hash the declared deps now (it reuses its state cache, so unchanged files are free).
    """
    if not (Path("dvc.yaml").is_file() and Path(".dvc").is_dir()):
        return None  # run by hand outside a DVC project: nothing to hash against
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            (dvc_stage,) = repo.stage.collect(stage)
            entries = [{"path": dep.def_path, "md5": dep.get_hash().value}
                       for dep in dvc_stage.deps if not isinstance(dep, ParamsDependency)]
    except (DvcException, ValueError, OSError) as e:
        log.warning("could not hash the deps of stage '%s' through DVC: %s", stage, e)
        return None
    return deps_hash_from_entries(entries)


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


# ------------------------------------------------------------------ sync after the fact


def sync_all(params_path: str | Path = "params.yaml") -> dict[str, str]:
    """Mirror every stage's metrics file into MLflow (one run per stage, `foreach`
    stages included), for stages that ran while the tracking server was down.
    Returns {stage: outcome}."""
    from dvc.repo import Repo

    from spark_trainer.params import SECTIONS, load_section

    settings: TrackingParams = load_section("tracking", params_path)  # type: ignore[assignment]
    with Repo(".") as repo:  # DVC resolves foreach and templating into concrete stages
        stages = [(st.addressing, [o.def_path for o in st.outs if o.metric], [o.def_path for o in st.outs if o.plot])
                  for st in repo.index.stages if getattr(st, "cmd", None)]
    outcome: dict[str, str] = {}
    for stage, metrics, plots in stages:
        section = stage.split("@")[0]
        if section not in SECTIONS or not metrics:
            outcome[stage] = "skipped: no params section or metrics file"
            continue
        if not Path(metrics[0]).is_file():
            outcome[stage] = f"skipped: {metrics[0]} not found (run `dvc repro {stage}`)"
            continue
        live_dirs = [Path(p).parent.parent for p in plots if Path(p).parts[-2:] == ("plots", "metrics")]
        run_id = mirror_stage(stage, load_section(section, params_path), metrics[0], settings=settings,
                              step_metrics_dir=live_dirs[0] if live_dirs else None, mirrored_by="sync",
                              deps_hash=lock_deps_hash(stage) or "")
        outcome[stage] = f"run {run_id}" if run_id else "failed (see warning)"
    return outcome
