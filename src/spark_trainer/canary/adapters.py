"""Serving adapters: one `complete(prompt, max_tokens) -> text` over several APIs.

- in_process: the bundle loaded with transformers in this process (default). A probe goes
  through the model's chat template, as evaluate_safety sends it, when
  `evaluate_safety.chat` says so (auto: when the tokenizer has one);
- openai: an OpenAI-compatible completions server (`POST /v1/completions`, as vLLM and
  TGI serve, and scripts/serve.py); with `chat: true`, probes go to `/v1/chat/completions`
  as [system, user] messages, which the server renders with the model's chat template;
- kserve_v2: the KServe v2 / Open Inference Protocol (`POST /v2/models/<name>/infer`,
  as Triton and TorchServe serve, and scripts/serve.py);
- rest: any JSON API; the request body comes from a template in params ({prompt},
  {max_tokens} placeholders) and the reply text from a dotted path.

Every failure (connection refused, timeout, HTTP error, malformed reply) raises
AdapterError, which the replay counts as an error; it never ends the stage.

Credentials reach an HTTP adapter only through the environment: `headers` and
`request_template` values written `env:VAR` are read when the adapter is built. Adapter
names and error messages show the endpoint as `redact_url` does, and never a header
value, a template value read from the environment, or the url's query.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from spark_trainer.canary.traffic import Item
from spark_trainer.errors import ParamsError
from spark_trainer.params import ENV_REF, ServingEndpoint
from spark_trainer.tracking import REDACTED, redact_text, redact_url


class AdapterError(Exception):
    """One request failed; the message says how."""


class Adapter(Protocol):
    name: str
    chat: bool  # a probe's conversation goes through the model's chat template (complete_chat)

    def complete(self, prompt: str, max_tokens: int) -> str: ...

    def complete_chat(self, system: str, user: str, max_tokens: int) -> str: ...


def ask(adapter: Adapter, item: Item, max_tokens: int) -> str:
    """The adapter's reply to a traffic item: a probe as a [system, user] conversation where
    the adapter reads chat, otherwise the plain prompt."""
    if adapter.chat and item.system is not None:
        return adapter.complete_chat(item.system, item.user, max_tokens)
    return adapter.complete(item.prompt, max_tokens)


class InProcessAdapter:
    """Greedy generation with the bundle's model in this process, on `device` (compute.device).
    `chat`: evaluate_safety.chat (auto, true, false), resolved against the bundle's tokenizer."""

    def __init__(self, bundle_dir: Path, device="cpu", chat: bool | str = False) -> None:
        from spark_trainer.evaluation.safety import use_chat
        from spark_trainer.modeling import causal_lm
        from spark_trainer.modeling.tokenizer import load_pretrained

        self.name = f"in_process:{bundle_dir.name}"
        self.model = causal_lm.load_for_inference(bundle_dir, device=device)
        self.tokenizer = load_pretrained(str(bundle_dir))
        self.chat = use_chat(self.tokenizer, chat, bundle_dir)
        self.context_length = int(self.model.config.max_position_embeddings)
        # No token holds more characters than the longest vocabulary entry, so a longer
        # prompt than this cannot fit the context: a server refuses it without tokenizing.
        self.max_prompt_chars = self.context_length * max(map(len, self.tokenizer.get_vocab()))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def complete(self, prompt: str, max_tokens: int, chat: bool = False) -> str:
        from spark_trainer.evaluation.safety import generate

        try:
            return generate(self.model, self.tokenizer, [prompt], max_tokens, chat)[0]
        except (RuntimeError, ValueError, IndexError) as e:
            raise AdapterError(f"in-process generation failed: {e}") from e

    def complete_chat(self, system: str, user: str, max_tokens: int) -> str:
        from spark_trainer.evaluation.safety import chat_prompt

        return self.complete(chat_prompt(self.tokenizer, system, user), max_tokens, chat=True)

    def render(self, messages: list[dict[str, str]]) -> str:
        """Chat messages through the tokenizer's chat template, up to the assistant's turn;
        ValueError without a template or when the template refuses them."""
        from spark_trainer.evaluation.safety import has_chat_template, render_chat

        if not has_chat_template(self.tokenizer):
            raise ValueError("the model has no chat template: send plain text to /v1/completions")
        return render_chat(self.tokenizer, messages)


