"""Mirror each stage run to MLflow: one run per stage execution.

    python scripts/sync_mlflow.py            # mirror metrics/ into MLflow after the fact

A stage writes its metrics JSON first and calls `mirror_stage` last, so MLflow only ever
mirrors what `metrics/` already holds. An unreachable tracking server logs a warning
and the stage succeeds (metrics stay in `metrics/`), unless `tracking.strict` is true.

Each run carries: the stage's params section (flattened; credentials and URLs redacted
by `param_for_mlflow`), the numbers of its metrics JSON (under the valid MLflow names
`mlflow_names` gives them), per-step training metrics from its dvclive folder, its files
as artifacts, its top-level text results (a decision, a backend) as `result.<key>` tags,
and tags: stage, git commit (also as MLflow's own source tags, so the UI's Source and
Version columns show them), DVC experiment name and baseline (under `dvc exp run`), the
hash of the stage's deps as DVC records them in dvc.lock, and a pipeline-run id shared by
every stage that one `dvc repro` / `dvc exp run` executed. Each stage run is nested under
one parent run per pipeline execution.

While a stage trains, `system_metrics` samples CPU, RAM, disk, network and GPU use with
MLflow's own monitors; the stage's run gets the samples as MLflow's `system/...` metrics
(the UI's System metrics tab), and dvclive's system monitor writes them to the stage's plots.

`sync_all` (scripts/sync_mlflow.py) mirrors only stages whose current deps hash (file
deps and params, as dvc.lock records them) has no run yet, so running it twice adds
nothing. `scripts/repro.py` (`make repro`) runs `dvc repro` and then syncs the stages DVC
restored from its run cache (their commands did not run, so they did not mirror
themselves), looking only at that execution's runs: they join its parent run, tagged
`spark_trainer.mirrored_by: sync`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spark_trainer.errors import TrackingError
from spark_trainer.params import ENV_REF, Section, TrackingParams, as_flat_dict, load_section

log = logging.getLogger(__name__)

TAG_STAGE = "spark_trainer.stage"
TAG_PIPELINE_RUN = "spark_trainer.pipeline_run"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DVC_EXP = "dvc.exp_name"
TAG_DVC_BASELINE = "dvc.exp_baseline_rev"
TAG_DEPS_HASH = "dvc.deps_hash"
TAG_SOURCE = "spark_trainer.mirrored_by"
TAG_KIND = "spark_trainer.kind"  # "pipeline" on the parent run of one pipeline execution

REDACTED = "<redacted>"
# Key words that mark a param as a credential ("max_new_tokens" matches too, but only a
# string value is ever concealed); `tokenizer` does not match.
_CREDENTIAL_WORD = re.compile(r"(?<![a-z0-9])(tokens?|secrets?|passwords?|passwd|api[_-]?keys?|authorization"
                              r"|signing[_-]?keys?|credentials?)(?![a-z0-9])")
# Every value under these keys may carry a credential: header values, request bodies.
_CREDENTIAL_PARENTS = ("headers", "request_template")
_PLACEHOLDERS_ONLY = re.compile(r"(\{\w+\}|\s)*")  # "{prompt}": a template slot, not a secret
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


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
        message = (f"MLflow mirroring of stage '{stage}' to {redact_url(uri)} failed: "
                   f"{type(e).__name__}: {redact_text(str(e))}")
        if settings.strict:
            raise TrackingError(message + " (tracking.strict is true; set it false to carry on without MLflow)") from e
        log.warning("%s. Metrics stay in %s; run scripts/sync_mlflow.py later to mirror them.", message, metrics_path)
        return None


def tracking_uri(settings: TrackingParams) -> str:
    """`MLFLOW_TRACKING_URI` wins over params, as in every MLflow tool. A relative local
    store (`sqlite:///mlflow.db`, `mlruns`) resolves against the main repository, so the
    workspace and every experiment DVC runs in a temporary copy share one store and one
    registry; an absolute path or a server URI is used as given."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(main_repo_root() / uri[len("sqlite:///"):])
    if "://" not in uri and not Path(uri).is_absolute():
        return str(main_repo_root() / uri)
    return uri


