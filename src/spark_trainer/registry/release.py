"""What the register stage needs from a bundle: a verification under its params, and
the tags a model version carries (lineage and evaluation headline numbers)."""

from __future__ import annotations

import json
from pathlib import Path

from spark_trainer.packaging import signing
from spark_trainer.params import RegisterParams


def verify_release(bundle: Path, p: RegisterParams, extra_keys: tuple[str | Path, ...] = ()) -> signing.Verification:
    """Verify a bundle under the release policy: the trusted keys of `register` plus
    `extra_keys` (a `--trusted-key` option).

    With any trusted key, only a bundle signed by one of them passes. Without one, no
    signature can be checked, so register.allow_unsigned decides (null: true): true lets
    any bundle whose files match through (a signed one too, its signer unproven); false
    refuses them all, since it asks for a signature nobody can check without a key."""
    trusted = signing.load_trusted_keys([*p.trusted_public_keys, *extra_keys])
    result = signing.verify_bundle(bundle, trusted or None)
    if trusted:
        if result.ok and result.signer is None:  # verify_bundle always names a signer it checked
            result.problems.append(f"{signing.SIGNATURE}: no trusted key verified the signature")
        return result
    if p.allow_unsigned is False:
        what = "signed, but no trusted key is configured to check the signature" if result.signed else "unsigned"
        result.problems.append(f"{signing.MANIFEST}: the bundle is {what}, and register.allow_unsigned is false: "
                               "list the signer's public key in register.trusted_public_keys (or pass --trusted-key)"
                               ", or sign bundles (package.signing_key, scripts/make_signing_key.py)")
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
