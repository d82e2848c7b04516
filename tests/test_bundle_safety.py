"""A bundle never runs code: a pickle payload or a symlink is refused by verification,
which package, register, the registry fetch (canary) and serve all go through, and a
trusted key configured makes an unsigned bundle a refusal."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spark_trainer.errors import BundleError, ParamsError
from spark_trainer.packaging import signing
from tests.conftest import REPO, venv_env


class Payload:
    """Unpickling this writes a marker file: the proof that loading ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bundle(tmp_path, extra: dict[str, bytes] | None = None):
    root = tmp_path / "bundle"
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    (root / "quantization.json").write_text('{"method": "dynamic_int8"}\n')
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    signing.write_manifest(root, "evil", signed=False)  # listed in the manifest, so digests match
    return root


@pytest.mark.parametrize("name", ["dynamic_int8_state_dict.pt", "weights.safetensors", "notes.txt"])
def test_a_pickle_payload_is_refused_whatever_its_name(tmp_path, name):
    marker = tmp_path / "ran"
    root = bundle(tmp_path, {name: pickle.dumps(Payload(str(marker)))})
    check = signing.verify_bundle(root)
    assert any(p.startswith(f"{name}: a pickle-format file") for p in check.problems), check.problems
    assert not marker.exists()


def test_a_torch_zip_checkpoint_is_refused(tmp_path):
    import torch

    path = tmp_path / "w.data"
    torch.save({"w": torch.zeros(2)}, path)
    root = bundle(tmp_path, {"w.data": path.read_bytes()})
    assert any(p.startswith("w.data: a pickle-format file") for p in signing.verify_bundle(root).problems)


def test_a_symlink_is_refused_and_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    root = bundle(tmp_path)
    (root / "link.txt").symlink_to(outside)
    check = signing.verify_bundle(root)
    assert "link.txt: a symlink; a bundle holds regular files only" in check.problems


def test_a_clean_bundle_passes(tmp_path):
    assert signing.verify_bundle(bundle(tmp_path)).problems == []


def test_a_trusted_key_turns_an_unsigned_bundle_into_a_refusal(tmp_path):
    root = bundle(tmp_path)
    signing.generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    trusted = signing.load_trusted_keys([tmp_path / "k.pub"])
    assert signing.verify_bundle(root).ok  # no key: an unsigned bundle is only marked so
    assert any("unsigned, but trusted keys are configured" in p
               for p in signing.verify_bundle(root, trusted).problems)
    result = verify_script(root, "--trusted-key", tmp_path / "k.pub")
    assert result.returncode != 0 and "trusted keys are configured" in result.stdout + result.stderr


def verify_script(root, *args):
    cmd = [sys.executable, str(REPO / "scripts/verify_bundle.py"), str(root), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), check=False)


def model_signing_cli(root, public_key):
    cmd = [str(Path(sys.executable).parent / "model_signing"), "verify", "key", str(root), "--signature",
           str(root / signing.SIGNATURE), "--public_key", str(public_key)]
    return subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), check=False)


def signed_bundle(tmp_path, key_name="k"):
    """A bundle signed the way the package stage signs one, with a new P-256 key."""
    root = tmp_path / "bundle"
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    (root / "evaluation").mkdir()
    (root / "evaluation" / "mmlu.json").write_text('{"acc": 0.5}\n')
    signing.generate_key_pair(tmp_path / f"{key_name}.pem", tmp_path / f"{key_name}.pub")
    digest = signing.write_manifest(root, "tiny", signed=True)
    signing.sign_bundle(root, signing.load_private_key(str(tmp_path / f"{key_name}.pem")))
    return root, digest


