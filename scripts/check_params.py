"""Validate the whole params.yaml: every section, every key, every range.

    python scripts/check_params.py [params.yaml]

Exits 0 and prints the sections when all is well; exits 2 listing every problem,
each with its dotted key and what is allowed, otherwise.
"""

import sys

from spark_trainer.params import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
