"""Approve a challenger that passed the canary while canary_promote.require_approval is on:
move the `champion` alias to it and record who approved, in the registry and the audit log.

    python scripts/approve.py spark-trainer-arithmetic 3 --by "Ada Lovelace"

Refused unless the version's last canary decision is awaiting approval (see
registry/promotions.jsonl); `--force` approves any live version, and says so in the log.
"""

from __future__ import annotations

import argparse
import sys

from spark_trainer import tracking
from spark_trainer.canary import promotion
from spark_trainer.errors import SparkTrainerError
from spark_trainer.params import TrackingParams, load_section
from spark_trainer.registry import model_registry

AUDIT = "registry/promotions.jsonl"


def approve(model: str, version: str, by: str, force: bool = False, audit: str = AUDIT) -> str:
    settings: TrackingParams = load_section("tracking")  # type: ignore[assignment]
    uri = tracking.tracking_uri(settings)
    target = model_registry.get_version(uri, model, version)  # a deleted version fails here, clearly
    state = target.tags.get(promotion.TAG_CANARY)
    if state != "awaiting_approval" and not force:
        raise SparkTrainerError(f"{target.uri} is not awaiting approval (canary state: {state or 'none'}); "
                                "run the canary first, or pass --force to approve it anyway")
    champion = model_registry.resolve_alias(uri, model, model_registry.CHAMPION)
    previous = champion.version if champion else None
    promotion.promote(uri, model, version, previous)
    model_registry.set_tag(uri, model, version, model_registry.TAG_APPROVED_BY, by)
    model_registry.set_tag(uri, model, version, promotion.TAG_CANARY, "promoted")
    model_registry.append_audit(audit, {"model": model, "registry": model_registry.identity(uri, model), "challenger": version, "champion_before": previous,
                                  "action": "approve" if not force else "approve_forced", "by": by,
                                  "decision": "approved", "mode": "manual",
                                  "reason": f"approved by {by}" + (" (forced)" if force else ""),
                                  "git_commit": tracking.git_tags().get(tracking.TAG_GIT_COMMIT, "unknown")})
    return f"'{model}' champion -> version {version} (was {previous or 'unset'}), approved by {by}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("version")
    parser.add_argument("--by", required=True, help="who approves (recorded)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(approve(args.model, args.version, args.by, args.force))
    except SparkTrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
