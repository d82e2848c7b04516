"""The canary's report says what was compared, under which rules, with which bundle, and stays
byte-identical across reruns; a local model folder can be the champion."""

import json
import shutil
from pathlib import Path

import pytest

from spark_trainer.canary import analysis, promotion, report
from spark_trainer.errors import ParamsError
from spark_trainer.params import AnalysisParams, MetricRule, validate_section
from spark_trainer.registry.model_registry import Version
from tests.conftest import deep_merge, repo_params, write_params
from tests.test_canary_analysis import ACC, SAFE, replies
from tests.test_release import (  # noqa: F401  (assets, champion_project, first_champion: fixtures)
    NAME,
    assets,
    champion_project,
    first_champion,
    metrics,
    ok,
    release_params,
    stage,
)

A = AnalysisParams(alpha=0.05, min_samples=5, bootstrap_resamples=200, failure_limit=0.05,
                   consecutive_error_limit=5, seed=3)
LATENCY = MetricRule(role="guardrail", direction="lower", min_gain=0, margin=1.0, relative=True, floor=None)
RULES = {"accuracy": ACC, "safety_pass_rate": SAFE, "latency_p95_ms": LATENCY}


def _metrics(steps, **extra):
    base = {"model": NAME, "challenger_version": 1, "champion_version": None, "champion_model": None,
            "challenger_signed": True, "challenger_signing": "signed by trusted key sha256:abc",
            "challenger_release_override": None, "champion_signed": None, "champion_signing": None,
            "champion_release_override": None, "champion_alias_after": 1, "mode": "canary", "steps_planned": [100],
            "decision": "Successful", "status": "promoted", "reason": "every floor passes", "steps": steps}
    return {**base, **extra}


def _with_latency(replies_, ms):
    for r in replies_:
        r.latency_ms = ms
    return replies_


def test_first_champion_report_has_no_empty_cells_and_states_rules_and_comparison():
    step = analysis.first_champion(replies([True] * 20, [True] * 20), RULES, A)
    stable, _ = analysis.split_volatile([step])
    comparison = promotion.comparison(Version(NAME, "1", "s", {}), None, None, "canary")
    text = report.markdown(_metrics(stable, comparison=comparison), RULES)
    assert "[, ]" not in text and "|  |" not in text and "| |" not in text
    assert "| accuracy | floor | n/a (no champion) | 1 | n/a (no champion) |" in text
    assert "- compared with: n/a (no champion) before version 1: the rules' floors only" in text
    assert "- comparison: challenger version 1 vs the rules' floors only: no version held `champion`" in text
    assert "- the registry's `champion` after this run: version 1" in text
    assert "- challenger: version 1, signed by trusted key sha256:abc" in text
    # every rule with its thresholds
    assert "| accuracy | objective | higher | 0 | 0.05 | no | none |" in text
    assert "| safety_pass_rate | guardrail | higher | 0 | 0.02 | no | 0.9 |" in text
    assert "| latency_p95_ms | guardrail | lower | 0 | 1 | yes | none |" in text


def test_comparison_names_the_champion_a_rerun_uses_again():
    challenger, champion = Version(NAME, "2", "s", {}), Version(NAME, "1", "s", {})
    assert promotion.comparison(challenger, champion, None, "canary") == (
        "challenger version 2 vs champion version 1 (the version `champion` pointed at before version 2's canary), "
        "paired tests at each step")
    assert "unpaired tests (A/B split)" in promotion.comparison(challenger, champion, None, "ab")
    local = promotion.comparison(challenger, champion, Path("models/base"), "canary")
    assert local.startswith("challenger version 2 vs the local model `models/base` as champion")


def test_report_is_the_same_whatever_the_latencies():
    texts = []
    for ms in (10.0, 55.0):
        step = analysis.step({"champion": _with_latency(replies([True] * 20, [True] * 10), ms),
                              "challenger": _with_latency(replies([True] * 20, [True] * 10), 2 * ms)},
                             True, RULES, A, 100)
        stable, volatile = analysis.split_volatile([step])
        assert volatile["step_100.latency_p95_ms"]["challenger"] == 2 * ms
        texts.append(report.markdown(_metrics(stable, champion_version=1, champion_signed=True), RULES))
    assert texts[0] == texts[1]
    assert "latency_p95_ms: **" in texts[0] and "metrics/canary_promote.timings.json" in texts[0]
    assert "| accuracy | mcnemar_exact | 1 | 1 | 0 | [0, 0] | 0 | 1 | pass |" in texts[0]


def test_release_override_and_local_champion_are_shown():
    override = {"gates": ["safety.bias", "safety.toxicity"], "reason": "probes too small to judge",
                "failed": {"safety.bias": {"pass_rate": 0.55, "min_pass_rate": 0.6, "passed": False}},
                "unused": ["safety.toxicity"]}
    text = report.markdown(_metrics([], challenger_release_override=override, champion_model="models/base"))
    assert ("- release override of version 1 (its bundle's lineage.json): **released despite its gates: "
            "`safety.bias`, `safety.toxicity`**; reason: probes too small to judge; failed: `safety.bias` (pass rate "
            "0.55, min 0.6); unused: safety.toxicity") in text
    assert "- compared with: local model `models/base`" in text
    assert "release override of version 1 (its bundle's lineage.json): none" in report.markdown(_metrics([]))


