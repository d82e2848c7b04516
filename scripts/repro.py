"""`dvc repro`, then MLflow runs for the stages DVC restored from its run cache.

    python scripts/repro.py                  # what `make repro` runs
    python scripts/repro.py train -f         # any `dvc repro` options and targets

A stage DVC restores from its run cache ("Stage 'x' is cached - skipping run, checking out
outputs") does not run, so it cannot mirror itself to MLflow. This runs `dvc repro` with
one pipeline-run id, reads which stages were restored from its output, and mirrors exactly
those into that execution's parent run (tagged `spark_trainer.mirrored_by: sync`). Stages
that were up to date add nothing.
"""

import argparse
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from spark_trainer import tracking
from spark_trainer.stage import entrypoint

RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s [dvc repro options and targets]")
    _, dvc_args = parser.parse_known_args()
    os.environ.setdefault("SPARK_TRAINER_PIPELINE_RUN", uuid.uuid4().hex[:16])
    beside = Path(sys.executable).with_name("dvc")  # the environment's own dvc, activated or not
    proc = subprocess.Popen([str(beside) if beside.is_file() else "dvc", "repro", *dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    restored = []
    for line in proc.stdout:  # type: ignore[union-attr]
        sys.stdout.write(line)
        sys.stdout.flush()
        if match := RESTORED.search(line):
            restored.append(match.group(1))
    if (rc := proc.wait()) != 0:
        raise SystemExit(rc)
    for stage, outcome in tracking.sync_all(only=set(restored)).items():
        print(f"MLflow: {stage} (restored from the run cache): {outcome}")


if __name__ == "__main__":
    main()
