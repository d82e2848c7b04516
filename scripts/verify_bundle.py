"""Check a bundle's files against MANIFEST.json and its OpenSSF model-signing signature
(model.sig); name every file that does not match.

    python scripts/verify_bundle.py dist/spark-trainer-arithmetic --trusted-key keys/signing.pub
    python scripts/verify_bundle.py dist/... --require-signature

With a --trusted-key, only a bundle signed by one of the keys passes. Without one, a signed
bundle's files are checked against the statement in model.sig, but nobody can tell who
signed it: the output says so. The OpenSSF tool gives the same answer for a signature:

    model_signing verify key dist/<name> --signature dist/<name>/model.sig --public_key keys/signing.pub

Exit 0 when the bundle verifies, 1 when it does not (each problem on its own line).
"""

import argparse
import sys
from pathlib import Path

from spark_trainer.errors import BundleError
from spark_trainer.packaging import signing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--trusted-key", type=Path, action="append", default=[],
                        help="PEM public key (repeatable); with any, the bundle must be signed by one of them")
    parser.add_argument("--require-signature", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = signing.verify_bundle(args.bundle, signing.load_trusted_keys(args.trusted_key) or None)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.require_signature and not result.signed:
        result.problems.append("the bundle is unsigned (--require-signature)")
    for problem in result.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    print(f"{'OK' if result.ok else 'FAILED'}: {args.bundle} {result.state}, digest {result.digest}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
