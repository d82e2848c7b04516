"""Verify the bundle and register it in the MLflow model registry with alias `challenger`.

    python stages/register.py dist/<name> metrics/register.json registry/registered.json

A bundle whose files do not match its manifest is refused, naming each file; an unsigned
one too unless register.allow_unsigned. The same bundle digest registered twice is one
version. Tags on the version: bundle digest, lineage, evaluation headline numbers.

The registration lives in the MLflow store, which DVC does not see. `registry/registered.json`
(git-ignored, a DVC out) says this workspace's store holds it: a fresh clone lacks the file,
so `dvc repro` registers again there instead of skipping to a canary with an empty registry.
"""

from spark_trainer import tracking
from spark_trainer.errors import BundleError
from spark_trainer.outputs import dumps_stable, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import RegisterParams, TrackingParams, load_section
from spark_trainer.registry import model_registry, release
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "bundle", "metrics", "marker")
    p: RegisterParams = load_section("register")
    settings: TrackingParams = load_section("tracking")
    timer = Timer()
    with timer.phase("verify"):
        check = release.verify_release(args.bundle, p)
    if check.problems:
        raise BundleError(f"refusing to register {args.bundle}:\n  " + "\n  ".join(check.problems))

    with timer.phase("register"):
        version, _created = model_registry.register_bundle(
            tracking.tracking_uri(settings), p.model_name, args.bundle, check.digest, check.signed,
            release.version_tags(args.bundle), settings.experiment, p.alias)
    registered = {"name": p.model_name, "version": int(version.version), "digest": check.digest,
                  "signed": check.signed, "model_uri": version.uri, "alias": p.alias}
    write_text_atomic(args.marker, dumps_stable(registered))
    write_metrics(args.metrics, registered)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("register", p, args.metrics)


if __name__ == "__main__":
    main()
