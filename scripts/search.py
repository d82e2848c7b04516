"""Hyperparameter search with Optuna: each trial is a DVC experiment.

    python scripts/search.py configs/search/quantize.yaml             # run, or resume, the study
    python scripts/search.py configs/search/quantize.yaml --trials 6  # raise the budget

The search space file names the params and their ranges, the objective (a metrics file
that dvc.yaml declares, and a key in it) and its direction, and the number of trials; see
docs/search.md. Every key is checked by params.yaml's own validation before any trial
runs. Trials run as `dvc exp run --temp` (the workspace is untouched) and show in
`dvc exp show` as `<study>-trial-<n>`. The study is kept in SQLite: Ctrl-C, then the same
command again, resumes it. At the end the best experiment is printed with the
`dvc exp apply` command that brings it into the workspace.
"""

import argparse
import sys
from pathlib import Path

from spark_trainer import search
from spark_trainer.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", type=Path, help="search space YAML")
    parser.add_argument("--trials", type=int, help="finished trials the study should reach (default: the file's)")
    args = parser.parse_args()
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the script logs each trial itself
    space = search.load_space(args.space)
    try:
        study = search.search(space, trials=args.trials)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study is saved in {space.storage}; run the same command to resume it",
              file=sys.stderr)
        raise SystemExit(130) from None
    print(search.summary(study, space))


if __name__ == "__main__":
    main()
