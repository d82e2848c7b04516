"""The bundle manifest and its signature in the OpenSSF model-signing format.

`MANIFEST.json` lists every file of the bundle (but itself and `model.sig`) with its
sha256, hashed by model_signing; the bundle's digest is the sha256 of `MANIFEST.json`, so
it changes when any file changes and stays the same for the same files.

`model.sig` (a signed bundle) is a Sigstore bundle written by model_signing: a DSSE
envelope around an in-toto statement listing the sha256 of every file, `MANIFEST.json`
included, signed with an ECDSA key (model_signing's key signer takes P-256, P-384 and
P-521 only; `scripts/make_signing_key.py` writes a P-256 pair). ECDSA signatures are
randomised, so `model.sig` differs between two builds of the same files; the digest does
not. The signature names its key only by a hint (the sha256 of its public PEM): it proves
who signed only when checked against a trusted public key. The OpenSSF tool checks it too:

    model_signing verify key dist/<name> --signature dist/<name>/model.sig --public_key keys/signing.pub

A private key is named in params as a path to a PEM file, or `env:VAR`, where the variable
holds the PEM text or a path to it; never the PEM text itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spark_trainer.errors import BundleError
from spark_trainer.params import looks_like_key_text

MANIFEST = "MANIFEST.json"
SIGNATURE = "model.sig"
SIGNED = "openssf-model-signing"  # MANIFEST.json `signing` of a signed bundle
UNSIGNED = "unsigned"
# The curves model_signing's key signer and verifier accept (Sigstore's key types).
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
NEW_KEY = "make a new key with `python scripts/make_signing_key.py keys/signing.pem keys/signing.pub`"
# Formats whose loading can run code: a bundle holds none of them (weights are safetensors).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib")


# --------------------------------------------------------------------------- hashing


def _hashing_config():
    """model_signing's hashing for bundles: every file but model.sig. The .git* files are
    hashed too (model_signing skips them by default, so an added .gitattributes would go
    unnoticed); symlinks are refused."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def file_digests(root: Path) -> dict[str, str]:
    """`sha256:<hex>` of every regular file under `root` but model.sig (MANIFEST.json
    included), hashed the way model_signing signs and verifies. Symlinks are left out
    here (model_signing would stop at the first): `unsafe_files` names each of them."""
    regular = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    manifest = _hashing_config().hash(root, files_to_hash=regular)
    return {rd.identifier: f"{rd.digest.algorithm}:{rd.digest.digest_hex}" for rd in manifest.resource_descriptors()}


def bundle_files(root: Path) -> list[str]:
    """Every file under `root` except the manifest and signature, as sorted POSIX paths."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f for f in files if f not in (MANIFEST, SIGNATURE)]


def write_manifest(root: Path, name: str, signed: bool) -> str:
    """Write MANIFEST.json for the files now in `root`; return the bundle digest."""
    files = {rel: digest for rel, digest in file_digests(root).items() if rel != MANIFEST}
    manifest = {"bundle": name, "digest_algorithm": "sha256", "signing": SIGNED if signed else UNSIGNED,
                "files": files}
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


# --------------------------------------------------------------------------- keys


def _key_kind(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA"
    return type(key).__name__.lstrip("_")


def fingerprint(public_key) -> str:
    """What model.sig records as its key hint: the sha256 of the public key's PEM."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _check_curve(key, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise BundleError(f"{what} is an {_key_kind(key)} key; bundles are signed in the OpenSSF model-signing "
                          f"format, whose key signer takes ECDSA {', '.join(CURVES.values())} keys only: {NEW_KEY}")


@dataclass(frozen=True)
class PrivateKey:
    """A checked signing key: a PEM file, or PEM text read from an environment variable."""

    what: str                                       # for messages: the param and where it points, never key text
    fingerprint: str                                # of its public key
    path: Path | None = None
    pem: bytes | None = field(default=None, repr=False)


