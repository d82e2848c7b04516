import json
import subprocess
import sys

import pandas as pd
import pytest

from spark_trainer.data.manifest import schema_problems, text_item
from spark_trainer.data.prepare import collect
from spark_trainer.data.splits import stratified_split
from spark_trainer.data.validation import manifest_expectations, manifest_frame, run_suite
from spark_trainer.errors import InputDataError, ValidationFailed
from spark_trainer.params import SourceParams
from tests.conftest import REPO, repo_params, venv_env, write_params

SUBJECTS = ("arithmetic", "world_facts")


def _source(kind, path, id_field="id"):
    return SourceParams(kind=kind, path=str(path), text_field="text", subject_field="subject", id_field=id_field)


def _write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(n):
    return [{"id": f"r{i}", "text": f"Question: What is {i} plus 1?\nAnswer: {i + 1}",
             "subject": SUBJECTS[i % 2]} for i in range(n)]


def test_manifest_items_follow_the_schema():
    item = text_item("x1", "héllo", "arithmetic", "a.jsonl", "out/train.jsonl", "2026-01-01T00:00:00Z",
                     {"source": "a.jsonl", "parent_ids": [], "stage": "prepare"})
    assert schema_problems(item) == []
    assert item["size_bytes"] == len("héllo".encode()) and item["checksum"].startswith("sha256:")
    broken = {**item, "text": "changed"}
    del broken["lineage"]
    problems = schema_problems(broken)
    assert "missing field 'lineage'" in problems and "checksum does not match the text" in problems


def test_reads_jsonl_csv_and_parquet_into_the_same_items(tmp_path):
    records = _records(10)
    _write_jsonl(tmp_path / "a.jsonl", records)
    pd.DataFrame(records).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "a.parquet")
    results = [collect((_source(kind, tmp_path / f"a.{kind}"),), "error", "t") for kind in ("jsonl", "csv", "parquet")]
    for result in results:
        assert [it["text"] for it in result.items] == [r["text"] for r in records]
        assert all(schema_problems(it) == [] for it in result.items)
    assert results[0].items[3]["lineage"]["source_line"] == 4
    assert results[1].items[3]["lineage"]["source_line"] == 5  # the CSV header is line 1


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", _records(3), extra_lines=['{"id": "r9", "text": '])
    with pytest.raises(InputDataError, match=r"bad\.jsonl, line 4: malformed JSON.*on_bad_record: quarantine"):
        collect((_source("jsonl", path),), "error", "t")


def test_quarantine_counts_in_equal_out_plus_rejected(tmp_path):
    bad_lines = ['{"id": "x", "text": ', '[1, 2]', '{"id": "y", "subject": "arithmetic"}', '{"id": "z", "text": 5, "subject": "arithmetic"}']
    path = _write_jsonl(tmp_path / "mixed.jsonl", _records(6), extra_lines=bad_lines)
    result = collect((_source("jsonl", path),), "quarantine", "t")
    assert len(result.items) == 6 and len(result.quarantined) == 4
    assert sum(result.rows_in.values()) == len(result.items) + len(result.quarantined)
    reasons = [q["reason"] for q in result.quarantined]
    assert reasons[0].startswith("malformed JSON") and "expected a JSON object" in reasons[1]
    assert "missing field 'text'" in reasons[2] and "should be a string" in reasons[3]
    assert [q["line"] for q in result.quarantined] == [7, 8, 9, 10]


def test_invalid_utf8_is_replaced_and_flagged(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"id": "a", "text": "caf\xe9", "subject": "arithmetic"}\n')
    result = collect((_source("jsonl", path),), "error", "t")
    assert result.utf8_replaced == 1
    assert result.items[0]["text"] == "caf\ufffd" and result.items[0]["metadata"]["flags"] == ["invalid_utf8_replaced"]


def test_missing_source_names_path_and_params_key(tmp_path):
    with pytest.raises(InputDataError, match=r"nope\.jsonl' not found \(params key prepare\.sources\[0\]\.path\)"):
        collect((_source("jsonl", tmp_path / "nope.jsonl"),), "error", "t")


def test_splits_are_stratified_and_deterministic():
    items = [text_item(f"id{i}", "t", SUBJECTS[i % 2], "s", "", "t", {}) for i in range(400)]
    a = stratified_split(items, 1, 0.1, 0.2)
    b = stratified_split(list(reversed(items)), 1, 0.1, 0.2)
    assert [it["id"] for it in a["val"]] == [it["id"] for it in b["val"]]
    for split, n in (("train", 280), ("val", 40), ("test", 80)):
        assert len(a[split]) == n
        assert sum(it["metadata"]["subject"] == "arithmetic" for it in a[split]) == n // 2
    c = stratified_split(items, 2, 0.1, 0.2)
    assert [it["id"] for it in a["test"]] != [it["id"] for it in c["test"]]


def test_great_expectations_failure_lists_each_failed_expectation():
    items = [text_item(f"id{i}", "fine text", "arithmetic", "s", "", "t", {}) for i in range(5)]
    items.append(text_item("id0", "", "astrology", "s", "", "t", {}))
    with pytest.raises(ValidationFailed) as e:
        run_suite("test_suite", manifest_frame(items), manifest_expectations(SUBJECTS, 1, 100))
    message = str(e.value)
    assert "failed 3 of 10 expectations" in message
    assert "expect_column_values_to_be_unique" in message and "'id0'" in message
    assert "expect_column_value_lengths_to_be_between" in message
    assert "expect_column_values_to_be_in_set" in message and "astrology" in message


def test_great_expectations_success_summary():
    items = [text_item(f"id{i}", "fine text", "arithmetic", "s", "", "t", {}) for i in range(5)]
    summary = run_suite("ok_suite", manifest_frame(items), manifest_expectations(SUBJECTS, 1, 100))
    assert summary == {"suite": "ok_suite", "evaluated": 10, "failed": 0, "success": True}


def test_prepare_stage_stops_on_validation_failure(project):
    _write_jsonl(project / "data.jsonl", _records(8) + [{"id": "bad", "text": "x", "subject": "astrology"}])
    params = repo_params()
    params["prepare"]["sources"] = [{"kind": "jsonl", "path": "data.jsonl", "text_field": "text",
                                     "subject_field": "subject", "id_field": "id"}]
    write_params(project / "params.yaml", params)
    run = subprocess.run([sys.executable, str(REPO / "stages/prepare.py"), "out", "m.json"], capture_output=True,
                         text=True, env={**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert run.returncode == 2
    assert "suite 'prepare_manifest' failed 1 of 10" in run.stderr and "astrology" in run.stderr
    assert not (project / "out").exists() and not (project / "m.json").exists()


def test_hf_source_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    """`kind: hf` takes a dataset id; a local dataset folder exercises the same call offline."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _records(6))
    src = SourceParams(kind="hf", path=str(folder), text_field="text", subject_field="subject", id_field="id",
                       hf_split="train")
    result = collect((src,), "error", "t")
    assert [it["id"] for it in result.items] == [f"r{i}" for i in range(6)]
    assert result.items[0]["source_path"] == f"hf://{folder}/train"


def test_unreachable_hf_dataset_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    src = SourceParams(kind="hf", path="nobody/no-such-dataset", text_field="text", subject_field="subject",
                       id_field="", hf_split="train")
    with pytest.raises(InputDataError, match=r"cannot load Hugging Face dataset 'nobody/no-such-dataset'"):
        collect((src,), "error", "t")
