"""Every stage reruns when what it runs changes: the `spark_trainer` modules a stage
script imports (directly, transitively, inside functions too) are covered by the
stage's deps in dvc.yaml, as DVC itself resolves them (foreach stages included).

A few core modules are exempt: every stage uses them, and a change to them must not
rerun the whole DAG. Each has its reason next to it.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = "spark_trainer"
SRC = Path("src")
CORE_EXEMPT = {
    "src/spark_trainer/__init__.py": "the package marker: no code",
    "src/spark_trainer/params.py": "typed params: a stage's own params section is its dep (DVC params)",
    "src/spark_trainer/outputs.py": "atomic writes and stable JSON: byte-level helpers, no results depend on them",
    "src/spark_trainer/tracking.py": "the MLflow mirror: never changes what a stage writes",
    "src/spark_trainer/stage.py": "logging, clean errors and timers at the entry point",
    "src/spark_trainer/errors.py": "the exception hierarchy: messages only",
    "src/spark_trainer/devices.py": "compute.device and ranks: the device is a param (compute) of every model stage",
    "src/spark_trainer/gpus.py": "which GPUs a launch may see (NVML): where processes run, not what they compute",
}


def module_file(root: Path, dotted: str) -> Path | None:
    """The file of `spark_trainer.x.y` (a module, or a package's __init__.py), relative to root."""
    rel = SRC.joinpath(*dotted.split("."))
    for candidate in (rel.with_suffix(".py"), rel / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def imported_modules(root: Path, path: Path) -> set[Path]:
    """The spark_trainer files that `path` imports, wherever the import statement is.
    An import that names no module of the package fails here: it would slip past the check."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse((root / path).read_text(encoding="utf-8"))):
        required: list[str] = []   # must be modules
        optional: list[str] = []   # `from x import y`: y is a submodule or a name defined in x
        if isinstance(node, ast.Import):
            required = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            required = [node.module]
            names = [f"{node.module}.{a.name}" for a in node.names]
            # the package's __init__ defines no names: `from spark_trainer import x` is a module
            (required if node.module == PACKAGE else optional).extend(names)
        for name in required + optional:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            if name in required and module_file(root, name) is None:
                raise AssertionError(f"{path}: imports {name}, which is no module of the package")
            # a package import runs every __init__.py on the way down
            for i in range(1, len(parts) + 1):
                file = module_file(root, ".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def import_closure(root: Path, script: Path) -> set[Path]:
    todo, seen = [script], set()
    while todo:
        for file in imported_modules(root, todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def stage_scripts_and_deps(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """{stage name: (its script, its deps)} through DVC's own resolution of dvc.yaml."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            scripts = [w for w in stage.cmd.split() if w.startswith("stages/") and w.endswith(".py")]
            assert len(scripts) == 1, f"{stage.name}: expected one stages/<name>.py in its cmd"
            out[stage.name] = (Path(scripts[0]), [d.def_path for d in stage.deps])
    return out


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(d) or Path(d) in file.parents for d in deps)


def uncovered(root: Path) -> list[str]:
    problems = []
    for stage, (script, deps) in sorted(stage_scripts_and_deps(root).items()):
        if not covered(script, deps):
            problems.append(f"{stage}: its script {script} is not in its deps")
        for file in sorted(import_closure(root, script)):
            if str(file) not in CORE_EXEMPT and not file.name == "__init__.py" and not covered(file, deps):
                problems.append(f"{stage}: imports {file}, which its deps in dvc.yaml do not cover")
    return problems


def test_every_imported_module_is_a_dep():
    assert uncovered(REPO) == []


def test_the_check_finds_a_removed_dep_folder(tmp_path):
    """Removing `src/spark_trainer/training` from train's deps is caught, naming both."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", "stages", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, project / name)
    (project / ".dvc").mkdir()
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = True\n    analytics = false\n")
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    dvc["stages"]["train"]["deps"].remove("src/spark_trainer/training")
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    problems = uncovered(project)
    assert any(p.startswith("train: imports src/spark_trainer/training/") for p in problems), problems
    assert not any(p.startswith("lora@") for p in problems), problems


def test_an_import_of_a_missing_module_fails_the_check(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/x.py").write_text("from spark_trainer import quantize\n")
    shutil.copytree(REPO / "src", tmp_path / "src")
    with pytest.raises(AssertionError, match="imports spark_trainer.quantize, which is no module"):
        import_closure(tmp_path, Path("stages/x.py"))


def test_init_files_hold_no_code():
    """__init__.py files are exempt above because they hold only a docstring (and the
    package's version string)."""
    for init in (REPO / SRC / PACKAGE).rglob("__init__.py"):
        for node in ast.parse(init.read_text()).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            version = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
            assert docstring or version, f"{init}: code in an __init__.py escapes the deps check"


@pytest.mark.parametrize("module", sorted(CORE_EXEMPT))
def test_exempt_modules_exist(module):
    assert (REPO / module).is_file(), f"{module} is exempt but gone: drop it from CORE_EXEMPT"