def main_repo_root() -> Path:
    """The repository the user works in. DVC runs queued and temporary experiments in a
    copy under `<repo>/.dvc/tmp/exps/`, and names the copy's root in `DVC_ROOT`; that copy
    is thrown away, so what must outlive it (the MLflow store) belongs to `<repo>`."""
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment this process runs in (`dvc exp run`, queued or temporary), as
    MLflow tags: its name and baseline revision; empty outside an experiment."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[TAG_DVC_BASELINE] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


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

    pipeline = pipeline_run_id()
    common = {TAG_PIPELINE_RUN: pipeline, **git_tags(), **dvc_experiment()}
    tags = {TAG_STAGE: stage, TAG_SOURCE: mirrored_by, **common,
            "mlflow.parentRunId": _pipeline_parent(client, experiment_id, pipeline, common),
            "mlflow.source.name": f"stages/{stage.split('@')[0]}.py", "mlflow.source.type": "LOCAL"}
    if deps_hash:
        tags[TAG_DEPS_HASH] = deps_hash
    data = _read_json(metrics_path)
    tags.update({f"result.{k}": str(v)[:5000] for k, v in sorted(data.items()) if isinstance(v, str)})
    run = client.create_run(experiment_id, run_name=stage, tags=tags)
    run_id = run.info.run_id

    flat = as_flat_dict(section, stage.split("@")[0])
    keys = sorted(flat)
    params = [Param(name, param_for_mlflow(k, flat[k])) for k, name in zip(keys, mlflow_names(keys), strict=True)]
    metrics = [Metric(k, v, 0, 0) for k, v in sorted(flatten_numbers(data).items())]
    if step_metrics_dir:
        metrics += read_step_metrics(step_metrics_dir)
    metrics += _system_samples.pop(stage, [])
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


def _pipeline_parent(client, experiment_id: str, pipeline: str, tags: dict[str, str]) -> str:
    """The run id of the parent run of pipeline execution `pipeline`, created by its first
    stage (a run named `pipeline <id>`); every stage run is nested under it."""
    from mlflow.entities import ViewType

    found = client.search_runs([experiment_id], f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline}' and "
                               f"tags.`{TAG_KIND}` = 'pipeline'", run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
    if found:
        return found[0].info.run_id
    name = f"pipeline {tags.get(TAG_DVC_EXP) or pipeline[:12]}"
    parent = client.create_run(experiment_id, run_name=name, tags={**tags, TAG_KIND: "pipeline",
                                                                   "mlflow.source.name": "dvc.yaml",
                                                                   "mlflow.source.type": "LOCAL"})
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def _check_reachable(uri: str, timeout: float) -> None:
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        raise _Unreachable(f"tracking server not reachable ({e})") from e
    except RuntimeError as e:  # pytest-socket's SocketBlockedError in tests
        raise _Unreachable(f"tracking server not reachable ({e})") from e


def param_for_mlflow(key: str, value: Any) -> str:
    """A params value as MLflow may show it. Every URL in it loses user info, query and
    fragment; under a key that names a credential (or a header, or a request_template
    field) an `env:VAR` reference is kept as written and a literal becomes <redacted>."""
    if _holds_credential(key):
        value = _conceal(value)
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return redact_text(text)[:6000]  # MLflow's limit on a param value


