"""The operator's log: one line per finished job, warnings and errors where they belong, no library chatter.

`configure_logging(level, fmt, secrets)` installs one stderr handler (text, or one JSON object per line) whose
every line has URL passwords and the given secret values masked; the HTTP libraries' per-request lines and
Celery's per-task lines are raised to WARNING unless the level is DEBUG. `JobLog` is the engine observer that
writes the line per finished job.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from cascade.cli.common import redact
from cascade.worker.events import StepRecorded

#: loggers that speak once per HTTP request or per Celery task: the job line says what an operator needs
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic", "urllib3", "celery.app.trace",
                 "celery.worker.strategy", "alembic")    # alembic: ten lines a start; the ledger says an upgrade
#: the fields a job line carries; the JSON format gives each its own key
JOB_FIELDS = ("batch", "job", "tier", "outcome", "reason", "cost_usd")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
MIN_SECRET = 6          # shorter values are not masked: they would mask ordinary words


class Redactor:
    """Masks URL passwords and known secret values in a line of text."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced by ***."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return redact(text) if "@" in text else text


class TextFormatter(logging.Formatter):
    """The usual `time LEVEL logger: message` line, redacted."""

    def __init__(self, redactor: Redactor):
        super().__init__(TEXT_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """One redacted line."""
        return self.redactor(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the job fields when present, exc when raised."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """One redacted JSON line."""
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor(record.getMessage()),
        }
        for field in JOB_FIELDS:
            value = getattr(record, field, None)
            if value is not None and value != "":
                entry[field] = self.redactor(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = self.redactor(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send every log line of this process to stderr in `fmt` (text | json), with `secrets` masked."""
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.getLevelName(level.upper()) != logging.DEBUG
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


def secret_values(settings: Any, environ: dict[str, str] | None = None) -> list[str]:
    """The secrets a process may hold: its tiers' API keys, the shared endpoint key, the webhook secret."""
    environ = os.environ if environ is None else environ
    names = {tier.key_env for tier in settings.tiers.values()}
    names |= {"CASCADE_PROVIDER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    webhook_env = getattr(settings.alerts, "webhook_secret_env", "")
    if webhook_env:
        names.add(webhook_env)
    return [environ[name] for name in sorted(names) if environ.get(name)]


class JobLog:
    """Engine observer: one INFO line per finished job (batch, job, tier, outcome, reason, cost)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger("cascade.jobs")

    def __call__(self, event: StepRecorded) -> None:
        """Write the line when this step finished the job."""
        record = event.record
        if record is None or not self.log.isEnabledFor(logging.INFO):
            return
        fields = {"batch": event.batch, "job": event.job_id, "tier": event.tier,
                  "outcome": str(record.get("status", event.outcome)), "reason": record.get("reason", ""),
                  "cost_usd": record.get("cost_usd", 0.0)}
        reason = f" reason={_quoted(fields['reason'])}" if fields["reason"] else ""
        self.log.info("job finished batch=%s job=%s tier=%s outcome=%s cost_usd=%.6f%s", fields["batch"],
                      fields["job"], fields["tier"], fields["outcome"], fields["cost_usd"], reason, extra=fields)


def _quoted(text: str) -> str:
    """A logfmt value: quoted when it holds spaces or quotes, one line."""
    text = " ".join(str(text).split())[:300]
    return orjson.dumps(text).decode() if any(c in text for c in ' "=') else text
