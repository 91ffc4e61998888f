"""Provider adapters against a mock HTTP transport: request shape, answer mapping, error classes."""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from cascade.errors import (
    ConfigError,
    ContextTooLong,
    Permanent,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    TierUnusable,
)
from cascade.models import CompletionRequest, TokenLogprob, Usage
from cascade.worker.providers import PROVIDERS, AnthropicProvider, OpenAIProvider, ProviderSpec, build_provider
from cascade.worker.providers.common import parse_duration, parse_retry_after, seconds_until
from cascade.worker.providers.errors import redact

OPENAI_KEY = "sk-test-openai-0123456789secret"
ANTHROPIC_KEY = "sk-ant-test-0123456789secret"
Handler = Callable[[httpx2.Request], httpx2.Response]


class Recorder:
    """A mock transport handler that records every request and answers with `respond`."""

    def __init__(self, respond: Handler):
        self.respond = respond
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.respond(request)

    def body(self, index: int = 0) -> dict:
        """The JSON body of one recorded request."""
        return json.loads(self.requests[index].content)


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers `status` with a JSON (or, for a str, plain) body."""
    if isinstance(body, str):
        return lambda request: httpx2.Response(status, text=body, headers=headers)
    return lambda request: httpx2.Response(status, json=body, headers=headers)


def openai_provider(handler: Handler) -> OpenAIProvider:
    """An OpenAIProvider whose HTTP goes to `handler`."""
    spec = ProviderSpec("openai", OPENAI_KEY, base_url="http://sim.test/v1")
    return OpenAIProvider(spec, http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def anthropic_provider(handler: Handler) -> AnthropicProvider:
    """An AnthropicProvider whose HTTP goes to `handler`."""
    spec = ProviderSpec("anthropic", ANTHROPIC_KEY, base_url="http://sim.test")
    return AnthropicProvider(spec, http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


MAKERS = {"openai": openai_provider, "anthropic": anthropic_provider}
KEYS = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}


def request(**overrides: object) -> CompletionRequest:
    """A small request; keyword arguments replace fields."""
    fields: dict = {"model": "m-1", "system": "Be brief.", "user": "Say hi.", "max_tokens": 32, "timeout": 5.0}
    fields.update(overrides)
    return CompletionRequest(**fields)


def chat_completion(*choices: dict, prompt: int = 100, completion: int = 12, cached: int | None = 30) -> dict:
    """An OpenAI chat.completion body."""
    usage: dict = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-test-2026-01-01",
        "choices": [dict(choice, index=i) for i, choice in enumerate(choices)],
        "usage": usage,
    }


def choice(content: str | None = "Hi.", finish: str = "stop", refusal: str | None = None, logprobs=None) -> dict:
    """One OpenAI choice."""
    return {
        "finish_reason": finish,
        "message": {"role": "assistant", "content": content, "refusal": refusal},
        "logprobs": logprobs,
    }


def message(*blocks: dict, stop: str | None = "end_turn", usage: dict | None = None) -> dict:
    """An Anthropic message body."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-2026",
        "content": list(blocks) or [{"type": "text", "text": "Hi."}],
        "stop_reason": stop,
        "usage": usage or {"input_tokens": 40, "output_tokens": 9},
    }


def openai_error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_error(message: str, type_: str = "invalid_request_error", error_code: str | None = None) -> dict:
    """An Anthropic error body."""
    error: dict = {"type": type_, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return {"type": "error", "error": error, "request_id": "req_1"}


# --- OpenAI success paths ---------------------------------------------------------------------


def test_openai_maps_text_usage_model_and_sends_the_expected_body():
    rec = Recorder(answer(200, chat_completion(choice("Hello there."))))
    done = openai_provider(rec).complete(request())

    assert done.text == "Hello there."
    assert done.usage == Usage(input_tokens=70, output_tokens=12, cached_tokens=30)
    assert done.finish_reason == "stop"
    assert done.model == "gpt-test-2026-01-01"
    assert done.samples == ()
    assert done.logprobs == ()
    assert done.rate_limit == {}
    assert done.latency_ms > 0
    assert len(rec.requests) == 1
    sent = rec.requests[0]
    assert sent.url == "http://sim.test/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.body() == {
        "model": "m-1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "max_completion_tokens": 32,
        "temperature": 0.0,
    }