def load_private_key(source: str, param: str = "package.signing_key") -> PrivateKey | None:
    """The ECDSA private key `param` names (`source`: a PEM path or env:VAR), checked
    before any work; None when none is configured. No message shows key text."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not source:
        return None
    if looks_like_key_text(source):
        raise BundleError(f"{param} holds key text, not a path: a key never goes in params.yaml (git tracks it and "
                          f"MLflow logs params). Remove it, treat the key as leaked, {NEW_KEY}, and set {param} to "
                          "the key file's path or env:VAR")
    path, pem = Path(source), None
    what = f"the key file {source} ({param})"
    if source.startswith("env:"):
        var = source[4:]
        value = os.environ.get(var, "").strip()
        if not value:
            return None
        what = f"the key in ${var} ({param}={source})"
        if value.startswith("-----BEGIN"):
            path, pem = None, value.encode() + b"\n"
        else:
            path, what = Path(value), f"the key file that ${var} names ({param}={source})"
    if path is not None:
        if not path.is_file():
            raise BundleError(f"{what} not found: create one with scripts/make_signing_key.py, or set {param} to "
                              "'' for an unsigned bundle")
        pem = path.read_bytes()
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:  # cryptography's messages hold no key material
        raise BundleError(f"{what} is not an unencrypted PEM private key: {NEW_KEY}") from e
    _check_curve(key, what)
    return PrivateKey(what, fingerprint(key.public_key()), path=path, pem=None if path else pem)


@contextlib.contextmanager
def _key_file(key: PrivateKey) -> Iterator[Path]:
    """The key as a file model_signing can read. A key from an environment variable is
    written to a temporary file that mkstemp creates with mode 600 (readable by this
    user only from the first byte), removed as soon as the signature is written."""
    if key.path is not None:
        yield key.path
        return
    fd, name = tempfile.mkstemp(prefix="spark-trainer-signing-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.pem or b"")
        yield Path(name)
    finally:
        os.unlink(name)


def sign_bundle(root: Path, key: PrivateKey) -> None:
    """Write model.sig: model_signing's signature over every file of `root`, MANIFEST.json included."""
    from model_signing import signing as model_signing

    with _key_file(key) as path:
        (model_signing.Config().set_hashing_config(_hashing_config())
         .use_elliptic_key_signer(private_key=path).sign(root, root / SIGNATURE))


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    """An ECDSA P-256 pair; the private key file is created with mode 600 (never readable by others)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    fingerprint: str  # sha256 of the public PEM: matched against model.sig's key hint


def load_trusted_keys(paths: Iterable[str | Path]) -> list[TrustedKey]:
    """Trusted public keys (PEM files: register.trusted_public_keys, --trusted-key) in the
    form `verify_bundle` takes; each is checked to be a key model_signing verifies with."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for path in map(Path, paths):
        what = f"trusted public key {path} (register.trusted_public_keys or --trusted-key)"
        if not path.is_file():
            raise BundleError(f"{what} not found: give the path of the signer's public key (a .pub PEM file)")
        try:
            key = load_pem_public_key(path.read_bytes())
        except (ValueError, TypeError) as e:
            raise BundleError(f"{what} is not a PEM public key: give the .pub file of the pair, never the private "
                              "key") from e
        _check_curve(key, what)
        keys.append(TrustedKey(path, fingerprint(key)))
    return keys


# --------------------------------------------------------------------------- verification


@dataclass
class Verification:
    digest: str
    signed: bool
    signer: str | None = None  # sha256:<fingerprint> of the trusted key model.sig verified with; None: unchecked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def state(self) -> str:
        """What the signature proves, in words."""
        if not self.signed:
            return "unsigned"
        if self.signer:
            return f"signed by trusted key {self.signer}"
        return "signed, but not by a verified trusted key (the signature proves nothing about who signed)"


def _compare(expected: dict[str, str], actual: dict[str, str], source: str) -> dict[str, str]:
    """One problem per file that is missing, changed or added relative to `source`."""
    problems = {}
    for rel in sorted(expected):
        if rel not in actual:
            problems[rel] = f"{rel}: listed in {source} but missing from the bundle"
        elif actual[rel] != expected[rel]:
            problems[rel] = f"{rel}: sha256 does not match {source} (the file was changed)"
    for rel in sorted(actual.keys() - expected.keys()):
        problems[rel] = f"{rel}: not listed in {source} (a file was added)"
    return problems


def _read_signature(path: Path) -> tuple[str, dict[str, str]]:
    """model.sig's key hint and the file digests its in-toto statement lists (unchecked)."""
    try:
        sigstore_bundle = json.loads(path.read_text(encoding="utf-8"))
        hint = (sigstore_bundle["verificationMaterial"].get("publicKey") or {}).get("hint") or ""
        statement = json.loads(base64.b64decode(sigstore_bundle["dsseEnvelope"]["payload"]))
        files = {r["name"]: f"{r['algorithm']}:{r['digest']}" for r in statement["predicate"]["resources"]}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{SIGNATURE}: not a model-signing signature ({type(e).__name__}: {e}); rebuild the "
                          "bundle with `dvc repro -f package`") from e
    return hint, files


