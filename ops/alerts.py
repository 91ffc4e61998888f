"""Alerts and where they go: a WARNING log line, a webhook (JSON, retried, optionally HMAC-signed), the ledger.

A sink is any callable that takes an Alert. The webhook delivers from its own thread, so a slow or dead
endpoint never holds up the ledger writer; its URL may carry a token and is never logged (only its host).
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from cascade.worker.config.schema import Settings

log = logging.getLogger("cascade.alerts")

SIGNATURE_HEADER = "X-Cascade-Signature"
WEBHOOK_TIMEOUT_S = 10.0    # one POST; a receiver slower than this is retried like a 5xx
BACKOFF_BASE_S = 0.5        # first wait before a retry; doubles each time
BACKOFF_MAX_S = 30.0
EXIT_WAIT_S = 15.0          # at process exit, how long alerts still queued for the webhook may take

Sink = Callable[["Alert"], None]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert that fired or cleared: what moved, where, against what, over which window, and what to check."""

    kind: str                   # escalation_drift | cost_creep | shadow_agreement | ...
    state: str                  # fired | cleared
    pipeline: str
    tier: str
    baseline: float | None      # the value it is judged against (a rate or share, 0..1)
    value: float | None         # the value now
    window: str                 # e.g. "last 2000 attempts"
    message: str
    check: str                  # one line: what to look at
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: the webhook body and the ledger row (the ledger's `alerts` columns)."""
        return asdict(self)

    def log_line(self) -> str:
        """One line for the operator's log."""
        return (f"alert {self.state}: {self.kind} pipeline={self.pipeline} tier={self.tier or '-'} "
                f"baseline={_share(self.baseline)} value={_share(self.value)} window={self.window!r}: "
                f"{self.message}; check: {self.check}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


class LogSink:
    """Each alert as one WARNING line on the `cascade.alerts` logger."""

    def __repr__(self) -> str:
        return "LogSink()"

    def __call__(self, alert: Alert) -> None:
        """Log the alert."""
        log.warning("%s", alert.log_line())


class LedgerSink:
    """Each alert as a row of the ledger's `alerts` table (what `cascade alerts` lists)."""

    def __init__(self, ledger: Any):
        self.ledger = ledger

    def __repr__(self) -> str:
        return f"LedgerSink({self.ledger!r})"

    def __call__(self, alert: Alert) -> None:
        """Store the alert."""
        self.ledger.record_alert(alert.to_dict())


def sign(body: bytes, key: bytes) -> str:
    """The X-Cascade-Signature value of a body: "sha256=" + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def url_host(url: str) -> str:
    """What of a webhook URL may be shown: scheme and host (no credentials, path or query, where tokens live)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class WebhookSink:
    """POSTs each alert as JSON from a background thread; a 5xx, 429 or connection error is retried with
    exponential backoff, up to `retries` more times; another 4xx is given up at once."""

    def __init__(self, url: str, retries: int = 5, secret: bytes | None = None,
                 backoff_s: float = BACKOFF_BASE_S, timeout_s: float = WEBHOOK_TIMEOUT_S):
        self.url = url
        self.retries = retries
        self.secret = secret
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebhookSink({url_host(self.url)})"

    def __call__(self, alert: Alert) -> None:
        """Queue the alert for delivery; returns at once."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cascade-alert-webhook", daemon=True)
                self._thread.start()
                atexit.register(self.flush, EXIT_WAIT_S)     # a short-lived process still sends what it fired
        self._queue.put(alert.to_dict())

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued alert was delivered or given up; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if self.deliver(payload):
                    self.delivered += 1
                else:
                    self.failed += 1
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def deliver(self, payload: dict[str, Any]) -> bool:
        """POST one alert, retrying as documented; True once the receiver answered 2xx."""
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", "User-Agent": "cascade-batch alerts"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        what = f"alert webhook {url_host(self.url)} ({payload.get('kind')} {payload.get('state')})"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S))
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as e:     # an answer, not 2xx
                problem = f"HTTP {e.code}"
                e.close()
                if e.code < 500 and e.code != 429:
                    log.warning("%s: refused with %s; not retried", what, problem)
                    return False
            except (urllib.error.URLError, OSError) as e:   # refused, reset, timed out, name not found
                problem = _reason(e)
            except ValueError:                              # not a URL urllib can send to: no retry helps
                log.warning("%s: not a usable http(s) URL; not sent", what)
                return False
        log.warning("%s: gave up after %d tries (last: %s)", what, self.retries + 1, problem)
        return False


def _reason(error: Exception) -> str:
    """Why a connection failed, in words that cannot hold the URL."""
    reason = getattr(error, "reason", error)
    return f"{type(reason).__name__}: {getattr(reason, 'strerror', None) or reason}"[:200]


def sinks_for(settings: Settings, ledger: Any = None, environ: dict[str, str] | None = None) -> list[Sink]:
    """The configured sinks: the log always, the ledger when given, the webhook when [alerts] webhook_url is set."""
    environ = dict(os.environ) if environ is None else environ
    sinks: list[Sink] = [LogSink()]
    if ledger is not None:
        sinks.append(LedgerSink(ledger))
    config = settings.alerts
    if config.webhook_url:
        secret = None
        if config.webhook_secret_env:
            value = environ.get(config.webhook_secret_env, "")
            if value:
                secret = value.encode()
            else:
                log.warning("alerts.webhook_secret_env names %s, which is not set: webhook alerts go unsigned",
                            config.webhook_secret_env)
        sinks.append(WebhookSink(config.webhook_url, config.webhook_retries, secret))
    return sinks


def deliver(alerts: Sequence[Alert], sinks: Sequence[Sink]) -> None:
    """Hand each alert to every sink; a sink that fails is logged and the others still get it."""
    for alert in alerts:
        for sink in sinks:
            try:
                sink(alert)
            except Exception as e:  # noqa: BLE001 - a broken sink (ledger down) must not lose it for the others
                log.warning("alert %s %s %s/%s: sink %r failed: %s", alert.kind, alert.state, alert.pipeline,
                            alert.tier, sink, e)
