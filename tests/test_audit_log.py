"""The audit log `registry/promotions.jsonl`: every alias move is written before it happens,
a malformed line never stops a move from being recorded, and approval rests on the
canary's record, not on an editable MLflow tag.

Registries come from tests/test_release.py's fixtures: version 1 packaged, registered and
promoted as first champion; here version 2 (another model) is registered as challenger."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from spark_trainer.errors import RegistryError
from spark_trainer.params import validate_section
from spark_trainer.registry import model_registry
from tests.conftest import REPO, write_params
from tests.test_release import NAME, aliases, assets, first_champion, ok, release_params, stage  # noqa: F401

LOG = "registry/promotions.jsonl"
PASSING = {"rules": {"latency_p95_ms": {"margin": 1000.0}}}  # see test_release: Successful on every machine


def params(assets, **overrides) -> dict:  # noqa: F811
    """test_release's params for version 2: the second model."""
    return release_params(assets, package={"model": str(assets / "model1")}, **overrides)


@pytest.fixture(scope="module")
def two_versions(first_champion, assets, tmp_path_factory):  # noqa: F811
    """Champion version 1, challenger version 2."""
    project = Path(shutil.copytree(first_champion, tmp_path_factory.mktemp("two") / "project"))
    write_params(project / "params.yaml", params(assets))
    ok(stage(project, "package"))
    ok(stage(project, "register"))
    return project


@pytest.fixture
def workspace(two_versions, tmp_path, monkeypatch):
    """A private copy of `two_versions`, as the working directory of in-process calls."""
    project = Path(shutil.copytree(two_versions, tmp_path / "project"))
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return project


def records(project) -> list[dict]:
    return [json.loads(line) for line in (project / LOG).read_text().splitlines()]


