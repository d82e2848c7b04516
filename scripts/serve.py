"""Serve bundles on localhost over the OpenAI-compatible completions API and KServe v2.

    python scripts/serve.py --bundle spark-trainer=dist/spark-trainer-arithmetic --port 8000
    python scripts/serve.py --alias champion --alias challenger --port 8000   # from the MLflow registry
    SPARK_TRAINER_API_KEY=... python scripts/serve.py --bundle ... --trusted-key keys/signing.pub

Endpoints:
    POST /v1/completions            {"model", "prompt", "max_tokens"} -> {"choices": [{"text"}]}
    POST /v1/chat/completions       {"model", "messages", "max_tokens"} -> {"choices": [{"message"}]}, the
                                    messages rendered by the model's chat template (400 without one)
    GET  /v1/models                 each model's bundle digest, whether it is signed, its context
    POST /v2/models/<name>/infer    Open Inference Protocol: BYTES input "text_input", parameters.max_tokens
    GET  /v2/health/ready, /health  readiness (never needs the API key)
    GET  /metrics                   Prometheus: request count and latency histogram per model

Trust: every bundle is verified under the release policy before it is served: the
`register` section of params.yaml (when there is one: trusted_public_keys, allow_unsigned)
plus each --trusted-key; a tampered bundle, or one no trusted key signed, is refused.
Limits: a malformed body gets 422 (or 400), never 500; a prompt longer than the model's
context gets 413 by a character cap checked before tokenizing, or 400 by its token count;
max_tokens outside 1..--max-tokens-cap gets 422.
Auth: when the variable --api-key-env names (SPARK_TRAINER_API_KEY) is set, every endpoint
but health needs `Authorization: Bearer <key>`, 401 otherwise.
Concurrency: each model has one worker thread, which is its lock: generations on a model run
one at a time (the model is not thread-safe) while other models serve on. A request not
answered within --timeout-s gets 504; a generation already running still runs to its end,
and only then is the model's lock released for the next request.
A name that is not served is counted as model="_unknown" in /metrics, so made-up names add
no series. Generation is greedy (temperature 0), which is what the canary replays.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spark_trainer import tracking
from spark_trainer.canary.adapters import AdapterError, InProcessAdapter
from spark_trainer.errors import SparkTrainerError
from spark_trainer.packaging.signing import Verification
from spark_trainer.params import PARAMS_FILE, RegisterParams, TrackingParams, load_section
from spark_trainer.registry import model_registry, release

log = logging.getLogger("serve")

UNKNOWN = "_unknown"  # the metrics label of every name not served
HEALTH = ("/health", "/v2/health/ready")


class Completion(BaseModel):
    """The part of an OpenAI completions request that greedy serving uses; other fields are ignored."""

    model_config = ConfigDict(strict=True)
    model: str
    prompt: str = Field(min_length=1)
    max_tokens: int = 16
    temperature: float = 0.0


class Message(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletion(BaseModel):
    """The part of an OpenAI chat completions request that greedy serving uses; other fields are ignored."""

    model_config = ConfigDict(strict=True)
    model: str
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int = 16
    temperature: float = 0.0


class InferInput(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str
    shape: list[int]
    datatype: Literal["BYTES"]
    data: list[str] = Field(min_length=1, max_length=1)  # one prompt per request


class InferParameters(BaseModel):
    model_config = ConfigDict(strict=True)
    max_tokens: int = 16


class InferRequest(BaseModel):
    """A KServe v2 infer body: one BYTES input named text_input holding the prompt."""

    model_config = ConfigDict(strict=True)
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    parameters: InferParameters = InferParameters()

    @model_validator(mode="after")
    def _has_text_input(self) -> InferRequest:
        if not any(i.name == "text_input" for i in self.inputs):
            raise ValueError('expected inputs: [{"name": "text_input", "datatype": "BYTES", "shape": [1], '
                             '"data": [prompt]}]')
        return self

    def prompt(self) -> str:
        return next(i for i in self.inputs if i.name == "text_input").data[0]


@dataclass
class Served:
    """A model being served: its adapter, its bundle's verification, and its worker."""

    adapter: InProcessAdapter
    check: Verification
    # One thread per model is its lock. A shared pool with a lock per model would not do:
    # requests queued on one slow model would take every pool thread and stall the others.
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))


