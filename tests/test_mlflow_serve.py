"""register logs the bundle as an MLflow transformers model that `mlflow models serve`
serves: the canary's `rest` adapter scores prompts against the server and gets the
replies the bundle gives in process. A quantized bundle, which no flavour loads, stays
plain artifacts and the metrics say why."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_release import NAME, _env, assets, make_signed, metrics, ok, release_params, stage  # noqa: F401

PROMPT_ITEMS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(server: subprocess.Popen) -> None:
    """End the server and the uvicorn process it starts (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _serve(project: Path, model_uri: str, port: int, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe nobody reads while the server runs
        return subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port)], cwd=project, env=_env(project),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_up(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 150) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    _stop(server)
    pytest.fail("mlflow models serve did not come up:\n" + log.read_text()[-3000:])


def _questions(mmlu_dir: Path, n: int):
    from spark_trainer.canary.traffic import Item
    from spark_trainer.evaluation import mmlu

    _, test = mmlu.load_local(mmlu_dir)
    questions = [q for subject in sorted(test) for q in test[subject]][:n]
    return [Item(f"{q.subject}-{q.index}", "question", mmlu.doc_text(q, "continuation"), q.choices[q.answer])
            for q in questions]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_the_registered_version_is_served_by_mlflow_and_scored_by_the_rest_adapter(tmp_path, assets):  # noqa: F811
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from spark_trainer.canary import adapters
    from spark_trainer.canary.replay import Replayer
    from spark_trainer.canary.traffic import answer_f1, is_correct
    from spark_trainer.packaging import signing
    from spark_trainer.params import ServingEndpoint, validate_section
    from spark_trainer.registry import model_registry as mr

    project = make_signed(tmp_path, assets)
    ok(stage(project, "package"))
    package = metrics(project, "package")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    # A store from before the flavour: the same bundle as plain artifacts. It cannot be served,
    # so register logs the bundle once more, as a transformers model.
    c = MlflowClient(uri)
    c.create_registered_model(NAME)
    c.create_model_version(NAME, source=str(project / "dist" / NAME), tags={mr.TAG_DIGEST: package["digest"]})
    ok(stage(project, "register"))
    registered = metrics(project, "register")
    assert (registered["version"], registered["flavor"], registered["flavor_reason"]) == (2, "transformers", None)
    assert registered["signed"] is True and registered["signer"] == package["signer"]

    # What MLflow loads: a transformers text-generation model whose classes transformers ships
    # (so no trust_remote_code), no pickle anywhere, the lineage in MLmodel, and as model
    # folder the signed bundle itself.
    version = mr.get_version(uri, NAME, "2")
    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "dl"),
                                                      tracking_uri=uri))
    assert signing.unsafe_files(logged) == []
    mlmodel = Model.load(str(logged))
    flavor = mlmodel.flavors["transformers"]
    assert (flavor["task"], flavor["pipeline_model_type"], flavor["tokenizer_type"], flavor["model_binary"]) == (
        "text-generation", "LlamaForCausalLM", "TokenizersBackend", "model")
    assert mlmodel.signature.params.to_dict() == [{"name": "max_new_tokens", "type": "long", "default": 64,
                                                   "shape": None}]
    assert {k: mlmodel.metadata[k] for k in (mr.TAG_DIGEST, mr.TAG_SIGNED, mr.TAG_SIGNER)} == {
        mr.TAG_DIGEST: package["digest"], mr.TAG_SIGNED: "true", mr.TAG_SIGNER: package["signer"]}
    assert mlmodel.metadata["lineage.params_sha256"] == json.loads(
        (project / "dist" / NAME / "lineage.json").read_text())["params_sha256"]
    policy = validate_section("register", {**release_params(assets)["register"],
                                           "trusted_public_keys": [str(project / "keys/signing.pub")]})
    bundle = mr.fetch_verified(uri, version, policy)  # what the canary and serve.py load, verified
    assert signing.verify_bundle(logged / "model").digest == package["digest"]

    mr.set_alias(uri, NAME, mr.CHAMPION, "2")
    port = _free_port()
    log = tmp_path / "serve.log"
    server = _serve(project, f"models:/{NAME}@{mr.CHAMPION}", port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(server, url, log)
        # MLflow's /invocations format through the generic rest adapter, as docs/stages/register.md shows.
        served = ServingEndpoint(adapter="rest", url=url + "/invocations", model="", headers={},
                                 request_template={"inputs": ["{prompt}"],
                                                   "params": {"max_new_tokens": "{max_tokens}"}},
                                 response_path="predictions.0", chat=False)
        arms = {"champion": adapters.InProcessAdapter(bundle), "challenger": adapters.build(served, None, 30)}
        replayer = Replayer(arms, 8, 3, lambda item, text: {"correct": is_correct(text, item.gold),
                                                              "answer_f1": answer_f1(text, item.gold)})
        replies = replayer.route("canary", _questions(assets / "mmlu", PROMPT_ITEMS), 100, 0)
    finally:
        _stop(server)
    in_process, over_http = replies["champion"], replies["challenger"]
    assert len(over_http) == PROMPT_ITEMS and not any(r.error for r in over_http), [r.error for r in over_http]
    # Greedy decoding of the same weights: the same text (MLflow strips surrounding space), the same scores.
    assert [r.text for r in over_http] == [r.text.strip() for r in in_process]
    assert any(r.text for r in over_http)
    assert [r.scores for r in over_http] == [r.scores for r in in_process]


def test_a_quantized_bundle_stays_plain_artifacts_and_the_metrics_say_why(tmp_path):
    from spark_trainer.registry import model_registry as mr
    from tests.conftest import REPO, venv_env
    from tests.test_bundle_safety import bundle

    # A dynamic_int8 model folder (config, quantization.json) with the lineage register tags versions with.
    root = bundle(tmp_path, {"lineage.json": b'{"params_sha256": "p", "data": {"md5": null}}'})
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    uri = f"sqlite:///{project / 'mlflow.db'}"
    run = ok(subprocess.run([sys.executable, str(REPO / "stages/register.py"), str(root), "metrics/register.json",
                             "registry/registered.json", "registry/promotions.jsonl"], cwd=project, check=False,
                            env={**venv_env(), "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True))
    registered = json.loads((project / "metrics/register.json").read_text())
    assert registered["flavor"] == "artifacts"
    reason = registered["flavor_reason"]
    assert "dynamic_int8 quantized model" in reason and "load_quantized" in reason
    assert "cannot serve" in run.stderr
    version = mr.get_version(uri, registered["name"], str(registered["version"]))
    assert version.bundle_source == version.source  # the bundle is the version's files, as before the flavour
    assert (mr.download_bundle(uri, version) / "MANIFEST.json").is_file()
