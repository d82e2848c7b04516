"""The whole DAG through `dvc repro` in a temporary copy of the repository, smoke-size."""

import json
import math
import re
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from spark_trainer.tracking import lock_deps_hash
from tests.conftest import pipeline_copy, run_ok

pytestmark = pytest.mark.e2e
METRICS = {"sample": "metrics/sample.json", "prepare": "metrics/prepare.json", "import_model": "metrics/import_model.json",
           "quality_gates": "metrics/quality_gates.json", "train": "metrics/train.json",
           "lora@arithmetic": "metrics/lora/arithmetic.json", "lora@world_facts": "metrics/lora/world_facts.json",
           "quantize": "metrics/quantize.json",
           "distill": "metrics/distill.json",
           "evaluate_safety": "metrics/evaluate_safety.json",
           "package": "metrics/package.json", "register": "metrics/register.json",
           "canary_promote": "metrics/canary_promote.json",
           "ingest_video": "metrics/ingest_video.json", "train_captioner": "metrics/train_captioner.json",
           "evaluate_coco": "metrics/evaluate_coco.json", "headline": "metrics/headline.json",
           **{f"evaluate_mmlu@{m}": f"metrics/evaluate_mmlu/{m}.json"
              for m in ("base", "lora_arithmetic", "lora_world_facts", "quantized", "distilled")}}
STAGES = tuple(METRICS)
MODEL = "spark-trainer-arithmetic"


_run = run_ok


@pytest.fixture(scope="module")
def repo(smoke_pipeline, tmp_path_factory):
    root, env = pipeline_copy(smoke_pipeline, tmp_path_factory.mktemp("e2e"))
    return root, env, smoke_pipeline[1]


def test_repro_runs_every_stage_and_writes_outputs(repo):
    root, _, log = repo
    for stage, metrics in METRICS.items():
        assert f"Running stage '{stage}'" in log
        assert (root / metrics).is_file()
    prepare = json.loads((root / "metrics/prepare.json").read_text())
    assert prepare["counts_balance"] and prepare["rows_in"] == prepare["items_out"] + prepare["quarantined"]
    train = json.loads((root / "metrics/train.json").read_text())
    assert train["val_perplexity"] < train["unigram_val_perplexity"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in (root / "models/base").iterdir()}
    assert (root / "plots/train/plots/metrics/train/loss.tsv").is_file()
    assert not list((root / "checkpoints/train").glob("checkpoint-*"))
    quality = json.loads((root / "metrics/quality_gates.json").read_text())
    assert quality["counts"]["balanced"] and quality["ground_truth"]["pii"]["recall"] == 1.0
    assert (root / "data/clean/README.md").read_text().startswith("---\n")
    assert {"adapter", "merged"} <= {p.name for p in (root / "models/lora/arithmetic").iterdir()}
    for subject in ("arithmetic", "world_facts"):  # each adapter lowers its own subject's val loss (smoke: by 0.02-0.03)
        lora = json.loads((root / f"metrics/lora/{subject}.json").read_text())
        assert lora["target_loss_after"] < lora["target_loss_before"], subject
    quantize = json.loads((root / "metrics/quantize.json").read_text())
    assert quantize["file_size_ratio"] < 0.5
    # The quantized model follows its fp32 source (smoke: 16/16 greedy tokens, perplexity +0.2%).
    assert quantize["greedy_token_agreement"] >= 0.75 and abs(quantize["val_perplexity_change"]) < 0.05
    distill = json.loads((root / "metrics/distill.json").read_text())
    assert distill["parameter_ratio"] < 1.0
    assert distill["next_token_agreement"] > 0.5  # smoke: 0.65 after 8 steps; an untrained student ~0.1
    scores = json.loads((root / "metrics/evaluate_mmlu/quantized.json").read_text())
    assert {"continuation", "letter"} <= set(scores) and scores["continuation"]["acc"]["overall"]["n"] == 32
    # Smoke MMLU accuracy sits at chance (0.25) for every model, so compare predictions instead: the
    # quantized model picks the same continuation answers as the model it was quantized from (smoke: 32/32).
    quantized, source = (
        {(r["subject"], r["index"]): r["prediction"] for r in map(json.loads, f.read_text().splitlines())
         if r["format"] == "continuation"}
        for f in (root / "metrics/evaluate_mmlu/quantized.predictions.jsonl",
                  root / "metrics/evaluate_mmlu/lora_arithmetic.predictions.jsonl"))
    assert len(quantized) == 32 and sum(quantized[k] == source[k] for k in quantized) >= 29
    assert (root / "reports/safety.md").read_text().startswith("# Safety report")
    assert json.loads((root / "metrics/register.json").read_text())["version"] == 1
    canary = json.loads((root / "metrics/canary_promote.json").read_text())
    assert (canary["decision"], canary["status"], canary["challenger_version"]) == ("Successful", "promoted", 1)
    assert (root / "dist/spark-trainer-arithmetic/MANIFEST.json").is_file()
    ingest = json.loads((root / "metrics/ingest_video.json").read_text())
    assert ingest["balanced"] and ingest["cuts"]["missed"] == 0 and not ingest["bad_files"]["mismatches"]
    assert (root / "models/captioner/config.json").is_file()
    assert (root / "plots/train_captioner/plots/metrics/train/loss.tsv").is_file()
    captioner = json.loads((root / "metrics/train_captioner.json").read_text())
    # Held-out loss well under a uniform guess over the caption vocabulary (smoke: 1.20 against ln 15 = 2.71).
    assert captioner["heldout_loss"] < 0.6 * math.log(captioner["vocab_size"])
    coco_metrics = json.loads((root / "metrics/evaluate_coco.json").read_text())
    assert coco_metrics["images"] == captioner["heldout_frames"] == 5
    assert {"BLEU-4", "ROUGE-L", "CIDEr-D"} <= set(coco_metrics["model"])
    # 20 smoke steps teach the most frequent caption (CIDEr-D 3.79, equal to the constant baseline's);
    # an untrained captioner scores far below the baseline.
    assert coco_metrics["model"]["CIDEr-D"] > 0.5 * coco_metrics["constant_baseline"]["CIDEr-D"]


