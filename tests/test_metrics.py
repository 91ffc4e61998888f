"""Metrics, the operator log and task events, on real workers: what Prometheus scrapes over HTTP equals what the
batch's own counters say, the log has one line per finished job and no library chatter, Flower's events flow,
and the shipped Prometheus rules and Grafana dashboard only use metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cascade.ops.logs import JobLog, JsonFormatter, Redactor, TextFormatter
from cascade.ops.metrics import Metrics
from cascade.simulator import SimServer
from cascade.worker.celery_app import create_app
from cascade.worker.config import load_settings
from tests import debian
from tests.cluster import (
    Workers,
    cascade_env,
    cluster_config,
    delete_namespace,
    fast_scenario,
    read_jsonl,
    run_cli,
    write_tickets,
)
from tests.redis_server import _free_port

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("cheap", "mid", "frontier")
JOBS = 100
API_KEY = "sk-test-0123456789abcdef-never-logged"
JOB_LINE = re.compile(r"INFO cascade\.jobs: job finished batch=(\S+) job=(\S+) tier=(\S+) outcome=(\S+) "
                      r"cost_usd=(\d+\.\d{6})( reason=.+)?$")


def scrape(port: int, keep: Path | None = None) -> dict[str, list]:
    """GET /metrics and parse it with prometheus-client's parser: family name -> samples (the text kept in
    `keep`, as a test artifact)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    if keep is not None:
        keep.write_text(text)
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(scrapes: list[dict], sample: str, **labels: str) -> float:
    """Sum of one sample name over every worker's scrape, for the samples whose labels include `labels`."""
    return sum(s.value for scraped in scrapes for family in scraped.values() for s in family
               if s.name == sample and labels.items() <= s.labels.items())


