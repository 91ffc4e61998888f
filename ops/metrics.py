"""Prometheus metrics of a Cascade process: what the engine did, what the providers and the limiter did, queues.

`Metrics` builds the metric objects on its own registry (no import-time globals); `process_metrics()` is the
one instance of a process, for the parts that set gauges (alerts, shadow audits). A worker feeds it from an
engine observer (`Metrics.observe_step`) and a thin wrapper around its limiter (`MeteredLimiter`: time waited
for admission, each provider request's duration, each 429). `serve(port, bind)` exposes it over HTTP.

Multi-process: with PROMETHEUS_MULTIPROC_DIR set (before the process starts), every process writes its values
to files there and the HTTP endpoint aggregates them (prometheus_client.multiprocess); the first process of
a host that binds the port serves for all of them. Unset, each process serves its own values (one Celery
worker process per tier with the threads pool).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from redis.exceptions import RedisError

from cascade.worker.counters import LATENCY_BOUNDS_MS
from cascade.worker.events import StepRecorded
from cascade.worker.routing import is_routed

log = logging.getLogger("cascade.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: provider request duration buckets (s): the same bounds as `cascade stats`' latency percentiles
CALL_BUCKETS = tuple(ms / 1000 for ms in LATENCY_BOUNDS_MS)
#: limiter wait buckets (s): most admissions are immediate; a 429 cooldown or a full minute shows at the top
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


def multiprocess_dir() -> str:
    """The shared metrics folder of this host's processes, or "" (each process serves its own)."""
    return os.environ.get(MULTIPROC_ENV, "")