def test_a_signed_bundle_verifies_with_our_script_and_the_model_signing_cli(tmp_path):
    root, digest = signed_bundle(tmp_path)
    sig = json.loads((root / "model.sig").read_text())
    assert sig["mediaType"].startswith("application/vnd.dev.sigstore.bundle")  # the OpenSSF format
    statement = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    assert {r["name"] for r in statement["predicate"]["resources"]} == {"config.json", "evaluation/mmlu.json",
                                                                        "MANIFEST.json"}
    ours = verify_script(root, "--trusted-key", tmp_path / "k.pub", "--require-signature")
    assert ours.returncode == 0 and "OK" in ours.stdout and "signed by trusted key sha256:" in ours.stdout, ours.stderr
    assert f"digest {digest}" in ours.stdout
    assert model_signing_cli(root, tmp_path / "k.pub").returncode == 0
    unchecked = signing.verify_bundle(root)  # no trusted key: files checked, signer not claimed
    assert unchecked.ok and unchecked.signed and unchecked.signer is None and "not by a verified" in unchecked.state

    (root / "evaluation" / "mmlu.json").write_text('{"acc": 0.9}\n')
    ours = verify_script(root, "--trusted-key", tmp_path / "k.pub")
    assert ours.returncode == 1 and "FAIL evaluation/mmlu.json: sha256 does not match MANIFEST.json" in ours.stderr
    assert model_signing_cli(root, tmp_path / "k.pub").returncode == 1
    # Without a key the statement in model.sig still catches a file changed together with MANIFEST.json.
    signing.write_manifest(root, "tiny", signed=True)
    problems = signing.verify_bundle(root).problems
    assert "evaluation/mmlu.json: sha256 does not match the statement in model.sig (the file was changed)" in problems
    assert "MANIFEST.json: sha256 does not match the statement in model.sig (the file was changed)" in problems


def test_a_bundle_signed_by_another_key_is_refused(tmp_path):
    root, _ = signed_bundle(tmp_path)
    signing.generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    ours = verify_script(root, "--trusted-key", tmp_path / "other.pub")
    assert ours.returncode == 1 and "model.sig: signed by a key that is not among the trusted keys" in ours.stderr
    assert model_signing_cli(root, tmp_path / "other.pub").returncode == 1
    # A forged key hint does not help: the envelope's signature is checked with the trusted key.
    other = signing.load_trusted_keys([tmp_path / "other.pub"])
    sig = json.loads((root / "model.sig").read_text())
    sig["verificationMaterial"]["publicKey"]["hint"] = other[0].fingerprint
    (root / "model.sig").write_text(json.dumps(sig))
    check = signing.verify_bundle(root, other)
    assert not check.ok and check.signer is None
    assert any(p.startswith("model.sig: the signature does not verify with trusted key") for p in check.problems)


