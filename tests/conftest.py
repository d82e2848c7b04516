"""Shared fixtures: a temporary project directory with its own params.yaml and MLflow store.

The network is blocked for in-process code by pytest-socket (see pyproject addopts);
subprocesses (dvc repro) get the hubs' offline switches.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# huggingface_hub and datasets read these when first imported, which happens while test
# modules are collected, before any fixture runs: set them now.
os.environ.update(OFFLINE_ENV)

# Sizes that keep every stage to seconds while exercising the same code paths.
SMOKE_OVERRIDES = {
    "sample": {"qa_per_subject": 60, "world_towns": 8, "fact_phrasings": 1, "passages_per_subject": 12,
               "mmlu_test_per_subject": 8,
               "planted": {"exact_duplicates": 4, "near_duplicates": 4, "pii": 6, "toxic": 4},
               "media": {"videos": 2, "scene_seconds": 1.0, "fps": 10}},
    "train": {"tokenizer": {"vocab_size": 320},
              "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                        "intermediate_size": 128, "max_position_embeddings": 64},
              "block_size": 64, "batch_size": 8, "max_steps": 24, "warmup_steps": 2, "logging_steps": 4,
              "save_steps": 8},
    "lora": {"block_size": 64, "batch_size": 8,
             "max_steps": 8, "warmup_steps": 1, "logging_steps": 4, "save_steps": 4},
    "evaluate_mmlu": {"batch_size": 8},
    "quantize": {"eval_prompts": 4, "max_new_tokens": 4, "latency_repeats": 1},
    "distill": {"student": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                            "intermediate_size": 64},
                "block_size": 64, "batch_size": 8, "max_steps": 8, "warmup_steps": 1, "logging_steps": 4,
                "save_steps": 4},
    "canary_promote": {"traffic": {"max_items": 24}, "serving": {"max_new_tokens": 8},
                       "analysis": {"min_samples": 5, "bootstrap_resamples": 200},
                       "rules": {"accuracy": {"floor": None},  # a smoke model answers almost nothing right
                                 # wall-clock latency on a shared machine is noise: smoke decisions
                                 # come from the deterministic metrics (a margin no run reaches)
                                 "latency_p95_ms": {"margin": 1000.0}}},
    "ingest_video": {"frames": {"fps": 2.0}},
    "train_captioner": {"holdout": "time", "max_steps": 20, "warmup_steps": 2, "logging_steps": 5,
                        "save_steps": 10},
    "evaluate_coco": {"tokenizer": "python", "meteor": "off"},
}


def deep_merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def repo_params() -> dict:
    with (REPO / "params.yaml").open() as f:
        return yaml.safe_load(f)


def smoke_params() -> dict:
    return deep_merge(repo_params(), SMOKE_OVERRIDES)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SPARK_TRAINER_PIPELINE_RUN", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch working directory holding smoke-size params.yaml; the MLflow store is
    a sqlite file inside it."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def write_params(path: Path, params: dict) -> None:
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def venv_env() -> dict:
    """Environment for subprocesses: the current interpreter's bin first on PATH, so
    `python` in dvc.yaml commands is the project's venv."""
    import sys

    env = {**os.environ, **OFFLINE_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def copy_repo(dest: Path) -> Path:
    """The tracked files of the repository (as a fresh clone would have them)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def run_ok(cmd: list[str], cwd: Path, env: dict) -> tuple[str, str]:
    """Run a command; fail the test with its output's tail unless it exits 0."""
    import subprocess

    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout, result.stderr


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> tuple[Path, str]:
    """The repository's tracked files with smoke params, a git repo whose first commit is
    the code and second the outputs of a full `dvc repro` (DVC cache and MLflow store
    included). Built once per session; tests work on copies (`pipeline_copy`), never on it.
    Returns (root, the repro's output)."""
    root = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    write_params(root / "params.yaml", smoke_params())
    env = {**venv_env(), **GIT_ENV}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "smoke"]):
        run_ok(cmd, root, env)
    out, err = run_ok(["dvc", "repro"], root, env)
    run_ok(["git", "add", "-A"], root, env)
    run_ok(["git", "commit", "-qm", "pipeline outputs"], root, env)
    return root, out + err


def pipeline_copy(smoke_pipeline, dest: Path) -> tuple[Path, dict]:
    """A copy of the session's reproduced pipeline (git history, DVC cache, MLflow store) and
    the environment to run git and dvc in it. MLflow's artifact paths still point into the
    original's folder, which only grows."""
    root = shutil.copytree(smoke_pipeline[0], dest / "repo", symlinks=True)
    return root, {**venv_env(), **GIT_ENV}
