"""Reviewing a change: the `headline` stage, `make review` and scripts/review.py.

The fast tests run the headline stage on small fake metrics files and compare fake
dvc.lock files; the slow one runs two experiments on the session's smoke pipeline and
checks the `make review` table and the pull-request report between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spark_trainer import headline, review
from spark_trainer.errors import InputDataError
from tests.conftest import GIT_ENV, REPO, pipeline_copy, run_ok, venv_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mmlu(acc: float) -> dict:
    return {"continuation": {"acc": {"overall": {"acc": acc, "n": 240}}}, "letter": {"acc": {"overall": {"acc": 0.25}}}}


FAKE = {
    "train": {"val_loss": 1.5, "train_loss": 0.5},
    "mmlu_base": mmlu(0.5),
    "mmlu_lora_arithmetic": mmlu(0.625),
    "mmlu_quantized": mmlu(0.375),
    "mmlu_distilled": mmlu(0.25),
    "lora_arithmetic": {"target_gain": 0.2, "forgetting": 0.1},
    "quantize": {"greedy_token_agreement": 0.9, "val_perplexity_change": 0.01, "method": "dynamic_int8"},
    "distill": {"perplexity_ratio": 1.25, "alpha": 0.5},
    "safety": {"critical_issues": 0, "probes": {"toxicity": {"items": 12, "failures": 2},
                                                 "jailbreak": {"items": 6, "failures": 0},
                                                 "bias": {"items": 2, "failures": 2}}},
    "canary": {"decision": "Failed", "status": "rolled_back"},
    "coco": {"model": {"CIDEr-D": 3.5}, "constant_baseline": {"CIDEr-D": 0.5}},
    "quality_gates": {"counts": {"in": {"train": 80, "val": 10, "test": 10},
                                 "out": {"train": 70, "val": 9, "test": 8}}},
}
EXPECTED = {
    "train_val_loss": 1.5, "mmlu_base_continuation_acc": 0.5, "mmlu_lora_arithmetic_continuation_acc": 0.625,
    "mmlu_quantized_continuation_acc": 0.375, "mmlu_distilled_continuation_acc": 0.25,
    "lora_arithmetic_target_gain": 0.2, "quantize_greedy_agreement": 0.9,
    "quantize_val_perplexity_change": 0.01, "distill_perplexity_ratio": 1.25,
    "safety_pass_rate": 16 / 20, "canary_decision": -1, "coco_cider_d": 3.5, "quality_kept_fraction": 0.87,
}


def write_fake_metrics(root: Path, fake: dict) -> dict[str, Path]:
    paths = {}
    for role, content in fake.items():
        paths[role] = root / "in" / f"{role}.json"
        paths[role].parent.mkdir(parents=True, exist_ok=True)
        paths[role].write_text(json.dumps(content))
    return paths


def headline_stage():
    with (REPO / "dvc.yaml").open() as f:
        return yaml.safe_load(f)["stages"]["headline"]


# --------------------------------------------------------------------------- headline stage


def test_headline_values_from_fake_metrics(tmp_path):
    assert headline.collect(write_fake_metrics(tmp_path, FAKE)) == pytest.approx(EXPECTED)
    letter = headline.collect(write_fake_metrics(tmp_path, FAKE), "letter")
    assert letter["mmlu_base_letter_acc"] == 0.25 and "mmlu_base_continuation_acc" not in letter


def test_headline_mmlu_format_is_validated_naming_the_key():
    from spark_trainer.errors import ParamsError
    from spark_trainer.params import validate_section

    assert validate_section("headline", {"mmlu_format": "letter"}).mmlu_format == "letter"
    with pytest.raises(ParamsError, match="headline.mmlu_format"):
        validate_section("headline", {"mmlu_format": "cloze"})


def test_headline_stage_writes_the_flat_numbers(project):
    """The real stage script, run as dvc.yaml runs it: one flat JSON of numbers, byte-identical
    on a second run (deterministic), plus its timings file."""
    paths = write_fake_metrics(project, FAKE)
    out = project / "metrics" / "headline.json"
    cmd = [sys.executable, str(REPO / "stages/headline.py"), *(str(paths[r]) for r in headline.ROLES), str(out)]
    run_ok(cmd, project, {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    first = out.read_bytes()
    written = json.loads(first)
    assert written == pytest.approx(EXPECTED)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in written.values())
    assert (project / "metrics" / "headline.timings.json").is_file()
    out.unlink()
    run_ok(cmd, project, {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert out.read_bytes() == first


def test_headline_missing_key_names_file_and_key(tmp_path):
    fake = {**FAKE, "quantize": {"method": "dynamic_int8", "val_perplexity_change": 0.01}}
    with pytest.raises(InputDataError, match=r"quantize\.json: no key 'greedy_token_agreement'.*dvc repro"):
        headline.collect(write_fake_metrics(tmp_path, fake))


def test_headline_refuses_an_unknown_canary_decision_and_a_missing_file(tmp_path):
    paths = write_fake_metrics(tmp_path, {**FAKE, "canary": {"decision": "Maybe"}})
    with pytest.raises(InputDataError, match="decision is 'Maybe'; expected one of Successful, Inconclusive, Failed"):
        headline.collect(paths)
    paths["coco"].unlink()
    with pytest.raises(InputDataError, match=r"coco\.json not found"):
        headline.collect(paths)


def test_headline_keys_are_unique_across_the_repository_metrics():
    """`dvc exp show` names a column by its bare key only when no other metrics file has it;
    the review regexes rely on that."""
    others: set[str] = set()
    for path in (REPO / "metrics").rglob("*.json"):
        if path.name.endswith(".timings.json") or path.name == "headline.json":
            continue
        others |= set(review._leaves(json.loads(path.read_text())))
    keys = [h.key for h in headline.HEADLINE]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & others


def test_headline_cmd_paths_are_its_deps_in_role_order():
    stage = headline_stage()
    words = stage["cmd"].split()
    assert words[:2] == ["python", "stages/headline.py"]
    inputs, output = words[2:-1], words[-1]
    assert len(inputs) == len(headline.ROLES)
    assert [d for d in stage["deps"] if d.startswith("metrics/")] == inputs
    assert output == review.HEADLINE_FILE
    assert list(stage["metrics"][0]) == [review.HEADLINE_FILE]
    # each role's file is the one its key is named after (mmlu_quantized -> evaluate_mmlu/quantized.json)
    for role, path in zip(headline.ROLES, inputs, strict=True):
        if role.startswith("mmlu_"):
            assert path == f"metrics/evaluate_mmlu/{role.removeprefix('mmlu_')}.json"


# --------------------------------------------------------------------------- review pieces


def test_stage_changes_from_two_locks():
    def lock(quantize_method: str, quantized_md5: str) -> dict:
        return {
            "train": {"cmd": "python stages/train.py", "deps": [{"path": "data/clean", "md5": "a1", "size": 3}],
                      "params": {"params.yaml": {"train": {"max_steps": 24}}},
                      "outs": [{"path": "models/base", "md5": "b1.dir"}]},
            "quantize": {"cmd": "python stages/quantize.py", "deps": [{"path": "models/base", "md5": "b1.dir"}],
                         "params": {"params.yaml": {"quantize": {"method": quantize_method, "fallback": "none"}}},
                         "outs": [{"path": "models/quantized", "md5": quantized_md5}]},
        }

    old, new = lock("bnb_nf4", "q1.dir"), lock("dynamic_int8", "q2.dir")
    new["headline"] = {"cmd": "python stages/headline.py"}
    changes = review.stage_changes(old, new)
    assert changes["train"] == ("unchanged", [])
    assert changes["quantize"] == ("rerun", ["params: quantize.method", "outs: models/quantized"])
    assert changes["headline"] == ("added", [])
    table = review.stages_table(changes)
    assert "| quantize | **rerun** | `params: quantize.method`, `outs: models/quantized` |" in table
    assert "| train | unchanged | |" in table


def test_an_unknown_revision_is_named(tmp_path):
    env = {**venv_env(), **GIT_ENV}
    run_ok(["git", "init", "-q"], tmp_path, env)
    (tmp_path / "f").write_text("x")
    run_ok(["git", "add", "f"], tmp_path, env)
    run_ok(["git", "commit", "-qm", "x"], tmp_path, env)
    assert review.resolve(tmp_path, "HEAD").sha == run_ok(["git", "rev-parse", "HEAD"], tmp_path, env)[0].strip()
    with pytest.raises(InputDataError, match="unknown revision 'no-such-exp': neither a git revision nor a DVC "
                                             "experiment name"):
        review.resolve(tmp_path, "no-such-exp")
    result = subprocess.run([sys.executable, str(REPO / "scripts/review.py"), "HEAD", "no-such-exp"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "error: unknown revision 'no-such-exp'" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- on a real pipeline


def markdown_header(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("|"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_review_table_and_report_on_two_experiments(smoke_pipeline, tmp_path):
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    assert (root / review.HEADLINE_FILE).is_file(), "the smoke pipeline has no headline stage"
    run_ok(["dvc", "exp", "run", "--temp", "-S", "canary_promote.analysis.alpha=0.01", "-n", "a1"], root, env)
    run_ok(["dvc", "exp", "run", "--temp", "-S", "quantize.method=dynamic_int8", "-n", "q1"], root, env)

    # make review, as a user runs it (the venv's stamp counts as up to date)
    venv = Path(sys.executable).parent.parent
    table, _ = run_ok(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "-o", f"{venv}/.installed",
                       f"VENV={venv}", "review"], root, env)
    header = markdown_header(table)
    assert len(header) <= 20, header
    assert header[0] == "Experiment"
    assert {"canary_promote.analysis.alpha", "quantize.method", "mmlu_quantized_continuation_acc",
            "canary_decision"} <= set(header), header
    assert "alpha" not in header  # distill's metric of that name is not what a reviewer asked for
    assert "…" not in table
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert any("a1" in r for r in rows) and any("q1" in r for r in rows), table

    # the pull-request report between the two experiments
    out = root / "review" / "review.md"
    run_ok([sys.executable, str(REPO / "scripts/review.py"), "a1", "q1", "-o", str(out)], root, env)
    report = out.read_text()
    assert "## Params that changed" in report
    params_section = report.split("## Params that changed")[1].split("##")[0]
    assert "quantize.method" in params_section and "dynamic_int8" in params_section
    assert "canary_promote.analysis.alpha" in params_section
    headline_section = report.split("## Headline metrics")[1].split("##")[0]
    assert len([line for line in headline_section.splitlines() if line.startswith("| `")]) == len(headline.HEADLINE)
    changed_row = next(line for line in headline_section.splitlines() if "`quantize_val_perplexity_change`" in line)
    assert "**" in changed_row, headline_section  # dynamic_int8 moves the perplexity: a bold change
    assert "| `train_val_loss` |" in headline_section and "**" not in next(
        line for line in headline_section.splitlines() if "`train_val_loss`" in line)
    assert "| quantize | **rerun** |" in report
    assert "| train | unchanged | |" in report
    assert "| canary_promote | **rerun** |" in report
    images = sorted((root / "review" / "review_plots").glob("*.png"))
    assert images, report
    for image in images:
        assert image.read_bytes()[:8] == PNG_MAGIC
        assert f"](review_plots/{image.name})" in report
    assert any("quantized" in image.name for image in images)
    assert report.index("## Headline metrics") < report.index("## Other metrics")
