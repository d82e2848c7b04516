import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from spark_trainer import tracking
from spark_trainer.errors import TrackingError
from spark_trainer.params import load_section


def _runs(project, kind="stage"):
    """The stage runs (kind "stage") or the pipeline parent runs (kind "pipeline")."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spark-trainer")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if (r.data.tags.get(tracking.TAG_KIND) == "pipeline") == (kind == "pipeline")]


def _stage_files(project):
    (project / "metrics").mkdir()
    (project / "metrics/train.json").write_text(json.dumps({"val_loss": 1.25, "nested": {"ok": True}, "name": "x"}))
    live = project / "plots/train/plots/metrics/train"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n10\t3.5\n20\t2.5\n")
    return project / "metrics/train.json", project / "plots/train"


def test_stage_run_has_params_metrics_steps_tags_and_artifacts(project, monkeypatch):
    metrics, live = _stage_files(project)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-brisk-lark")
    monkeypatch.setenv("SPARK_TRAINER_PIPELINE_RUN", "pipe-1")
    run_id = tracking.mirror_stage("train", load_section("train"), metrics, step_metrics_dir=live, deps_hash="abc")
    (run,) = _runs(project)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["train.model.hidden_size"] == "64"
    assert run.data.params["train.learning_rate"] == "0.003"
    assert run.data.metrics["val_loss"] == 1.25 and run.data.metrics["nested.ok"] == 1.0
    assert "name" not in run.data.metrics
    tags = run.data.tags
    assert tags["spark_trainer.stage"] == "train" and tags["dvc.exp_name"] == "exp-brisk-lark"
    assert tags["spark_trainer.pipeline_run"] == "pipe-1" and tags["dvc.deps_hash"] == "abc"
    assert "git.commit" in tags
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(10, 3.5), (20, 2.5)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["train.json"]


def test_unreachable_server_warns_and_the_stage_goes_on(project, monkeypatch, caplog):
    metrics, _ = _stage_files(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    with caplog.at_level(logging.WARNING):
        assert tracking.mirror_stage("train", load_section("train"), metrics, deps_hash="") is None
    assert "MLflow mirroring of stage 'train' to http://127.0.0.1:9 failed" in caplog.text
    assert "scripts/sync_mlflow.py" in caplog.text


def test_unreachable_server_fails_the_stage_when_strict(project, monkeypatch):
    metrics, _ = _stage_files(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    strict = load_section("tracking").model_copy(update={"strict": True})
    with pytest.raises(TrackingError, match="tracking.strict is true"):
        tracking.mirror_stage("train", load_section("train"), metrics, settings=strict, deps_hash="")


def test_sync_mirrors_metrics_with_the_lock_deps_hash(project):
    from dvc.repo import Repo

    _stage_files(project)
    Repo.init(str(project), no_scm=True)
    (project / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python x.py\n    metrics:\n    - metrics/train.json:\n        cache: false\n"
        "    plots:\n    - plots/train/plots/metrics:\n        cache: false\n"
        "  prepare:\n    cmd: python y.py\n    metrics:\n    - metrics/prepare.json\n"
        "  lora:\n    foreach: [a]\n    do:\n      cmd: python z.py ${item}\n      metrics:\n"
        "      - metrics/lora/${item}.json:\n          cache: false\n")
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python x.py\n    deps:\n    - path: x.py\n      md5: 0123\n")
    outcome = tracking.sync_all()
    assert outcome["train"].startswith("run ")
    assert "metrics/prepare.json not found" in outcome["prepare"]
    assert "metrics/lora/a.json not found" in outcome["lora@a"]
    (run,) = _runs(project)
    assert run.data.tags["spark_trainer.mirrored_by"] == "sync"
    assert run.data.tags["dvc.deps_hash"] == tracking.deps_hash_from_entries([{"path": "x.py", "md5": "0123"}])
    assert run.data.metrics["val_loss"] == 1.25


def test_stages_of_one_pipeline_nest_under_one_parent_with_source_tags(project, monkeypatch):
    metrics, _ = _stage_files(project)
    (project / "metrics/canary.json").write_text(json.dumps({
        "decision": "Successful", "status": "promoted",
        "steps": [{"traffic_percent": 10, "metrics": {"accuracy": {"challenger": 0.25, "verdict": "pass"}}}]}))
    monkeypatch.setenv("SPARK_TRAINER_PIPELINE_RUN", "pipe-7")
    tracking.mirror_stage("train", load_section("train"), metrics, deps_hash="a")
    tracking.mirror_stage("canary_promote", load_section("train"), project / "metrics/canary.json",
                          deps_hash="b")
    (parent,) = _runs(project, "pipeline")
    runs = {r.data.tags["spark_trainer.stage"]: r for r in _runs(project)}
    assert set(runs) == {"train", "canary_promote"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert parent.data.tags["spark_trainer.pipeline_run"] == "pipe-7"
    assert runs["train"].data.tags["mlflow.source.name"] == "stages/train.py"
    canary = runs["canary_promote"].data
    assert (canary.tags["result.decision"], canary.tags["result.status"]) == ("Successful", "promoted")
    assert canary.metrics["steps.0.metrics.accuracy.challenger"] == 0.25
    # A second pipeline execution gets a parent of its own.
    monkeypatch.setenv("SPARK_TRAINER_PIPELINE_RUN", "pipe-8")
    tracking.mirror_stage("train", load_section("train"), metrics, deps_hash="a")
    assert len(_runs(project, "pipeline")) == 2


def test_git_dirty_ignores_what_the_pipeline_itself_rewrites(project):
    import subprocess

    from tests.conftest import GIT_ENV, run_ok, venv_env

    env = {**venv_env(), **GIT_ENV}
    _stage_files(project)
    (project / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python x.py\n    outs:\n"
                                      "    - path: metrics/train.json\n      md5: 1\n")
    (project / "code.py").write_text("x = 1\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "c"]):
        run_ok(cmd, project, env)
    assert tracking.git_tags()["git.dirty"] == "false"
    (project / "metrics/train.json").write_text("{}")
    (project / "dvc.lock").write_text((project / "dvc.lock").read_text() + "\n")
    assert tracking.git_tags()["git.dirty"] == "false"  # a stage rewrote its outputs and dvc.lock
    (project / "code.py").write_text("x = 2\n")
    assert tracking.git_tags()["git.dirty"] == "true"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tracking.git_tags()["mlflow.source.git.commit"] == head


def test_sync_twice_adds_no_duplicate_runs(project):
    from dvc.repo import Repo

    _stage_files(project)
    Repo.init(str(project), no_scm=True)
    (project / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python x.py\n    metrics:\n    - metrics/train.json:\n        cache: false\n")
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python x.py\n    deps:\n    - path: x.py\n      md5: 0123\n")
    assert tracking.sync_all()["train"].startswith("run ")
    assert tracking.sync_all()["train"].startswith("already mirrored: run ")
    assert len(_runs(project)) == 1


def test_flatten_numbers_keeps_numeric_leaves():
    assert tracking.flatten_numbers({"a": {"b": 1, "c": "x", "d": [1]}, "e": False}) == {"a.b": 1.0, "e": 0.0}


def test_flatten_numbers_gives_valid_distinct_mlflow_names():
    data = {"a": {"b": 1}, "a.b": 2, "r?": 3, "r!": 4, "r_": 5, "a//b": 6, "/lead": 7, "x/./y": 8, "": 9,
            "k" * 300: 10}
    flat = tracking.flatten_numbers(data)
    assert sorted(flat.values()) == [float(v) for v in range(1, 11)]  # nothing dropped
    assert {k: v for k, v in flat.items() if len(k) < 250} == {
        "a.b": 1.0, "a.b_2": 2.0, "r_": 5.0, "r__2": 3.0, "r__3": 4.0, "a/b": 6.0, "lead": 7.0, "x/_/y": 8.0,
        "_": 9.0}
    (long,) = [k for k in flat if len(k) >= 250]
    assert len(long) == 250 and tracking.flatten_numbers(data) == flat  # deterministic


@pytest.mark.parametrize(("uri", "shown"), [
    ("https://svc:S3cretPass@host.example:8443/v1/?api_key=abc#frag", "https://host.example:8443/v1/"),
    ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("postgresql://user:pw@db/mlflow?sslmode=require", "postgresql://db/mlflow"),
    ("file:mlruns", "file:mlruns"),
    ("databricks", "databricks"),
])
def test_redact_url_keeps_scheme_host_port_and_path_only(uri, shown):
    assert tracking.redact_url(uri) == shown


def test_unreachable_server_warning_has_no_credentials(project, monkeypatch, caplog):
    metrics, _ = _stage_files(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:S3cretPass@127.0.0.1:9/?token=abc")
    with caplog.at_level(logging.WARNING):
        assert tracking.mirror_stage("train", load_section("train"), metrics, deps_hash="") is None
    assert "to http://127.0.0.1:9/ failed" in caplog.text
    assert "S3cretPass" not in caplog.text and "token=abc" not in caplog.text


def test_a_stage_restored_from_the_run_cache_joins_its_pipeline_run_through_sync(project):
    """DVC restores a stage from its run cache without running it, so the stage cannot mirror
    itself; scripts/repro.py (`make repro`) adds it to that execution's parent run. A repro
    in which nothing ran or was restored adds nothing."""
    import shutil
    import sys

    from tests.conftest import GIT_ENV, REPO, run_ok, venv_env

    shutil.copytree(REPO / "src", project / "src")  # stages import spark_trainer from the checkout
    (project / "stage.py").write_text(
        "import json, sys\n"
        "from spark_trainer import tracking\n"
        "from spark_trainer.params import load_section\n"
        "p = load_section('train')\n"
        "open('out.txt', 'w').write(str(p.learning_rate))\n"
        "json.dump({'lr': p.learning_rate}, open('metrics/train.json', 'w'))\n"
        "tracking.mirror_stage('train', p, 'metrics/train.json')\n")
    (project / "metrics").mkdir()
    (project / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python stage.py\n    deps: [stage.py]\n    params: [train.learning_rate]\n"
        "    outs: [out.txt]\n    metrics:\n    - metrics/train.json:\n        cache: false\n")
    env = {**venv_env(), **GIT_ENV, "PYTHONPATH": str(project / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "c"]):
        run_ok(cmd, project, env)

    def repro(lr, pipeline):  # what `make repro` runs, with a known pipeline id
        params = (project / "params.yaml").read_text()
        (project / "params.yaml").write_text(params.replace(f"learning_rate: {lr[0]}", f"learning_rate: {lr[1]}", 1))
        out, err = run_ok([sys.executable, str(REPO / "scripts/repro.py")], project,
                          {**env, "SPARK_TRAINER_PIPELINE_RUN": pipeline})
        return out + err

    lr = load_section("train").learning_rate
    assert "Running stage 'train'" in repro((lr, lr), "p1")
    assert "Running stage 'train'" in repro((lr, 0.002), "p2")
    assert "is cached - skipping run" in repro((0.002, lr), "p3")  # back to the first params: restored
    assert "up to date" in repro((lr, lr), "p4")  # nothing ran or was restored: no run added
    runs = {r.data.tags["spark_trainer.pipeline_run"]: r for r in _runs(project)}
    assert set(runs) == {"p1", "p2", "p3"}
    assert [runs[p].data.tags["spark_trainer.mirrored_by"] for p in ("p1", "p2", "p3")] == ["stage", "stage", "sync"]
    assert runs["p3"].data.metrics["lr"] == lr and runs["p3"].data.tags["dvc.deps_hash"] == runs["p1"].data.tags[
        "dvc.deps_hash"] != runs["p2"].data.tags["dvc.deps_hash"]
    parents = {r.data.tags["spark_trainer.pipeline_run"]: r.info.run_id for r in _runs(project, "pipeline")}
    assert runs["p3"].data.tags["mlflow.parentRunId"] == parents["p3"]
