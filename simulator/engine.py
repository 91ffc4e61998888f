"""What the simulator answers to each HTTP request, decided without doing any I/O."""

from __future__ import annotations

import itertools
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

import orjson

from cascade.errors import ProviderError
from cascade.simulator import anthropic_wire, batch_wire, openai_wire
from cascade.simulator.batches import Batch, BatchStore, page_of
from cascade.simulator.outcomes import text_digest
from cascade.simulator.ratelimit import RollingWindow
from cascade.simulator.scenario import Scenario
from cascade.simulator.stats import Stats
from cascade.simulator.tokens import prompt_tokens
from cascade.simulator.wire import ERROR_STATUS, ApiError, BadRequest, SimRequest

#: the API each POST path speaks ("/chat/completions" too, for a base_url set without /v1)
_ROUTES: Mapping[str, ModuleType] = MappingProxyType({
    openai_wire.PATH: openai_wire,
    "/chat/completions": openai_wire,
    anthropic_wire.PATH: anthropic_wire,
})
_JSON = MappingProxyType({"content-type": "application/json"})
#: the Batch API endpoints: (method, path, API, SimEngine handler); OpenAI's also without /v1, as above
_BATCH_ROUTES = tuple((method, re.compile(path), api, handler) for method, path, api, handler in (
    ("POST", r"(?:/v1)?/files", "openai", "_upload_file"),
    ("GET", r"(?:/v1)?/files", "openai", "_list_files"),
    ("GET", r"(?:/v1)?/files/([^/]+)", "openai", "_get_file"),
    ("DELETE", r"(?:/v1)?/files/([^/]+)", "openai", "_delete_file"),
    ("GET", r"(?:/v1)?/files/([^/]+)/content", "openai", "_file_content"),
    ("POST", r"(?:/v1)?/batches", "openai", "_create_openai_batch"),
    ("GET", r"(?:/v1)?/batches", "openai", "_list_openai_batches"),
    ("GET", r"(?:/v1)?/batches/([^/]+)", "openai", "_get_openai_batch"),
    ("POST", r"(?:/v1)?/batches/([^/]+)/cancel", "openai", "_cancel_openai_batch"),
    ("POST", r"/v1/messages/batches", "anthropic", "_create_message_batch"),
    ("GET", r"/v1/messages/batches", "anthropic", "_list_message_batches"),
    ("GET", r"/v1/messages/batches/([^/]+)", "anthropic", "_get_message_batch"),
    ("DELETE", r"/v1/messages/batches/([^/]+)", "anthropic", "_delete_message_batch"),
    ("GET", r"/v1/messages/batches/([^/]+)/results", "anthropic", "_message_batch_results"),
    ("POST", r"/v1/messages/batches/([^/]+)/cancel", "anthropic", "_cancel_message_batch"),
))
_WIRES = MappingProxyType({"openai": openai_wire, "anthropic": anthropic_wire})


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


def _auth_message(wire: ModuleType) -> str:
    return "Incorrect API key provided (simulated)." if wire is openai_wire else "invalid x-api-key (simulated)"


def _limit(query: Mapping[str, str], high: int, default: int = 20) -> int:
    """A list request's page size: `limit`, 1 to `high`."""
    text = query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise BadRequest(f"limit: must be an integer from 1 to {high}")
    return int(text)


