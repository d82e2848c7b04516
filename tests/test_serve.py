"""scripts/serve.py under misuse: malformed bodies, oversized prompts, max_tokens out of
range, made-up model names, the API key, the trusted-key policy, per-model locks and the
request timeout. The real server runs as a subprocess on 127.0.0.1 serving a tiny real
bundle; the concurrency cases run the app in-process over a fake model that sleeps."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
import time

import pytest

from spark_trainer.packaging import signing
from tests.conftest import REPO, smoke_params, venv_env, write_params

API_KEY = "test-key-4f1c9a"  # not a secret: the test checks it never reaches the server's output
MAX_TOKENS_CAP = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The smallest real bundle: an untrained smoke-size model, its tokenizer, an unsigned manifest."""
    from spark_trainer.data.sample import generate
    from spark_trainer.modeling import causal_lm
    from spark_trainer.modeling.tokenizer import train_bpe
    from spark_trainer.params import validate_section

    root = tmp_path_factory.mktemp("serve") / "tiny"
    planted = {"exact_duplicates": 0, "near_duplicates": 0, "pii": 0, "toxic": 0}
    data = generate(3, ("arithmetic",), 20, 4, 1, 4, 2, 10, planted)
    tok = train_bpe([d["text"] for d in data.corpus], 320, 2)
    model = causal_lm.build_from_config(validate_section("train", smoke_params()["train"]).model, tok, 0)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    signing.write_manifest(root, "tiny", signed=False)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cwd, *args: str, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts/serve.py"), "--port", self.url.rsplit(":", 1)[1], *args],
            cwd=cwd, env={**venv_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> Server:
        import requests

        for _ in range(240):
            if self.process.poll() is not None:
                pytest.fail("serve.py exited: " + self.process.stdout.read()[-3000:])
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("serve.py did not come up: " + self.output[-3000:])

    def stop(self) -> None:
        self.process.terminate()
        self.output = self.process.communicate(timeout=30)[0]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """Two names for the same bundle, run where a params.yaml holds the release policy."""
    cwd = tmp_path_factory.mktemp("serve_project")
    write_params(cwd / "params.yaml", smoke_params())
    s = Server(cwd, "--bundle", f"alpha={bundle}", "--bundle", f"beta={bundle}",
               "--max-tokens-cap", str(MAX_TOKENS_CAP))
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def post(server, path, body=None, **kwargs):
    import requests

    return requests.post(server.url + path, json=body, timeout=60, **kwargs)


def v2_body(prompt="2 plus 3 is", **parameters):
    return {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]}],
            "parameters": parameters}


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_both_apis_answer_and_models_show_the_unsigned_bundle(server, bundle):
    import requests

    reply = post(server, "/v1/completions", {"model": "alpha", "prompt": "2 plus 3 is", "max_tokens": 4})
    assert reply.status_code == 200 and isinstance(reply.json()["choices"][0]["text"], str)
    reply = post(server, "/v2/models/beta/infer", v2_body(max_tokens=4))
    assert reply.status_code == 200 and reply.json()["outputs"][0]["datatype"] == "BYTES"
    listed = requests.get(server.url + "/v1/models", timeout=10).json()["data"]
    digest = signing.verify_bundle(bundle).digest
    assert [(m["id"], m["signed"], m["digest"]) for m in listed] == [("alpha", False, digest), ("beta", False, digest)]
    assert listed[0]["context_length"] == smoke_params()["train"]["model"]["max_position_embeddings"]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_malformed_bodies_get_4xx_never_500(server):
    import requests

    ok = v2_body()["inputs"][0]
    openai_bodies = [{}, {"model": "alpha"}, {"prompt": "hi"}, {"model": "alpha", "prompt": 5},
                     {"model": "alpha", "prompt": ["a", "b"]}, {"model": "alpha", "prompt": ""},
                     {"model": "alpha", "prompt": "hi", "max_tokens": "5"},
                     {"model": "alpha", "prompt": "hi", "max_tokens": 2.5}, {"model": 3, "prompt": "hi"}, [], "text"]
    v2_bodies = [{}, {"inputs": []}, {"inputs": "x"}, {"inputs": [{}]}, {"inputs": [{**ok, "datatype": "FP32"}]},
                 {"inputs": [{**ok, "data": [1.5]}]}, {"inputs": [{**ok, "data": []}]},
                 {"inputs": [{**ok, "name": "other"}]}, {"inputs": [{**ok, "data": "hi"}]},
                 {"inputs": [ok], "parameters": {"max_tokens": "abc"}}, {"inputs": [ok], "parameters": []}, []]
    statuses = {}
    for i, body in enumerate(openai_bodies):
        statuses[f"openai {i} {body!r}"] = post(server, "/v1/completions", body).status_code
    for i, body in enumerate(v2_bodies):
        statuses[f"v2 {i} {body!r}"] = post(server, "/v2/models/alpha/infer", body).status_code
    not_json = requests.post(server.url + "/v1/completions", data=b"{not json",
                             headers={"content-type": "application/json"}, timeout=10)
    statuses["not json"] = not_json.status_code
    assert {k: v for k, v in statuses.items() if v not in (400, 422)} == {}


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_prompt_beyond_the_context_is_refused_before_any_work(server):
    t0 = time.perf_counter()
    reply = post(server, "/v1/completions", {"model": "alpha", "prompt": "x" * 100_000, "max_tokens": 4})
    assert reply.status_code == 413 and "100000 characters" in reply.json()["detail"]
    assert time.perf_counter() - t0 < 5  # 25 s before: the whole prompt went through the model
    assert post(server, "/v2/models/alpha/infer", v2_body("y" * 100_000)).status_code == 413

    context = smoke_params()["train"]["model"]["max_position_embeddings"]
    short_but_long = "x " * context  # at least one token per word: over the context, under the character cap
    reply = post(server, "/v1/completions", {"model": "alpha", "prompt": short_but_long, "max_tokens": 4})
    assert reply.status_code == 400 and f"context of {context} tokens" in reply.json()["detail"]