class _HttpAdapter:
    chat = False  # plain prompts; the openai adapter with `chat: true` sends probes as chat messages

    def __init__(self, endpoint: ServingEndpoint, timeout_s: float) -> None:
        import requests

        self.endpoint, self.timeout = endpoint, timeout_s
        self.name = f"{endpoint.adapter}:{redact_url(endpoint.url)}"
        secrets: list[str] = []
        headers = {name: _read_env(ref, f"header {name} of {redact_url(endpoint.url)}", secrets)
                   for name, ref in endpoint.headers.items()}
        self.request_template = _resolve_env(endpoint.request_template,
                                             f"a request_template value of {redact_url(endpoint.url)}", secrets)
        # A server may echo what it was sent (`401: bad token ...`), and requests names the
        # request path with its query in connection errors: none of it may reach a message.
        parts = urlsplit(endpoint.url)
        secrets += [parts.query, parts.fragment]
        self._secrets = sorted(filter(None, set(secrets)), key=len, reverse=True)
        self.session = requests.Session()
        self.session.headers.update(headers)

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        import requests

        shown = redact_url(url)
        try:
            response = self.session.post(url, json=body, timeout=self.timeout)
        except requests.RequestException as e:
            raise self._error(f"{shown}: {type(e).__name__}: {e}") from e
        except RuntimeError as e:  # pytest-socket blocks sockets with a RuntimeError subclass
            raise self._error(f"{shown}: {e}") from e
        if response.status_code != 200:
            raise self._error(f"{shown}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as e:
            raise self._error(f"{shown}: reply is not JSON: {response.text[:200]}") from e

    def _error(self, message: str) -> AdapterError:
        for secret in self._secrets:
            message = message.replace(secret, REDACTED)
        return AdapterError(redact_text(message))


class OpenAIAdapter(_HttpAdapter):
    def __init__(self, endpoint: ServingEndpoint, timeout_s: float) -> None:
        super().__init__(endpoint, timeout_s)
        self.chat = endpoint.chat

    def complete_chat(self, system: str, user: str, max_tokens: int) -> str:
        from spark_trainer.evaluation.safety import conversation

        reply = self._post(with_path(self.endpoint.url, "/v1/chat/completions"),
                           {"model": self.endpoint.model, "messages": conversation(system, user),
                            "max_tokens": max_tokens, "temperature": 0})
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise self._error(f"chat reply lacks choices[0].message.content: {json.dumps(reply)[:200]}") from e

    def complete(self, prompt: str, max_tokens: int) -> str:
        reply = self._post(with_path(self.endpoint.url, "/v1/completions"),
                           {"model": self.endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0})
        try:
            return reply["choices"][0]["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise self._error(f"completions reply lacks choices[0].text: {json.dumps(reply)[:200]}") from e


class KServeV2Adapter(_HttpAdapter):
    def complete(self, prompt: str, max_tokens: int) -> str:
        url = with_path(self.endpoint.url, f"/v2/models/{self.endpoint.model}/infer")
        reply = self._post(url, {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                                             "data": [prompt]}],
                                 "parameters": {"max_tokens": max_tokens}})
        try:
            return reply["outputs"][0]["data"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise self._error(f"v2 infer reply lacks outputs[0].data[0]: {json.dumps(reply)[:200]}") from e


class RestAdapter(_HttpAdapter):
    def complete(self, prompt: str, max_tokens: int) -> str:
        body = fill_template(self.request_template, {"prompt": prompt, "max_tokens": max_tokens})
        reply = self._post(self.endpoint.url, body)
        try:
            return str(dig(reply, self.endpoint.response_path))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise self._error(f"reply has no {self.endpoint.response_path!r}: {json.dumps(reply)[:200]}") from e


def _read_env(ref: str, what: str, secrets: list[str]) -> str:
    """The value of the variable `env:VAR` names; it is appended to `secrets`, the values
    no message may show. An unset or empty variable is an error that names it."""
    var = ref.removeprefix("env:")
    value = os.environ.get(var, "")
    if not value.strip():
        raise ParamsError(f"{what} is {ref}, but the environment variable {var} is not set (or empty): "
                          f"export {var} before running the stage")
    # "Bearer <token>": a server that echoes only the token must not show it either.
    secrets += [value, value.split()[-1]]
    return value


def _resolve_env(template: Any, what: str, secrets: list[str]) -> Any:
    """`template` with each string that is exactly `env:VAR` replaced by the variable's value."""
    if isinstance(template, dict):
        return {k: _resolve_env(v, what, secrets) for k, v in template.items()}
    if isinstance(template, list):
        return [_resolve_env(v, what, secrets) for v in template]
    if isinstance(template, str) and ENV_REF.fullmatch(template):
        return _read_env(template, what, secrets)
    return template


def with_path(url: str, path: str) -> str:
    """`path` appended to the url's own path; its query (e.g. `?api-version=...`) stays last."""
    parts = urlsplit(url)
    return parts._replace(path=parts.path.rstrip("/") + path).geturl()


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


def build(endpoint: ServingEndpoint, bundle_dir: Path | None, timeout_s: float, device="cpu",
          chat: bool | str = False) -> Adapter:
    """`device` and `chat` (evaluate_safety.chat): how an in_process adapter runs its model
    and sends probes (an HTTP one's server decides both)."""
    if endpoint.adapter == "in_process":
        assert bundle_dir is not None
        return InProcessAdapter(bundle_dir, device, chat)
    cls = {"openai": OpenAIAdapter, "kserve_v2": KServeV2Adapter, "rest": RestAdapter}[endpoint.adapter]
    return cls(endpoint, timeout_s)