class Metrics:
    """Every metric a Cascade process exposes, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.attempts = Counter("cascade_attempts", "Attempts recorded, by the decision they led to.",
                                ["pipeline", "tier", "outcome"], registry=r)
        self.accepts = Counter("cascade_accepts", "Attempts whose answer passed the tier's verifiers.",
                               ["pipeline", "tier"], registry=r)
        self.escalations = Counter("cascade_escalations", "Jobs sent on to the next tier, by the first failing "
                                   "verifier (or the error kind).", ["pipeline", "tier", "reason"], registry=r)
        self.jobs_finished = Counter("cascade_jobs_finished", "Jobs finished, by final status.",
                                     ["pipeline", "status"], registry=r)
        self.cost = Counter("cascade_cost_usd", "Spend on calls and verifier calls (USD).", ["pipeline", "tier"],
                            registry=r)
        self.last_tier_cost = Counter("cascade_last_tier_cost_usd", "What the finished jobs would have cost on "
                                      "the pipeline's last tier alone (USD).", ["pipeline"], registry=r)
        self.tokens = Counter("cascade_tokens", "Tokens billed (kind: input incl. cached, output), verifier calls "
                              "included.", ["pipeline", "tier", "kind"], registry=r)
        self.call_seconds = Histogram("cascade_provider_call_seconds", "Duration of each provider request.",
                                      ["tier"], buckets=CALL_BUCKETS, registry=r)
        self.limiter_wait = Histogram("cascade_limiter_wait_seconds", "Time a request waited for the tier's "
                                      "shared limiter (rpm, tpm, in flight, cooldowns).", ["tier"],
                                      buckets=WAIT_BUCKETS, registry=r)
        self.rate_limited = Counter("cascade_rate_limited", "Provider 429 answers (each retried after the "
                                    "cooldown the provider asked for).", ["tier"], registry=r)
        self.in_flight = Gauge("cascade_jobs_in_flight", "Job messages being worked on now.", ["tier"],
                               multiprocess_mode="livesum", registry=r)
        self.alert_active = Gauge("cascade_alert_active", "1 while a built-in alert is firing.",
                                  ["kind", "pipeline", "tier"], multiprocess_mode="livemax", registry=r)
        self.shadow_agreement = Gauge("cascade_shadow_agreement", "Share of shadow re-runs on the last tier "
                                      "that agree with the accepted answer.", ["pipeline"],
                                      multiprocess_mode="livemostrecent", registry=r)
        self.shadow_baseline = Gauge("cascade_shadow_agreement_baseline", "The shadow agreement baseline.",
                                     ["pipeline"], multiprocess_mode="livemax", registry=r)
        self.escalation_baseline = Gauge("cascade_escalation_baseline", "The escalation-rate SLO baseline.",
                                         ["pipeline", "tier"], multiprocess_mode="livemax", registry=r)
        self.cost_share_limit = Gauge("cascade_cost_share_limit", "Alert when cascade cost passes this share of "
                                      "last-tier-alone cost.", multiprocess_mode="livemax", registry=r)
        self.queue_depth_name = "cascade_queue_depth"   # collected on scrape (QueueDepth), never stored

    # -- the setter API for other parts ----------------------------------------------------

    def set_alert(self, kind: str, pipeline: str, tier: str, active: bool) -> None:
        """Mark a built-in alert as firing (True) or cleared (False); tier "" for pipeline-wide alerts."""
        self.alert_active.labels(kind, pipeline, tier or "").set(1 if active else 0)

    def set_alert_state(self, alert: Any) -> None:
        """The same from an `ops.alerts.Alert` (kind, state "fired" | "cleared", pipeline, tier)."""
        self.set_alert(alert.kind, alert.pipeline, alert.tier or "", alert.state == "fired")

    def set_shadow_agreement(self, pipeline: str, share: float) -> None:
        """The rolling share (0..1) of shadow pairs whose answers agree."""
        self.shadow_agreement.labels(pipeline).set(share)

    def set_shadow_baseline(self, pipeline: str, share: float) -> None:
        """The agreement baseline of a pipeline (0..1), for the Prometheus rules."""
        self.shadow_baseline.labels(pipeline).set(share)

    def set_escalation_baseline(self, pipeline: str, tier: str, rate: float) -> None:
        """The escalation-rate baseline of a pipeline's tier (0..1), for the Prometheus rules."""
        self.escalation_baseline.labels(pipeline, tier).set(rate)

    def set_baselines(self, settings: Any) -> None:
        """The configured SLO targets ([alerts] baselines, cost_share), so the shipped rules can compare."""
        for key, rate in settings.alerts.baselines.items():
            pipeline, _, tier = key.rpartition(".")
            self.set_escalation_baseline(pipeline, tier, rate)
        if settings.alerts.agreement_baseline:
            for pipeline in settings.pipelines:
                self.set_shadow_baseline(pipeline, settings.alerts.agreement_baseline)
        self.cost_share_limit.set(settings.alerts.cost_share)

    # -- feeding it --------------------------------------------------------------------------

    def observe_step(self, event: StepRecorded) -> None:
        """Engine observer: count one recorded step (an attempt, an escalation, a finished job)."""
        pipeline, tier = event.pipeline, event.tier
        attempt = event.attempt
        if attempt is not None and not is_routed(attempt):     # a tier the router skipped made no call
            self.attempts.labels(pipeline, tier, event.outcome).inc()
            if event.outcome == "accepted":
                self.accepts.labels(pipeline, tier).inc()
            elif event.outcome == "escalated":
                self.escalations.labels(pipeline, tier, escalation_reason(attempt)).inc()
            usage_in = attempt.usage.prompt_tokens + sum(v.usage.prompt_tokens for v in attempt.verdicts)
            usage_out = attempt.usage.output_tokens + sum(v.usage.output_tokens for v in attempt.verdicts)
            if usage_in:
                self.tokens.labels(pipeline, tier, "input").inc(usage_in)
            if usage_out:
                self.tokens.labels(pipeline, tier, "output").inc(usage_out)
        if event.cost_nanos:
            self.cost.labels(pipeline, tier).inc(event.cost_nanos / 1e9)
        if event.record is not None:
            self.jobs_finished.labels(pipeline, event.record.get("status", "")).inc()
            counterfactual = event.record.get("counterfactual_usd") or 0.0
            if counterfactual:
                self.last_tier_cost.labels(pipeline).inc(counterfactual)

    def instrument(self, engine: Any) -> None:
        """Feed these metrics from an engine: its observers, and its limiter wrapped by `MeteredLimiter`."""
        engine.observers.append(self.observe_step)
        engine.caller.limiter = MeteredLimiter(engine.caller.limiter, self)

    def track_celery_tasks(self, tier: str) -> None:
        """Count the Celery tasks this worker process is running (jobs in flight) through Celery's signals."""
        from celery import signals

        gauge = self.in_flight.labels(tier)
        gauge.set(0)
        signals.task_prerun.connect(lambda **_: gauge.inc(), weak=False)
        signals.task_postrun.connect(lambda **_: gauge.dec(), weak=False)

    def close(self) -> None:
        """This process ends: with multi-process metrics, its live gauges stop counting."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def family_names(self) -> dict[str, str]:
        """Every metric family this exposes -> its type (counter, histogram, gauge)."""
        names = {self.queue_depth_name: "gauge"}
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase):
                for family in metric.describe():
                    names[family.name] = family.type
        return names


def escalation_reason(attempt: Any) -> str:
    """Why an attempt escalated: the first failing verifier's name, or its error kind (context too long)."""
    failed = next((v for v in attempt.verdicts if not v.passed), None)
    if failed is not None:
        return failed.verifier
    if attempt.error:
        return attempt.error.split(":", 1)[0]
    return "rejected"