def test_an_ed25519_key_asks_for_a_new_key(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.generate()
    (tmp_path / "old.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "old.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(BundleError, match="Ed25519 key.*make a new key with .*make_signing_key.py"):
        signing.load_private_key(str(tmp_path / "old.pem"))
    with pytest.raises(BundleError, match="old.pub.*Ed25519 key.*make a new key"):
        signing.load_trusted_keys([tmp_path / "old.pub"])


PEM_BODY = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRET"
PASTED = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"


def test_key_text_in_signing_key_is_refused_without_echoing_it(tmp_path, monkeypatch):
    import traceback

    from spark_trainer.params import validate_section
    from tests.conftest import repo_params

    raw = {**repo_params()["package"], "signing_key": PASTED}
    with pytest.raises(ParamsError) as params_error:
        validate_section("package", raw)
    shown = "".join(traceback.format_exception(params_error.value))  # the chained causes too
    assert "package.signing_key holds key text" in shown and PEM_BODY not in shown

    with pytest.raises(BundleError) as key_error:
        signing.load_private_key(PASTED)
    assert "package.signing_key holds key text" in str(key_error.value) and PEM_BODY not in str(key_error.value)

    # A variable holding something that is not a key: the error names the param and variable, not the value.
    monkeypatch.setenv("SIGNING_KEY_UNDER_TEST", f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}")
    with pytest.raises(BundleError) as env_error:
        signing.load_private_key("env:SIGNING_KEY_UNDER_TEST")
    message = "".join(traceback.format_exception(env_error.value))
    assert "$SIGNING_KEY_UNDER_TEST (package.signing_key=env:SIGNING_KEY_UNDER_TEST)" in message
    assert PEM_BODY not in message
    monkeypatch.setenv("SIGNING_KEY_UNDER_TEST", PEM_BODY)  # bare base64: read as a path, and not shown either
    with pytest.raises(BundleError, match="the key file that \\$SIGNING_KEY_UNDER_TEST names") as path_error:
        signing.load_private_key("env:SIGNING_KEY_UNDER_TEST")
    assert PEM_BODY not in str(path_error.value)


def test_make_signing_key_creates_a_p256_private_key_with_mode_600(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    def no_chmod(*args, **kwargs):
        raise AssertionError("the key file must be created private, not made private afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old = os.umask(0)  # the most permissive umask: the mode comes from the code alone
    try:
        signing.generate_key_pair(tmp_path / "keys" / "k.pem", tmp_path / "keys" / "k.pub")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / "k.pem").stat().st_mode) == 0o600
    key = load_pem_private_key((tmp_path / "keys" / "k.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_a_key_from_an_env_var_reaches_model_signing_through_a_private_temporary_file(tmp_path, monkeypatch):
    from model_signing._signing import sign_ec_key

    root = bundle(tmp_path)
    signing.generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    monkeypatch.setenv("SIGNING_KEY_UNDER_TEST", (tmp_path / "k.pem").read_text())
    seen = []
    original = sign_ec_key.Signer.__init__

    def spy(self, private_key_path, *args, **kwargs):
        seen.append((Path(private_key_path), stat.S_IMODE(Path(private_key_path).stat().st_mode)))
        original(self, private_key_path, *args, **kwargs)

    monkeypatch.setattr(sign_ec_key.Signer, "__init__", spy)
    key = signing.load_private_key("env:SIGNING_KEY_UNDER_TEST")
    assert key is not None and key.path is None and PEM_BODY not in repr(key)
    signing.write_manifest(root, "evil", signed=True)
    signing.sign_bundle(root, key)
    ((path, mode),) = seen
    assert mode == 0o600 and not path.exists() and path.parent != root
    assert signing.verify_bundle(root, signing.load_trusted_keys([tmp_path / "k.pub"])).ok


def test_serve_refuses_a_pickle_bundle_before_loading_it(tmp_path):
    marker = tmp_path / "ran"
    root = bundle(tmp_path, {"dynamic_int8_state_dict.pt": pickle.dumps(Payload(str(marker)))})
    cmd = [sys.executable, str(REPO / "scripts/serve.py"), "--bundle", f"evil={root}", "--port", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=REPO, check=False, timeout=120)
    assert result.returncode != 0 and "refusing to serve" in result.stderr
    assert "pickle-format" in result.stderr and not marker.exists()


def evil_bundle(tmp_path, kind: str):
    """A bundle that would run code when loaded (pickle) or read outside itself (symlink)."""
    marker = tmp_path / "ran"
    if kind == "pickle":
        return bundle(tmp_path, {"dynamic_int8_state_dict.pt": pickle.dumps(Payload(str(marker)))}), marker
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(pickle.dumps(Payload(str(marker))))
    root = bundle(tmp_path)
    (root / "dynamic_int8.safetensors").symlink_to(outside)
    return root, marker


@pytest.mark.parametrize("kind", ["pickle", "symlink"])
def test_verify_register_canary_and_serve_all_refuse_an_evil_bundle(tmp_path, kind, monkeypatch):
    """Every door a bundle comes in through: scripts/verify_bundle.py, the register stage,
    the registry fetch the canary loads its models with, and serve. None runs the payload."""
    from spark_trainer.params import RegisterParams
    from spark_trainer.registry import model_registry

    root, marker = evil_bundle(tmp_path, kind)
    problem = "a pickle-format file" if kind == "pickle" else "a symlink"
    run = {"cwd": REPO, "capture_output": True, "text": True, "env": venv_env(), "check": False, "timeout": 300}

    verify = subprocess.run([sys.executable, "scripts/verify_bundle.py", str(root)], **run)
    assert verify.returncode == 1 and problem in verify.stderr

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    register = subprocess.run([sys.executable, str(REPO / "stages/register.py"), str(root), "metrics/register.json",
                               "registry/registered.json", "registry/promotions.jsonl"], **{**run, "cwd": project})
    assert register.returncode == 2 and "refusing to register" in register.stderr and problem in register.stderr
    assert not (project / "registry/registered.json").exists()

    # Someone with write access to the registry puts the bundle there directly; the canary
    # (and serve --alias) fetch it through fetch_verified, which refuses it before loading.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    version, _ = model_registry.register_bundle(uri, "evil", root, signing.verify_bundle(root).digest, False, {},
                                                "t", None, tmp_path / "audit.jsonl", "none")
    policy = RegisterParams(model_name="evil", allow_unsigned=True, trusted_public_keys=(), alias="challenger")
    with pytest.raises(BundleError, match="does not verify"):
        model_registry.fetch_verified(uri, version, policy)

    serve = subprocess.run([sys.executable, "scripts/serve.py", "--bundle", f"evil={root}", "--port", "1"], **run)
    assert serve.returncode != 0 and "refusing to serve" in serve.stderr and problem in serve.stderr
    assert not marker.exists()
