"""From step analyses to a decision, and from a decision to alias moves and the audit log.

Decision: canary and A/B stop at the first Failed step (users would be hurt by more
traffic); shadow replies are never served, so shadow runs every step and decides on the
last, largest one. Otherwise the last step's outcome is the decision.

State after the decision (the metrics' `status`):
- promoted: the challenger is the champion (moved now, or already by an earlier run);
- awaiting_approval: Successful, but params require a person (`scripts/approve.py`, which
  checks this record's digest and champion still hold: `awaiting_record`);
- rolled_back: Failed; the champion keeps serving and the challenger is marked failed;
- rejected: no champion yet, and the challenger misses the floors;
- unchanged: Inconclusive; nothing moves.

The champion served is the registry's `champion` alias, or a local model folder
(`serving.champion` with `adapter: in_process` and `model: <folder>`, e.g. the imported
base model): the challenger is then compared with that folder, while the aliases move
as the decision says, exactly as with a registry champion.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from spark_trainer.canary import analysis
from spark_trainer.canary.replay import Replayer
from spark_trainer.canary.traffic import Item
from spark_trainer.errors import ParamsError, RegistryError, SparkTrainerError
from spark_trainer.params import CanaryPromoteParams, RegisterParams
from spark_trainer.registry import model_registry, release

log = logging.getLogger(__name__)

TAG_CANARY = "spark_trainer.canary"
# Audit actions that settle a canary's challenger: the latest one is its state.
DECISIONS = ("awaiting_approval", "promote", "rollback", "reject", "none", "approve", "approve_forced")


def local_champion(p: CanaryPromoteParams) -> Path | None:
    """The model folder `serving.champion.model` names for an in-process champion (None:
    the registry's champion alias), checked before anything is loaded."""
    ep = p.serving.champion
    if ep.adapter != "in_process" or not ep.model:
        return None
    folder = Path(ep.model)
    key = "canary_promote.serving.champion.model"
    if not folder.is_dir():
        raise ParamsError(f"{key}: '{folder}' is not a folder: run `dvc repro` for the stage that writes it "
                          "(models/base: train), or set it to '' to serve the registry's champion")
    if not (folder / "config.json").is_file():
        raise ParamsError(f"{key}: '{folder}' holds no config.json, so it is not a model folder in the Hugging Face "
                          "layout: point it at one (e.g. models/base), or set it to '' to serve the registry's "
                          "champion")
    return folder


def fetch_bundle(uri: str, version: model_registry.Version, reg: RegisterParams) -> tuple[Path, dict[str, Any]]:
    """The version's bundle, verified under the release policy, and what the report says of
    it: the signing state the verification proved (not the registry's tag, which anyone with
    access can set) and the release override its lineage records (null: none)."""
    path = model_registry.fetch_verified(uri, version, reg)
    check = release.verify_release(path, reg)  # fetch_verified keeps its verification to itself
    lineage_file = path / "lineage.json"  # every packaged bundle has one; without it nothing is overridden
    lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.is_file() else {}
    return path, {"signed": check.signed, "signing": check.state, "release_override": lineage.get("release_override")}


def comparison(challenger: model_registry.Version, champion: model_registry.Version | None, local: Path | None,
               mode: str) -> str:
    """What the challenger is compared with, and why, in one sentence. `champion` is the
    version the analysis used, which a rerun after a promotion uses again (`baseline`), so
    the sentence, like the numbers, is the same on every rerun of the same inputs."""
    me = f"challenger version {challenger.version}"
    tests = "paired tests" if mode != "ab" else "unpaired tests (A/B split)"
    if local is not None:
        return (f"{me} vs the local model `{local}` as champion (canary_promote.serving.champion.model), {tests} at "
                "each step; the registry's `champion` alias is not compared, and moves as the decision says")
    if champion is not None:
        return (f"{me} vs champion version {champion.version} (the version `champion` pointed at before version "
                f"{challenger.version}'s canary), {tests} at each step")
    return (f"{me} vs the rules' floors only: no version held `champion` before it, so there is no model to "
            "compare it with")


def run_steps(replayer: Replayer, items: list[Item], p: CanaryPromoteParams) -> tuple[str, str, list[dict[str, Any]]]:
    steps: list[dict[str, Any]] = []
    for percent in p.steps:
        replies = replayer.route(p.mode, items, percent, p.analysis.seed)
        result = analysis.step(replies, p.mode != "ab", p.rules, p.analysis, percent)
        steps.append(result)
        log.info("step %d%% (%s): %s (%s)", percent, p.mode, result["outcome"], result["reason"])
        if result["outcome"] == "Failed" and p.mode != "shadow":
            break
    return steps[-1]["outcome"], steps[-1]["reason"], steps


def apply(uri: str, name: str, decision: str, reason: str, champion: model_registry.Version | None,
          challenger: model_registry.Version, already_champion: bool, p: CanaryPromoteParams, audit_path,
          git_commit: str, local: Path | None = None) -> str:
    """Move aliases as the decision says, append the audit record; return the status.

    Every record names the challenger's bundle digest and the champion it was compared
    with: an `awaiting_approval` record is what `scripts/approve.py` checks both against.
    With a local champion, `champion_before` is still the alias's version (what a move
    replaces) and `champion_model` names the folder the analysis compared with."""
    record: dict[str, Any] = {"model": name, "registry": model_registry.identity(uri, name),
                              "challenger": challenger.version, "digest": challenger.tags.get(model_registry.TAG_DIGEST),
                              "champion_before": champion.version if champion else None,
                              "decision": decision, "mode": p.mode, "reason": reason, "git_commit": git_commit}
    if local is not None:
        record["champion_model"] = str(local)
    if already_champion:
        if decision != "Successful":
            log.warning("version %s is already champion, but the rerun analysis says %s: %s; aliases untouched "
                        "(move them with scripts/approve.py)", challenger.version, decision, reason)
        return "promoted"
    if decision == "Successful" and p.require_approval:
        model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "awaiting_approval")
        model_registry.append_audit(audit_path, {**record, "action": "awaiting_approval"})
        return "awaiting_approval"
    if decision == "Successful":
        promote(uri, name, challenger.version, champion.version if champion else None, audit_path,
                {**record, "action": "promote"})
        model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "promoted")
        return "promoted"
    if decision == "Failed":
        model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "failed")
        model_registry.append_audit(audit_path, {**record, "action": "rollback" if champion else "reject"})
        return "rolled_back" if champion else "rejected"
    model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "inconclusive")
    model_registry.append_audit(audit_path, {**record, "action": "none"})
    return "unchanged"