class EventCounter:
    """What Flower would see: Celery task events on the broker, counted by a real event receiver."""

    def __init__(self, app):
        self.app, self.counts, self.ready = app, defaultdict(int), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.receiver = None

    def _handle(self, event: dict) -> None:
        if event["type"] == "worker-probe":
            self.ready.set()
        self.counts[event["type"]] += 1

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._handle})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> EventCounter:
        """Listen, and return once a probe event published now has been received."""
        self.thread.start()
        deadline = time.monotonic() + 20
        with self.app.events.default_dispatcher() as dispatcher:
            while not self.ready.wait(0.2):
                assert time.monotonic() < deadline, "the event receiver never got its probe"
                dispatcher.send("worker-probe")
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, redis_url):
    """Workers with metrics on free ports and task events, one batch. The cheap tier runs two processes that
    share a PROMETHEUS_MULTIPROC_DIR and one port (one serves both) and log JSON; the others log text."""
    tmp = tmp_path_factory.mktemp("metrics")
    config, ns = cluster_config(tmp)
    rows = write_tickets(tmp / "jobs.jsonl", JOBS)
    with SimServer(fast_scenario()) as sim:
        env = cascade_env(redis_url, sim.url) | {"CASCADE_PROVIDER_API_KEY": API_KEY}
        events = EventCounter(create_app(load_settings(config, environ=env))).start()
        workers = Workers(config, env, tmp)
        ports = {tier: _free_port() for tier in TIERS}
        try:
            shared = {"CASCADE_LOG_FORMAT": "json", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus")}
            (tmp / "prometheus").mkdir()
            for tier in ("cheap", *TIERS):
                worker_env = env | (shared if tier == "cheap" else {})
                workers.start(tier, concurrency=2, env=worker_env, args=["--metrics-port", str(ports[tier]), "-E"])
            out = tmp / "results.jsonl"
            done = run_cli(["cascade-submit", str(tmp / "jobs.jsonl"), "--pipeline", "ticket-triage", "--batch-id",
                            "metrics-1", "--wait", "--out", str(out), "--config", str(config), "--no-progress"], env)
            assert done.returncode == 0, done.stderr.decode()
            status = run_cli(["cascade", "status", "metrics-1", "--json", "--config", str(config)], env)
            assert status.returncode == 0, status.stderr.decode()
            deadline = time.monotonic() + 10       # the last task's events follow its ack
            while events.counts["task-succeeded"] < JOBS and time.monotonic() < deadline:
                time.sleep(0.1)
            scrapes = [scrape(ports[tier], tmp / f"metrics-{tier}.txt") for tier in TIERS]
        finally:
            events.stop()
            workers.close()
            delete_namespace(redis_url, ns)
    logs = {tier: "".join(p.read_text() for p in sorted(tmp.glob(f"worker-{tier}-*.log"))) for tier in TIERS}
    cheap_logs = [p.read_text() for p in sorted(tmp.glob("worker-cheap-*.log"))]
    yield {"summary": orjson.loads(status.stdout), "scrapes": scrapes, "records": read_jsonl(out), "rows": rows,
           "logs": logs, "cheap_logs": cheap_logs, "events": dict(events.counts)}


def test_scraped_counters_equal_the_batch_counters(batch_run):
    # Given the batch's own summary (`cascade status --json`) and every worker's /metrics
    summary, scrapes = batch_run["summary"], batch_run["scrapes"]
    assert summary["done"] == JOBS
    tiers = {t["tier"]: t for t in summary["tiers"]}
    # Then attempts, accepts and escalations per tier, and finished jobs per status, are the same numbers
    for tier, figures in tiers.items():
        assert total(scrapes, "cascade_attempts_total", tier=tier) == figures["attempts"], tier
        assert total(scrapes, "cascade_accepts_total", tier=tier) == figures["accepted"], tier
        assert total(scrapes, "cascade_escalations_total", tier=tier) == figures["escalated"], tier
        assert total(scrapes, "cascade_attempts_total", tier=tier, outcome="escalated") == figures["escalated"]
    assert sum(t["escalated"] for t in tiers.values()) > 0, "the scenario escalates some jobs"
    for status, count in summary["statuses"].items():
        assert total(scrapes, "cascade_jobs_finished_total", status=status) == count, status
    # escalations by reason: the first failing verifier, as the batch's reject reasons count them
    for tier in summary["tiers"][:-1]:
        by_verifier = defaultdict(int)
        for reject in summary["reject_reasons"]:
            if reject["tier"] == tier["tier"]:
                by_verifier[reject["reason"].split(":", 1)[0]] += reject["count"]
        for verifier, count in by_verifier.items():
            assert total(scrapes, "cascade_escalations_total", tier=tier["tier"], reason=verifier) == count
    # cost, last-tier-alone cost and tokens
    assert total(scrapes, "cascade_cost_usd_total") == pytest.approx(summary["cost_usd"], rel=1e-9)
    assert total(scrapes, "cascade_last_tier_cost_usd_total") == pytest.approx(summary["last_tier_only_cost_usd"],
                                                                               rel=1e-9)
    assert total(scrapes, "cascade_tokens_total", kind="input") == summary["input_tokens"]
    assert total(scrapes, "cascade_tokens_total", kind="output") == summary["output_tokens"]


def test_provider_calls_limiter_queues_and_in_flight_are_measured(batch_run):
    summary, scrapes = batch_run["summary"], batch_run["scrapes"]
    for tier in summary["tiers"]:
        name = tier["tier"]
        # every provider request: the attempts plus their transient retries (429s among them)
        calls = total(scrapes, "cascade_provider_call_seconds_count", tier=name)
        assert calls == tier["attempts"] + tier["retries"], name
        assert total(scrapes, "cascade_limiter_wait_seconds_count", tier=name) == calls
        assert total(scrapes, "cascade_rate_limited_total", tier=name) <= tier["retries"]
        assert (total(scrapes, "cascade_provider_call_seconds_sum", tier=name) > 0) == (calls > 0)
    for scraped in scrapes:
        # each worker reads every tier's queue (empty now) and has no job in hand
        assert {s.labels["tier"]: s.value for s in scraped["cascade_queue_depth"]} == dict.fromkeys(TIERS, 0)
        assert [s.value for s in scraped["cascade_jobs_in_flight"]] == [0]


def test_the_log_has_one_line_per_finished_job_in_text_and_json(batch_run):
    records = {r["id"]: r for r in batch_run["records"]}
    # text workers: the line format; the JSON worker: one object per line with the same fields
    lines = {}
    for tier in ("mid", "frontier"):
        for line in batch_run["logs"][tier].splitlines():
            if "cascade.jobs" in line:
                batch, job, at, outcome, cost, reason = JOB_LINE.search(line).groups()
                assert batch == "metrics-1" and at == tier
                lines[job] = (outcome, float(cost), bool(reason))
    cheap = [json.loads(line) for line in batch_run["logs"]["cheap"].splitlines() if line.startswith("{")]
    assert any(entry["message"].endswith(" ready.") for entry in cheap), "Celery's own lines are JSON too"
    for entry in cheap:
        assert set(entry) >= {"ts", "level", "logger", "message"}
        if entry["logger"] == "cascade.jobs":
            assert entry["level"] == "INFO" and entry["batch"] == "metrics-1" and entry["tier"] == "cheap"
            assert entry["message"].startswith(f"job finished batch=metrics-1 job={entry['job']} tier=cheap ")
            lines[entry["job"]] = (entry["outcome"], round(entry["cost_usd"], 6), "reason" in entry)
    # Then every job has exactly one line, saying what its result record says
    assert sorted(lines) == sorted(records)
    for job, (outcome, cost, has_reason) in lines.items():
        assert outcome == records[job]["status"]
        assert cost == pytest.approx(records[job]["cost_usd"], abs=1e-6)
        assert has_reason == bool(records[job].get("reason"))


def test_the_log_has_no_request_lines_and_no_secrets(batch_run):
    for tier, text in batch_run["logs"].items():
        assert "HTTP Request:" not in text, tier                # httpx's line per request
        assert "Task cascade.attempt[" not in text, tier        # Celery's received / succeeded lines
        assert API_KEY not in text, tier


def test_task_events_reach_a_celery_event_receiver(batch_run):
    # What Flower consumes: workers started with -E send events for every task they run
    attempts = sum(t["attempts"] for t in batch_run["summary"]["tiers"])
    assert batch_run["events"].get("task-received", 0) >= attempts
    assert batch_run["events"].get("task-succeeded", 0) >= attempts


def test_log_lines_mask_secrets_and_url_passwords():
    import logging

    redactor = Redactor(["sk-live-abcdef123456"])
    record = logging.LogRecord("cascade.engine", logging.WARNING, __file__, 1,
                               "key sk-live-abcdef123456 failed on redis://u:hunter2@db:6379/0", (), None)
    text = TextFormatter(redactor).format(record)
    assert text.endswith("WARNING cascade.engine: key *** failed on redis://u:***@db:6379/0")
    entry = json.loads(JsonFormatter(redactor).format(record))
    assert entry["message"] == "key *** failed on redis://u:***@db:6379/0" and entry["level"] == "WARNING"
    assert isinstance(JobLog().log, logging.Logger)


# -- the shipped Prometheus and Grafana files ---------------------------------------------------------------

def exposed_names() -> set[str]:
    """Every sample name the metrics expose, by family type."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",)}
    return {name + suffix for name, kind in Metrics().family_names().items() for suffix in suffixes[kind]}


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bcascade_[a-z0-9_]+", expr))


def test_alert_rules_mirror_the_built_in_alerts_over_defined_metrics():
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    names = exposed_names()
    for rule in rules:
        assert referenced(rule["expr"]) <= names, (rule["alert"], referenced(rule["expr"]) - names)
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    assert {r["alert"] for r in rules} >= {"CascadeEscalationDrift", "CascadeCostCreep", "CascadeShadowAgreementDrop",
                                          "CascadeWorkerDown", "CascadeQueueGrowing", "CascadeAlertActive"}
    creep = next(r for r in rules if r["alert"] == "CascadeCostCreep")
    assert "cascade_last_tier_cost_usd_total" in creep["expr"] and "cascade_cost_share_limit" in creep["expr"]
    scrape_config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert scrape_config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    [workers] = jobs["cascade-workers"]["dns_sd_configs"]      # every replica of every worker service
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(workers["names"]) == {name for name in compose if name.startswith("worker-")}
    for name in workers["names"]:
        assert f"--metrics-port {workers['port']}" in " ".join(compose[name]["command"]), name


def test_the_dashboard_only_charts_defined_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "cascade-dashboard.json").read_text())
    names = exposed_names()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    charted = set().union(*(referenced(e) for e in exprs))
    assert charted <= names, charted - names
    # everything an operator looks at is on it
    assert {"cascade_attempts_total", "cascade_escalations_total", "cascade_cost_usd_total",
            "cascade_provider_call_seconds_bucket", "cascade_queue_depth", "cascade_alert_active",
            "cascade_shadow_agreement"} <= charted


def promtool() -> str:
    """Prometheus's own checker (Debian's prometheus package), installed when missing."""
    path = shutil.which("promtool")
    if path is None and debian.install("prometheus"):
        path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed and could not be (Debian package prometheus)")
    return path


RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # triage/cheap escalates 40% of 20 attempts a minute against a 30% baseline: +10 points
      - series: 'cascade_attempts_total{{pipeline="triage",tier="cheap",outcome="escalated",instance="w1"}}'
        values: '0+8x200'
      - series: 'cascade_attempts_total{{pipeline="triage",tier="cheap",outcome="accepted",instance="w1"}}'
        values: '0+12x200'
      - series: 'cascade_escalation_baseline{{pipeline="triage",tier="cheap",instance="w1"}}'
        values: '0.30x200'
      # steady/cheap escalates 32% against 30%: +2 points, no alert
      - series: 'cascade_attempts_total{{pipeline="steady",tier="cheap",outcome="escalated",instance="w1"}}'
        values: '0+8x200'
      - series: 'cascade_attempts_total{{pipeline="steady",tier="cheap",outcome="accepted",instance="w1"}}'
        values: '0+17x200'
      - series: 'cascade_escalation_baseline{{pipeline="steady",tier="cheap",instance="w1"}}'
        values: '0.30x200'
      # triage costs 0.70 of its last-tier-alone cost, steady 0.50; the limit is 0.60
      - series: 'cascade_cost_usd_total{{pipeline="triage",tier="cheap",instance="w1"}}'
        values: '0+0.7x200'
      - series: 'cascade_last_tier_cost_usd_total{{pipeline="triage",instance="w1"}}'
        values: '0+1x200'
      - series: 'cascade_cost_usd_total{{pipeline="steady",tier="cheap",instance="w1"}}'
        values: '0+0.5x200'
      - series: 'cascade_last_tier_cost_usd_total{{pipeline="steady",instance="w1"}}'
        values: '0+1x200'
      - series: 'cascade_cost_share_limit{{instance="w1"}}'
        values: '0.6x200'
    alert_rule_test:
      - eval_time: 5m
        alertname: CascadeEscalationDrift
        exp_alerts: []
      - eval_time: 90m
        alertname: CascadeEscalationDrift
        exp_alerts:
          - exp_labels: {{severity: warning, pipeline: triage, tier: cheap}}
            exp_annotations:
              summary: "triage/cheap: escalation rate 10% off its baseline"
              description: "What to check: did the provider update the model, or a prompt/format change trip a verifier? `cascade stats --pipeline triage` shows the reject reasons."
      - eval_time: 150m
        alertname: CascadeCostCreep
        exp_alerts:
          - exp_labels: {{severity: warning, pipeline: triage}}
            exp_annotations:
              summary: "triage: cascade cost is 70% of last-tier-alone cost"
              description: "What to check: escalation rate per tier; past ~55-60% escalation, sending every job to the last tier is cheaper."
"""


