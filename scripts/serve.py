"""Serve bundles on localhost over the OpenAI-compatible completions API and KServe v2.

    python scripts/serve.py --bundle spark-trainer=dist/spark-trainer-arithmetic --port 8000
    python scripts/serve.py --alias champion --alias challenger --port 8000   # from the MLflow registry

Endpoints:
    POST /v1/completions            {"model", "prompt", "max_tokens"} -> {"choices": [{"text"}]}
    GET  /v1/models
    POST /v2/models/<name>/infer    Open Inference Protocol, BYTES input "text_input"
    GET  /v2/health/ready, /health  readiness
    GET  /metrics                   Prometheus: request count and latency histogram per model

Every bundle is verified (digests, signature) before it is served; a tampered one is refused.
Generation is greedy (temperature 0), which is what the canary replays.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from spark_trainer import tracking
from spark_trainer.canary.adapters import InProcessAdapter
from spark_trainer.errors import SparkTrainerError
from spark_trainer.packaging import signing
from spark_trainer.params import RegisterParams, TrackingParams, load_section
from spark_trainer.registry import model_registry

log = logging.getLogger("serve")


class Completion(BaseModel):
    """The part of an OpenAI completions request that greedy serving uses."""

    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0


def load_bundles(pairs: list[str], aliases: list[str]) -> dict[str, InProcessAdapter]:
    models = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise SparkTrainerError(f"--bundle {pair!r}: expected NAME=PATH")
        check = signing.verify_bundle(Path(path))
        if check.problems:
            raise SparkTrainerError(f"refusing to serve {path}:\n  " + "\n  ".join(check.problems))
        models[name] = InProcessAdapter(Path(path))
    if aliases:
        reg: RegisterParams = load_section("register")  # type: ignore[assignment]
        settings: TrackingParams = load_section("tracking")  # type: ignore[assignment]
        uri = tracking.tracking_uri(settings)
        for alias in aliases:
            version = model_registry.resolve_alias(uri, reg.model_name, alias)
            if version is None:
                raise SparkTrainerError(f"'{reg.model_name}' has no alias '{alias}'")
            models[alias] = InProcessAdapter(model_registry.fetch_verified(uri, version, reg))
    if not models:
        raise SparkTrainerError("nothing to serve: pass --bundle NAME=PATH or --alias ALIAS")
    return models


def build_app(models: dict[str, InProcessAdapter]):
    from fastapi import FastAPI, HTTPException
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
    metrics = CollectorRegistry()
    requests_total = Counter("spark_trainer_requests", "Inference requests", ["model", "api", "status"],
                             registry=metrics)
    latency = Histogram("spark_trainer_request_latency_seconds", "Inference latency", ["model", "api"],
                        registry=metrics, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    lock = threading.Lock()  # one generation at a time: the model is not thread-safe
    app = FastAPI(title="SparkTrainer serve")
    app.mount("/metrics", make_asgi_app(registry=metrics))

    def run(name: str, api: str, prompt: str, max_tokens: int) -> str:
        if name not in models:
            requests_total.labels(name, api, "404").inc()
            raise HTTPException(404, f"model '{name}' is not served here (serving: {sorted(models)})")
        t0 = time.perf_counter()
        with lock:
            text = models[name].complete(prompt, max_tokens)
        latency.labels(name, api).observe(time.perf_counter() - t0)
        requests_total.labels(name, api, "200").inc()
        return text

    @app.post("/v1/completions")
    def completions(req: Completion):
        text = run(req.model, "openai", req.prompt, req.max_tokens)
        return {"object": "text_completion", "model": req.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}]}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in sorted(models)]}

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict):
        try:
            prompt = next(i for i in body["inputs"] if i.get("name") == "text_input")["data"][0]
        except (KeyError, StopIteration, IndexError, TypeError) as e:
            raise HTTPException(400, "expected inputs: [{name: text_input, datatype: BYTES, data: [prompt]}]") from e
        max_tokens = int((body.get("parameters") or {}).get("max_tokens", 16))
        text = run(name, "kserve_v2", prompt, max_tokens)
        return {"model_name": name, "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1],
                                                 "data": [text]}]}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str):
        if name not in models:
            raise HTTPException(404, f"model '{name}' is not served here")
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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        models = load_bundles(args.bundle, args.alias)
    except SparkTrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    log.info("serving %s on http://%s:%d", sorted(models), args.host, args.port)
    uvicorn.run(build_app(models), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
