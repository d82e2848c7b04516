"""What the register stage needs from a bundle: a verification under its params, and
the tags a model version carries (lineage and evaluation headline numbers)."""

from __future__ import annotations

import json
from pathlib import Path

from spark_trainer.packaging import signing
from spark_trainer.params import RegisterParams


def verify_release(bundle: Path, p: RegisterParams, extra_keys: tuple[str | Path, ...] = ()) -> signing.Verification:
    """Verify a bundle under the release policy: the trusted keys of `register` plus
    `extra_keys` (a `--trusted-key` option). With any trusted key, a signature from one of
    them is required; without one, an unsigned bundle passes only if register.allow_unsigned."""
    trusted = signing.load_trusted_keys([*p.trusted_public_keys, *extra_keys])
    result = signing.verify_bundle(bundle, trusted or None)
    if not result.signed and not trusted and not p.allow_unsigned:
        result.problems.append(f"{signing.MANIFEST}: the bundle is unsigned; configure package.signing_key "
                               "(scripts/make_signing_key.py) or set register.allow_unsigned: true")
    if result.signed and trusted and result.signer is None:
        result.problems.append(f"{signing.SIGNATURE}: no verified signer")
    return result


def version_tags(bundle: Path) -> dict[str, str]:
    """Lineage and headline metrics as MLflow tags (strings, flat keys)."""
    tags: dict[str, str] = {}
    lineage = json.loads((bundle / "lineage.json").read_text(encoding="utf-8"))
    tags["lineage.params_sha256"] = str(lineage.get("params_sha256"))
    tags["lineage.data_md5"] = str((lineage.get("data") or {}).get("md5"))
    for path in sorted((bundle / "evaluation").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for fmt in ("continuation", "letter"):
            overall = (data.get(fmt) or {}).get("acc", {}).get("overall") if isinstance(data.get(fmt), dict) else None
            if overall:
                tags[f"metric.{path.stem}.{fmt}_acc"] = f"{overall['acc']:.6g}"
        for probe, summary in sorted((data.get("probes") or {}).items()):
            tags[f"metric.{path.stem}.{probe}_pass_rate"] = f"{summary['pass_rate']:.6g}"
    return tags
