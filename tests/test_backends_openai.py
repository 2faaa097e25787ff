"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tasks.backends.openai_compat import BackendError, LogprobsUnavailable, OpenAICompatClient
from tests.openai_stub import StubServer

KEY = "sk-test-9f8e7d6c5b4a-SECRET"


@pytest.fixture
def server():
    with StubServer(api_key=KEY, slow_s=1.5) as s:
        yield s


def client(server, monkeypatch, **kw) -> OpenAICompatClient:
    monkeypatch.setenv("CF_TEST_KEY", KEY)
    opts = dict(api_key_env="CF_TEST_KEY", timeout_s=0.5, max_retries=3, backoff_s=0.01, max_backoff_s=0.05,
                concurrency=4)
    return OpenAICompatClient(server.base_url, "stub-model", **(opts | kw))


def test_generate_sends_the_key_and_runs_concurrently(server, monkeypatch):
    c = client(server, monkeypatch)
    prompts = [f"question {i}" for i in range(8)]
    assert c.generate(prompts) == [f"echo: question {i}" for i in range(8)]
    assert server.auth_failures == 0
    assert 1 < server.max_in_flight <= 4  # bounded concurrency
    assert c.name == "stub-model@api" and KEY not in repr(c)


def test_retries_429_and_500_then_succeeds(server, monkeypatch):
    c = client(server, monkeypatch)
    outs = c.generate_outcomes(["FLAKY429 a", "FLAKY500 b"])
    assert [o.value for o in outs] == ["echo: FLAKY429 a", "echo: FLAKY500 b"]
    assert [o.attempts for o in outs] == [3, 3]
    assert server.seen["FLAKY429 a"] == 3


def test_persistent_failures_become_per_item_errors_with_reasons(server, monkeypatch, caplog):
    c = client(server, monkeypatch, max_retries=2)
    with caplog.at_level(logging.DEBUG):
        outs = c.generate_outcomes(["ALWAYS500", "SLOW reply", "BADJSON", "fine"])
    assert [o.ok for o in outs] == [False, False, False, True]
    assert "HTTP 500" in outs[0].error and "3 attempts" in outs[0].error
    assert "timeout" in outs[1].error
    assert "malformed JSON" in outs[2].error
    assert server.seen["ALWAYS500"] == 3
    with pytest.raises(BackendError, match="3 of 4 requests failed"):
        c.generate(["ALWAYS500", "SLOW reply", "BADJSON", "fine"])
    assert KEY not in caplog.text and all(KEY not in (o.error or "") for o in outs)


def test_wrong_key_is_not_retried_and_not_leaked(server, monkeypatch):
    monkeypatch.setenv("CF_WRONG", "sk-wrong-key-123456")
    c = OpenAICompatClient(server.base_url, "stub-model", api_key_env="CF_WRONG", max_retries=3, backoff_s=0.01)
    out = c.generate_outcomes(["hello"])[0]
    assert "HTTP 401" in out.error and out.attempts == 1
    assert "sk-wrong-key-123456" not in out.error


def test_an_error_body_that_echoes_the_key_leaks_no_part_of_it(server, monkeypatch, caplog):
    """The body is redacted before it is cut: a cut through the key would leave a prefix no redaction finds."""
    c = client(server, monkeypatch, max_retries=1)
    with caplog.at_level(logging.DEBUG):
        outs = c.generate_outcomes(["ECHOKEY400", "ECHOKEY500"])
    assert "HTTP 400" in outs[0].error and "HTTP 500" in outs[1].error
    for text in [o.error for o in outs] + [caplog.text]:
        assert KEY[:6] not in text


def test_key_from_a_prefect_secret_block(server, monkeypatch, prefect_harness):
    from prefect.blocks.system import Secret

    Secret(value=KEY).save("cf-test-openai-key", overwrite=True)
    c = OpenAICompatClient(server.base_url, "stub-model", api_key_secret="cf-test-openai-key")
    assert c.generate(["hi"]) == ["echo: hi"] and server.auth_failures == 0


def test_images_go_as_data_urls(server, monkeypatch):
    c = client(server, monkeypatch)
    caps = c.caption([Image.new("RGB", (16, 16), "red"), Image.new("RGBA", (8, 8))])
    assert all(cap.startswith("an image of ") and int(cap.split()[3]) > 50 for cap in caps)


def test_label_probabilities_from_logprobs(server, monkeypatch):
    c = client(server, monkeypatch, top_logprobs=6)
    p = c.label_probabilities(["PREFER=2 judge", "PREFER=0 judge"], ["0", "1", "2", "3"])
    assert p.shape == (2, 4) and np.allclose(p.sum(1), 1)
    assert p[0].argmax() == 2 and p[1].argmax() == 0
    e = np.exp([-3.0, -3.0, -0.1, -3.0])
    assert np.allclose(p[0], e / e.sum(), atol=1e-6)


def test_missing_logprobs_are_flagged_for_fallback(server, monkeypatch):
    c = client(server, monkeypatch)
    outs = c.label_outcomes(["NOLOGPROBS judge", "PREFER=1 judge"], ["0", "1", "2", "3"])
    assert outs[0].no_logprobs and not outs[0].ok and outs[1].ok
    with pytest.raises(LogprobsUnavailable, match="generate-and-parse"):
        c.label_probabilities(["NOLOGPROBS judge"], ["0", "1"])
    none_of_them = c.label_outcomes(["PREFER=2 q"], ["7", "8"])[0]
    assert not none_of_them.ok and not none_of_them.no_logprobs and "none of the labels" in none_of_them.error
