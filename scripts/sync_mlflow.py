"""Mirror metrics/ into MLflow after the fact: one run per stage, tagged `mirrored_by: sync`.

    python scripts/sync_mlflow.py

Use it after stages ran while the tracking server was unreachable. The deps hash tag
comes from dvc.lock, so it matches the tag a stage writes when it mirrors itself.
"""

import argparse

from spark_trainer import tracking
from spark_trainer.stage import entrypoint


@entrypoint
def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for stage, outcome in tracking.sync_all().items():
        print(f"{stage}: {outcome}")


if __name__ == "__main__":
    main()
