import json
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest
import yaml

from spark_trainer.data.manifest import UNKNOWN_TIME, build_timestamp, schema_problems, text_item
from spark_trainer.data.prepare import collect
from spark_trainer.data.splits import stratified_split
from spark_trainer.data.validation import manifest_expectations, manifest_frame, run_suite
from spark_trainer.errors import InputDataError, ParamsError, ValidationFailed
from spark_trainer.params import SourceParams, validate_section
from tests.conftest import REPO, copy_repo, repo_params, smoke_params, venv_env, write_params

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
    assert [q["reason"] for q in result.quarantined] == ["malformed_json", "not_an_object", "missing_text",
                                                         "text_not_a_string"]
    details = [q["detail"] for q in result.quarantined]
    assert details[0].startswith("malformed JSON") and "expected a JSON object" in details[1]
    assert "missing field 'text'" in details[2] and "should be a string" in details[3]
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


def _run_prepare_stage(project, sources, **prepare):
    params = repo_params()
    params["prepare"].update(sources=sources, **prepare)
    write_params(project / "params.yaml", params)
    env = {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    return subprocess.run([sys.executable, str(REPO / "stages/prepare.py"), "out", "m.json"], capture_output=True,
                          text=True, check=False, env=env)


JSONL_SOURCE = {"kind": "jsonl", "path": "data.jsonl", "text_field": "text", "subject_field": "subject",
                "id_field": "id"}


def test_prepare_stage_stops_on_validation_failure(project):
    _write_jsonl(project / "data.jsonl", _records(8) + [{"id": "r3", "text": "a second r3", "subject": "arithmetic"}])
    run = _run_prepare_stage(project, [JSONL_SOURCE])
    assert run.returncode == 2
    assert "suite 'prepare_manifest' failed 1 of 10" in run.stderr and "expect_column_values_to_be_unique" in run.stderr
    assert not (project / "out").exists() and not (project / "m.json").exists()


def test_subject_outside_allowed_subjects_names_the_key_file_and_line(project):
    _write_jsonl(project / "data.jsonl", _records(8) + [{"id": "bad", "text": "x", "subject": "astrology"}])
    run = _run_prepare_stage(project, [JSONL_SOURCE])
    assert run.returncode == 2
    assert ("data.jsonl, line 9: subject not in prepare.allowed_subjects: 'astrology'" in run.stderr
            and "on_bad_record: quarantine" in run.stderr)
    assert "expect_column" not in run.stderr and "Great Expectations" not in run.stderr
    assert not (project / "out").exists() and not (project / "m.json").exists()


def test_subject_outside_allowed_subjects_is_quarantined_and_counted(tmp_path):
    path = _write_jsonl(tmp_path / "odd.jsonl", _records(4) + [{"id": "bad", "text": "x", "subject": "astrology"}])
    result = collect((_source("jsonl", path),), "quarantine", "t", allowed_subjects=SUBJECTS)
    assert [it["id"] for it in result.items] == ["r0", "r1", "r2", "r3"]
    [q] = result.quarantined
    assert q["source"] == str(path) and q["line"] == 5
    assert q["reason"] == "subject_not_allowed"
    assert q["detail"].startswith("subject not in prepare.allowed_subjects: 'astrology'")
    assert result.rows_in[str(path)] == result.items_out[str(path)] + result.quarantined_per_source[str(path)] == 5


def test_rows_without_a_subject_get_the_default(tmp_path):
    records = _records(4)
    del records[1]["subject"]
    records[2]["subject"] = None
    records[3]["subject"] = ""
    path = _write_jsonl(tmp_path / "some.jsonl", records)
    no_subject = tmp_path / "none.csv"
    pd.DataFrame([{"text": f"passage {i}"} for i in range(3)]).to_csv(no_subject, index=False)
    sources = (_source("jsonl", path), SourceParams(kind="csv", path=str(no_subject), text_field="text",
                                                    subject_field="", id_field=""))
    result = collect(sources, "error", "t", allowed_subjects=(*SUBJECTS, "general"), default_subject="general")
    assert [it["metadata"]["subject"] for it in result.items] == ["arithmetic"] + ["general"] * 6
    assert all(schema_problems(it) == [] for it in result.items)
    assert result.items[1]["metadata"]["flags"] == ["subject_defaulted"] and "flags" not in result.items[0]["metadata"]
    assert dict(result.default_subject_rows) == {str(path): 3, str(no_subject): 3}
    with pytest.raises(InputDataError, match=r"some\.jsonl, line 2: missing field 'subject'.*prepare\.default_subject"):
        collect(sources, "error", "t", allowed_subjects=SUBJECTS)


def test_prepare_stage_on_data_without_a_subject_column(project):
    pd.DataFrame([{"body": f"passage number {i}"} for i in range(20)]).to_csv(project / "mine.csv", index=False)
    _write_jsonl(project / "data.jsonl", _records(6) + [{"id": "x", "text": "x", "subject": "astrology"}])
    mine = {"kind": "csv", "path": "mine.csv", "text_field": "body", "subject_field": "", "id_field": ""}
    run = _run_prepare_stage(project, [mine, JSONL_SOURCE], on_bad_record="quarantine", default_subject="general",
                             allowed_subjects=[*SUBJECTS, "general"])
    assert run.returncode == 0, run.stderr
    metrics = json.loads((project / "m.json").read_text())
    assert metrics["default_subject"] == {"subject": "general", "rows": 20}
    assert metrics["per_source"] == {
        "mine.csv": {"rows_in": 20, "items_out": 20, "quarantined": 0, "default_subject": 20},
        "data.jsonl": {"rows_in": 7, "items_out": 6, "quarantined": 1, "default_subject": 0}}
    counts = (metrics["rows_in"], metrics["items_out"], metrics["quarantined"], metrics["counts_balance"])
    assert counts == (27, 26, 1, True)
    assert metrics["quarantine_reasons"] == {"subject_not_allowed": 1}
    [q] = [json.loads(line) for line in (project / "out/quarantine.jsonl").read_text().splitlines()]
    assert (q["source"], q["line"]) == ("data.jsonl", 7) and "prepare.allowed_subjects" in q["detail"]
    items = [json.loads(line) for split in ("train", "val", "test")
             for line in (project / f"out/{split}.jsonl").read_text().splitlines()]
    assert sorted(Counter(it["metadata"]["subject"] for it in items).items()) == [("arithmetic", 3), ("general", 20),
                                                                                   ("world_facts", 3)]


@pytest.mark.parametrize(("override", "expected"), [
    ({"default_subject": "general"}, r"prepare\.default_subject 'general' is not in prepare\.allowed_subjects"),
    ({"sources": [{**JSONL_SOURCE, "subject_field": ""}]},
     r"prepare\.sources\[0\]\.subject_field is \"\" \(no subject column\), so prepare\.default_subject must name"),
])
def test_subject_params_are_checked_before_any_work(override, expected):
    with pytest.raises(ParamsError, match=expected):
        validate_section("prepare", {**repo_params()["prepare"], **override})


def test_created_at_is_source_date_epoch_else_unknown_never_git_or_clock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a git repository with a commit: its time must not leak into items
    env = {**venv_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_COMMITTER_DATE": "2001-02-03T04:05:06Z"}
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "c"]):
        subprocess.run(cmd, env=env, check=True)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert build_timestamp() == UNKNOWN_TIME == "1970-01-01T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert build_timestamp() == "2026-01-01T00:00:00Z"
    path = _write_jsonl(tmp_path / "a.jsonl", _records(2))
    assert {it["created_at"] for it in collect((_source("jsonl", path),), "error", build_timestamp()).items} == {
        "2026-01-01T00:00:00Z"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputDataError, match=r"SOURCE_DATE_EPOCH='yesterday' is not a whole number of seconds"):
        build_timestamp()


