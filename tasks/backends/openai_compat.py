"""Client for any OpenAI-compatible chat-completions endpoint (vLLM, a hosted API).

Requests run on a bounded thread pool; 429, 5xx, timeouts, transport errors and malformed
replies are retried with exponential backoff and full jitter (a 429's Retry-After is honoured).
Per-item outcomes let a stage quarantine one failed prompt while the batch goes on.

The API key comes from an environment variable or a Prefect Secret block, lives only in the
request header, and is redacted from every error message this module raises or logs.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import httpx
import numpy as np

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(RuntimeError):
    """A request that failed for good; the message is safe to log and store."""


class LogprobsUnavailable(BackendError):
    """The server returned no logprobs: the caller should generate and parse instead."""


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None
    attempts: int = 0
    no_logprobs: bool = False  # the server gave no logprobs: fall back to generate-and-parse

    @property
    def ok(self) -> bool:
        return self.error is None


def resolve_api_key(env: str | None, secret: str | None) -> str | None:
    """The key from the named environment variable, else from the named Prefect Secret block."""
    if env and os.environ.get(env):
        return os.environ[env]
    if secret:
        from prefect.blocks.system import Secret

        return Secret.load(secret).get()
    return None


def image_data_url(image) -> str:
    """A PIL image as a base64 PNG/JPEG data URL (JPEG for photos, PNG keeps alpha)."""
    buf = io.BytesIO()
    fmt = "PNG" if image.mode in ("RGBA", "LA", "P") else "JPEG"
    (image if fmt == "PNG" else image.convert("RGB")).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


class OpenAICompatClient:
    """Generator, Captioner and (when the server returns logprobs) LabelScorer over HTTP."""

    def __init__(self, base_url: str, model: str, *, revision: str | None = None, api_key_env: str | None = None,
                 api_key_secret: str | None = None, timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, concurrency: int = 8,
                 max_new_tokens: int = 64, temperature: float = 0.0, top_logprobs: int = 20,
                 system_prompt: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"{model}@{revision or 'api'}"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = max(1, concurrency)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self.system_prompt = system_prompt
        self._sleep = sleep
        self._key = resolve_api_key(api_key_env, api_key_secret)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers,
                                  limits=httpx.Limits(max_connections=self.concurrency))
        self.requests_made = 0

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatClient({self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        self._http.close()

    def redact(self, text: str) -> str:
        """The text without the key. Always redact the whole text *before* cutting it: a cut
        through the key leaves a prefix that no longer matches and would be stored."""
        if self._key:
            text = text.replace(self._key, "***")
        return text

    # ---- transport ----
    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))

    def _post(self, body: dict) -> Outcome:
        """One chat completion with retries; never raises, the outcome carries a safe reason."""
        url = f"{self.base_url}/chat/completions"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                self.requests_made += 1
                resp = self._http.post(url, json=body)
                if resp.status_code == 200:
                    try:
                        return Outcome(resp.json(), attempts=attempt + 1)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        last = f"malformed JSON in the reply: {self.redact(resp.text)[:120]!r}"
                elif resp.status_code in RETRY_STATUS:
                    retry_after = resp.headers.get("retry-after")
                    last = f"HTTP {resp.status_code}: {self.redact(resp.text)[:200]}"
                else:
                    return Outcome(error=f"HTTP {resp.status_code} (not retried): {self.redact(resp.text)[:300]}",
                                   attempts=attempt + 1)
            except httpx.TimeoutException as e:
                last = f"timeout after {self.timeout_s:g}s ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"transport error: {type(e).__name__}: {self.redact(str(e))}"
            if attempt < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.info("retrying %s in %.2fs after: %s", url, delay, self.redact(last)[:200])
                self._sleep(delay)
        return Outcome(error=self.redact(f"gave up after {self.max_retries + 1} attempts; last error: {last}"),
                       attempts=self.max_retries + 1)

    def _map(self, bodies: list[dict], parse: Callable[[dict], Any]) -> list[Outcome]:
        def one(body: dict) -> Outcome:
            out = self._post(body)
            if not out.ok:
                return out
            try:
                return Outcome(parse(out.value), attempts=out.attempts)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                return Outcome(error=self.redact(f"unexpected reply shape: {type(e).__name__}: {e}"),
                               attempts=out.attempts)
            except BackendError as e:
                return Outcome(error=self.redact(str(e)), attempts=out.attempts,
                               no_logprobs=isinstance(e, LogprobsUnavailable))

        if len(bodies) <= 1:
            return [one(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(one, bodies))

    # ---- request bodies ----
    def _messages(self, prompt: str | list[dict]) -> list[dict]:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return msgs

    def _body(self, messages: list[dict], max_tokens: int, **extra) -> dict:
        return {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": self.temperature, **extra}

    @staticmethod
    def _text(reply: dict) -> str:
        content = reply["choices"][0]["message"]["content"]
        if content is None:
            raise ValueError("the reply has no message content")
        return content.strip()

    # ---- Generator ----
    def generate_outcomes(self, prompts: Sequence[str | list[dict]], max_new_tokens: int | None = None) -> list[Outcome]:
        bodies = [self._body(self._messages(p), max_new_tokens or self.max_new_tokens) for p in prompts]
        return self._map(bodies, self._text)

    def generate(self, prompts: Sequence[str | list[dict]], max_new_tokens: int | None = None) -> list[str]:
        return _values(self.generate_outcomes(prompts, max_new_tokens))

    # ---- Captioner ----
    def caption_outcomes(self, images: Sequence, prompt: str | None = None,
                         max_new_tokens: int | None = None) -> list[Outcome]:
        text = prompt or "Describe this image in one sentence."
        bodies = [self._body(self._messages([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(im)}},
            {"type": "text", "text": text}]}]), max_new_tokens or self.max_new_tokens) for im in images]
        return self._map(bodies, self._text)

    def caption(self, images: Sequence, prompt: str | None = None, max_new_tokens: int | None = None) -> list[str]:
        return _values(self.caption_outcomes(images, prompt, max_new_tokens))

    # ---- LabelScorer via logprobs ----
    def label_outcomes(self, prompts: Sequence[str | list[dict]], labels: Sequence[str]) -> list[Outcome]:
        """Per prompt, the renormalised probabilities of the labels read from the first token's top logprobs.

        A server that returns no logprobs yields LogprobsUnavailable outcomes; a reply whose top-k
        holds none of the labels is an error outcome, never a zero.
        """
        k = max(self.top_logprobs, len(labels))
        bodies = [self._body(self._messages(p), 1, logprobs=True, top_logprobs=k) for p in prompts]
        labels = [str(x) for x in labels]

        def parse(reply: dict) -> np.ndarray:
            lp = (reply["choices"][0].get("logprobs") or {}).get("content")
            if not lp or not lp[0].get("top_logprobs"):
                raise LogprobsUnavailable(f"{self.base_url} returned no logprobs for model {self.model}; "
                                          "use generate-and-parse for this judge")
            probs = np.zeros(len(labels), np.float64)
            for cand in lp[0]["top_logprobs"]:
                tok = str(cand.get("token", "")).strip()
                if tok in labels:
                    probs[labels.index(tok)] += math.exp(float(cand["logprob"]))
            if probs.sum() <= 0:
                raise BackendError(f"none of the labels {labels} is among the top {k} first tokens")
            return (probs / probs.sum()).astype(np.float32)

        return self._map(bodies, parse)

    def label_probabilities(self, prompts: Sequence[str | list[dict]], labels: Sequence[str]) -> np.ndarray:
        """Raises LogprobsUnavailable when the server gives no logprobs, BackendError on other failures."""
        outcomes = self.label_outcomes(prompts, labels)
        missing = [o for o in outcomes if o.no_logprobs]
        if missing:
            raise LogprobsUnavailable(missing[0].error)
        return np.stack(_values(outcomes)) if outcomes else np.zeros((0, len(labels)), np.float32)


def _values(outcomes: list[Outcome]) -> list:
    failed = [(i, o.error) for i, o in enumerate(outcomes) if not o.ok]
    if failed:
        i, err = failed[0]
        raise BackendError(f"{len(failed)} of {len(outcomes)} requests failed; first (item {i}): {err}")
    return [o.value for o in outcomes]
