"""Serving adapters: one `complete(prompt, max_tokens) -> text` over several APIs.

- in_process: the bundle loaded with transformers in this process (default);
- openai: an OpenAI-compatible completions server (`POST /v1/completions`, as vLLM and
  TGI serve, and scripts/serve.py);
- kserve_v2: the KServe v2 / Open Inference Protocol (`POST /v2/models/<name>/infer`,
  as Triton and TorchServe serve, and scripts/serve.py);
- rest: any JSON API; the request body comes from a template in params ({prompt},
  {max_tokens} placeholders) and the reply text from a dotted path.

Every failure (connection refused, timeout, HTTP error, malformed reply) raises
AdapterError, which the replay counts as an error; it never ends the stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from spark_trainer.params import ServingEndpoint


class AdapterError(Exception):
    """One request failed; the message says how."""


class Adapter(Protocol):
    name: str

    def complete(self, prompt: str, max_tokens: int) -> str: ...


class InProcessAdapter:
    """Greedy generation with the bundle's model in this process."""

    def __init__(self, bundle_dir: Path) -> None:
        from spark_trainer.modeling import causal_lm
        from spark_trainer.modeling.tokenizer import load_pretrained

        self.name = f"in_process:{bundle_dir.name}"
        self.model = causal_lm.load_for_inference(bundle_dir)
        self.tokenizer = load_pretrained(str(bundle_dir))

    def complete(self, prompt: str, max_tokens: int) -> str:
        from spark_trainer.evaluation.safety import generate

        try:
            return generate(self.model, self.tokenizer, [prompt], max_tokens)[0]
        except (RuntimeError, ValueError, IndexError) as e:
            raise AdapterError(f"in-process generation failed: {e}") from e


class _HttpAdapter:
    def __init__(self, endpoint: ServingEndpoint, timeout_s: float) -> None:
        import requests

        self.endpoint, self.timeout = endpoint, timeout_s
        self.session = requests.Session()
        self.name = f"{endpoint.adapter}:{endpoint.url}"

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        import requests

        try:
            response = self.session.post(url, json=body, timeout=self.timeout)
        except requests.RequestException as e:
            raise AdapterError(f"{url}: {type(e).__name__}: {e}") from e
        except RuntimeError as e:  # pytest-socket blocks sockets with a RuntimeError subclass
            raise AdapterError(f"{url}: {e}") from e
        if response.status_code != 200:
            raise AdapterError(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as e:
            raise AdapterError(f"{url}: reply is not JSON: {response.text[:200]}") from e


class OpenAIAdapter(_HttpAdapter):
    def complete(self, prompt: str, max_tokens: int) -> str:
        reply = self._post(self.endpoint.url.rstrip("/") + "/v1/completions",
                           {"model": self.endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0})
        try:
            return reply["choices"][0]["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise AdapterError(f"completions reply lacks choices[0].text: {json.dumps(reply)[:200]}") from e


class KServeV2Adapter(_HttpAdapter):
    def complete(self, prompt: str, max_tokens: int) -> str:
        url = f"{self.endpoint.url.rstrip('/')}/v2/models/{self.endpoint.model}/infer"
        reply = self._post(url, {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                                             "data": [prompt]}],
                                 "parameters": {"max_tokens": max_tokens}})
        try:
            return reply["outputs"][0]["data"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise AdapterError(f"v2 infer reply lacks outputs[0].data[0]: {json.dumps(reply)[:200]}") from e


class RestAdapter(_HttpAdapter):
    def complete(self, prompt: str, max_tokens: int) -> str:
        body = fill_template(self.endpoint.request_template, {"prompt": prompt, "max_tokens": max_tokens})
        reply = self._post(self.endpoint.url, body)
        try:
            return str(dig(reply, self.endpoint.response_path))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise AdapterError(f"reply has no {self.endpoint.response_path!r}: {json.dumps(reply)[:200]}") from e


def fill_template(template: Any, values: dict[str, Any]) -> Any:
    """Replace "{prompt}"-style placeholders; a string that is exactly one placeholder
    takes the value's own type (so {max_tokens} stays an integer)."""
    if isinstance(template, dict):
        return {k: fill_template(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_template(v, values) for v in template]
    if isinstance(template, str):
        for key, value in values.items():
            if template == "{" + key + "}":
                return value
        for key, value in values.items():
            template = template.replace("{" + key + "}", str(value))
    return template


def dig(data: Any, path: str) -> Any:
    """`choices.0.text` → data["choices"][0]["text"]."""
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def build(endpoint: ServingEndpoint, bundle_dir: Path | None, timeout_s: float) -> Adapter:
    if endpoint.adapter == "in_process":
        assert bundle_dir is not None
        return InProcessAdapter(bundle_dir)
    cls = {"openai": OpenAIAdapter, "kserve_v2": KServeV2Adapter, "rest": RestAdapter}[endpoint.adapter]
    return cls(endpoint, timeout_s)
