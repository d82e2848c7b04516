"""Create an ECDSA P-256 key pair for signing bundles in the OpenSSF model-signing format.

    python scripts/make_signing_key.py keys/signing.pem keys/signing.pub
    export SPARK_TRAINER_SIGNING_KEY=keys/signing.pem   # package.signing_key: env:SPARK_TRAINER_SIGNING_KEY

The private key file is created with mode 600. Keep it out of git (keys/ is git-ignored);
give the public key to register.trusted_public_keys and to whoever checks bundles
(`model_signing verify key ... --public_key keys/signing.pub`).
"""

import argparse
import sys
from pathlib import Path

from spark_trainer.packaging import signing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("private_key", type=Path)
    parser.add_argument("public_key", type=Path)
    args = parser.parse_args(argv)
    if args.private_key.exists():
        print(f"error: {args.private_key} exists; remove it first to replace the key", file=sys.stderr)
        return 1
    signing.generate_key_pair(args.private_key, args.public_key)
    print(f"wrote {args.private_key} (private, mode 600) and {args.public_key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