@functools.cache
def process_metrics() -> Metrics:
    """The metrics of this process (built on first use)."""
    return Metrics()


class _Timed:
    """A limiter lease with the moment its request was admitted."""

    __slots__ = ("admitted", "lease")

    def __init__(self, lease: object, admitted: float):
        self.lease, self.admitted = lease, admitted


class MeteredLimiter:
    """A limiter that measures what passes through it; the engine calls it exactly as the wrapped one.

    The engine's caller asks `acquire` before each provider request, `settle` after it (success or not) and
    `cool_down` only when the provider answered 429; so the three give the wait, the duration and the 429s.
    """

    def __init__(self, inner: Any, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.inner, self.metrics, self.clock = inner, metrics, clock

    def acquire(self, tier: Any, tokens: int) -> object:
        """Admit through the wrapped limiter, timing the wait."""
        start = self.clock()
        lease = self.inner.acquire(tier, tokens)
        now = self.clock()
        self.metrics.limiter_wait.labels(tier.name).observe(now - start)
        return _Timed(lease, now)

    def settle(self, tier: Any, lease: object, used_tokens: int) -> None:
        """The request ended: its duration, then the wrapped limiter settles it."""
        if isinstance(lease, _Timed):
            self.metrics.call_seconds.labels(tier.name).observe(self.clock() - lease.admitted)
            lease = lease.lease
        self.inner.settle(tier, lease, used_tokens)

    def cool_down(self, tier: Any, seconds: float) -> None:
        """A 429: count it, then pause the tier."""
        self.metrics.rate_limited.labels(tier.name).inc()
        self.inner.cool_down(tier, seconds)

    def observe(self, tier: Any, rate_limit: Mapping[str, float]) -> None:
        """Pass the provider's hints on."""
        self.inner.observe(tier, rate_limit)

    def report(self, tier: Any, lease: object, ok: bool, cause: str = "") -> None:
        """Pass the call's health on."""
        self.inner.report(tier, lease.lease if isinstance(lease, _Timed) else lease, ok, cause)


class QueueDepth:
    """A collector that reads the tiers' queue lengths when Prometheus scrapes (one LLEN per tier)."""

    def __init__(self, tiers: Iterable[str], backlog: Callable[[str], int]):
        self.tiers, self.backlog = tuple(tiers), backlog

    def describe(self) -> list[GaugeMetricFamily]:
        """The family, without reading Redis (registration must not block)."""
        return [GaugeMetricFamily("cascade_queue_depth", "Messages waiting on each tier's queue.", labels=["tier"])]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The queue lengths now; a tier whose length cannot be read is left out of this scrape."""
        family = GaugeMetricFamily("cascade_queue_depth", "Messages waiting on each tier's queue.", labels=["tier"])
        for tier in self.tiers:
            try:
                family.add_metric([tier], self.backlog(tier))
            except (RedisError, OSError) as error:     # Redis away: this scrape has no queue depth, the rest stands
                log.debug("queue depth of %s unread: %s", tier, error)
        yield family


class MetricsServer:
    """The HTTP endpoint (prometheus_client's server thread); `close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, port: int):
        self.server, self.thread, self.port = server, thread, port

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def serve(port: int, bind: str = "127.0.0.1", metrics: Metrics | None = None,
          queue_depth: QueueDepth | None = None) -> MetricsServer | None:
    """Serve /metrics on bind:port from a daemon thread. With PROMETHEUS_MULTIPROC_DIR set it serves every
    process of the folder, and when another process of the host already holds the port this one only writes
    its values there (None is returned)."""
    metrics = metrics or process_metrics()
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = metrics.registry
    if queue_depth is not None:
        registry.register(queue_depth)
    try:
        server, thread = start_http_server(port, bind, registry)
    except OSError as error:
        if queue_depth is not None:
            registry.unregister(queue_depth)
        if error.errno == errno.EADDRINUSE and multiprocess_dir():
            log.info("metrics: %s:%d is served by another process of this host (%s=%s)", bind, port,
                     MULTIPROC_ENV, multiprocess_dir())
            return None
        raise
    log.info("metrics: serving http://%s:%d/metrics", bind, server.server_port)
    return MetricsServer(server, thread, server.server_port)