def test_promtool_accepts_the_config_and_the_rules_fire_as_the_built_in_alerts_do(tmp_path):
    tool = promtool()
    rules = ROOT / "deploy" / "prometheus" / "alerts.yml"
    config = tmp_path / "prometheus.yml"     # the rules at their path here instead of the container's
    config.write_text((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/alerts.yml", str(rules)))
    for args in (["check", "config", str(config)], ["check", "rules", str(rules)]):
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    tests = tmp_path / "rule-tests.yml"
    tests.write_text(RULE_TESTS.format(rules=rules))
    done = subprocess.run([tool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_processes_sharing_a_multiprocess_dir_are_served_as_one(batch_run):
    # the second cheap worker found the port taken and writes its values to the shared folder ...
    first, second = batch_run["cheap_logs"]
    assert "metrics: serving http://127.0.0.1:" in first
    assert "is served by another process of this host (PROMETHEUS_MULTIPROC_DIR=" in second
    # ... both worked on the batch, and the scraped cheap attempts (checked above to equal the batch's) hold both
    assert all(log.count('"outcome":') > 0 for log in (first, second)), "each cheap process finished jobs"


def test_the_ledger_process_serves_the_alert_gauges(tmp_path, redis_url):
    # Given a ledger writer started with --metrics-port (where the built-in alerts are evaluated)
    config, ns = cluster_config(tmp_path)
    port = _free_port()
    env = cascade_env(redis_url, "http://127.0.0.1:9") | {"CASCADE_LEDGER_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    cmd = [str(Path(sys.executable).parent / "cascade"), "ledger", "--metrics-port", str(port), "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scraped = scrape(port)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        # Then the configured SLO targets are there for the rules, and the alert gauges are defined
        assert [s.value for s in scraped["cascade_cost_share_limit"]] == [0.6]
        assert "cascade_alert_active" in scraped and "cascade_shadow_agreement" in scraped
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        delete_namespace(redis_url, ns)
    assert proc.returncode == 0


def test_a_metrics_port_in_use_is_a_clear_error(tmp_path, redis_url):
    import socket

    config, ns = cluster_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["cascade", "worker", "--tier", "cheap", "--metrics-port", str(port), "--config", str(config)],
                       cascade_env(redis_url, "http://127.0.0.1:9"), timeout=60)
    leftovers = list(redis.Redis.from_url(redis_url).scan_iter(f"{ns}:*"))
    delete_namespace(redis_url, ns)
    assert done.returncode == 1
    assert leftovers == [], "the worker registered itself before failing"
    assert f"Error: metrics on 127.0.0.1:{port}: Address already in use" in done.stderr.decode()