def _trusted_signers(hint: str, trusted_keys: list[TrustedKey]) -> list[TrustedKey]:
    """The trusted keys model.sig's key hint names (all of them when it has no hint)."""
    return [k for k in trusted_keys if k.fingerprint == hint] if hint else trusted_keys


def _check_signature(root: Path, candidates: list[TrustedKey]) -> tuple[str | None, list[str]]:
    """(sha256:<fingerprint> of the key model.sig verifies with, problems): model_signing checks
    the envelope's signature, then every file against the signed statement."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    failures = []
    for key in candidates:
        try:
            (verifying.Config().set_hashing_config(_hashing_config())
             .use_elliptic_key_verifier(public_key=key.path).verify(root, root / SIGNATURE))
            return f"sha256:{key.fingerprint}", []
        except (ValueError, InvalidSignature) as e:
            failures.append(f"{SIGNATURE}: the signature does not verify with trusted key {key.path} "
                            f"({type(e).__name__}{': ' + str(e) if str(e) else ''}); model.sig was altered or forged")
    return None, failures


def verify_bundle(root: str | Path, trusted_keys: list[TrustedKey] | None = None) -> Verification:
    """Check every file against MANIFEST.json and (signed) model.sig; each problem names the file at fault.

    `trusted_keys` (from `load_trusted_keys`): when given, the bundle must be signed by one
    of them. Without them a signed bundle's files are still checked against the statement
    in model.sig, but nothing proves who signed it (`Verification.signer` stays None).
    Symlinks and pickle-format files are refused whatever the manifest lists.
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} not found: run `dvc repro package` to build it")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root / MANIFEST} is missing: {root} is not a bundle (rebuild it with "
                          "`dvc repro -f package`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        listed: dict[str, str] = manifest["files"]
        signing = manifest["signing"]
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{root / MANIFEST} is not a valid manifest ({e}): rebuild the bundle") from e

    actual = file_digests(root)
    result = Verification(digest=actual[MANIFEST], signed=signing == SIGNED)
    result.problems += unsafe_files(root)
    if signing not in (SIGNED, UNSIGNED):
        result.problems.append(f"{MANIFEST}: signing '{signing}' is not {SIGNED!r} or {UNSIGNED!r} (a bundle "
                               "from before the model-signing format?): rebuild it with `dvc repro -f package`")
    if trusted_keys and not result.signed:
        result.problems.append(f"{MANIFEST}: the bundle is unsigned, but trusted keys are configured: "
                               "only a bundle signed by one of them is accepted")
    files = _compare(listed, {rel: d for rel, d in actual.items() if rel != MANIFEST}, MANIFEST)

    sig_path = root / SIGNATURE
    if not result.signed:
        result.problems += [files[rel] for rel in sorted(files)]
        if sig_path.exists():
            result.problems.append(f"{SIGNATURE}: present, but {MANIFEST} says the bundle is unsigned")
        return result
    if not sig_path.is_file():
        result.problems += [files[rel] for rel in sorted(files)]
        result.problems.append(f"{SIGNATURE}: missing, but {MANIFEST} says the bundle is signed")
        return result
    try:
        hint, signed_files = _read_signature(sig_path)
    except BundleError as e:
        result.problems += [*(files[rel] for rel in sorted(files)), str(e)]
        return result
    for rel, problem in _compare(signed_files, actual, f"the statement in {SIGNATURE}").items():
        files.setdefault(rel, problem)  # a file already named for MANIFEST.json is named once
    result.problems += [files[rel] for rel in sorted(files)]
    if not trusted_keys:
        return result
    candidates = _trusted_signers(hint, trusted_keys)
    if not candidates:
        result.problems.append(f"{SIGNATURE}: signed by a key that is not among the trusted keys (its key hint "
                               f"is sha256:{hint}; trusted: {', '.join(str(k.path) for k in trusted_keys)})")
    elif result.problems:  # model_signing would stop at a symlink, or repeat at length the files named above
        result.problems.append(f"{SIGNATURE}: not checked against the trusted keys until the problems above "
                               "are fixed")
    else:
        result.signer, problems = _check_signature(root, candidates)
        result.problems += problems
    return result