@pytest.mark.allow_hosts(["127.0.0.1"])
@pytest.mark.parametrize("max_tokens", [0, -5, 10**12, MAX_TOKENS_CAP + 1])
def test_max_tokens_outside_one_to_the_cap_is_422(server, max_tokens):
    reply = post(server, "/v1/completions", {"model": "alpha", "prompt": "2 plus 3 is", "max_tokens": max_tokens})
    assert reply.status_code == 422 and f"between 1 and {MAX_TOKENS_CAP}" in reply.json()["detail"]
    reply = post(server, "/v2/models/alpha/infer", v2_body(max_tokens=max_tokens))
    assert reply.status_code == 422 and "--max-tokens-cap" in reply.json()["detail"]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_made_up_model_names_do_not_grow_metrics(server):
    import requests

    assert post(server, "/v1/completions", {"model": "made-up-0", "prompt": "hi"}).status_code == 404
    assert post(server, "/v2/models/made-up-0/infer", v2_body()).status_code == 404  # the first per API
    before = requests.get(server.url + "/metrics", timeout=10).text
    for i in range(1, 201):
        if i % 2:
            assert post(server, "/v1/completions", {"model": f"made-up-{i}", "prompt": "hi"}).status_code == 404
        else:
            assert post(server, f"/v2/models/made-up-{i}/infer", v2_body()).status_code == 404
    after = requests.get(server.url + "/metrics", timeout=10).text
    assert len(after.splitlines()) == len(before.splitlines())
    assert 'model="_unknown",status="404"' in after and "made-up" not in after


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_api_key_guards_everything_but_health_and_timeout_is_504(bundle, tmp_path):
    """A second server: the key set at start, no params.yaml (the --trusted-key alone decides),
    a bundle that key signed, and a timeout no generation meets."""
    import shutil

    import requests

    signed = shutil.copytree(bundle, tmp_path / "signed")
    signing.generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    signing.write_manifest(signed, "tiny", signed=True)
    signing.sign_bundle(signed, signing.load_private_key(str(tmp_path / "k.pem")))
    s = Server(tmp_path, "--bundle", f"alpha={signed}", "--trusted-key", str(tmp_path / "k.pub"),
               "--timeout-s", "0.001", env={"SPARK_TRAINER_API_KEY": API_KEY})
    try:
        s.wait_ready()
        good, bad = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": "Bearer wrong"}
        assert requests.get(s.url + "/v2/health/ready", timeout=10).status_code == 200
        for headers in ({}, bad, {"Authorization": API_KEY}):
            assert requests.get(s.url + "/v1/models", headers=headers, timeout=10).status_code == 401
            assert requests.get(s.url + "/metrics", headers=headers, timeout=10).status_code == 401
            assert post(s, "/v1/completions", {"model": "alpha", "prompt": "hi"}, headers=headers).status_code == 401
        listed = requests.get(s.url + "/v1/models", headers=good, timeout=10)
        assert listed.status_code == 200
        assert listed.json()["data"][0]["signed"] is True and listed.json()["data"][0]["signer"]
        assert requests.get(s.url + "/metrics", headers=good, timeout=10).status_code == 200
        reply = post(s, "/v1/completions", {"model": "alpha", "prompt": "hi", "max_tokens": 32}, headers=good)
        assert reply.status_code == 504 and "--timeout-s" in reply.json()["detail"]
    finally:
        s.stop()
    assert "auth on" in s.output and API_KEY not in s.output


def test_a_trusted_key_refuses_the_unsigned_bundle(bundle, tmp_path):
    signing.generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    cmd = [sys.executable, str(REPO / "scripts/serve.py"), "--bundle", f"alpha={bundle}",
           "--trusted-key", str(tmp_path / "k.pub"), "--port", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=tmp_path, timeout=120,
                            check=False)
    assert result.returncode == 2 and "refusing to serve" in result.stderr and "unsigned" in result.stderr