def _holds_credential(key: str) -> bool:
    parts = key.split(".")
    if any(parent in parts[:-1] for parent in _CREDENTIAL_PARENTS):
        return True
    # camelCase to snake_case first, so `apiKey` and `accessToken` match too
    words = [re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", part).lower() for part in parts]
    return any(_CREDENTIAL_WORD.search(word) for word in words)


def _conceal(value: Any) -> Any:
    if isinstance(value, str):
        return value if ENV_REF.fullmatch(value) or _PLACEHOLDERS_ONLY.fullmatch(value) else REDACTED
    if isinstance(value, (list, tuple)):
        return [_conceal(v) for v in value]
    if isinstance(value, dict):
        return {k: _conceal(v) for k, v in value.items()}
    return value  # a number or a flag is no credential


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` of `url`: its user info, query and fragment may hold
    credentials, so they never reach a log, an error message or MLflow."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "<unparseable url>"
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    has_authority = parts.netloc or url[len(scheme):len(scheme) + 2] == "//"  # sqlite:///path has an empty one
    authority = "//" + parts.netloc.rpartition("@")[2] if has_authority else ""
    return scheme + authority + parts.path


def redact_text(text: str) -> str:
    """`text` with every URL in it passed through `redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def flatten_numbers(data: Any) -> dict[str, float]:
    """Numeric leaves of a metrics JSON as `a.b.c` keys (booleans as 0/1), each key made a
    valid MLflow metric name by `mlflow_names`."""
    leaves = list(_numeric_leaves(data, ""))
    names = mlflow_names([key for key, _ in leaves])
    return {name: value for name, (_, value) in zip(names, leaves, strict=True)}


def _numeric_leaves(data: Any, prefix: str) -> Iterable[tuple[str, float]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):  # a list of records (the canary's steps): one key per record
            yield from _numeric_leaves(v, f"{prefix}.{i}")
    elif isinstance(data, (bool, int, float)):
        yield prefix, float(data)


def mlflow_names(keys: list[str]) -> list[str]:
    """One valid MLflow metric/param name per key, all distinct, deterministic.

    Metrics JSON keys can be free text (a quarantine reason such as
    "row over max_chars (50001 > 50000)") that MLflow refuses. A key MLflow's own validator
    accepts keeps its name; any other gets `_` for each refused character and for `.`/`..`
    path parts, and a name already taken gets a suffix (`_2`, `_3`, ...), so no value is lost.
    """
    names: list[str | None] = [None] * len(keys)
    taken: set[str] = set()
    for i, key in enumerate(keys):  # valid keys first, so a renamed key never displaces one
        if _valid_mlflow_name(key) and key not in taken:
            names[i] = key
            taken.add(key)
    renamed = []
    for i, key in enumerate(keys):
        if names[i] is not None:
            continue
        base = _sanitized_name(key)
        name, n = base, 1
        while name in taken:
            n += 1
            name = base[:_max_name_length() - len(f"_{n}")] + f"_{n}"
        names[i] = name
        taken.add(name)
        renamed.append(f"{key!r} -> {name!r}")
    if renamed:
        log.info("MLflow names for keys it does not accept: %s", "; ".join(renamed))
    return names  # type: ignore[return-value]


def _valid_mlflow_name(name: str) -> bool:
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    return (0 < len(name) <= _max_name_length() and bool(validate_param_and_metric_name(name))
            and not path_not_unique(name))


def _sanitized_name(key: str) -> str:
    from mlflow.utils.validation import validate_param_and_metric_name

    chars = "".join(c if validate_param_and_metric_name(c) else "_" for c in key)
    # A file store keeps a metric at a path: empty, `.` and `..` parts would name another one.
    parts = ["_" * len(p) if p in (".", "..") else p for p in chars.split("/") if p]
    name = "/".join(parts) or "_"
    if len(name) > _max_name_length():
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        name = name[:_max_name_length() - 9] + "_" + digest
    return name


def _max_name_length() -> int:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return MAX_ENTITY_KEY_LENGTH


def read_step_metrics(live_dir: str | Path) -> list:
    """Per-step metrics from a dvclive folder (`<dir>/plots/metrics/**/*.tsv`), less dvclive's
    system monitor: the run has MLflow's own system metrics (`system_metrics`), and dvclive's
    names (`system/cpu/usage (%)`) would repeat them under names MLflow refuses."""
    from mlflow.entities import Metric

    root = Path(live_dir) / "plots" / "metrics"
    files = [tsv for tsv in sorted(root.rglob("*.tsv")) if tsv.relative_to(root).parts[0] != DVCLIVE_SYSTEM_DIR]
    keys = mlflow_names([tsv.relative_to(root).with_suffix("").as_posix() for tsv in files])
    metrics = []
    for tsv, key in zip(files, keys, strict=True):
        with tsv.open(encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                name = tsv.stem
                metrics.append(Metric(key, float(row[name]), int(float(row.get("timestamp") or 0)), int(row["step"])))
    return metrics


# ------------------------------------------------------------------ system metrics while training

SYSTEM_PREFIX = "system/"  # MLflow's prefix for system metrics: the UI's System metrics tab
DVCLIVE_SYSTEM_DIR = "system"  # where dvclive's system monitor writes under <live>/plots/metrics
_system_samples: dict[str, list] = {}  # stage -> samples its training took, until mirror_stage logs them


def system_metrics(stage: str, settings: TrackingParams | None = None) -> SystemMetrics | None:
    """The sampler of `stage`'s training (`train_model(system_metrics=...)`), or None when
    `tracking.system_metrics_interval_s` is 0 or this is not the main process (rank 0 samples
    the whole machine, every GPU included, for all ranks)."""
    from spark_trainer.devices import is_main_process

    settings = settings or load_section("tracking")  # type: ignore[assignment]
    if not settings.system_metrics_interval_s or not is_main_process():
        return None
    return SystemMetrics(stage, settings.system_metrics_interval_s)


class SystemMetrics:
    """CPU, RAM, disk, network and GPU use, sampled every `interval_s` by the monitors MLflow's
    own system-metrics logging runs (`mlflow.system_metrics.metrics`: psutil, and pynvml or
    pyrsmi for the GPUs; none on a machine without one). `mirror_stage` logs the samples into
    the stage's run under MLflow's names (`system/cpu_utilization_percentage`,
    `system/gpu_0_utilization_percentage`, ...), with their times and the sample index as step.

    The samples wait in memory instead of going to the server as they are taken: the stage's
    run is made once the stage has finished (one run per deps hash, see `_mirrored_run`), and a
    slow or unreachable server must never touch training. Sampling errors stop the sampling,
    never the training.
    """

    def __init__(self, stage: str, interval_s: float) -> None:
        self.stage, self.interval_s = stage, interval_s

    @contextmanager
    def sampling(self, live=None) -> Iterator[None]:
        """Sample while the block runs; with a dvclive `live`, its system monitor runs too."""
        if live is not None:
            _start_dvclive_monitor(live, self.interval_s)
        stop = threading.Event()
        thread = threading.Thread(target=self._sample, args=(_system_samples.setdefault(self.stage, []), stop),
                                  name="system-metrics", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _sample(self, samples: list, stop: threading.Event) -> None:
        from mlflow.entities import Metric

        try:
            monitors = _system_monitors()
            _collect(monitors)  # psutil's first cpu_percent() has no interval to measure: discard it
            step = samples[-1].step + 1 if samples else 0
            while True:
                stopped = stop.wait(self.interval_s)  # the last sample covers the tail after the stop
                values = _collect(monitors)
                now = int(time.time() * 1000)
                samples.extend(Metric(SYSTEM_PREFIX + k, float(v), now, step) for k, v in sorted(values.items()))
                step += 1
                if stopped:
                    return
        except Exception as e:  # noqa: BLE001 - a by-product of training must not end it
            log.warning("system metrics sampling of stage '%s' stopped: %s: %s", self.stage, type(e).__name__,
                        redact_text(str(e)))


def _system_monitors() -> list:
    """The monitors MLflow's SystemMetricsMonitor runs: CPU and RAM, disk, network, and the
    GPUs when NVML (NVIDIA) or ROCm SMI (AMD) answers."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu_monitor in (GPUMonitor, ROCMMonitor):
        try:
            monitors.append(gpu_monitor())
            break
        except Exception as e:  # noqa: BLE001 - as MLflow's monitor: no GPU, driver or binding, no GPU metrics
            log.debug("no %s: %s", gpu_monitor.__name__, e)
    return monitors


def _collect(monitors: list) -> dict[str, float]:
    for monitor in monitors:
        monitor.collect_metrics()
    values = {k: v for monitor in monitors for k, v in monitor.aggregate_metrics().items()}
    for monitor in monitors:
        monitor.clear_metrics()
    return values


def _start_dvclive_monitor(live, interval_s: float) -> None:
    """dvclive's system monitor on `live`, writing a row about every `interval_s` (dvclive
    averages samples taken every 0.1 s, 2 to 29 of them, the range it takes without a warning:
    rows are at most 2.9 s apart)."""
    import dvclive.monitor_system as dvclive_system

    # dvclive asks NVML first on every sample; where NVML is missing (a CPU machine with pynvml
    # installed) the error drops that sample's CPU, RAM and disk values too, so nothing is written.
    dvclive_system.GPU_AVAILABLE = dvclive_system.GPU_AVAILABLE and _nvml_answers()
    live.monitor_system(interval=0.1, num_samples=max(2, min(29, round(interval_s / 0.1))))


def _nvml_answers() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # no driver, no library, no device
        return False
    return True


def git_tags() -> dict[str, str]:
    """The commit, in our tag and MLflow's own (the UI's Version column), and whether the
    work tree differs from it in files other than pipeline outputs: a stage rewriting
    dvc.lock or a metrics file does not make the next stage's run look dirty."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"], capture_output=True,
                                 text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {TAG_GIT_COMMIT: "unknown"}
    outputs = pipeline_outputs()
    entries, paths = iter(changed.split("\0")), []
    for entry in entries:
        if len(entry) > 3:
            paths.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: its source path follows as its own entry
                paths.append(next(entries, ""))
    dirty = any(path and not _under(path, outputs) for path in paths)
    return {TAG_GIT_COMMIT: commit, "mlflow.source.git.commit": commit, TAG_GIT_DIRTY: str(dirty).lower()}


def pipeline_outputs(lock_path: str | Path = "dvc.lock") -> set[str]:
    """dvc.lock itself and every output path it records (the git-tracked ones among them
    are metrics, plots, reports and the audit log, which stages rewrite)."""
    outputs = {"dvc.lock"}
    if Path(lock_path).is_file():
        import yaml

        with Path(lock_path).open(encoding="utf-8") as f:
            stages = (yaml.load(f, Loader=yaml.BaseLoader) or {}).get("stages") or {}
        outputs |= {out["path"] for entry in stages.values() for out in entry.get("outs", []) if "path" in out}
    return outputs


def _under(path: str, outputs: set[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)


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


def deps_hash_from_entries(deps: list[dict[str, Any]], params: dict[str, Any] | None = None) -> str:
    """sha256 over `path:hash` of each dep and `file:values` of each params file, the way
    dvc.lock lists them: a stage's inputs, params included (a params-only change, or a
    change back to earlier values that DVC restores from its run cache, is a new hash)."""
    lines = sorted(f"{d['path']}:{d.get('md5') or d.get('hash') or ''}" for d in deps)
    lines += sorted(f"{file}:{json.dumps(values, sort_keys=True, default=str)}"
                    for file, values in (params or {}).items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def lock_deps_hash(stage: str, lock_path: str | Path = "dvc.lock") -> str | None:
    """The deps hash of `stage` as recorded in dvc.lock (None if it has no entry)."""
    if not Path(lock_path).is_file():
        return None
    import yaml
    from dvc.utils.serialize import load_yaml

    # BaseLoader keeps every scalar a string: an all-digit md5 must not become a number.
    with Path(lock_path).open(encoding="utf-8") as f:
        entry = ((yaml.load(f, Loader=yaml.BaseLoader) or {}).get("stages") or {}).get(stage)
    if not entry:
        return None
    # Params values typed the way DVC reads them, as they are when a stage hashes them live.
    params = ((load_yaml(str(lock_path)).get("stages") or {}).get(stage) or {}).get("params") or {}
    return deps_hash_from_entries(entry.get("deps", []), _plain(params))


def current_deps_hash(stage: str) -> str | None:
    """The deps hash DVC will write to dvc.lock when this stage finishes.

    While a stage runs, dvc.lock still holds the previous run's entry, so ask DVC to
    hash the declared deps and read the declared params now (it reuses its state cache,
    so unchanged files are free).
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
            params = {dep.def_path: dep.get_hash().value for dep in dvc_stage.deps
                      if isinstance(dep, ParamsDependency)}
    except (DvcException, ValueError, OSError) as e:
        log.warning("could not hash the deps of stage '%s' through DVC: %s", stage, e)
        return None
    return deps_hash_from_entries(entries, _plain(params))


def _plain(value: Any) -> Any:
    """YAML's typed containers and scalars as plain JSON values."""
    return json.loads(json.dumps(value, default=str))


# ------------------------------------------------------------------ sync after the fact


def sync_all(params_path: str | Path = "params.yaml", only: set[str] | None = None) -> dict[str, str]:
    """Mirror into MLflow every stage (`foreach` stages included; `only` those named) whose
    current deps hash (dvc.lock) has no run yet: stages that ran while the tracking server was
    down, or that DVC restored from its run cache (scripts/repro.py names them). Running it
    twice adds nothing. Returns {stage: outcome}."""
    from dvc.repo import Repo

    from spark_trainer.params import SECTIONS, load_section

    settings: TrackingParams = load_section("tracking", params_path)  # type: ignore[assignment]
    with Repo(".") as repo:  # DVC resolves foreach and templating into concrete stages
        stages = [(st.addressing, [o.def_path for o in st.outs if o.metric], [o.def_path for o in st.outs if o.plot])
                  for st in repo.index.stages if getattr(st, "cmd", None)]
    outcome: dict[str, str] = {}
    for stage, metrics, plots in stages:
        if only is not None and stage not in only:
            continue
        section = stage.split("@")[0]
        if section not in SECTIONS or not metrics:
            outcome[stage] = "skipped: no params section or metrics file"
            continue
        if not Path(metrics[0]).is_file():
            outcome[stage] = f"skipped: {metrics[0]} not found (run `dvc repro {stage}`)"
            continue
        deps_hash = lock_deps_hash(stage) or ""
        existing = _mirrored_run(settings, stage, deps_hash)
        if existing:
            outcome[stage] = f"already mirrored: run {existing}"
            continue
        live_dirs = [Path(p).parent.parent for p in plots if Path(p).parts[-2:] == ("plots", "metrics")]
        run_id = mirror_stage(stage, load_section(section, params_path), metrics[0], settings=settings,
                              step_metrics_dir=live_dirs[0] if live_dirs else None, mirrored_by="sync",
                              deps_hash=deps_hash)
        outcome[stage] = f"run {run_id}" if run_id else "failed (see warning)"
    return outcome


def _mirrored_run(settings: TrackingParams, stage: str, deps_hash: str) -> str | None:
    """The id of a run that already mirrors `stage` at `deps_hash`, if any (None when the
    store cannot be asked: mirroring then reports why). Within a pipeline execution
    (`SPARK_TRAINER_PIPELINE_RUN` set, as `make repro` does) only that execution's runs
    count, so a stage DVC restored from its run cache joins it; by hand, any run does."""
    if not deps_hash:
        return None
    from mlflow.tracking import MlflowClient

    query = f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{TAG_DEPS_HASH}` = '{deps_hash}'"
    if os.environ.get("SPARK_TRAINER_PIPELINE_RUN"):
        query += f" and tags.`{TAG_PIPELINE_RUN}` = '{os.environ['SPARK_TRAINER_PIPELINE_RUN']}'"
    try:
        client = MlflowClient(tracking_uri=tracking_uri(settings))
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], query, max_results=1)
    except _tracking_errors():
        return None
    return runs[0].info.run_id if runs else None
