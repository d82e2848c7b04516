"""The bundle manifest (sha256 of every file) and its Ed25519 signature.

`MANIFEST.json` lists every other file of the bundle with its sha256 digest; the bundle's
digest is the sha256 of `MANIFEST.json` itself, so it changes when any file changes.
`MANIFEST.sig` holds the signer's public key and the signature of the manifest bytes.
Ed25519 signatures are deterministic: the same key and files give the same bundle.

A key is named in params as a path to a PEM file, or `env:VAR`, where the variable holds
the PEM text or a path to it (`scripts/make_signing_key.py` writes a key pair).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from spark_trainer.errors import BundleError

MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
_CHUNK = 1 << 20
# Formats whose loading can run code: a bundle holds none of them (weights are safetensors).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every file under `root` except the manifest and signature, as sorted POSIX paths."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f for f in files if f not in (MANIFEST, SIGNATURE)]


def write_manifest(root: Path, name: str, signed: bool) -> str:
    """Write MANIFEST.json for the files now in `root`; return the bundle digest."""
    manifest = {"bundle": name, "digest_algorithm": "sha256", "signing": "ed25519" if signed else "unsigned",
                "files": {rel: sha256_file(root / rel) for rel in bundle_files(root)}}
    data = (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()
    (root / MANIFEST).write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unsafe_files(root: Path) -> list[str]:
    """Problems with what the bundle holds, whatever the manifest says: symlinks (which
    would be followed out of the bundle) and pickle-format files (loading one runs code)."""
    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel}: a symlink; a bundle holds regular files only")
        elif path.is_file() and (path.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(path)):
            problems.append(f"{rel}: a pickle-format file; loading it could run code (weights go in safetensors)")
    return problems


def _looks_pickled(path: Path) -> bool:
    """A pickle stream (protocol 2+) or a zip holding one (torch.save's format), by content."""
    import zipfile

    with path.open("rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def bundle_digest(root: Path) -> str:
    return sha256_file(root / MANIFEST)


# --------------------------------------------------------------------------- keys


def resolve_key_source(source: str) -> Path | bytes | None:
    """`env:VAR` → the variable's PEM text or file path (None when unset); a path → that path."""
    if not source:
        return None
    if source.startswith("env:"):
        value = os.environ.get(source[4:], "").strip()
        if not value:
            return None
        return value.encode() if value.startswith("-----BEGIN") else Path(value)
    return Path(source)


def load_private_key(source: str):
    """The Ed25519 private key named by params, or None when none is configured."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    resolved = resolve_key_source(source)
    if resolved is None:
        return None
    if isinstance(resolved, Path):
        if not resolved.is_file():
            raise BundleError(f"signing key {resolved} (from package.signing_key={source!r}) not found: "
                              "create one with scripts/make_signing_key.py, or set package.signing_key to '' "
                              "for an unsigned bundle")
        resolved = resolved.read_bytes()
    try:
        key = load_pem_private_key(resolved, password=None)
    except ValueError as e:
        raise BundleError(f"package.signing_key={source!r} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"package.signing_key={source!r} is a {type(key).__name__}; bundles are signed with "
                          "Ed25519 (scripts/make_signing_key.py)")
    return key


def public_key_b64(private_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_public_key_b64(path: Path) -> str:
    """A PEM public key file as the base64 raw key that MANIFEST.sig records."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    if not path.is_file():
        raise BundleError(f"trusted public key {path} not found")
    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an Ed25519 public key")
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_trusted_keys(paths) -> list[str]:
    """Trusted public keys (PEM file paths) in the form `Verification.signer` takes."""
    return [load_public_key_b64(Path(k)) for k in paths]


def sign_manifest(root: Path, private_key) -> None:
    signature = private_key.sign((root / MANIFEST).read_bytes())
    record = {"algorithm": "ed25519", "public_key": public_key_b64(private_key),
              "signature": base64.b64encode(signature).decode()}
    (root / SIGNATURE).write_text(json.dumps(record, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


# --------------------------------------------------------------------------- verification


@dataclass
class Verification:
    digest: str
    signed: bool
    signer: str | None = None            # base64 public key of the signer
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(root: str | Path, trusted_keys: list[str] | None = None) -> Verification:
    """Check every digest and the signature; each problem names the file at fault.

    `trusted_keys` (base64 raw Ed25519 keys): when given, the bundle must be signed by one
    of them; without it the signature proves only that the files match what the signer signed.
    Symlinks and pickle-format files are refused whatever the manifest lists.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} not found: run `dvc repro package` to build it")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root / MANIFEST} is missing: {root} is not a bundle (rebuild it with "
                          "`dvc repro -f package`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        listed: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{root / MANIFEST} is not a valid manifest ({e}): rebuild the bundle") from e

    result = Verification(digest=bundle_digest(root), signed=manifest.get("signing") == "ed25519")
    result.problems += unsafe_files(root)
    if trusted_keys and not result.signed:
        result.problems.append(f"{MANIFEST}: the bundle is unsigned, but trusted keys are configured: "
                               "only a bundle signed by one of them is accepted")
    present = set(bundle_files(root))
    for rel in sorted(listed):
        if rel not in present:
            result.problems.append(f"{rel}: listed in {MANIFEST} but missing from the bundle")
        elif sha256_file(root / rel) != listed[rel]:
            result.problems.append(f"{rel}: sha256 does not match {MANIFEST} (the file was changed)")
    for rel in sorted(present - set(listed)):
        result.problems.append(f"{rel}: not listed in {MANIFEST} (a file was added)")

    sig_path = root / SIGNATURE
    if result.signed:
        if not sig_path.is_file():
            result.problems.append(f"{SIGNATURE}: missing, but {MANIFEST} says the bundle is signed")
            return result
        try:
            sig = json.loads(sig_path.read_text(encoding="utf-8"))
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
            key.verify(base64.b64decode(sig["signature"]), (root / MANIFEST).read_bytes())
            result.signer = sig["public_key"]
        except InvalidSignature:
            result.problems.append(f"{MANIFEST}: the Ed25519 signature in {SIGNATURE} does not verify "
                                   "(manifest or signature changed)")
        except (ValueError, KeyError, TypeError) as e:
            result.problems.append(f"{SIGNATURE}: unreadable ({e})")
        if result.signer and trusted_keys and result.signer not in trusted_keys:
            result.problems.append(f"{SIGNATURE}: signed by a key that is not among the trusted keys")
    elif sig_path.is_file():
        result.problems.append(f"{SIGNATURE}: present, but {MANIFEST} says the bundle is unsigned")
    return result