def test_created_at_field_gives_each_row_its_own_time(tmp_path):
    records = _records(5)
    for record, when in zip(records, ["2024-03-01T12:00:00+02:00", 1700000000, "1700000000", None, "soon"]):
        record["ts"] = when
    path = _write_jsonl(tmp_path / "timed.jsonl", records)
    src = SourceParams(kind="jsonl", path=str(path), text_field="text", subject_field="subject", id_field="id",
                       created_at_field="ts")
    result = collect((src,), "quarantine", "2026-01-01T00:00:00Z")
    assert [it["created_at"] for it in result.items] == ["2024-03-01T10:00:00Z", "2023-11-14T22:13:20Z",
                                                         "2023-11-14T22:13:20Z", "2026-01-01T00:00:00Z"]
    [q] = result.quarantined
    assert q["line"] == 5 and q["reason"] == "bad_created_at"
    assert q["detail"].startswith("bad time in field 'ts': 'soon' is not a time")
    assert "prepare.sources[0].created_at_field" in q["detail"]


def test_prepared_data_does_not_change_with_an_unrelated_commit(tmp_path):
    """`dvc repro -f` of prepare after a README-only commit gives the same data/prepared hash."""
    root = copy_repo(tmp_path)
    write_params(root / "params.yaml", smoke_params())
    env = {**venv_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    env.pop("SOURCE_DATE_EPOCH", None)

    def run(*cmd, date="2001-01-01T00:00:00Z"):
        done = subprocess.run(cmd, cwd=root, env={**env, "GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date},
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    def prepared_md5():
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        [out] = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared"]
        return out["md5"]

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "first")
    run("dvc", "repro", "prepare")
    before = prepared_md5()
    with (root / "README.md").open("a") as f:
        f.write("\nA line that changes nothing the pipeline reads.\n")
    run("git", "commit", "-qam", "README only", date="2002-02-02T00:00:00Z")  # a later commit time
    run("dvc", "repro", "--force", "--single-item", "prepare")
    assert prepared_md5() == before


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


REASON_CODE = r"[a-z0-9_]+"


def test_a_line_over_the_cap_is_quarantined_without_being_read_whole(tmp_path):
    import re
    import tracemalloc

    records = _records(4)
    records[1]["text"] = "x" * 150  # over max_chars, on a line under the cap: parsed, then set aside
    huge = json.dumps({"id": "huge", "text": "y" * 20_000_000, "subject": "arithmetic"})
    path = _write_jsonl(tmp_path / "big.jsonl", records, extra_lines=[huge, json.dumps(_records(6)[5])])
    tracemalloc.start()
    try:
        result = collect((_source("jsonl", path),), "quarantine", "t", max_chars=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # the 20 MB line is skipped a MiB at a time, never held
    assert [it["id"] for it in result.items] == ["r0", "r2", "r3", "r5"]
    assert [(q["line"], q["reason"]) for q in result.quarantined] == [(2, "text_too_long"), (5, "line_too_long")]
    assert all(re.fullmatch(REASON_CODE, q["reason"]) for q in result.quarantined)
    assert "prepare.max_chars (100)" in result.quarantined[0]["detail"]
    assert len(result.quarantined[1]["raw"]) <= 500 and "prepare.max_chars" in result.quarantined[1]["detail"]
    assert sum(result.rows_in.values()) == len(result.items) + len(result.quarantined) == 6
    with pytest.raises(InputDataError, match=r"big\.jsonl, line 2: field 'text' holds 150 characters, over "
                                             r"prepare\.max_chars \(100\).*on_bad_record: quarantine"):
        collect((_source("jsonl", path),), "error", "t", max_chars=100)


def _broken_csv(path, id_prefix="r"):
    header = "id,text,subject\n"
    good = [f'{id_prefix}{i},"Question: what is {i}?\nAnswer: {i}",{SUBJECTS[i % 2]}\n' for i in range(4)]
    bad = ['q1,"an unterminated quote,arithmetic\n',         # record 4, line 8
           f'q2,"{"z" * 150_000}",arithmetic\n',            # over csv's field limit (131072): record 6
           'q3,two fields\n']                               # record 8
    path.write_text(header + good[0] + good[1] + bad[0] + good[2] + bad[1] + good[3] + bad[2])
    return path


def test_broken_csv_records_are_quarantined_and_reading_goes_on(tmp_path):
    import re

    path = _broken_csv(tmp_path / "broken.csv")
    result = collect((_source("csv", path),), "quarantine", "t", max_chars=20000)
    assert [it["id"] for it in result.items] == ["r0", "r1", "r2", "r3"]
    assert [it["text"] for it in result.items][1] == "Question: what is 1?\nAnswer: 1"
    assert [(q["line"], q["reason"]) for q in result.quarantined] == [(4, "malformed_csv"), (6, "malformed_csv"),
                                                                      (8, "malformed_csv")]
    assert all(re.fullmatch(REASON_CODE, q["reason"]) for q in result.quarantined)
    details = [q["detail"] for q in result.quarantined]
    # the open quote runs on to the next quote, two records down: csv.Error, and reading
    # starts again on line 7
    assert details[0].startswith("broken CSV record: ") and "line 6 of the file" in details[0]
    assert "field larger than field limit" in details[1] and "2 fields where the header has 3" in details[2]
    assert result.quarantined[0]["raw"] == 'q1,"an unterminated quote,arithmetic\n'
    assert sum(result.rows_in.values()) == len(result.items) + len(result.quarantined) == 7
    with pytest.raises(InputDataError, match=r"broken\.csv, line 4: broken CSV record: .*line 6 of the file"):
        collect((_source("csv", path),), "error", "t", max_chars=20000)


def test_prepare_stage_quarantines_broken_rows_with_reason_codes_and_finishes(project):
    import re

    _write_jsonl(project / "data.jsonl", _records(8), extra_lines=[
        json.dumps({"id": "long", "text": "w" * 300_000, "subject": "arithmetic"})])
    _broken_csv(project / "b.csv", id_prefix="c")
    csv_source = {"kind": "csv", "path": "b.csv", "text_field": "text", "subject_field": "subject", "id_field": "id"}
    run = _run_prepare_stage(project, [JSONL_SOURCE, csv_source], on_bad_record="quarantine")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((project / "m.json").read_text())
    assert metrics["quarantine_reasons"] == {"malformed_csv": 3, "text_too_long": 1}
    assert all(re.fullmatch(REASON_CODE, reason) for reason in metrics["quarantine_reasons"])
    assert (metrics["rows_in"], metrics["items_out"], metrics["quarantined"], metrics["counts_balance"]) == (
        16, 12, 4, True)
    quarantined = [json.loads(line) for line in (project / "out/quarantine.jsonl").read_text().splitlines()]
    assert [(q["source"], q["line"], q["reason"]) for q in quarantined] == [
        ("data.jsonl", 9, "text_too_long"), ("b.csv", 4, "malformed_csv"), ("b.csv", 6, "malformed_csv"),
        ("b.csv", 8, "malformed_csv")]
    assert all(q["detail"] for q in quarantined)