def test_stage_runs_are_mirrored_and_linked(repo, monkeypatch):
    root, _, _ = repo
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("spark-trainer").experiment_id])
    runs = [r for r in runs if "spark_trainer.stage" in r.data.tags]  # not the runs holding registered bundles
    by_stage = {r.data.tags["spark_trainer.stage"]: r for r in runs}
    assert set(by_stage) == set(STAGES)
    assert len({r.data.tags["spark_trainer.pipeline_run"] for r in runs}) == 1
    monkeypatch.chdir(root)
    for stage, run in by_stage.items():
        assert run.data.tags["dvc.deps_hash"] == lock_deps_hash(stage, root / "dvc.lock"), stage
    assert client.get_metric_history(by_stage["train"].info.run_id, "train/loss")


def test_plots_show_and_diff_render_offline(repo):
    """`.dvc/config` names the inlined template: neither page loads a script from the network."""
    root, env, _ = repo
    _run(["python", "scripts/build_plots_template.py", "build/vega_offline.html"], root, env)
    for command in ("show", "diff"):
        _run(["dvc", "plots", command, "-o", f"dvc_plots_{command}"], root, env)
        page = (root / f"dvc_plots_{command}/index.html").read_text()
        assert not re.search(r"<script[^>]*\bsrc=", page), command
        assert "vegaEmbed" in page and "loss" in page, command


def test_second_repro_does_nothing(repo):
    root, env, _ = repo
    assert "Data and pipelines are up to date" in "".join(_run(["dvc", "repro"], root, env))