def test_fetched_bundle_reports_the_verified_signing_state_and_its_release_override(tmp_path):
    from spark_trainer.packaging import signing
    from spark_trainer.registry import model_registry
    from tests.test_bundle_safety import bundle, signed_bundle
    from tests.test_release import register_params

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    override = {"gates": ["safety.bias"], "reason": "why", "failed": {}, "unused": []}
    unsigned = bundle(tmp_path / "u", {"lineage.json": json.dumps({"release_override": override}).encode()})
    tags = {model_registry.TAG_DIGEST: signing.verify_bundle(unsigned).digest, model_registry.TAG_SIGNED: "true"}
    _, facts = promotion.fetch_bundle(uri, Version(NAME, "1", str(unsigned), tags), register_params())
    # the tag claims a signature; the verification finds none
    assert facts == {"signed": False, "signing": "unsigned", "release_override": override}

    root, digest = signed_bundle(tmp_path / "s")
    version = Version(NAME, "2", str(root), {model_registry.TAG_DIGEST: digest, model_registry.TAG_SIGNED: "false"})
    _, facts = promotion.fetch_bundle(uri, version, register_params(trusted_public_keys=[str(tmp_path / "s/k.pub")]))
    assert facts["signed"] and facts["signing"].startswith("signed by trusted key sha256:")
    assert facts["release_override"] is None
    _, facts = promotion.fetch_bundle(uri, version, register_params())
    assert facts["signing"].startswith("signed, but not by a verified trusted key")


def test_local_champion_folder_is_checked_naming_the_key(tmp_path, monkeypatch):
    def params(champion):
        return validate_section("canary_promote", deep_merge(repo_params()["canary_promote"],
                                                             {"serving": {"champion": champion}}))

    http = params({"adapter": "openai", "url": "http://127.0.0.1:1", "model": "models/base"})
    none, base = params({"model": ""}), params({"model": "models/base"})  # validated in the repository
    with pytest.raises(ParamsError, match=r"serving.challenger.model must be '' with adapter in_process"):
        validate_section("canary_promote", deep_merge(repo_params()["canary_promote"],
                                                      {"serving": {"challenger": {"model": "models/base"}}}))
    monkeypatch.chdir(tmp_path)
    assert promotion.local_champion(none) is None
    assert promotion.local_champion(http) is None  # a server's model name, not a folder
    with pytest.raises(ParamsError, match=r"canary_promote.serving.champion.model: 'models/base' is not a folder"):
        promotion.local_champion(base)
    (tmp_path / "models/base").mkdir(parents=True)
    with pytest.raises(ParamsError, match=r"champion.model: 'models/base' holds no config.json"):
        promotion.local_champion(base)
    (tmp_path / "models/base/config.json").write_text("{}")
    assert promotion.local_champion(base) == Path("models/base")


def test_rerun_is_byte_identical_and_a_local_champion_is_compared(champion_project, assets):  # noqa: F811
    project = champion_project  # version 1 is champion, promoted through the floors
    tracked = ("reports/canary.md", "metrics/canary_promote.json")
    before = {f: (project / f).read_bytes() for f in tracked}
    ok(stage(project, "canary_promote"))  # a rerun: the same bytes, though every latency differs
    assert {f: (project / f).read_bytes() for f in tracked} == before
    text = before["reports/canary.md"].decode()
    assert "the registry's `champion` after this run: version 1" in text and "[, ]" not in text

    # The untrained model1 folder as the champion: version 1 is compared with it, step by step.
    local = shutil.copytree(assets / "model1", project / "models/base")
    write_params(project / "params.yaml", release_params(assets, canary_promote={
        "serving": {"champion": {"model": "models/base"}}, "rules": {"latency_p95_ms": {"margin": 1000.0}}}))
    ok(stage(project, "canary_promote"))
    result = metrics(project, "canary_promote")
    assert result["champion_model"] == "models/base" and result["champion_version"] is None
    assert result["comparison"].startswith("challenger version 1 vs the local model `models/base` as champion")
    assert [s["traffic_percent"] for s in result["steps"]] == [50, 100]
    assert result["steps"][-1]["metrics"]["accuracy"]["test"] == "mcnemar_exact"
    assert set(result["steps"][-1]["errors"]) == {"champion", "challenger"}
    assert "- compared with: local model `models/base`" in (project / "reports/canary.md").read_text()
    assert result["challenger_signing"].startswith("signed by trusted key sha256:")
    assert result["challenger_release_override"] is None

    (local / "config.json").unlink()
    run = stage(project, "canary_promote")
    assert run.returncode == 2 and "canary_promote.serving.champion.model" in run.stderr
    assert "no config.json" in run.stderr and json.loads((project / tracked[1]).read_text()) == result
