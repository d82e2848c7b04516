"""Checkpoints from outside the pipeline are params and deps: every param that names one
accepts only "" or a path under models/external/<kind>/ (or, where it says so, a hub id),
and that folder is a dep of every stage that reads the param. A hub id never reaches
dvc.yaml, so DVC resolves the DAG whatever such a param holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import AfterValidator

from spark_trainer.errors import ParamsError
from spark_trainer.params import EXTERNAL_DIR, SECTIONS, Section, _ExternalCheck, validate_section
from tests.conftest import REPO, deep_merge, repo_params

HUB_ID = "some-org/some-model"


def external_params() -> list[tuple[str, str, bool]]:
    """(dotted key, kind, hub_ok) of every ExternalPath param, found on the typed sections."""
    found = []

    def walk(model: type[Section], prefix: str) -> None:
        for name, field in model.model_fields.items():
            checks = [m.func for m in field.metadata if isinstance(m, AfterValidator)]
            for check in checks:
                if isinstance(check, _ExternalCheck):
                    found.append((f"{prefix}.{name}", check.kind, check.hub_ok))
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, Section):
                walk(annotation, f"{prefix}.{name}")

    for section, model in SECTIONS.items():
        walk(model, section)
    return sorted(found)


EXTERNAL = external_params()


def nested(dotted: str, value) -> dict:
    out: dict = value
    for part in reversed(dotted.split(".")[1:]):
        out = {part: out}
    return out


def with_value(dotted: str, value: str) -> tuple[str, dict]:
    section = dotted.split(".")[0]
    raw = deep_merge(repo_params()[section], nested(dotted, value))
    if dotted.startswith("quality_gates.toxicity."):  # checkpoint and its config go together
        for key in ("checkpoint", "huggingface_config_path"):
            if raw["toxicity"][key] == "" and value != "":
                raw["toxicity"][key] = f"{EXTERNAL_DIR}/detoxify/{key}"
    # A checkpoint file is pinned by its sha256 (checked when it is loaded).
    for pinned in ("quality_gates.toxicity", "ingest_video.transcription"):
        if dotted.startswith(pinned + ".") and value != "":
            node = raw
            for part in pinned.split(".")[1:]:
                node = node[part]
            node["checkpoint_sha256"] = "0" * 64
    if dotted == "import_model.folder" and value != "":  # a folder is read only with source: folder
        raw["source"], raw["sha256"] = "folder", "0" * 64
    return section, raw


def test_every_kind_of_checkpoint_is_a_param():
    assert {kind for _, kind, _ in EXTERNAL} == {"detoxify", "whisper", "spacy", "captioner", "lm"}
    assert {"quality_gates.toxicity.checkpoint", "ingest_video.transcription.checkpoint",
            "quality_gates.pii.spacy_model", "ingest_video.captions.model",
            "train.model.pretrained"} <= {key for key, _, _ in EXTERNAL}


@pytest.mark.parametrize(("dotted", "kind", "hub_ok"), EXTERNAL)
def test_a_checkpoint_outside_its_folder_is_refused_naming_key_and_fix(dotted, kind, hub_ok):
    section, raw = with_value(dotted, "/opt/elsewhere/model.bin")
    with pytest.raises(ParamsError) as e:
        validate_section(section, raw)
    assert dotted in str(e.value) and f"{EXTERNAL_DIR}/{kind}/" in str(e.value)
    section, raw = with_value(dotted, f"{EXTERNAL_DIR}/{kind}/model.bin")
    validate_section(section, raw)


@pytest.mark.parametrize(("dotted", "kind", "hub_ok"), EXTERNAL)
def test_hub_ids_only_where_a_param_says_so(dotted, kind, hub_ok):
    section, raw = with_value(dotted, HUB_ID)
    if hub_ok:
        validate_section(section, raw)
    else:
        with pytest.raises(ParamsError, match=dotted.replace(".", r"\.")):
            validate_section(section, raw)


@pytest.mark.parametrize(("dotted", "value"), [
    ("evaluate_mmlu.source", "cais/mmlu"),
    ("evaluate_coco.model", "nlpconnect/vit-gpt2-image-captioning"),
    ("quantize.model", "HuggingFaceTB/SmolLM2-135M"),
    ("distill.teacher", "https://example.org/model"),
])
def test_dep_params_refuse_hub_ids(dotted, value):
    section, raw = with_value(dotted, value)
    with pytest.raises(ParamsError, match="must be a local path"):
        validate_section(section, raw)


def test_detoxify_checkpoint_needs_its_config_folder():
    raw = deep_merge(repo_params()["quality_gates"], {"toxicity": {"checkpoint": f"{EXTERNAL_DIR}/detoxify/t.ckpt",
                                                                   "checkpoint_sha256": "0" * 64}})
    with pytest.raises(ParamsError, match="checkpoint and huggingface_config_path go together"):
        validate_section("quality_gates", raw)


def resolved_stages(project: Path) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (dep paths, params keys)} as DVC resolves them."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            paths = [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)]
            keys = [k for d in stage.deps if isinstance(d, ParamsDependency) for k in d.params]
            out[stage.name] = (paths, keys)
    return out


@pytest.fixture
def dag_only(tmp_path):
    """dvc.yaml and params.yaml alone, enough for DVC to resolve the DAG."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = True\n    analytics = false\n")
    return tmp_path


def test_each_external_folder_is_a_dep_of_every_stage_that_reads_its_param(dag_only):
    for stage, (paths, keys) in resolved_stages(dag_only).items():
        for dotted, kind, _ in EXTERNAL:
            reads = any(dotted == k or dotted.startswith(k + ".") for k in keys)
            if reads:
                assert f"{EXTERNAL_DIR}/{kind}" in paths, f"{stage} reads {dotted} but does not depend on " \
                                                          f"{EXTERNAL_DIR}/{kind}"


def test_the_dag_resolves_with_hub_ids_in_params(dag_only):
    params = yaml.safe_load((dag_only / "params.yaml").read_text())
    hub_keys = [d for d, _, hub_ok in EXTERNAL if hub_ok] + ["evaluate_mmlu.hub_dataset"]
    for dotted in hub_keys:
        params = deep_merge(params, {dotted.split(".")[0]: nested(dotted, HUB_ID)})
    (dag_only / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = resolved_stages(dag_only)
    assert len(stages) == len(resolved_stages(REPO))
    assert all(HUB_ID not in path for paths, _ in stages.values() for path in paths)


def test_external_folders_exist_in_a_clone():
    """DVC stops on a dep path that does not exist: each folder holds a tracked .keep."""
    for kind in {kind for _, kind, _ in EXTERNAL}:
        assert (REPO / EXTERNAL_DIR / kind / ".keep").is_file()