def promote(uri: str, name: str, version: str, previous: str | None, audit_path, record: dict[str, Any]) -> None:
    """Move `champion` to `version`, `record` written to the audit log first (`move_alias`)."""
    model_registry.set_tag(uri, name, version, model_registry.TAG_PROMOTED_FROM, previous or "none")
    model_registry.move_alias(uri, name, model_registry.CHAMPION, version, audit_path, record)


def awaiting_record(uri: str, version: model_registry.Version, champion: model_registry.Version | None,
                    audit_path, release: RegisterParams) -> dict[str, Any]:
    """The canary's `awaiting_approval` record that approving `version` rests on, after
    checking that nothing it vouched for has changed: the version's latest canary record
    is that one, the registered bundle digest is the one the canary tested, the bundle
    still fetches and verifies, and `champion` is the version it was compared with.

    The `spark_trainer.canary` tag is not evidence: anyone with registry access can set it."""
    again = "run the canary again (`dvc repro canary_promote`), or approve with --force"
    me = model_registry.identity(uri, version.name)
    decisions = [r for r in model_registry.completed(model_registry.read_audit(audit_path))
                 if r.get("registry") == me and str(r.get("challenger")) == version.version
                 and r.get("action") in DECISIONS]
    if not decisions or decisions[-1]["action"] != "awaiting_approval":
        last = decisions[-1]["action"] if decisions else "none"
        raise RegistryError(f"{version.uri} is not awaiting approval: its latest canary record in {audit_path} is "
                            f"'{last}' (a {TAG_CANARY} tag alone does not count); {again}")
    record = decisions[-1]
    digest = version.tags.get(model_registry.TAG_DIGEST)
    if record.get("digest") != digest:
        raise RegistryError(f"{version.uri} is not the bundle its canary ({record['time']}) tested: registered digest "
                            f"{digest}, canary record {record.get('digest') or 'none'}; {again}")
    now = champion.version if champion else None
    if now != record.get("champion_before"):
        raise RegistryError(f"'{model_registry.CHAMPION}' of '{version.name}' has moved since the canary "
                            f"({record['time']}) compared {version.uri} with version "
                            f"{record.get('champion_before') or 'none'}: it is now {now or 'unset'}; {again}")
    try:
        model_registry.fetch_verified(uri, version, release)
    except SparkTrainerError as e:
        raise RegistryError(f"refusing to approve {version.uri}: {e}") from e
    return record


def baseline(uri: str, name: str, champion: model_registry.Version | None,
             challenger: model_registry.Version) -> tuple[model_registry.Version | None, bool]:
    """What the challenger is compared with, and whether it is already champion.

    When the challenger already holds `champion` (a rerun after promotion), it is
    compared again with the version it replaced, so a rerun reaches the same numbers."""
    if champion is None or champion.version != challenger.version:
        return champion, False
    previous = challenger.tags.get(model_registry.TAG_PROMOTED_FROM, "none")
    if previous == "none":
        return None, True
    return model_registry.get_version(uri, name, previous), True