def test_forced_rerun_on_a_new_commit_gives_byte_identical_metrics(repo):
    """Outputs depend only on declared inputs: an unrelated commit (the README) changes no
    metric, the package digest included (no git state in data, manifests or bundles)."""
    root, env, _ = repo
    before = {s: (root / m).read_bytes() for s, m in METRICS.items()}
    (root / "README.md").write_text((root / "README.md").read_text() + "\nAn unrelated line.\n")
    _run(["git", "commit", "-qm", "unrelated", "README.md"], root, env)
    _run(["dvc", "repro", "--force"], root, env)
    assert {s: (root / m).read_bytes() for s, m in METRICS.items()} == before


def _alias(root, alias):
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_model_version_by_alias(MODEL, alias).version


def _stages_run(log):
    return set(re.findall(r"Running stage '([^']+)'", log))


def _experiments(root, env):
    """{experiment name: {metrics file: data}}: the experiments `dvc exp show --json` lists, each
    metrics file read whole from the experiment's commit (`exp show` leaves out lists and nulls)."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], root, env)[0])
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = {path: json.loads(_run(["git", "show", f"{rev['rev']}:{path}"], root, env)[0])
                                      for path in rev["data"]["metrics"]}
    return found


def test_queued_experiments_rerun_only_what_their_change_reaches_and_move_no_alias(repo):
    """`dvc exp run --queue` + `dvc queue start`, as a team runs a batch: each experiment reruns
    only the stages its change reaches (DVC's own log of each), both show in `dvc exp show`,
    their MLflow runs carry the experiment's name, and neither moves an alias of the shared
    registry, whatever its canary decides."""
    root, env, _ = repo
    aliases = {a: _alias(root, a) for a in ("champion", "challenger")}
    audit = (root / "registry/promotions.jsonl").read_bytes()
    rank8 = json.loads((root / "metrics/lora/arithmetic.json").read_text())["trainable_parameters"]
    # A grid in DVC's own syntax (keys checked first by scripts/sweep.py): two canary-only experiments.
    _run(["python", "scripts/sweep.py", "-S", "canary_promote.analysis.alpha=0.01,0.02"], root, env)
    _run(["dvc", "exp", "run", "--queue", "-S", "lora.rank=4", "-n", "q-rank4"], root, env)
    _run(["dvc", "queue", "start", "-j", "1"], root, env)
    deadline = time.monotonic() + 1800
    while re.search(r"\b(Queued|Running)\b", status := _run(["dvc", "queue", "status"], root, env)[0]):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    names = re.findall(r"^\w+\s+(\S+)\s+.*\bSuccess\b", status, re.MULTILINE)
    assert len(names) == 3 and "q-rank4" in names, status
    logs = {name: "".join(_run(["dvc", "queue", "logs", name], root, env)) for name in names}
    alphas = [name for name in names if name != "q-rank4"]

    # The canary alone, and the headline summary of its metrics (milliseconds; DVC may restore
    # it from its run cache when the canary's numbers come out as in an earlier run).
    for name in alphas:
        assert _stages_run(logs[name]) - {"headline"} == {"canary_promote"}, logs[name]
    ran = _stages_run(logs["q-rank4"])
    assert {"lora@arithmetic", "lora@world_facts", "quantize", "distill", "evaluate_mmlu@quantized", "package",
            "register", "canary_promote"} <= ran, logs["q-rank4"]
    assert not ran & {"sample", "prepare", "quality_gates", "train", "evaluate_mmlu@base", "ingest_video",
                      "train_captioner", "evaluate_coco"}, logs["q-rank4"]

    exps = _experiments(root, env)
    rank4 = exps["q-rank4"]
    assert rank4["metrics/lora/arithmetic.json"]["trainable_parameters"] * 2 == rank8
    assert (rank4["metrics/register.json"]["version"], rank4["metrics/register.json"]["alias"]) == (2, None)
    # The new model is compared with the champion to a decision. Neither smoke model answers a
    # question right and neither leaks (intervals [0, 0]; latency is out of smoke decisions), so:
    # 10% of 24 items is under min_samples (Inconclusive, go on), then non-inferior at 50% and 100%.
    canary = rank4["metrics/canary_promote.json"]
    assert (canary["champion_version"], canary["challenger_version"]) == (1, 2)
    assert [(s["traffic_percent"], s["outcome"]) for s in canary["steps"]] == [
        (10, "Inconclusive"), (50, "Successful"), (100, "Successful")]
    assert (canary["decision"], canary["would_promote"], canary["status"]) == ("Successful", True, "experiment")
    assert all(exps[name]["metrics/canary_promote.json"]["status"] == "experiment" for name in alphas)
    # The shared registry is as it was: no alias moved, nothing appended to the audit log.
    assert {a: _alias(root, a) for a in aliases} == aliases
    assert (root / "registry/promotions.jsonl").read_bytes() == audit
    # One MLflow store for the workspace and its experiments, each run findable by experiment.
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("spark-trainer").experiment_id],
                              f"tags.`dvc.exp_name` = '{alphas[0]}'")
    stages = [r.data.tags.get("spark_trainer.stage") for r in runs]
    assert {"canary_promote", None} <= set(stages) <= {"canary_promote", "headline", None}  # None: the parent
    head = _run(["git", "rev-parse", "HEAD"], root, env)[0].strip()
    assert {r.data.tags["dvc.exp_baseline_rev"] for r in runs} == {head}
    assert client.get_model_version(MODEL, "2").tags["dvc.exp_name"] == "q-rank4"


def test_an_optuna_search_runs_its_trials_as_experiments_and_resumes(repo):
    """3 trials of configs/search/quantize.yaml as `dvc exp run --temp` experiments: stopped
    after 2, the same command resumes the study to 3; `dvc exp show` lists every trial."""
    root, env, _ = repo
    space = "configs/search/quantize.yaml"
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    before = _run(status, root, env)[0]
    _run(["python", "scripts/search.py", space, "--trials", "2"], root, env)
    out, _ = _run(["python", "scripts/search.py", space], root, env)
    names = [f"quantize-agreement-trial-{i}" for i in range(3)]
    assert all(name in out for name in names) and "dvc exp apply quantize-agreement-trial-" in out, out
    exps = _experiments(root, env)
    for name in names:
        assert 0.0 <= exps[name]["metrics/quantize.json"]["greedy_token_agreement"] <= 1.0, name
    assert _run(status, root, env)[0] == before  # trials run in temporary copies: the workspace is untouched


def test_experiment_with_a_changed_param(repo):
    root, env, _ = repo
    _run(["dvc", "exp", "run", "-S", "train.learning_rate=0.002", "-n", "lower-lr"], root, env)
    shown, _ = _run(["dvc", "exp", "show", "--json"], root, env)
    assert "lower-lr" in json.dumps(json.loads(shown))
    diff, _ = _run(["dvc", "params", "diff", "--json"], root, env)
    change = json.loads(diff)["params.yaml"]["train.learning_rate"]
    assert (change["old"], change["new"]) == (0.003, 0.002)
    metrics_diff, _ = _run(["dvc", "metrics", "diff", "--json"], root, env)
    assert "metrics/train.json" in json.loads(metrics_diff)


def test_a_store_that_is_not_the_registered_one_is_refused_until_register_reruns(repo):
    """The registry lives in the MLflow store, outside DVC: a workspace whose store is not the
    one `register` registered into (a fresh clone, a deleted mlflow.db) is told to register
    again, rather than running the canary on an empty registry; after that the canary reruns."""
    root, env, _ = repo
    (root / "mlflow.db").unlink()
    result = subprocess.run(["dvc", "repro", "-f", "-s", "canary_promote"], cwd=root, env=env, capture_output=True,
                            check=False,
                            text=True)
    assert result.returncode != 0 and "dvc repro -f -s register" in result.stdout + result.stderr
    _run(["dvc", "repro", "-f", "-s", "register"], root, env)
    out, err = _run(["dvc", "repro"], root, env)
    assert "Running stage 'canary_promote'" in out, out + err
    assert json.loads((root / "metrics/register.json").read_text())["version"] == 1
    assert json.loads((root / "metrics/canary_promote.json").read_text())["status"] == "promoted"
