"""Every script in scripts/ answers --help with its usage and touches nothing."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, copy_repo, venv_env

SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A committed copy of the repository (with its metrics/, which sync_mlflow.py would mirror)."""
    root = copy_repo(tmp_path_factory.mktemp("clone"))
    env = {**venv_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    assert _changes(root) == ""
    return root, env


def _changes(root):
    """Every file added, changed or deleted since the commit, git-ignored ones (mlflow.db) included."""
    return subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                          capture_output=True, text=True, check=True).stdout


def test_scripts_are_found():
    assert {"check_params.py", "sync_mlflow.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_changes_nothing(clone, script):
    root, env = clone
    run = subprocess.run([sys.executable, f"scripts/{script}", "--help"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage:"), run.stdout[:500]
    assert _changes(root) == ""