def release_policy(trusted_keys: tuple[str, ...]) -> RegisterParams:
    """`register` from params.yaml when there is one; without it, the --trusted-key keys
    alone decide: with one, only a bundle it signed is served; with none, any bundle whose
    files match (allow_unsigned null). model_name and alias are not used by verification."""
    if Path(PARAMS_FILE).is_file():
        return load_section("register")  # type: ignore[return-value]
    return RegisterParams(model_name="serve", allow_unsigned=None, trusted_public_keys=(), alias="serve")


def verified(path: Path, reg: RegisterParams, trusted_keys: tuple[str, ...]) -> Verification:
    check = release.verify_release(path, reg, trusted_keys)
    if check.problems:
        raise SparkTrainerError(f"refusing to serve {path}:\n  " + "\n  ".join(check.problems))
    return check


def load_models(pairs: list[str], aliases: list[str], trusted_keys: tuple[str, ...]) -> dict[str, Served]:
    reg = release_policy(trusted_keys)
    models = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path or not name or name == UNKNOWN:
            raise SparkTrainerError(f"--bundle {pair!r}: expected NAME=PATH (NAME not '{UNKNOWN}')")
        check = verified(Path(path), reg, trusted_keys)  # before loading: loading may run code
        models[name] = Served(InProcessAdapter(Path(path)), check)
    if aliases:
        settings: TrackingParams = load_section("tracking")  # type: ignore[assignment]
        uri = tracking.tracking_uri(settings)
        for alias in aliases:
            version = model_registry.resolve_alias(uri, reg.model_name, alias)
            if version is None:
                raise SparkTrainerError(f"'{reg.model_name}' has no alias '{alias}'")
            local = model_registry.fetch_verified(uri, version, reg, trusted_keys)
            models[alias] = Served(InProcessAdapter(local), verified(local, reg, trusted_keys))
    if not models:
        raise SparkTrainerError("nothing to serve: pass --bundle NAME=PATH or --alias ALIAS")
    return models