def test_openai_without_system_prompt_or_cache_details():
    rec = Recorder(answer(200, chat_completion(choice("ok"), prompt=15, completion=1, cached=None)))
    done = openai_provider(rec).complete(request(system=""))

    assert rec.body()["messages"] == [{"role": "user", "content": "Say hi."}]
    assert done.usage == Usage(input_tokens=15, output_tokens=1, cached_tokens=0)


def test_openai_n_samples_and_logprobs():
    logprobs = {
        "content": [
            {"token": "Yes", "logprob": -0.25, "bytes": None, "top_logprobs": []},
            {"token": ".", "logprob": -0.5, "bytes": None, "top_logprobs": []},
        ]
    }
    body = chat_completion(choice("Yes.", logprobs=logprobs), choice("No."), choice("Yes."))
    rec = Recorder(answer(200, body))
    done = openai_provider(rec).complete(request(n=3, logprobs=True, temperature=0.7))

    assert rec.body()["n"] == 3
    assert rec.body()["logprobs"] is True
    assert rec.body()["temperature"] == 0.7
    assert done.text == "Yes."
    assert done.samples == ("Yes.", "No.", "Yes.")
    assert done.logprobs == (TokenLogprob("Yes", -0.25), TokenLogprob(".", -0.5))


def test_openai_length_and_refusal_finish_reasons():
    truncated = openai_provider(Recorder(answer(200, chat_completion(choice("Half an", finish="length"))))).complete(
        request()
    )
    assert truncated.finish_reason == "length"
    assert truncated.truncated is True

    refused = openai_provider(
        Recorder(answer(200, chat_completion(choice(None, refusal="I can't help with that."))))
    ).complete(request())
    assert refused.text == "I can't help with that."
    assert refused.finish_reason == "refusal"


def test_openai_rate_limit_headers_are_parsed():
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-reset-tokens": "20ms",
    }
    done = openai_provider(Recorder(answer(200, chat_completion(choice()), headers))).complete(request())

    assert done.rate_limit == {
        "remaining_requests": 59.0,
        "remaining_tokens": 149984.0,
        "reset_requests_s": 360.0,
        "reset_tokens_s": 0.02,
    }




# --- Anthropic success paths ------------------------------------------------------------------


def test_anthropic_maps_text_usage_model_and_sends_the_expected_body():
    body = message(
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Hello "},
        {"type": "text", "text": "there."},
        usage={
            "input_tokens": 40,
            "output_tokens": 9,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 300,
        },
    )
    rec = Recorder(answer(200, body))
    done = anthropic_provider(rec).complete(request(temperature=0.7))

    assert done.text == "Hello there."
    assert done.usage == Usage(input_tokens=45, output_tokens=9, cached_tokens=300)
    assert done.finish_reason == "stop"
    assert done.model == "claude-test-2026"
    assert done.samples == ()
    assert done.logprobs == ()
    sent = rec.requests[0]
    assert sent.url == "http://sim.test/v1/messages"
    # SDK 2.x sends the key as a bearer token (not x-api-key) and API version 2026-10-21.
    assert sent.headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert sent.headers["anthropic-version"] == "2026-10-21"
    # No temperature: API version 2026-10-21 refuses it.
    assert rec.body() == {
        "model": "m-1",
        "max_tokens": 32,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hi."}],
    }


def test_anthropic_without_system_prompt_sends_none():
    rec = Recorder(answer(200, message()))
    anthropic_provider(rec).complete(request(system=""))
    assert "system" not in rec.body()


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "refusal"),
        ("tool_use", "tool_use"),
        ("pause_turn", "pause_turn"),
    ],
)
def test_anthropic_finish_reason_mapping(stop_reason: str, finish_reason: str):
    done = anthropic_provider(Recorder(answer(200, message(stop=stop_reason)))).complete(request())
    assert done.finish_reason == finish_reason


def test_anthropic_n_makes_n_calls_and_sums_usage():
    texts = iter(["A", "B", "A"])

    def respond(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=message({"type": "text", "text": next(texts)}))

    rec = Recorder(respond)
    done = anthropic_provider(rec).complete(request(n=3))

    assert len(rec.requests) == 3
    assert sorted(done.samples) == ["A", "A", "B"]
    assert done.text == done.samples[0]
    assert done.usage == Usage(input_tokens=120, output_tokens=27, cached_tokens=0)


