"""Verify the bundle and register it, as an MLflow transformers model, in the MLflow model
registry with alias `challenger`.

    python stages/register.py dist/<name> metrics/register.json registry/registered.json \\
        registry/promotions.jsonl

A bundle whose files do not match its manifest or signature is refused, naming each file.
With register.trusted_public_keys, only a bundle signed by one of them passes; without,
register.allow_unsigned decides (see docs/stages/register.md). `signed: false` in the
metrics and the version's tags marks an unsigned bundle. The same bundle digest registered
twice is one version. Tags on the version: bundle digest, lineage, evaluation headline
numbers. The version is servable (`mlflow models serve -m models:/<name>@<alias>`): its
model folder is the bundle itself; a quantized model, which no flavour loads, is logged as
plain artifacts instead (`flavor: artifacts` and `flavor_reason` in the metrics). The alias
move is written to the audit log `registry/promotions.jsonl` before it happens (action
`register`); an alias already on the version records nothing.

The registration lives in the MLflow store, which DVC does not see. `registry/registered.json`
(a cached DVC out, git-ignored) names the version and the store's registered model
(`registry`: its name and creation time); canary_promote refuses a store that is not that
one (a fresh clone, a deleted mlflow.db) and says to run `dvc repro -f -s register`.
"""

from spark_trainer import tracking
from spark_trainer.errors import BundleError
from spark_trainer.outputs import dumps_stable, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import RegisterParams, TrackingParams, load_section
from spark_trainer.registry import model_registry, release
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "bundle", "metrics", "marker", "audit")
    p: RegisterParams = load_section("register")
    settings: TrackingParams = load_section("tracking")
    timer = Timer()
    with timer.phase("verify"):
        check = release.verify_release(args.bundle, p)
    if check.problems:
        raise BundleError(f"refusing to register {args.bundle}:\n  " + "\n  ".join(check.problems))

    # In a DVC experiment the version is registered, tagged with the experiment, and no alias
    # moves: an experiment never changes what the registry serves.
    experiment = tracking.dvc_experiment()
    alias = None if experiment else p.alias
    with timer.phase("register"):
        version, _created = model_registry.register_bundle(
            tracking.tracking_uri(settings), p.model_name, args.bundle, check.digest, check.signed,
            {**release.version_tags(args.bundle), **experiment}, settings.experiment, alias, args.audit,
            tracking.git_tags().get(tracking.TAG_GIT_COMMIT, "unknown"), signer=check.signer,
            max_new_tokens=p.max_new_tokens)
    registered = {"name": p.model_name, "version": int(version.version), "digest": check.digest,
                  "signed": check.signed, "signer": check.signer, "model_uri": version.uri, "alias": alias,
                  "flavor": version.flavor, "flavor_reason": version.tags.get(model_registry.TAG_FLAVOR_REASON)}
    marker = {**registered, "registry": model_registry.identity(tracking.tracking_uri(settings), p.model_name)}
    write_text_atomic(args.marker, dumps_stable(marker))
    write_metrics(args.metrics, registered)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("register", p, args.metrics)


if __name__ == "__main__":
    main()
