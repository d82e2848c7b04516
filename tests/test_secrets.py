"""No credential of a serving endpoint reaches MLflow, a log record or an error message;
free-text metrics keys still mirror to MLflow."""

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from mlflow.tracking import MlflowClient

from spark_trainer import tracking
from spark_trainer.canary import adapters
from spark_trainer.errors import ParamsError
from spark_trainer.params import ServingEndpoint, validate_section

from .conftest import smoke_params

TOKEN = "tok-S3CRET-4f1b9"
QUERY_SECRET = "QUERY-S3CRET-77c2"


def _canary_section(**endpoints):
    raw = smoke_params()["canary_promote"]
    # traffic folders are dvc.yaml deps, checked to exist; "./" marks them local in a scratch dir
    raw["traffic"] = {**raw["traffic"], "mmlu": "./data/sample/mmlu", "prompts": "./data/probes"}
    for arm, fields in endpoints.items():
        raw["serving"][arm] = {**raw["serving"][arm], **fields}
    return validate_section("canary_promote", raw)


def _only_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("spark-trainer").experiment_id])
    (run,) = [r for r in runs if "spark_trainer.stage" in r.data.tags]  # not the pipeline's parent run
    return run


def _write_metrics(project, data):
    (project / "metrics").mkdir(exist_ok=True)
    path = project / "metrics/canary_promote.json"
    path.write_text(json.dumps(data))
    return path