@dataclass(frozen=True)
class BatchCall:
    """A Batch API request: the id in its path ("" when none), its query, body and lower-cased headers."""

    ident: str
    query: Mapping[str, str]
    raw: bytes
    headers: Mapping[str, str]


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
            raise ValueError("expected {mode?, retry_after_s?, api_key?, batch_delay_s?, batch_error_rate?, "
                             "batch_expire_next?}")
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
        self.batches = BatchStore(self.answer_line, scenario.seed, scenario.batch, self.stats)

    def route(self, method: str, target: str, raw: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """The reply to `method target` with request body `raw`."""
        path, _, query = target.partition("?")
        path = path.rstrip("/") or "/"
        if method == "GET" and path == "/health":
            return _json_reply(200, {"status": "ok"})
        if path == "/control" and method in ("GET", "POST"):
            return self._control(raw if method == "POST" else b"")
        if method == "GET" and path == "/stats":
            asked = dict(urllib.parse.parse_qsl(query)).get("submissions", "") not in ("", "0")
            return _json_reply(200, self.stats.snapshot(submissions=asked))
        if method == "POST" and path == "/stats/reset":
            self.reset()
            return _json_reply(200, {"reset": True})
        wire = _ROUTES.get(path)
        if wire is not None and method == "POST":
            return self.call(wire, raw, headers or {})
        batch_reply = self._batch_api(method, path, query, raw, headers or {})
        if batch_reply is not None:
            return batch_reply
        wire = anthropic_wire if path.startswith("/v1/messages") else openai_wire
        return _json_reply(404, wire.error("not_found", f"Invalid URL ({method} {path})"))

    def _control(self, raw: bytes) -> Reply:
        if raw:
            try:
                body = orjson.loads(raw)
                if not isinstance(body, dict):
                    raise TypeError("expected a JSON object")
                batch = {k: v for k, v in body.items() if k.startswith("batch_")}
                self.batches.configure(batch)
                with self._lock:
                    self.faults.update({k: v for k, v in body.items() if k not in batch})
            except (orjson.JSONDecodeError, ValueError, TypeError) as e:
                return _json_reply(400, {"error": str(e)})
        with self._lock:
            faults = self.faults.snapshot()
        return _json_reply(200, {**faults, **self.batches.snapshot()})

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
            return self._error(wire, "auth", _auth_message(wire))
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

    # --- the Batch APIs: files, batches and message batches (batches.py keeps them) ---------------

    def _batch_api(self, method: str, path: str, query: str, raw: bytes, headers: Mapping[str, str]) -> Reply | None:
        """The reply of a Batch API endpoint, or None when `path` is none of theirs."""
        for verb, pattern, api, handler in _BATCH_ROUTES:
            found = pattern.fullmatch(path)
            if found is None or verb != method:
                continue
            wire = _WIRES[api]
            if self.faults.api_key is not None and _api_key(headers) != self.faults.api_key:
                return self._error(wire, "auth", _auth_message(wire))
            call = BatchCall(urllib.parse.unquote(found.group(1)) if found.groups() else "",
                             dict(urllib.parse.parse_qsl(query)), raw, {k.lower(): v for k, v in headers.items()})
            try:
                return getattr(self, handler)(call)
            except ApiError as e:
                return self._error(wire, e.kind, str(e))
        return None

    def _upload_file(self, call: BatchCall) -> Reply:
        fields = batch_wire.form_fields(call.headers.get("content-type", ""), call.raw)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose != "batch":
            raise BadRequest(f"purpose: the simulator stores 'batch' files only, not {purpose!r}")
        filename, data = fields.get("file", (None, b""))
        if filename is None:
            raise BadRequest("file: a file part is required")
        return _json_reply(200, batch_wire.openai_file(self.batches.add_file(filename, "batch", data)))

    def _list_files(self, call: BatchCall) -> Reply:
        files = self.batches.files(call.query.get("purpose"))
        if call.query.get("order") == "asc":
            files.reverse()
        items, more = page_of(files, _limit(call.query, 10_000, 10_000), after=call.query.get("after"))
        return _json_reply(200, batch_wire.openai_page([batch_wire.openai_file(f) for f in items], more))

    def _get_file(self, call: BatchCall) -> Reply:
        return _json_reply(200, batch_wire.openai_file(self.batches.file(call.ident)))

    def _delete_file(self, call: BatchCall) -> Reply:
        self.batches.delete_file(call.ident)
        return _json_reply(200, {"id": call.ident, "object": "file", "deleted": True})

    def _file_content(self, call: BatchCall) -> Reply:
        return Reply(200, {"content-type": "application/octet-stream"}, self.batches.file(call.ident).data)

    def _create_openai_batch(self, call: BatchCall) -> Reply:
        options = batch_wire.openai_create_options(call.raw)
        stored = self.batches.file(options["input_file_id"])
        if stored.purpose != "batch":
            raise BadRequest(f"input_file_id: {stored.id} has purpose {stored.purpose!r}, not 'batch'")
        requests, errors = batch_wire.openai_lines(stored.data)
        return _json_reply(200, batch_wire.openai_batch(
            self.batches.create("openai", requests, options=options, errors=errors)))

    def _get_openai_batch(self, call: BatchCall) -> Reply:
        return _json_reply(200, batch_wire.openai_batch(self.batches.get("openai", call.ident)))

    def _cancel_openai_batch(self, call: BatchCall) -> Reply:
        return _json_reply(200, batch_wire.openai_batch(self.batches.cancel("openai", call.ident)))

    def _list_openai_batches(self, call: BatchCall) -> Reply:
        batches, more = self.batches.page("openai", _limit(call.query, 100), after=call.query.get("after"))
        return _json_reply(200, batch_wire.openai_page([batch_wire.openai_batch(b) for b in batches], more))

    def _message_batch(self, call: BatchCall, batch: Batch) -> dict[str, Any]:
        """The MessageBatch, its results_url absolute on the Host the client called (the SDK fetches it as is)."""
        path = f"/v1/messages/batches/{batch.id}/results"
        host = call.headers.get("host")
        return batch_wire.anthropic_batch(batch, f"http://{host}{path}" if host else path)

    def _create_message_batch(self, call: BatchCall) -> Reply:
        batch = self.batches.create("anthropic", batch_wire.anthropic_requests(call.raw))
        return _json_reply(200, self._message_batch(call, batch))

    def _get_message_batch(self, call: BatchCall) -> Reply:
        return _json_reply(200, self._message_batch(call, self.batches.get("anthropic", call.ident)))

    def _cancel_message_batch(self, call: BatchCall) -> Reply:
        return _json_reply(200, self._message_batch(call, self.batches.cancel("anthropic", call.ident)))

    def _delete_message_batch(self, call: BatchCall) -> Reply:
        self.batches.delete("anthropic", call.ident)
        return _json_reply(200, {"id": call.ident, "type": "message_batch_deleted"})

    def _message_batch_results(self, call: BatchCall) -> Reply:
        batch = self.batches.get("anthropic", call.ident)
        if batch.ended_at is None:
            raise ApiError("not_found", f"Message batch {batch.id} has not ended yet: it has no results.")
        return Reply(200, {"content-type": "application/x-jsonl"}, batch_wire.anthropic_results(batch))

    def _list_message_batches(self, call: BatchCall) -> Reply:
        batches, more = self.batches.page("anthropic", _limit(call.query, 1000), after=call.query.get("after_id"),
                                          before=call.query.get("before_id"))
        return _json_reply(200, batch_wire.anthropic_page([self._message_batch(call, b) for b in batches], more))