def test_anthropic_rate_limit_headers_are_parsed():
    now = datetime.now(UTC)
    headers = {
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-tokens-remaining": "79000",
        "anthropic-ratelimit-requests-reset": (now + timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        "anthropic-ratelimit-tokens-reset": (now + timedelta(seconds=90)).isoformat(),
    }
    done = anthropic_provider(Recorder(answer(200, message(), headers))).complete(request())

    assert set(done.rate_limit) == {"remaining_requests", "remaining_tokens", "reset_requests_s", "reset_tokens_s"}
    assert done.rate_limit["remaining_requests"] == 49.0
    assert done.rate_limit["remaining_tokens"] == 79000.0
    assert done.rate_limit["reset_requests_s"] == pytest.approx(30, abs=2)
    assert done.rate_limit["reset_tokens_s"] == pytest.approx(90, abs=2)


# --- error mapping, both providers ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "reply",
    [
        lambda req: httpx2.Response(200, text="<html>maintenance</html>"),
        lambda req: httpx2.Response(200, content=b"{not json", headers={"content-type": "application/json"}),
    ],
    ids=["html", "broken-json"],
)
def test_success_status_with_an_unreadable_body_is_a_server_error(kind: str, reply: Handler):
    with pytest.raises(ServerError) as caught:
        MAKERS[kind](Recorder(reply)).complete(request())
    assert caught.value.provider_message.startswith(f"{kind}: unreadable response (")


def test_anthropic_n_fails_when_one_call_fails():
    replies = iter([httpx2.Response(200, json=message()), httpx2.Response(500, json=SERVER_BODIES["anthropic"])])
    rec = Recorder(lambda req: next(replies))
    with pytest.raises(ServerError):
        anthropic_provider(rec).complete(request(n=2))
    assert len(rec.requests) == 2

