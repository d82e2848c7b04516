"""Queue a grid sweep with DVC's own syntax, after checking every key and value.

    python scripts/sweep.py -S 'lora.rank=4,8,16'                     # queue 3 experiments
    python scripts/sweep.py -S 'lora.rank=4,8' -S 'lora.alpha=8,16' --run   # queue 4, then run the queue

`dvc exp run --queue -S 'key=a,b,c'` queues one experiment per value (the product over
several -S), but a misspelt key is only found when each experiment fails. This script
checks each key and each value with params.yaml's own validation first (an unknown key
names the closest valid one), then hands the same -S arguments to
`dvc exp run --queue`; `--run` starts the queue with one worker (`dvc queue start -j 1`).
Follow it with `dvc queue status` and `dvc exp show` (or `make review`).
"""

import argparse
import subprocess
import sys

import yaml

from spark_trainer.errors import ParamsError
from spark_trainer.params import PARAMS_FILE, read_yaml
from spark_trainer.search import check_override
from spark_trainer.stage import entrypoint


def parse_set(text: str) -> tuple[str, list]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise ParamsError(f"-S {text!r}: expected key=value or key=v1,v2,... (DVC's sweep syntax)")
    # DVC reads each comma-separated choice as YAML; so does this check.
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", dest="sets", action="append", required=True, metavar="KEY=V1,V2",
                        help="a param and its values (repeatable: the grid is the product)")
    parser.add_argument("--run", action="store_true", help="start the queue afterwards (one worker)")
    args = parser.parse_args()
    params = read_yaml(PARAMS_FILE)
    grid = 1
    for text in args.sets:
        key, values = parse_set(text)
        for value in values:
            check_override(params, key, value, f"-S {text}")
        grid *= len(values)
    print(f"queueing {grid} experiment(s)", file=sys.stderr)
    cmd = ["dvc", "exp", "run", "--queue"] + [a for text in args.sets for a in ("-S", text)]
    for step in [cmd, ["dvc", "queue", "start", "-j", "1"]] if args.run else [cmd]:
        if (rc := subprocess.run(step, check=False).returncode) != 0:
            raise SystemExit(rc)


if __name__ == "__main__":
    main()
