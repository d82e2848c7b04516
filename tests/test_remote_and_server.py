"""Sharing a pipeline for real: a DVC remote on S3 (moto's S3 server) and MLflow as a server.

    .venv/bin/python -m pytest tests/test_remote_and_server.py -x -q

Both servers run as subprocesses on 127.0.0.1, each in its own process group, stopped in
the fixture's teardown. The pipeline is a private copy of the session's reproduced smoke
pipeline (`smoke_pipeline` in conftest). Credentials reach DVC only through the
environment of its subprocess, never through a config file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from spark_trainer.registry.model_registry import CHALLENGER, CHAMPION, TAG_DIGEST
from spark_trainer.tracking import TAG_DEPS_HASH, TAG_GIT_COMMIT, TAG_PIPELINE_RUN, TAG_STAGE, lock_deps_hash
from tests.conftest import pipeline_copy, run_ok

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

BIN = Path(sys.executable).parent
BUCKET = "spark-trainer"
REMOTE_URL = f"s3://{BUCKET}/smoke"
# Not real credentials (moto accepts any); the tests check they never land in a config file or an error.
KEY_ID, SECRET = "AKIATESTONLY7C21", "test-only-secret-5be0d9"
AWS_ENV = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A server started in its own process group, so that stopping it stops its workers too."""

    def __init__(self, cmd: list[str], health_url: str, log_path: Path, env: dict[str, str]) -> None:
        self.health_url = health_url
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=log_path.parent, start_new_session=True)

    def wait_healthy(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.health_url} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.health_url, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"{self.health_url} did not answer within {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left of it (mlflow server's
        uvicorn and job-consumer children may outlive their parent)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _service_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


def _bucket_objects(endpoint: str) -> dict[str, int]:
    """{key: size} of every object in the bucket."""
    pages = _s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _output_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of every out that dvc.lock records, by path; a missing out is a key
    with the value 'missing'."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    hashes = {}
    for entry in lock["stages"].values():
        for out in entry.get("outs", []):
            path = root / out["path"]
            if path.is_dir():
                hashes.update({f.relative_to(root).as_posix(): _sha256(f) for f in sorted(path.rglob("*"))
                               if f.is_file()})
            else:
                hashes[out["path"]] = _sha256(path) if path.is_file() else "missing"
    return hashes


def _assert_no_credentials_in_config(root: Path) -> None:
    for name in ("config", "config.local"):
        config = root / ".dvc" / name
        if config.is_file():
            text = config.read_text()
            assert KEY_ID not in text and SECRET not in text, f"credentials written into {config}"


@dataclass(frozen=True)
class Pushed:
    root: Path
    env: dict[str, str] = field(repr=False)  # holds the credentials: kept out of pytest's failure report
    endpoint: str
    hashes: dict[str, str] = field(repr=False)


