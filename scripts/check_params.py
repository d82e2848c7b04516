"""Validate the whole params.yaml: every section, every key, every range.

    python scripts/check_params.py [params.yaml]

Exits 0 and prints the sections when all is well; exits 2 listing every problem,
each with its dotted key and what is allowed, otherwise.
"""

import argparse
import sys

from spark_trainer.params import PARAMS_FILE, main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", default=PARAMS_FILE, help=f"the params file (default: {PARAMS_FILE})")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main([parse_args().params]))
