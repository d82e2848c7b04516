"""Bundle the candidate model: weights, tokenizer, config, model card, evaluation
summaries, lineage, a sha256 manifest, and a signature of every file in the OpenSSF
model-signing format (model.sig, ECDSA).

    python stages/package.py models/lora/arithmetic/merged dist/<name> metrics/package.json

Release gates first: every safety probe in package.evaluations must reach the min pass rate
its metrics record, or package.release_override must name it with a reason (recorded in
lineage.json, the model card and the metrics); otherwise nothing is packaged.
Without a signing key (package.signing_key) the bundle is marked unsigned: in MANIFEST.json,
the model card and the metrics. `python scripts/verify_bundle.py dist/<name> --trusted-key
keys/signing.pub` checks digests and signature (or `model_signing verify key`).
"""

from spark_trainer import tracking
from spark_trainer.outputs import write_metrics, write_timings
from spark_trainer.packaging import bundle
from spark_trainer.params import PackageParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "model_dir", "out_dir", "metrics")
    p: PackageParams = load_section("package")
    timer = Timer()
    with timer.phase("lineage"):
        lineage = bundle.lineage("package", p.data)
    with timer.phase("bundle"):
        summary = bundle.build(p, args.model_dir, args.out_dir, lineage)
    write_metrics(args.metrics, summary)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("package", p, args.metrics, artifacts=[args.out_dir / "README.md",
                                                                   args.out_dir / "MANIFEST.json"])


if __name__ == "__main__":
    main()