# --------------------------------------------------------------------------- DVC remote on S3


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1, with the bucket created."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = Service([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], f"{endpoint}/moto-api/",
                     tmp_path_factory.mktemp("moto") / "moto.log", _service_env())
    try:
        server.wait_healthy(60)
        _s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pushed(smoke_pipeline, s3_endpoint, tmp_path_factory) -> Pushed:
    """A copy of the smoke pipeline whose committed DVC config names the S3 remote (no
    credentials), after `dvc push` of every output."""
    root, env = pipeline_copy(smoke_pipeline, tmp_path_factory.mktemp("pushed"))
    env = {**env, **AWS_ENV}
    run_ok(["dvc", "remote", "add", "-d", "storage", REMOTE_URL], root, env)
    run_ok(["dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint], root, env)
    run_ok(["git", "add", ".dvc/config"], root, env)
    run_ok(["git", "commit", "-qm", "DVC remote on S3"], root, env)
    start = time.monotonic()
    out, err = run_ok(["dvc", "push"], root, env)
    objects = _bucket_objects(s3_endpoint)
    print(f"dvc push: {len(objects)} objects, {sum(objects.values()) / 1e6:.2f} MB in "
          f"{time.monotonic() - start:.1f} s ({out.strip().splitlines()[-1]})")
    assert SECRET not in out + err
    _assert_no_credentials_in_config(root)
    return Pushed(root, env, s3_endpoint, _output_hashes(root))


def test_a_fresh_clone_pulls_every_output_and_has_nothing_to_rerun(pushed, tmp_path):
    clone = tmp_path / "clone"
    run_ok(["git", "clone", "-q", str(pushed.root), str(clone)], tmp_path, pushed.env)
    assert not (clone / "models" / "base").exists()  # git brought the code, not the outputs

    start = time.monotonic()
    out, err = run_ok(["dvc", "pull"], clone, pushed.env)
    print(f"dvc pull: {time.monotonic() - start:.1f} s ({out.strip().splitlines()[-1]})")
    assert SECRET not in out + err
    _assert_no_credentials_in_config(clone)

    status, _ = run_ok(["dvc", "status"], clone, pushed.env)
    assert "Data and pipelines are up to date." in status, f"after `dvc pull` in a fresh clone:\n{status}"
    repro, _ = run_ok(["dvc", "repro"], clone, pushed.env)
    assert "Data and pipelines are up to date." in repro, repro

    pulled = _output_hashes(clone)
    assert pulled == pushed.hashes
    assert pulled["models/base/model.safetensors"] == pushed.hashes["models/base/model.safetensors"] != "missing"
    bundle = [path for path in pulled if path.startswith("dist/") and path.endswith("model.safetensors")]
    assert bundle, "no model bundle under dist/ among the pulled outputs"


def test_an_unreachable_remote_names_its_url_and_loses_nothing(pushed, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    objects_before = _bucket_objects(pushed.endpoint)
    root, env = pushed.root, pushed.env
    run_ok(["dvc", "remote", "add", "--local", "unreachable", REMOTE_URL], root, env)
    try:
        run_ok(["dvc", "remote", "modify", "--local", "unreachable", "endpointurl", closed], root, env)
        for cmd in (["dvc", "push", "-r", "unreachable"], ["dvc", "status", "-c", "-r", "unreachable"]):
            result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
            message = result.stdout + result.stderr
            assert result.returncode != 0, f"{' '.join(cmd)} succeeded against {closed}:\n{message}"
            assert closed in message, f"{' '.join(cmd)} does not name {closed}:\n{message}"
            assert SECRET not in message and KEY_ID not in message
    finally:
        run_ok(["dvc", "remote", "remove", "--local", "unreachable"], root, env)

    assert _bucket_objects(pushed.endpoint) == objects_before
    assert _output_hashes(root) == pushed.hashes
    status, _ = run_ok(["dvc", "status", "-c"], root, env)
    assert "Cache and remote 'storage' are in sync." in status, status


# --------------------------------------------------------------------------- MLflow tracking server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1: a sqlite backend store, artifacts served
    through the server. Yields (url, artifacts folder)."""
    home = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Service([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                      "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                      "--artifacts-destination", str(home / "artifacts"), "--serve-artifacts"],
                     f"{url}/health", home / "server.log", {**_service_env(), "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        server.wait_healthy(180)
        yield url, home / "artifacts"
    finally:
        server.stop()


def test_stages_log_their_runs_and_register_the_model_on_a_tracking_server(smoke_pipeline, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    url, artifacts = mlflow_server
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    env = {**env, "MLFLOW_TRACKING_URI": url}
    stages = ("register", "canary_promote")
    for stage in stages:
        start = time.monotonic()
        run_ok(["dvc", "repro", "-f", "-s", stage], root, env)
        print(f"dvc repro -f -s {stage} against {url}: {time.monotonic() - start:.1f} s")
    head = run_ok(["git", "rev-parse", "HEAD"], root, env)[0].strip()
    params = yaml.safe_load((root / "params.yaml").read_text())

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    assert experiment is not None, f"no experiment '{params['tracking']['experiment']}' on {url}"
    runs = {run.data.tags[TAG_STAGE]: run for run in client.search_runs([experiment.experiment_id])
            if TAG_STAGE in run.data.tags}
    assert sorted(runs) == sorted(stages)
    for stage, run in runs.items():
        tags = run.data.tags
        assert tags[TAG_GIT_COMMIT] == head
        assert tags[TAG_PIPELINE_RUN]
        assert tags[TAG_DEPS_HASH] == lock_deps_hash(stage, root / "dvc.lock")
        assert run.data.metrics, f"run of {stage} has no metrics"
        assert f"{stage}.json" in [a.path for a in client.list_artifacts(run.info.run_id)]

    marker = json.loads((root / "registry" / "registered.json").read_text())
    name = params["register"]["model_name"]
    challenger = client.get_model_version_by_alias(name, CHALLENGER)
    assert challenger.version == str(marker["version"])
    assert challenger.tags[TAG_DIGEST] == marker["digest"]
    assert challenger.source.startswith("mlflow-artifacts:"), challenger.source  # stored through the server
    bundle_model = next((root / "dist").glob("*/model.safetensors"))
    stored = [f for f in artifacts.rglob("model.safetensors") if f.parent.name == "model"]
    assert [_sha256(f) for f in stored] == [_sha256(bundle_model)]

    canary = json.loads((root / "metrics" / "canary_promote.json").read_text())
    expected = {CHALLENGER: challenger.version}
    if canary["status"] == "promoted":
        expected[CHAMPION] = challenger.version
    assert client.get_registered_model(name).aliases == expected
