"""A pull-request report for a change: two revisions (git revisions or DVC experiment names)
compared in one Markdown file.

    python scripts/review.py main my-exp -o review.md
    python scripts/review.py HEAD~1 HEAD -o reports/review.md

The report lists the params that changed (`dvc params diff`), the headline metrics that
changed (metrics/headline.json, from the `headline` stage) and then every other changed
metric, each stage's status (rerun or unchanged, from the two revisions' dvc.lock), and the
plots that changed, rendered offline to PNG in `<report>_plots/` beside it, linked relatively.
For the table of every experiment, see `make review`.
"""

import argparse
from pathlib import Path

from spark_trainer import review
from spark_trainer.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the revision to compare from (git revision or experiment name)")
    parser.add_argument("b", help="the revision to compare to")
    parser.add_argument("-o", "--out", type=Path, default=Path("review.md"), help="report file (default: review.md)")
    args = parser.parse_args()
    summary = review.write_report(Path("."), args.a, args.b, args.out)
    rerun = [s for s, (status, _) in summary["stages"].items() if status != "unchanged"]
    print(f"{args.out}: {len(rerun)} stages differ, {len(summary['images'])} plots changed")


if __name__ == "__main__":
    main()