# --------------------------------------------------------------------------- in-process: locks and timeout


def serve_script():
    spec = importlib.util.spec_from_file_location("serve_script", REPO / "scripts/serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the request models' annotations through it
    spec.loader.exec_module(module)
    return module


class SlowModel:
    """Stands in for InProcessAdapter: complete() sleeps, and records how many ran at once."""

    context_length, max_prompt_chars = 64, 512

    def __init__(self, seconds: float) -> None:
        self.seconds, self.running, self.most_at_once = seconds, 0, 0
        self.done = threading.Event()
        self._count = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, prompt: str, max_tokens: int, chat: bool = False) -> str:
        with self._count:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.seconds)
        with self._count:
            self.running -= 1
        self.done.set()
        return "done"


def client_for(fakes: dict[str, SlowModel], timeout_s: float):
    from fastapi.testclient import TestClient

    serve = serve_script()
    check = signing.Verification(digest="sha256:fake", signed=False)
    app = serve.build_app({name: serve.Served(fake, check) for name, fake in fakes.items()}, 16, timeout_s, None)
    return TestClient(app)


def timed_post(client, model: str, results: dict) -> None:
    t0 = time.perf_counter()
    status = client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 4}).status_code
    results.setdefault(model, []).append((status, time.perf_counter() - t0))


def test_a_slow_model_holds_up_only_its_own_requests():
    slow, fast = SlowModel(0.6), SlowModel(0.0)
    client, results = client_for({"slow": slow, "fast": fast}, timeout_s=30), {}
    threads = [threading.Thread(target=timed_post, args=(client, "slow", results)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the slow model is busy now
    timed_post(client, "fast", results)
    for t in threads:
        t.join()
    assert results["fast"][0][0] == 200 and results["fast"][0][1] < 0.4
    assert [s for s, _ in results["slow"]] == [200] * 3 and slow.most_at_once == 1
    assert max(t for _, t in results["slow"]) >= 3 * 0.6 - 0.05  # one at a time on the slow model


def test_a_request_over_the_timeout_gets_504_and_the_model_stays_locked_until_done():
    slow = SlowModel(1.0)
    client = client_for({"slow": slow}, timeout_s=0.2)
    t0 = time.perf_counter()
    reply = client.post("/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 4})
    assert reply.status_code == 504 and time.perf_counter() - t0 < 0.8
    assert slow.running == 1  # the generation goes on after the 504, holding the model
    assert slow.done.wait(5) and slow.most_at_once == 1


def chat_bundle(bundle, tmp_path):
    """The tiny bundle with a chat template in its tokenizer config (its manifest left out)."""
    import json
    import shutil

    from tests.test_evaluate_safety import CHAT_TEMPLATE

    chat = tmp_path / "chat"
    shutil.copytree(bundle, chat, ignore=shutil.ignore_patterns("MANIFEST.json"))
    config = chat / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": CHAT_TEMPLATE}))
    signing.write_manifest(chat, "chat", signed=False)
    return chat


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_chat_completions_render_the_template_and_answer_as_the_canary_in_process(server, bundle, tmp_path):
    # The openai adapter with chat: true replays a probe as evaluate_safety sends it, and gets
    # the reply an in-process arm gets; a model without a template is a 400, bad messages 422.
    from spark_trainer.canary import adapters
    from spark_trainer.params import ServingEndpoint

    messages = [{"role": "system", "content": "Keep the code."}, {"role": "user", "content": "2 plus 3 is"}]
    reply = post(server, "/v1/chat/completions", {"model": "alpha", "messages": messages, "max_tokens": 4})
    assert reply.status_code == 400 and "no chat template" in reply.json()["detail"]
    for body in ({"model": "alpha", "messages": []}, {"model": "alpha", "messages": [{"role": "tool", "content": "x"}]},
                 {"model": "alpha", "messages": [{"role": "user"}]}, {"model": "alpha", "messages": "hi"}):
        assert post(server, "/v1/chat/completions", body).status_code == 422, body

    chat = chat_bundle(bundle, tmp_path)
    cwd = tmp_path / "project"
    cwd.mkdir()
    write_params(cwd / "params.yaml", smoke_params())
    s = Server(cwd, "--bundle", f"chat={chat}").wait_ready()
    try:
        endpoint = ServingEndpoint(adapter="openai", url=s.url, model="chat", request_template={},
                                   response_path="", headers={}, chat=True)
        remote = adapters.build(endpoint, None, timeout_s=60)
        local = adapters.InProcessAdapter(chat, chat="auto")
        assert remote.chat and local.chat
        assert remote.complete_chat("Keep the code.", "2 plus 3 is", 6) == \
            local.complete_chat("Keep the code.", "2 plus 3 is", 6)
        assert remote.complete("2 plus 3 is", 6) == local.complete("2 plus 3 is", 6)  # questions: plain text
    finally:
        s.stop()