class _Recorder(BaseHTTPRequestHandler):
    """/v1/completions answers; /deny refuses and echoes the credential, as some servers do."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(dict(self.headers))
        if self.path.startswith("/deny"):
            status, body = 401, f"bad credentials: {self.headers.get('Authorization')}".encode()
        else:
            status, body = 200, json.dumps({"choices": [{"text": " 4"}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the server quiet on stderr
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_header_from_env_is_sent_and_shown_nowhere(project, server, monkeypatch, caplog):
    monkeypatch.setenv("SERVING_TOKEN", f"Bearer {TOKEN}")
    headers = {"Authorization": "env:SERVING_TOKEN"}
    section = _canary_section(
        champion={"adapter": "openai", "url": server, "model": "champion", "headers": headers},
        challenger={"adapter": "rest", "url": server + "/deny", "request_template": {"prompt": "{prompt}"},
                    "response_path": "choices.0.text", "headers": headers})
    with caplog.at_level(logging.DEBUG):
        champion = adapters.build(section.serving.champion, None, timeout_s=5)
        assert champion.complete("2 + 2 =", 4) == " 4"
        assert _Recorder.seen[-1]["Authorization"] == f"Bearer {TOKEN}"

        challenger = adapters.build(section.serving.challenger, None, timeout_s=5)
        with pytest.raises(adapters.AdapterError, match="HTTP 401") as refused:
            challenger.complete("2 + 2 =", 4)
        assert _Recorder.seen[-1]["Authorization"] == f"Bearer {TOKEN}"  # sent; the server echoed it back

        run_id = tracking.mirror_stage("canary_promote", section, _write_metrics(project, {"x": 1}), deps_hash="")
    assert TOKEN not in str(refused.value) and "<redacted>" in str(refused.value)
    run = _only_run(f"sqlite:///{project / 'mlflow.db'}")
    assert run.info.run_id == run_id
    assert run.data.params["canary_promote.serving.challenger.headers.Authorization"] == "env:SERVING_TOKEN"
    logged = json.dumps([run.data.params, run.data.tags])
    assert TOKEN not in logged
    assert TOKEN not in caplog.text and all(TOKEN not in r.getMessage() for r in caplog.records)


def test_missing_env_var_names_the_variable(monkeypatch):
    monkeypatch.delenv("SERVING_TOKEN", raising=False)
    section = _canary_section(challenger={"adapter": "openai", "url": "http://127.0.0.1:9", "model": "m",
                                          "headers": {"Authorization": "env:SERVING_TOKEN"}})
    with pytest.raises(ParamsError, match="environment variable SERVING_TOKEN is not set"):
        adapters.build(section.serving.challenger, None, timeout_s=1)


def test_literal_header_value_is_refused_naming_the_key_not_the_value():
    with pytest.raises(ParamsError) as refused:
        _canary_section(challenger={"adapter": "openai", "url": "http://127.0.0.1:9", "model": "m",
                                    "headers": {"Authorization": f"Bearer {TOKEN}"}})
    message = str(refused.value)
    assert "canary_promote.serving.challenger.headers.Authorization" in message
    assert "environment variable" in message and "env:VAR" in message
    assert TOKEN not in message and refused.value.__cause__ is None  # pydantic's text would show it


def test_url_with_userinfo_is_refused_naming_the_key_not_the_password():
    with pytest.raises(ParamsError) as refused:
        _canary_section(challenger={"adapter": "openai", "url": "https://svc:S3cretPass@serving.example/v1",
                                    "model": "m"})
    message = str(refused.value)
    assert "canary_promote.serving.challenger.url" in message and "headers" in message
    assert "S3cretPass" not in message and refused.value.__cause__ is None


def test_url_query_and_template_credentials_are_mirrored_redacted(project, monkeypatch):
    monkeypatch.setenv("SPARK_TRAINER_PIPELINE_RUN", "pipe-1")
    section = _canary_section(
        champion={"adapter": "rest", "url": "https://serving.example/generate",
                  "request_template": {"inputs": "{prompt}", "api_key": "TEMPLATE-S3CRET", "token": "env:TPL_KEY"},
                  "response_path": "text"},
        challenger={"adapter": "openai", "url": f"https://serving.example/v1?api_key={QUERY_SECRET}#frag",
                    "model": "m"})
    tracking.mirror_stage("canary_promote", section, _write_metrics(project, {"x": 1}), deps_hash="")
    params = _only_run(f"sqlite:///{project / 'mlflow.db'}").data.params
    assert params["canary_promote.serving.challenger.url"] == "https://serving.example/v1"
    assert params["canary_promote.serving.champion.request_template.api_key"] == "<redacted>"
    assert params["canary_promote.serving.champion.request_template.token"] == "env:TPL_KEY"
    assert params["canary_promote.serving.champion.request_template.inputs"] == "{prompt}"
    assert params["canary_promote.serving.max_new_tokens"] == "8"  # a number under a "token" key stays
    assert not [v for v in params.values() if QUERY_SECRET in v or "TEMPLATE-S3CRET" in v or "frag" in v]


@pytest.mark.parametrize(("key", "value", "logged"), [
    ("package.signing_key", "env:SPARK_TRAINER_SIGNING_KEY", "env:SPARK_TRAINER_SIGNING_KEY"),
    ("package.signing_key", "keys/private.pem", "<redacted>"),
    ("x.db_password", "hunter22", "<redacted>"),
    ("x.clientSecret", "abc", "<redacted>"),
    ("x.apiKey", "abc", "<redacted>"),
    ("x.headers.X-Api-Key", "env:K", "env:K"),
    ("evaluate_coco.tokenizer", "python", "python"),
    ("x.endpoints", ["https://u:p@h/a?k=v", "http://h2"], '["https://h/a", "http://h2"]'),
])
def test_param_values_for_mlflow(key, value, logged):
    assert tracking.param_for_mlflow(key, value) == logged


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_connection_error_names_the_endpoint_without_userinfo_or_query():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    # Validation refuses user info; build from an unvalidated endpoint to check the adapter itself.
    endpoint = ServingEndpoint.model_construct(
        adapter="openai", url=f"http://svc:S3cretPass@127.0.0.1:{port}/base?api_key={QUERY_SECRET}", model="m",
        request_template={}, response_path="", headers={}, chat=False)
    adapter = adapters.build(endpoint, None, timeout_s=2)
    with pytest.raises(adapters.AdapterError, match="ConnectionError") as failed:
        adapter.complete("hi", 2)
    message = str(failed.value)
    assert f"http://127.0.0.1:{port}/base/v1/completions" in message
    assert QUERY_SECRET not in message and "api_key" not in message and "S3cretPass" not in message
    assert "S3cretPass" not in adapter.name and QUERY_SECRET not in adapter.name


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_free_text_metric_keys_mirror_to_a_real_store(project, monkeypatch, store):
    uri = f"sqlite:///{project / 'mlflow.db'}" if store == "sqlite" else (project / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it, in maintenance mode
    metrics = _write_metrics(project, {
        "quarantined": {"row over max_chars (50001 > 50000)": 3, "bad csv: unterminated quote": 2,
                        "bad csv; unterminated quote": 5},
        "a": {"b": 1}, "a.b": 7, "../escape": 4})
    strict = validate_section("tracking", {**smoke_params()["tracking"], "strict": True})
    tracking.mirror_stage("canary_promote", _canary_section(), metrics, settings=strict, deps_hash="")
    assert _only_run(uri).data.metrics == {
        "quarantined.row over max_chars _50001 _ 50000_": 3.0,
        "quarantined.bad csv: unterminated quote": 2.0,  # MLflow allows ':' and ' ' (not on Windows)
        "quarantined.bad csv_ unterminated quote": 5.0,
        "a.b": 1.0, "a.b_2": 7.0,  # the same name twice: both kept
        "__/escape": 4.0,
    }
