"""From step analyses to a decision, and from a decision to alias moves and the audit log.

Decision: canary and A/B stop at the first Failed step (users would be hurt by more
traffic); shadow replies are never served, so shadow runs every step and decides on the
last, largest one. Otherwise the last step's outcome is the decision.

State after the decision (the metrics' `status`):
- promoted: the challenger is the champion (moved now, or already by an earlier run);
- awaiting_approval: Successful, but params require a person (`scripts/approve.py`);
- rolled_back: Failed; the champion keeps serving and the challenger is marked failed;
- rejected: no champion yet, and the challenger misses the floors;
- unchanged: Inconclusive; nothing moves.
"""

from __future__ import annotations

import logging
from typing import Any

from spark_trainer.canary import analysis
from spark_trainer.canary.replay import Replayer
from spark_trainer.canary.traffic import Item
from spark_trainer.params import CanaryPromoteParams
from spark_trainer.registry import model_registry

log = logging.getLogger(__name__)

TAG_CANARY = "spark_trainer.canary"


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
          git_commit: str) -> str:
    """Move aliases as the decision says, append the audit record; return the status."""
    record: dict[str, Any] = {"model": name, "registry": model_registry.identity(uri, name), "challenger": challenger.version,
                              "champion_before": champion.version if champion else None,
                              "decision": decision, "mode": p.mode, "reason": reason, "git_commit": git_commit}
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
        promote(uri, name, challenger.version, champion.version if champion else None)
        model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "promoted")
        model_registry.append_audit(audit_path, {**record, "action": "promote"})
        return "promoted"
    if decision == "Failed":
        model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "failed")
        model_registry.append_audit(audit_path, {**record, "action": "rollback" if champion else "reject"})
        return "rolled_back" if champion else "rejected"
    model_registry.set_tag(uri, name, challenger.version, TAG_CANARY, "inconclusive")
    model_registry.append_audit(audit_path, {**record, "action": "none"})
    return "unchanged"


def promote(uri: str, name: str, version: str, previous: str | None) -> None:
    model_registry.set_tag(uri, name, version, model_registry.TAG_PROMOTED_FROM, previous or "none")
    model_registry.set_alias(uri, name, model_registry.CHAMPION, version)
    log.info("alias '%s' of '%s' -> version %s (was %s)", model_registry.CHAMPION, name, version, previous or "unset")


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
