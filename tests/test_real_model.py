"""The real-model profile: SmolLM2-135M-Instruct imported from its GGUF file and run through the
language-model branch as a DVC experiment (a smoke of it: a few LoRA steps, int8, a few MMLU
questions), and the profile machinery itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spark_trainer import profiles
from spark_trainer.errors import ParamsError
from tests.conftest import REPO, pipeline_copy, run_ok
from tests.test_import_model import SMOLLM2_SHA256

SMOLLM2_PARAMETERS = 134_515_008


def test_the_profile_is_valid_against_params_yaml_and_becomes_dvc_overrides():
    overrides = profiles.load("smollm2", repo=REPO)
    assert overrides["import_model.sha256"] == SMOLLM2_SHA256
    args = profiles.set_args({"a.b": "x y", "a.c": [1, "z"], "a.d": 3, "a.e": True, "a.f": None})
    assert args == ["-S", 'a.b="x y"', "-S", 'a.c=[1, "z"]', "-S", "a.d=3", "-S", "a.e=true", "-S", "a.f=null"]


def test_a_bad_profile_key_or_value_is_named_before_dvc_starts(tmp_path):
    (tmp_path / "configs/profiles").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "configs/profiles/typo.yaml").write_text("lora:\n  max_step: 3\n")
    with pytest.raises(ParamsError, match="did you mean 'max_steps'"):
        profiles.load("typo", repo=tmp_path)
    # each value alone is fine; together they break a rule of the section
    (tmp_path / "configs/profiles/clash.yaml").write_text("import_model:\n  source: gguf\n")
    with pytest.raises(ParamsError, match="source 'gguf' needs exactly file"):
        profiles.load("clash", repo=tmp_path)
    with pytest.raises(ParamsError, match="no profile 'nope'.*clash, typo"):
        profiles.load("nope", repo=tmp_path)
    with pytest.raises(ParamsError, match="did you mean 'max_steps'"):
        profiles.load("clash", repo=tmp_path, extra=["import_model.source=none", "lora.max_stepz=1"])


@pytest.mark.e2e
def test_smollm2_profile_runs_the_lm_branch_on_the_real_model(smoke_pipeline, tmp_path):
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    smoke = ["-S", "lora.max_steps=2", "-S", "lora.save_steps=2", "-S", "lora.logging_steps=1",
             "-S", "quantize.compare=[]", "-S", "quantize.eval_prompts=2", "-S", "quantize.max_new_tokens=2",
             "-S", "evaluate_mmlu.num_fewshot=1"]
    run_ok([sys.executable, "scripts/exp_profile.py", "smollm2", "--name", "real-smoke", *smoke,
            "evaluate_mmlu@quantized", "evaluate_mmlu@base"], root, env)
    metrics = lambda rel: json.loads((root / "metrics" / rel).read_text())

    imported = metrics("import_model.json")
    assert imported["sha256"] == SMOLLM2_SHA256 and imported["parameters"] == SMOLLM2_PARAMETERS
    assert imported["license"] == "apache-2.0" and imported["chat_template"] is True
    assert (root / "models/imported/model.safetensors").is_file()

    train = metrics("train.json")
    assert train["steps"] == 0 and train["source"] == "pretrained"
    # a pretrained model predicts the corpus far better than chance (ln 49152 = 10.8 nats)
    assert train["val_loss"] < 4.0 < train["perplexity_ratio_to_unigram"] * 100

    adapter = metrics("lora/arithmetic.json")
    assert adapter["format"] == "chat" and adapter["steps"] == 2
    assert adapter["loss"] == "answer tokens, chat template"
    assert adapter["total_parameters"] > SMOLLM2_PARAMETERS  # base + adapter

    quantized = metrics("quantize.json")
    # the Linear layers become int8; the tied embedding/output head (21% of the weights) stays fp32
    assert quantized["method"] == "dynamic_int8" and 0.5 < quantized["file_size_ratio"] < 0.7
    for name in ("base", "quantized"):
        mmlu = metrics(f"evaluate_mmlu/{name}.json")
        assert mmlu["num_fewshot"] == 1
        assert all(0 <= mmlu[fmt]["acc"]["overall"]["acc"] <= 1 for fmt in ("letter", "continuation"))

    # the experiment is in DVC's list, and --save copies what it committed
    listed = run_ok(["dvc", "exp", "show", "--no-pager", "--csv"], root, env)[0]
    assert "real-smoke" in listed
    run_ok([sys.executable, "scripts/exp_profile.py", "smollm2", "--name", "real-smoke", "--save"], root, env)
    saved = root / "results/real-smoke/metrics/import_model.json"
    assert json.loads(saved.read_text()) == imported
    # distill was not a target: its metrics in the experiment's commit are the baseline's, so not saved
    assert not (root / "results/real-smoke/metrics/distill.json").exists()
    assert (root / "results/real-smoke/metrics/evaluate_mmlu/quantized.json").is_file()
    assert "`distill`" in (root / "results/real-smoke/README.md").read_text()
    default = subprocess.run(["git", "show", "HEAD:metrics/train.json"], cwd=root, env=env, capture_output=True,
                             text=True, check=True).stdout
    assert json.loads(default)["source"] == "config"  # the default profile's commit is untouched


def test_stages_an_experiment_did_not_run_are_stale_by_their_recorded_params():
    lock = {"schema": "2.0", "stages": {
        "sample": {"params": {"params.yaml": {"sample": {"seed": 1}}}, "outs": [{"path": "data/sample"}]},
        "lora@arithmetic": {"params": {"params.yaml": {"lora.max_steps": 60, "compute": {"device": "auto"}}},
                            "outs": [{"path": "models/lora/arithmetic"}, {"path": "metrics/lora/arithmetic.json"}]},
        "distill": {"params": {"params.yaml": {"distill.max_steps": 20}}, "outs": [{"path": "metrics/distill.json"}]},
        "headline": {"outs": [{"path": "metrics/headline.json"}]},  # no params: never stale by them
        "gone": {"params": {"params.yaml": {"removed.key": 1}}, "outs": [{"path": "reports/gone"}]}}}
    params = {"sample": {"seed": 1}, "lora": {"max_steps": 60}, "compute": {"device": "auto"},
              "distill": {"max_steps": 60}}
    assert profiles.stale_stages(lock, params) == {"distill": ["metrics/distill.json"], "gone": ["reports/gone"]}


def test_profile_values_of_every_kind_reach_params_through_dvcs_override_grammar(tmp_path):
    from dvc.utils.hydra import apply_overrides

    values = {"override": {"gates": ["safety.bias", "safety.jailbreak"], "reason": "a demo: 'not' for use, {x}"},
              "name": "spark-trainer: a \"quoted\" name", "compare": ["bnb_nf4"], "none": None, "enabled": True,
              "rate": 0.0003, "steps": 60}
    path = tmp_path / "params.yaml"
    path.write_text("s:\n  override: null\n  name: x\n  compare: []\n  none: 1\n  enabled: false\n  rate: 1.0\n  steps: 1\n")
    args = profiles.set_args({f"s.{k}": v for k, v in values.items()})
    apply_overrides(path, args[1::2])
    import yaml

    assert yaml.safe_load(path.read_text())["s"] == values