def approve_script():
    spec = importlib.util.spec_from_file_location("approve", REPO / "scripts/approve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def canary(project, assets, require_approval: bool) -> str:  # noqa: F811
    """promotion.apply as canary_promote calls it after a Successful analysis of version 2."""
    from spark_trainer.canary import promotion

    uri = f"sqlite:///{project / 'mlflow.db'}"
    p = validate_section("canary_promote", params(
        assets, canary_promote={**PASSING, "require_approval": require_approval})["canary_promote"])
    champion = model_registry.resolve_alias(uri, NAME, model_registry.CHAMPION)
    challenger = model_registry.resolve_alias(uri, NAME, model_registry.CHALLENGER)
    return promotion.apply(uri, NAME, "Successful", "non-inferior", champion, challenger, False, p, project / LOG,
                           "abc123")


def corrupt(project) -> dict[int, str]:
    """Add a JSON list, garbage and a record without keys, then a truncated record with no
    newline (a crash mid-write); returns {line number: kind}."""
    log = project / LOG
    lines = log.read_bytes().splitlines()
    n = len(lines)
    log.write_bytes(b"\n".join(lines) + b'\n["a", "list"]\n\xff garbage }{\n{"model": "x"}\n{"action": "prom')
    return {n + 1: "list", n + 2: "not JSON", n + 3: "no time", n + 4: "not JSON"}


def assert_warned(text: str, bad: dict[int, str]) -> None:
    for number, kind in bad.items():
        assert f"promotions.jsonl:{number}: skipped a malformed audit record" in text, (number, text[-3000:])
        assert kind in text


def test_register_records_the_challenger_move(two_versions, tmp_path):
    moves = [(r["action"], r.get("alias"), r.get("version"), r.get("previous")) for r in records(two_versions)]
    assert moves == [("register", "challenger", "1", None), ("promote", "champion", "1", None),
                     ("register", "challenger", "2", "1")]
    assert records(two_versions)[-1]["digest"].startswith("sha256:")
    project = Path(shutil.copytree(two_versions, tmp_path / "rerun"))
    ok(stage(project, "register"))  # the alias already points there: nothing moves, nothing is added
    assert records(project) == records(two_versions)


def test_malformed_lines_do_not_stop_canary_promotion(two_versions, assets, tmp_path):  # noqa: F811
    project = Path(shutil.copytree(two_versions, tmp_path / "project"))
    bad = corrupt(project)
    write_params(project / "params.yaml", params(assets, canary_promote=PASSING))
    run = ok(stage(project, "canary_promote"))
    assert aliases(project)["champion"] == "2"
    assert_warned(run.stderr, bad)
    lines = (project / LOG).read_bytes().splitlines()
    assert lines[-2] == b'{"action": "prom'  # left as it was; the new record on a line of its own
    last = json.loads(lines[-1])
    assert (last["action"], last["alias"], last["version"], last["previous"]) == ("promote", "champion", "2", "1")


def test_malformed_lines_do_not_stop_approval(workspace, assets, caplog):  # noqa: F811
    assert canary(workspace, assets, require_approval=True) == "awaiting_approval"
    waiting = records(workspace)[-1]
    assert (waiting["action"], waiting["champion_before"]) == ("awaiting_approval", "1")
    bad = corrupt(workspace)
    approve_script().approve(NAME, "2", "Ada")
    assert waiting["digest"] == model_registry.get_version(f"sqlite:///{workspace / 'mlflow.db'}", NAME, "2").tags[
        model_registry.TAG_DIGEST]
    assert aliases(workspace)["champion"] == "2"
    assert_warned(caplog.text, bad)
    last = model_registry.read_audit(workspace / LOG)[-1]
    assert (last["action"], last["by"], last["alias"], last["version"], last["previous"], last["canary_record"]) == (
        "approve", "Ada", "champion", "2", "1", waiting["time"])


@pytest.mark.parametrize("path", ["canary", "approve --force"])
def test_the_record_is_written_before_the_alias_moves(workspace, assets, monkeypatch, path):  # noqa: F811
    seen = []

    def failing_set_alias(uri, name, alias, version):
        seen.append(records(workspace)[-1])  # what the log held when the alias was about to move
        raise RuntimeError("registry down at http://ada:s3cret@registry.example/api")

    monkeypatch.setattr(model_registry, "set_alias", failing_set_alias)
    with pytest.raises(RuntimeError, match="registry down"):
        if path == "canary":
            canary(workspace, assets, require_approval=False)
        else:
            approve_script().approve(NAME, "2", "Ada", force=True)
    action = "promote" if path == "canary" else "approve_forced"
    intent, failure = records(workspace)[-2:]
    assert seen == [intent]
    assert (intent["action"], intent["alias"], intent["version"], intent["previous"]) == (action, "champion", "2", "1")
    assert (failure["action"], failure["failed_action"], failure["version"]) == ("move_failed", action, "2")
    assert "registry down" in failure["error"] and "s3cret" not in (workspace / LOG).read_text()
    assert aliases(workspace)["champion"] == "1"


def test_a_hand_set_tag_is_not_approval(workspace):
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    model_registry.set_tag(uri, NAME, "2", "spark_trainer.canary", "awaiting_approval")
    before = (workspace / LOG).read_text()
    with pytest.raises(RegistryError, match="not awaiting approval.*latest canary record .* is 'none'"):
        approve_script().approve(NAME, "2", "Mallory")
    assert aliases(workspace)["champion"] == "1" and (workspace / LOG).read_text() == before


def test_a_changed_digest_is_refused(workspace, assets):  # noqa: F811
    canary(workspace, assets, require_approval=True)
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    model_registry.set_tag(uri, NAME, "2", model_registry.TAG_DIGEST, "sha256:" + "0" * 64)
    with pytest.raises(RegistryError, match="not the bundle its canary .* tested: registered digest sha256:000"):
        approve_script().approve(NAME, "2", "Ada")
    assert aliases(workspace)["champion"] == "1"


def test_a_bundle_that_no_longer_verifies_is_refused(workspace, assets):  # noqa: F811
    canary(workspace, assets, require_approval=True)
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    source = model_registry.get_version(uri, NAME, "2").bundle_source
    weights = Path(source.removeprefix("file://")) / "model.safetensors"
    original = weights.read_bytes()  # the artifact store is shared with the module's projects: restore it
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
        with pytest.raises(RegistryError, match="(?s)refusing to approve .*model.safetensors"):
            approve_script().approve(NAME, "2", "Ada")
    finally:
        weights.write_bytes(original)
    assert aliases(workspace)["champion"] == "1"


def test_a_champion_moved_since_the_canary_is_refused(workspace, assets):  # noqa: F811
    canary(workspace, assets, require_approval=True)
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").delete_registered_model_alias(NAME, "champion")
    with pytest.raises(RegistryError, match="'champion' of .* has moved since the canary .* version 1: it is now unset"):
        approve_script().approve(NAME, "2", "Ada")
    assert "champion" not in aliases(workspace)


def test_forced_approval_is_recorded_as_forced(workspace):
    message = approve_script().approve(NAME, "2", "Ada", force=True)
    assert "version 2 (was 1)" in message and aliases(workspace)["champion"] == "2"
    last = records(workspace)[-1]
    assert (last["action"], last["forced"], last["by"], last["alias"], last["previous"], last["canary_record"]) == (
        "approve_forced", True, "Ada", "champion", "1", None)
