"""Approve a challenger that passed the canary while canary_promote.require_approval is on:
move the `champion` alias to it and record who approved, in the registry and the audit log.

    python scripts/approve.py spark-trainer-arithmetic 3 --by "Ada Lovelace"

Approval rests on the canary's `awaiting_approval` record in registry/promotions.jsonl,
not on the version's `spark_trainer.canary` tag (anyone with registry access can set a
tag). It is refused, saying what changed, unless the version's latest canary record is
`awaiting_approval`, its registered bundle digest is still the one that record names,
the bundle still fetches and verifies under the `register` release policy, and
`champion` is still the version the canary compared it with. `--force` skips these
checks for any live version, and the log records the approval as forced
(`approve_forced`). The audit record is written before the alias moves.
"""

from __future__ import annotations

import argparse
import logging
import sys

from spark_trainer import tracking
from spark_trainer.canary import promotion
from spark_trainer.errors import SparkTrainerError
from spark_trainer.params import RegisterParams, TrackingParams, load_section
from spark_trainer.registry import model_registry

AUDIT = "registry/promotions.jsonl"

log = logging.getLogger("approve")


def approve(model: str, version: str, by: str, force: bool = False, audit: str = AUDIT) -> str:
    settings: TrackingParams = load_section("tracking")  # type: ignore[assignment]
    uri = tracking.tracking_uri(settings)
    target = model_registry.get_version(uri, model, version)  # a deleted version fails here, clearly
    champion = model_registry.resolve_alias(uri, model, model_registry.CHAMPION)
    previous = champion.version if champion else None
    if force:
        log.warning("forced approval of %s by %s: the canary checks are skipped", target.uri, by)
        canary = None
    else:
        release: RegisterParams = load_section("register")  # type: ignore[assignment]
        canary = promotion.awaiting_record(uri, target, champion, audit, release)
    record = {"model": model, "registry": model_registry.identity(uri, model), "challenger": version,
              "champion_before": previous, "digest": target.tags.get(model_registry.TAG_DIGEST),
              "action": "approve_forced" if force else "approve", "forced": force, "by": by,
              "canary_record": canary["time"] if canary else None, "decision": "approved", "mode": "manual",
              "reason": f"approved by {by}" + (" (forced)" if force else ""),
              "git_commit": tracking.git_tags().get(tracking.TAG_GIT_COMMIT, "unknown")}
    promotion.promote(uri, model, version, previous, audit, record)
    model_registry.set_tag(uri, model, version, model_registry.TAG_APPROVED_BY, by)
    model_registry.set_tag(uri, model, version, promotion.TAG_CANARY, "promoted")
    return f"'{model}' champion -> version {version} (was {previous or 'unset'}), approved by {by}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("version")
    parser.add_argument("--by", required=True, help="who approves (recorded)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        print(approve(args.model, args.version, args.by, args.force))
    except SparkTrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
