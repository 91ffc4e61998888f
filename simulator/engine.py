"""What the simulator answers to each HTTP request, decided without doing any I/O."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

import orjson

from cascade.errors import ProviderError
from cascade.simulator import anthropic_wire, openai_wire
from cascade.simulator.outcomes import text_digest
from cascade.simulator.ratelimit import RollingWindow
from cascade.simulator.scenario import Scenario
from cascade.simulator.stats import Stats
from cascade.simulator.tokens import prompt_tokens
from cascade.simulator.wire import ERROR_STATUS, BadRequest, SimRequest

#: the API each POST path speaks ("/chat/completions" too, for a base_url set without /v1)
_ROUTES: Mapping[str, ModuleType] = MappingProxyType({
    openai_wire.PATH: openai_wire,
    "/chat/completions": openai_wire,
    anthropic_wire.PATH: anthropic_wire,
})
_JSON = MappingProxyType({"content-type": "application/json"})


@dataclass(frozen=True)
class Reply:
    """An HTTP answer to send after `delay_s`; `body` None means close the connection unanswered."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = b""
    delay_s: float = 0.0


def _api_key(headers: Mapping[str, str]) -> str:
    """The key a request carries: OpenAI's bearer token or Anthropic's x-api-key."""
    lowered = {k.lower(): v for k, v in headers.items()}
    bearer = lowered.get("authorization", "")
    return bearer[7:] if bearer.lower().startswith("bearer ") else lowered.get("x-api-key", "")


def _model_of(body: dict[str, Any]) -> str | None:
    """The model a request body names, None when it names none."""
    model = body.get("model")
    return model if isinstance(model, str) and model else None


def _json_reply(status: int, document: Any, headers: dict[str, str] | None = None, delay_s: float = 0.0) -> Reply:
    return Reply(status, {**_JSON, **(headers or {})}, orjson.dumps(document), delay_s)


@dataclass
class Faults:
    """Faults switched on at run time through POST /control: an outage, a 429 storm, a required key."""

    mode: str = "ok"                # "ok" | "500" (every call fails) | "429" (every call is rate limited)
    retry_after_s: float = 1.0      # what a 429 storm's replies say
    api_key: str | None = None      # when set, a call with another key gets 401

    MODES = ("ok", "500", "429")

    def update(self, body: Any) -> None:
        """Apply a control request's fields; ValueError names a bad one."""
        if not isinstance(body, dict) or set(body) - {"mode", "retry_after_s", "api_key"}:
            raise ValueError("expected {mode?, retry_after_s?, api_key?}")
        if "mode" in body:
            if body["mode"] not in self.MODES:
                raise ValueError(f"mode must be one of {', '.join(self.MODES)}")
            self.mode = body["mode"]
        if "retry_after_s" in body:
            self.retry_after_s = float(body["retry_after_s"])
        if "api_key" in body:
            self.api_key = body["api_key"] or None

    def snapshot(self) -> dict[str, Any]:
        """The current faults (the required key is not shown)."""
        return {"mode": self.mode, "retry_after_s": self.retry_after_s, "key_required": self.api_key is not None}