RATE_BODIES = {
    "openai": openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    "anthropic": anthropic_error("Number of requests has exceeded your rate limit", "rate_limit_error"),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_429_with_retry_after_seconds_is_rate_limited(kind: str):
    rec = Recorder(answer(429, RATE_BODIES[kind], {"retry-after": "7"}))
    with pytest.raises(RateLimited) as caught:
        MAKERS[kind](rec).complete(request())

    err = caught.value
    assert err.retry_after == 7.0
    assert err.status == 429
    assert err.provider_message == f"{kind} 429: {RATE_BODIES[kind]['error']['message']}"
    assert len(rec.requests) == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_429_retry_after_ms_wins_over_seconds(kind: str):
    rec = Recorder(answer(429, RATE_BODIES[kind], {"retry-after-ms": "1500", "retry-after": "2"}))
    with pytest.raises(RateLimited) as caught:
        MAKERS[kind](rec).complete(request())
    assert caught.value.retry_after == 1.5


def test_429_retry_after_http_date():
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    rec = Recorder(answer(429, RATE_BODIES["openai"], {"retry-after": when}))
    with pytest.raises(RateLimited) as caught:
        openai_provider(rec).complete(request())
    assert caught.value.retry_after == pytest.approx(20, abs=2)


def test_429_without_retry_after_has_none():
    with pytest.raises(RateLimited) as caught:
        openai_provider(Recorder(answer(429, RATE_BODIES["openai"]))).complete(request())
    assert caught.value.retry_after is None


def test_anthropic_529_overloaded_is_rate_limited():
    body = anthropic_error("Overloaded", "overloaded_error")
    rec = Recorder(answer(529, body, {"retry-after": "3"}))
    with pytest.raises(RateLimited) as caught:
        anthropic_provider(rec).complete(request())
    assert caught.value.status == 529
    assert caught.value.retry_after == 3.0
    assert caught.value.provider_message == "anthropic 529: Overloaded"
    assert len(rec.requests) == 1


def test_openai_insufficient_quota_is_permanent_not_rate_limited():
    body = openai_error("You exceeded your current quota.", "insufficient_quota", "insufficient_quota")
    with pytest.raises(Permanent) as caught:
        openai_provider(Recorder(answer(429, body, {"retry-after": "1"}))).complete(request())
    assert not isinstance(caught.value, RateLimited)
    assert caught.value.status == 429


def test_anthropic_spend_limit_is_permanent_not_rate_limited():
    body = anthropic_error("Spend limit reached.", "rate_limit_error", "enforced_spend_limit_reached")
    with pytest.raises(Permanent) as caught:
        anthropic_provider(Recorder(answer(429, body))).complete(request())
    assert caught.value.status == 429


SERVER_BODIES = {
    "openai": openai_error("The server had an error while processing your request.", "server_error"),
    "anthropic": anthropic_error("Internal server error", "api_error"),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_500_is_a_server_error_after_exactly_one_request(kind: str):
    rec = Recorder(answer(500, SERVER_BODIES[kind]))
    with pytest.raises(ServerError) as caught:
        MAKERS[kind](rec).complete(request())

    assert len(rec.requests) == 1  # SDK retries are off
    assert caught.value.status == 500
    assert caught.value.provider_message == f"{kind} 500: {SERVER_BODIES[kind]['error']['message']}"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [408, 409, 502, 503, 504])
def test_408_409_and_5xx_are_server_errors(kind: str, status: int):
    rec = Recorder(answer(status, SERVER_BODIES[kind]))
    with pytest.raises(ServerError) as caught:
        MAKERS[kind](rec).complete(request())
    assert caught.value.status == status
    assert len(rec.requests) == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_non_json_gateway_page_keeps_its_text(kind: str):
    with pytest.raises(ServerError) as caught:
        MAKERS[kind](Recorder(answer(502, "Bad Gateway from proxy"))).complete(request())
    assert caught.value.provider_message == f"{kind} 502: Bad Gateway from proxy"


def test_openai_401_makes_the_tier_unusable_with_the_providers_words_and_no_key():
    words = (
        "Incorrect API key provided: sk-test-****************cret. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    body = openai_error(words, "invalid_request_error", "invalid_api_key")
    with pytest.raises(Permanent) as caught:
        openai_provider(Recorder(answer(401, body))).complete(request())

    err = caught.value
    assert type(err) is TierUnusable
    assert err.status == 401
    assert err.provider_message == (
        "openai 401: Incorrect API key provided: sk-***. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert OPENAI_KEY not in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # the SDK error (with headers) is dropped


def test_anthropic_401_makes_the_tier_unusable_with_the_providers_words_and_no_key():
    body = anthropic_error(f"invalid x-api-key {ANTHROPIC_KEY}", "authentication_error")
    with pytest.raises(Permanent) as caught:
        anthropic_provider(Recorder(answer(401, body))).complete(request())
    assert type(caught.value) is TierUnusable
    assert caught.value.provider_message == "anthropic 401: invalid x-api-key ***"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("status, kind_of_error", [(400, Permanent), (403, TierUnusable), (404, TierUnusable),
                                                   (422, Permanent)])
def test_other_4xx_are_permanent_and_403_404_stop_the_tier(kind: str, status: int, kind_of_error: type):
    body = openai_error("nope") if kind == "openai" else anthropic_error("nope")
    with pytest.raises(Permanent) as caught:
        MAKERS[kind](Recorder(answer(status, body))).complete(request())
    assert type(caught.value) is kind_of_error
    assert caught.value.status == status
    assert caught.value.provider_message == f"{kind} {status}: nope"


def test_openai_context_length_is_context_too_long():
    words = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens."
    body = openai_error(words, "invalid_request_error", "context_length_exceeded")
    with pytest.raises(ContextTooLong) as caught:
        openai_provider(Recorder(answer(400, body))).complete(request())
    assert caught.value.status == 400
    assert caught.value.provider_message == f"openai 400: {words}"


def test_anthropic_prompt_too_long_is_context_too_long():
    body = anthropic_error("prompt is too long: 210345 tokens > 200000 maximum")
    with pytest.raises(ContextTooLong) as caught:
        anthropic_provider(Recorder(answer(400, body))).complete(request())
    assert caught.value.status == 400
    assert caught.value.provider_message == "anthropic 400: prompt is too long: 210345 tokens > 200000 maximum"


def test_anthropic_other_invalid_request_is_not_context_too_long():
    body = anthropic_error("max_tokens: must be at least 1")
    with pytest.raises(Permanent) as caught:
        anthropic_provider(Recorder(answer(400, body))).complete(request())
    assert type(caught.value) is Permanent


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_transport_timeout_is_provider_timeout(kind: str):
    def respond(req: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=req)

    rec = Recorder(respond)
    with pytest.raises(ProviderTimeout) as caught:
        MAKERS[kind](rec).complete(request(timeout=5.0))
    assert caught.value.provider_message == f"{kind}: no answer within 5 s"
    assert caught.value.status is None
    assert len(rec.requests) == 1


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def real_provider(kind: str, port: int):
    """A provider with its own pooled client, pointed at a local port."""
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    return build_provider(ProviderSpec(kind, KEYS[kind], base_url=base, timeout=5.0))


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_real_socket_timeout_is_provider_timeout(kind: str, silent_port: int):
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        real_provider(kind, silent_port).complete(request(timeout=0.3))
    assert time.monotonic() - started < 3  # the request's timeout, not the client's 5 s


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_connection_refused_is_provider_unavailable(kind: str, closed_port: int):
    with pytest.raises(ProviderUnavailable) as caught:
        real_provider(kind, closed_port).complete(request())
    assert caught.value.provider_message.startswith(f"{kind}: cannot connect (")
    assert "refused" in caught.value.provider_message.lower()
    assert caught.value.status is None


# --- registry, spec, shared client ------------------------------------------------------------


def test_registry_names_both_providers():
    assert PROVIDERS == {"openai": OpenAIProvider, "anthropic": AnthropicProvider}
    assert isinstance(build_provider(ProviderSpec("openai", OPENAI_KEY)), OpenAIProvider)
    assert isinstance(build_provider(ProviderSpec("anthropic", ANTHROPIC_KEY)), AnthropicProvider)


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        build_provider(ProviderSpec("gemini", "k"))
    assert str(caught.value) == "unknown provider 'gemini' (known: anthropic, openai)"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_empty_api_key_is_a_config_error(kind: str):
    with pytest.raises(ConfigError):
        build_provider(ProviderSpec(kind, ""))


def test_spec_repr_and_str_hide_the_key():
    spec = ProviderSpec("openai", OPENAI_KEY, base_url="http://sim.test/v1")
    assert OPENAI_KEY not in repr(spec)
    assert OPENAI_KEY not in str(spec)
    assert repr(spec) == "ProviderSpec(kind='openai', base_url='http://sim.test/v1', timeout=60.0, max_connections=64)"


def test_capabilities():
    assert (OpenAIProvider.supports_logprobs, OpenAIProvider.supports_n) == (True, True)
    assert (AnthropicProvider.supports_logprobs, AnthropicProvider.supports_n) == (False, False)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_one_provider_serves_many_threads(kind: str):
    body = chat_completion(choice("ok")) if kind == "openai" else message({"type": "text", "text": "ok"})
    rec = Recorder(answer(200, body))
    provider = MAKERS[kind](rec)
    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(lambda _: provider.complete(request()).text, range(40)))
    assert texts == ["ok"] * 40
    assert len(rec.requests) == 40


# --- header parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2", 2.0),
     ("", None), ("soon", None), ("5x", None), (None, None)],
)
def test_parse_duration(text: str | None, seconds: float | None):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_seconds_until_rfc3339():
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()
    assert seconds_until("2026-11-22T10:00:30Z", now) == 30.0
    assert seconds_until("2026-11-22T11:00:30+01:00", now) == 30.0
    assert seconds_until("2026-11-22T09:59:00Z", now) == 0.0  # already past
    assert seconds_until("2026-11-22T10:00:30", now) is None  # no zone
    assert seconds_until("tomorrow", now) is None


def test_parse_retry_after_forms():
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after({"retry-after": "12"}, now) == 12.0
    assert parse_retry_after({"retry-after-ms": "250"}, now) == 0.25
    assert parse_retry_after({"retry-after": "Sun, 22 Nov 2026 10:00:45 GMT"}, now) == 45.0
    assert parse_retry_after({"retry-after": "whenever"}, now) is None
    assert parse_retry_after({}, now) is None


def test_redact_removes_the_key_and_key_shaped_text():
    assert redact(f"bad key {OPENAI_KEY}!", OPENAI_KEY) == "bad key ***!"
    assert redact("Incorrect API key provided: sk-proj-****abcd.") == "Incorrect API key provided: sk-***."
    assert redact("risk-free task-force") == "risk-free task-force"
