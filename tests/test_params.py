import subprocess
import sys

import pytest

from spark_trainer.errors import ParamsError
from spark_trainer.params import SECTIONS, check_all, load_section, read_yaml, validate_section
from tests.conftest import REPO, deep_merge, repo_params, write_params


def test_repository_params_yaml_is_valid():
    sections = check_all(REPO / "params.yaml")
    assert set(sections) == set(SECTIONS)


def test_sections_are_frozen():
    p = load_section("train", REPO / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        p.learning_rate = 1.0


@pytest.mark.parametrize(
    ("section", "override", "expected"),
    [
        ("train", {"learning_rat": 0.1}, r"train\.learning_rat: unknown key \(did you mean 'learning_rate'\?\)"),
        ("train", {"model": {"hiden_size": 64}}, r"train\.model\.hiden_size: unknown key \(did you mean 'hidden_size'\?\)"),
        ("train", {"learning_rate": -0.1}, r"train\.learning_rate: Input should be greater than 0 \(got -0\.1\)"),
        ("train", {"max_steps": "many"}, r"train\.max_steps: Input should be a valid integer"),
        ("train", {"model": {"hidden_size": 100}}, r"train\.model\.hidden_size: Input should be a multiple of 64"),
        ("train", {"lr_scheduler": "exotic"}, r"train\.lr_scheduler: Input should be 'cosine', 'linear'"),
        ("prepare", {"on_bad_record": "skip"}, r"prepare\.on_bad_record: Input should be 'error' or 'quarantine'"),
        ("prepare", {"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be below 1"),
        ("sample", {"subjects": ["arithmetic", "astrology"]}, r"sample\.subjects\.1: Input should be"),
        ("sample", {"planted": {"pii": -1}}, r"sample\.planted\.pii: Input should be greater than or equal to 0"),
        ("tracking", {"strict": "yes"}, r"tracking\.strict: Input should be a valid boolean"),
        ("distill", {"student": {"num_heads": 3}}, r"distill\.student: Value error, hidden_size must be divisible"),
        ("lora", {"learning_rat": 0.1}, r"lora\.learning_rat: unknown key \(did you mean 'learning_rate'\?\)"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(section, override, expected):
    raw = deep_merge(repo_params()[section], override)
    with pytest.raises(ParamsError, match=expected):
        validate_section(section, raw)


def test_missing_key_is_named():
    raw = repo_params()["train"]
    del raw["batch_size"]
    with pytest.raises(ParamsError, match=r"train\.batch_size: missing"):
        validate_section("train", raw)


def test_unknown_section_and_missing_section(tmp_path):
    params = repo_params()
    params["trian"] = params.pop("train")
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError) as e:
        check_all(tmp_path / "params.yaml")
    assert "unknown section 'trian' (did you mean 'train'?)" in str(e.value)
    assert "section 'train' is missing" in str(e.value)


def test_yaml_1_2_floats_as_dvc_writes_them(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 1e-4\nb: 3.0e+2\nc: '1e-4'\nd: 12\n")
    data = read_yaml(tmp_path / "p.yaml")
    assert data == {"a": 1e-4, "b": 300.0, "c": "1e-4", "d": 12}


def test_check_params_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "scripts/check_params.py"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    params = repo_params()
    params["train"]["batch_size"] = 0
    write_params(tmp_path / "params.yaml", params)
    bad = subprocess.run([sys.executable, str(REPO / "scripts/check_params.py"), str(tmp_path / "params.yaml")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "train.batch_size: Input should be greater than or equal to 1 (got 0)" in bad.stderr