class SimEngine:
    """Routes requests, keeps the counters, the per-model limiters and the seen-request tally."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.faults = Faults()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}
        self._limiters: dict[str, RollingWindow] = {}
        self._ids = itertools.count(1)

    def route(self, method: str, target: str, raw: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """The reply to `method target` with request body `raw`."""
        path = target.split("?", 1)[0].rstrip("/") or "/"
        if method == "GET" and path == "/health":
            return _json_reply(200, {"status": "ok"})
        if path == "/control" and method in ("GET", "POST"):
            return self._control(raw if method == "POST" else b"")
        if method == "GET" and path == "/stats":
            return _json_reply(200, self.stats.snapshot())
        if method == "POST" and path == "/stats/reset":
            self.reset()
            return _json_reply(200, {"reset": True})
        wire = _ROUTES.get(path)
        if wire is None or method != "POST":
            wire = anthropic_wire if path.startswith("/v1/messages") else openai_wire
            return _json_reply(404, wire.error("not_found", f"Invalid URL ({method} {path})"))
        return self.call(wire, raw, headers or {})

    def _control(self, raw: bytes) -> Reply:
        if raw:
            try:
                with self._lock:
                    self.faults.update(orjson.loads(raw))
            except (orjson.JSONDecodeError, ValueError, TypeError) as e:
                return _json_reply(400, {"error": str(e)})
        return _json_reply(200, self.faults.snapshot())

    def reset(self) -> None:
        """Zero the counters and forget which requests were seen (rate-limit windows stay)."""
        self.stats.reset()
        with self._lock:
            self._seen.clear()

    def _occurrence(self, model: str, user_text: str) -> int:
        key = (model, text_digest(user_text))
        with self._lock:
            count = self._seen.get(key, 0)
            self._seen[key] = count + 1
        return count

    def _limiter(self, model: str) -> RollingWindow | None:
        profile = self.scenario.profile(model)
        if not profile.rpm and not profile.tpm:
            return None
        with self._lock:
            limiter = self._limiters.get(model)
            if limiter is None:
                limiter = self._limiters[model] = RollingWindow(profile.rpm, profile.tpm)
        return limiter

    def call(self, wire: ModuleType, raw: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """One model call in `wire`'s protocol: validate, limit, maybe fail, else answer."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.stats.request(wire.API, None)
            return self._error(wire, "invalid_request", "the request body is not a JSON object")
        model = _model_of(body)
        self.stats.request(wire.API, model)
        faults = self.faults
        if faults.api_key is not None and _api_key(headers or {}) != faults.api_key:
            if model is not None:
                self.stats.bump(model, "auth_401")
            return self._error(wire, "auth", "Incorrect API key provided (simulated)."
                               if wire is openai_wire else "invalid x-api-key (simulated)")
        if faults.mode == "500":
            if model is not None:
                self.stats.bump(model, "outage_500")
            return self._error(wire, "server", "The server is temporarily unavailable (simulated outage).")
        if faults.mode == "429":
            if model is not None:
                self.stats.bump(model, "rate_limited_429")
            return self._error(wire, "rate_limit", f"Rate limit reached for {model} (simulated storm).",
                               wire.retry_headers(faults.retry_after_s, whole=False))
        return self._parse_and_answer(wire, body, model, live=True)

    def answer_line(self, wire: ModuleType, body: dict[str, Any]) -> Reply:
        """A batch line's answer: a live call's validation and answer, without rate limits, faults or latency."""
        model = _model_of(body)
        self.stats.request(wire.API, model, batch=True)
        return self._parse_and_answer(wire, body, model, live=False)

    def _parse_and_answer(self, wire: ModuleType, body: dict[str, Any], model: str | None, *, live: bool) -> Reply:
        try:
            request = wire.parse(body)
        except BadRequest as e:
            if model is not None:
                self.stats.bump(model, "bad_request_400")
            return self._error(wire, "invalid_request", str(e))
        return self._answer(wire, request, live=live)

    def _error(self, wire: ModuleType, kind: str, message: str, headers: dict[str, str] | None = None,
               *, limit: str = "", delay_s: float = 0.0) -> Reply:
        return _json_reply(ERROR_STATUS[kind], wire.error(kind, message, limit=limit), headers, delay_s)

    def _answer(self, wire: ModuleType, request: SimRequest, *, live: bool) -> Reply:
        """The answer to a parsed request; a batch line's (`live` False) skips the limiter and the latency."""
        model, scenario = request.model, self.scenario
        profile = scenario.profile(model)
        prompt = prompt_tokens(request.message_texts)
        if profile.context_window and prompt > profile.context_window:
            self.stats.bump(model, "context_400")
            return self._error(wire, "context_length", wire.context_message(prompt, profile.context_window))

        limiter = self._limiter(model) if live else None
        charged_prompt = prompt
        admission = limiter.admit(prompt + request.budget_tokens) if limiter else None
        limit_headers = wire.limit_headers(admission) if admission else {}
        if admission is not None and not admission.allowed:
            self.stats.bump(model, "rate_limited_429")
            message = wire.rate_limit_message(model, admission, prompt + request.budget_tokens)
            headers = {**wire.retry_headers(admission.retry_after_s, whole=True), **limit_headers}
            return self._error(wire, "rate_limit", message, headers, limit=admission.reason)

        occurrence = self._occurrence(model, request.user_text)
        latency = scenario.latency_s(model, request.user_text, occurrence) if live else 0.0
        injected = scenario.injected_error(model, request.user_text, occurrence)
        if injected is not None:
            self.stats.bump(model, "errors", injected)
        if injected == "429":
            headers = {**wire.retry_headers(profile.retry_after_s, whole=False), **limit_headers}
            return self._error(wire, "rate_limit", f"Rate limit reached for {model} (simulated).", headers)
        if injected == "500":
            return self._error(wire, "server", "The server had an error while processing your request (simulated).",
                               delay_s=latency)
        if injected == "timeout":
            if not live:   # a batch has no connection to drop: the line fails as the API reports a timeout
                return self._error(wire, "server", "The request timed out (simulated).")
            return Reply(0, body=None, delay_s=profile.timeout_s)

        try:
            recorded = scenario.recorded_answers(model, request.message_texts, request.n, request.logprobs)
        except ProviderError as e:   # more samples asked for than were recorded
            return self._error(wire, "invalid_request", str(e))
        if recorded is not None:
            answers, prompt = recorded
        else:
            answers = [
                scenario.answer(model, request.user_text, sample, max_tokens=request.max_tokens)
                for sample in range(request.n)
            ]
        output = sum(answer.output_tokens for answer in answers)
        if admission is not None and wire.SETTLES_OUTPUT:
            limiter.settle(admission.ticket, charged_prompt + output)
        self.stats.answered(model, [answer.outcome for answer in answers], prompt, output)
        rid = wire.response_id(next(self._ids))
        document = wire.completion(request, answers, prompt, rid, int(time.time()))
        return _json_reply(200, document, {**limit_headers, **wire.request_id_headers(rid)}, latency)
