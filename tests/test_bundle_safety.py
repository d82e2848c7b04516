"""A bundle never runs code: a pickle payload or a symlink is refused by verification,
which package, register, the registry fetch (canary) and serve all go through, and a
trusted key configured makes an unsigned bundle a refusal."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

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
    root.mkdir()
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
    trusted = [signing.load_public_key_b64(tmp_path / "k.pub")]
    assert any("unsigned, but trusted keys are configured" in p
               for p in signing.verify_bundle(root, trusted).problems)
    cmd = [sys.executable, str(REPO / "scripts/verify_bundle.py"), str(root), "--trusted-key", str(tmp_path / "k.pub")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), check=False)
    assert result.returncode != 0 and "trusted keys are configured" in result.stdout + result.stderr


def test_serve_refuses_a_pickle_bundle_before_loading_it(tmp_path):
    marker = tmp_path / "ran"
    root = bundle(tmp_path, {"dynamic_int8_state_dict.pt": pickle.dumps(Payload(str(marker)))})
    cmd = [sys.executable, str(REPO / "scripts/serve.py"), "--bundle", f"evil={root}", "--port", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=REPO, check=False, timeout=120)
    assert result.returncode != 0 and "refusing to serve" in result.stderr
    assert "pickle-format" in result.stderr and not marker.exists()