def build_app(models: dict[str, Served], max_tokens_cap: int, timeout_s: float, api_key: str | None):
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app

    metrics = CollectorRegistry()
    requests_total = Counter("spark_trainer_requests", "Inference requests", ["model", "api", "status"],
                             registry=metrics)
    latency = Histogram("spark_trainer_request_latency_seconds", "Inference latency", ["model", "api"],
                        registry=metrics, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    app = FastAPI(title="SparkTrainer serve")
    app.mount("/metrics", make_asgi_app(registry=metrics))

    if api_key is not None:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if request.url.path in HEALTH or hmac.compare_digest(given, expected):
                return await call_next(request)
            return JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def check_limits(name: str, served: Served, prompt: str, max_tokens: int) -> None:
        if not 1 <= max_tokens <= max_tokens_cap:
            raise HTTPException(422, f"max_tokens must be between 1 and {max_tokens_cap} (--max-tokens-cap); "
                                     f"got {max_tokens}")
        limit = served.adapter.max_prompt_chars
        if len(prompt) > limit:
            raise HTTPException(413, f"prompt is {len(prompt)} characters; model '{name}' takes at most {limit} "
                                     f"(its context is {served.adapter.context_length} tokens): shorten it")

    def complete(name: str, served: Served, prompt: str, max_tokens: int, messages: list | None) -> str:
        # On the model's worker: the tokenizer is not shared across threads either.
        if messages is not None:  # the chat API: `prompt` is the messages' text, for the limits
            try:
                prompt = served.adapter.render(messages)
            except ValueError as e:
                raise HTTPException(400, f"model '{name}': {e}") from e
        tokens, context = served.adapter.count_tokens(prompt), served.adapter.context_length
        if tokens > context:
            raise HTTPException(400, f"prompt is {tokens} tokens; model '{name}' has a context of {context} "
                                     "tokens: shorten it")
        try:  # a rendered chat prompt holds the template's special tokens: no second BOS
            return served.adapter.complete(prompt, max_tokens, chat=messages is not None)
        except AdapterError as e:
            raise HTTPException(500, str(e)) from e

    async def generate(name: str, api: str, prompt: str, max_tokens: int, messages: list | None = None) -> str:
        served = models.get(name)
        if served is None:
            requests_total.labels(UNKNOWN, api, "404").inc()
            raise HTTPException(404, f"model {name[:100]!r} is not served here (serving: {sorted(models)})")
        t0 = time.perf_counter()
        try:
            check_limits(name, served, prompt, max_tokens)
            job = served.worker.submit(complete, name, served, prompt, max_tokens, messages)
            # On timeout a queued job is cancelled; a running one cannot be, and finishes.
            text = await asyncio.wait_for(asyncio.wrap_future(job), timeout_s)
        except HTTPException as e:
            requests_total.labels(name, api, str(e.status_code)).inc()
            raise
        except TimeoutError as e:
            requests_total.labels(name, api, "504").inc()
            raise HTTPException(504, f"no answer within {timeout_s:g} s (--timeout-s)") from e
        latency.labels(name, api).observe(time.perf_counter() - t0)
        requests_total.labels(name, api, "200").inc()
        return text

    @app.post("/v1/completions")
    async def completions(req: Completion):
        text = await generate(req.model, "openai", req.prompt, req.max_tokens)
        return {"object": "text_completion", "model": req.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletion):
        messages = [m.model_dump() for m in req.messages]
        text = await generate(req.model, "openai_chat", "".join(m["content"] for m in messages), req.max_tokens,
                              messages)
        return {"object": "chat.completion", "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length"}]}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "spark-trainer", "signed": s.check.signed,
             "signer": s.check.signer, "digest": s.check.digest, "context_length": s.adapter.context_length}
            for name, s in sorted(models.items())]}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, req: InferRequest):
        text = await generate(name, "kserve_v2", req.prompt(), req.parameters.max_tokens)
        return {"model_name": name, "id": req.id,
                "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [text]}]}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str):
        if name not in models:
            raise HTTPException(404, f"model {name[:100]!r} is not served here")
        return {"name": name, "platform": "pytorch_transformers",
                "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
                "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]}

    @app.get("/health")
    @app.get("/v2/health/ready")
    def health():
        return {"status": "ok", "models": sorted(models)}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", default=[], help="NAME=PATH of a bundle folder (repeatable)")
    parser.add_argument("--alias", action="append", default=[], help="a registry alias to serve (repeatable)")
    parser.add_argument("--trusted-key", action="append", default=[], metavar="PEM",
                        help="a public key a bundle's signer must match (repeatable); adds to "
                             "register.trusted_public_keys")
    parser.add_argument("--max-tokens-cap", type=int, default=256, help="the largest max_tokens a request may ask")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="seconds before a request gets 504")
    parser.add_argument("--api-key-env", default="SPARK_TRAINER_API_KEY", metavar="VAR",
                        help="when this variable is set, requests need 'Authorization: Bearer <its value>'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.max_tokens_cap < 1 or args.timeout_s <= 0:
        parser.error("--max-tokens-cap must be at least 1 and --timeout-s above 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = os.environ.get(args.api_key_env)
    if api_key == "":
        print(f"error: ${args.api_key_env} is set but empty: unset it to serve without a key, or set a key",
              file=sys.stderr)
        return 2
    try:
        models = load_models(args.bundle, args.alias, tuple(args.trusted_key))
    except SparkTrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    for name, served in sorted(models.items()):
        log.info("%s: digest %s, %s", name, served.check.digest,
                 f"signed by {served.check.signer}" if served.check.signed else "UNSIGNED")
    if api_key:
        log.info("auth on: every endpoint but health needs 'Authorization: Bearer' with $%s", args.api_key_env)
    else:
        log.info("auth off: set $%s to require an API key", args.api_key_env)
    log.info("serving %s on http://%s:%d", sorted(models), args.host, args.port)
    app = build_app(models, args.max_tokens_cap, args.timeout_s, api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
