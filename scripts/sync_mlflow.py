"""Mirror metrics/ into MLflow after the fact: one run per stage, tagged `mirrored_by: sync`.

    python scripts/sync_mlflow.py

Use it after stages ran while the tracking server was unreachable (`make repro` mirrors
the stages DVC restores from its run cache itself, through scripts/repro.py). Only
stages whose current deps hash (from dvc.lock, the tag a stage writes when it mirrors
itself) has no run yet are mirrored: running it twice adds nothing.
"""

import argparse

from spark_trainer import tracking
from spark_trainer.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="print only the stages it mirrored")
    args = parser.parse_args()
    for stage, outcome in tracking.sync_all().items():
        if not args.quiet or outcome.startswith("run "):
            print(f"{stage}: {outcome}")


if __name__ == "__main__":
    main()
