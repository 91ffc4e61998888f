"""Alerts: escalation drift, cost creep and shadow agreement over scripted series; the webhook received by a real
HTTP server (retried after a 500, HMAC-signed); alerts that survive a restart; `cascade alerts` after a real
embedded batch whose escalation rate is far from the configured baseline."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import logging
import re
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from cascade.errors import ConfigError
from cascade.ledger.database import Ledger, ledger_url
from cascade.ops.alerts import Alert, LedgerSink, WebhookSink, sinks_for
from cascade.ops.monitor import Monitor, attempt_outcomes
from cascade.simulator import SimServer, load_scenario
from cascade.worker.config import load_settings
from tests.cluster import SCENARIO, cascade_env, run_cli, write_tickets
from tests.helpers import copy_config

PIPELINE = "ticket-triage"
ALERT_FIELDS = {"kind", "state", "pipeline", "tier", "baseline", "value", "window", "message", "check", "details", "at"}


def settings_with(tmp_path, **alerts):
    """The repository config with these [alerts] keys (replacing the file's own)."""
    def edit(text: str) -> str:
        for key in alerts:
            text = re.sub(rf"^{key} = .*$", "", text, flags=re.MULTILINE)
        lines = "".join(f"{k} = {_table(v) if isinstance(v, dict) else orjson.dumps(v).decode()}\n"
                        for k, v in alerts.items())
        return text.replace("[alerts]\n", "[alerts]\n" + lines, 1)

    return load_settings(copy_config(tmp_path, edit), environ={})


def _table(mapping: dict) -> str:
    return "{ " + ", ".join(f'"{k}" = {v}' for k, v in mapping.items()) + " }"


def escalations(points: int, n: int) -> Iterator[bool]:
    """n attempts escalating at exactly `points`% (every 100 consecutive ones hold exactly `points` escalations)."""
    for i in range(n):
        yield ((i + 1) * points) // 100 - (i * points) // 100 == 1


def records(points: int, n: int, cost: float = 0.001, alone: float = 0.01) -> Iterator[dict]:
    """Result records whose cheap attempt escalated at `points`% (to mid, which accepted)."""
    for escalated in escalations(points, n):
        attempts = [{"tier": "cheap"}, {"tier": "mid"}] if escalated else [{"tier": "cheap"}]
        yield {"pipeline": PIPELINE, "status": "accepted", "attempts": attempts, "cost_usd": cost,
               "counterfactual_usd": alone}


def feed(monitor: Monitor, stream: Iterator[dict]) -> list[Alert]:
    """Feed records one at a time (as many small writer batches would); every alert they raised."""
    out: list[Alert] = []
    for record in stream:
        out += monitor.observe_records([record])
    return out


@pytest.fixture
def drift(tmp_path):
    """Cheap-tier baseline 30%, window 1000 attempts, no verdict below 200."""
    return settings_with(tmp_path, window_attempts=1000, min_sample=200, baselines={f"{PIPELINE}.cheap": 0.30})


def test_escalation_fires_on_a_six_point_move_not_on_a_four_point_one_and_clears_with_hysteresis(drift):
    monitor = Monitor(drift)
    # Given a stable rate at its baseline, then a +4 point move: no alert
    assert feed(monitor, records(30, 2000)) == []
    assert feed(monitor, records(34, 3000)) == []
    # When it moves +6 points: one alert, and no repeat while it stays there
    fired = feed(monitor, records(36, 3000))
    assert [(a.kind, a.state, a.pipeline, a.tier) for a in fired] == [("escalation_drift", "fired", PIPELINE, "cheap")]
    alert = fired[0]
    assert alert.baseline == 0.30 and 0.35 < alert.value <= 0.36
    assert alert.window == "last 1000 attempts"
    assert "[alerts] baselines" in alert.message and "cascade stats --pipeline ticket-triage" in alert.check
    # Then back to +4 points is not within the 3-point clear band: still active, nothing sent
    assert feed(monitor, records(34, 3000)) == []
    assert monitor.active == [("escalation_drift", PIPELINE, "cheap")]
    # ...and at +2 points it clears, once
    cleared = feed(monitor, records(32, 3000))
    assert [(a.kind, a.state) for a in cleared] == [("escalation_drift", "cleared")]
    assert cleared[0].value <= 0.33 and monitor.active == []


def test_a_fall_in_escalation_fires_too(drift):
    monitor = Monitor(drift)
    fired = feed(monitor, records(23, 2000))
    assert [(a.state, a.tier) for a in fired] == [("fired", "cheap")]
    assert "grow lenient" in fired[0].check


def test_no_verdict_below_the_minimum_sample(tmp_path):
    settings = settings_with(tmp_path, window_attempts=2000, min_sample=500, baselines={f"{PIPELINE}.cheap": 0.30})
    monitor = Monitor(settings)
    # Every attempt escalates (70 points above the baseline), but 499 attempts are below the sample
    assert feed(monitor, records(100, 499)) == []
    fired = feed(monitor, records(100, 1))
    assert [(a.state, a.value, a.window) for a in fired] == [("fired", 1.0, "last 500 attempts")]


def test_without_a_baseline_it_learns_one_from_the_first_sample_and_says_so(tmp_path):
    monitor = Monitor(settings_with(tmp_path, window_attempts=400, min_sample=200))
    assert feed(monitor, records(30, 1000)) == []
    fired = feed(monitor, records(40, 1000))
    assert [a.state for a in fired] == ["fired"]
    assert fired[0].baseline == pytest.approx(0.30)
    assert "learned from the first 200 attempts" in fired[0].message


def test_the_baseline_comes_from_the_ledgers_last_finished_batches(tmp_path):
    # Given three finished batches in the ledger (cheap escalated 20%, 30%, 40% of 100 attempts each)
    # and an unfinished one that must not count
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    for i, (state, escalated) in enumerate([("finished", 20), ("finished", 30), ("finished", 40), ("submitted", 90)]):
        ledger.upsert_batch({"id": f"b{i}", "pipeline": PIPELINE, "state": state, "submitted_at": 1000.0 + i,
                             "updated_at": 1000.0 + i},
                            [{"batch_id": f"b{i}", "tier": "cheap", "position": 0, "model": "m", "attempts": 100,
                              "accepted": 100 - escalated, "escalated": escalated, "final_jobs": 0,
                              "input_tokens": 0, "output_tokens": 0, "cost_nanos": 0}])
    settings = settings_with(tmp_path, window_attempts=500, min_sample=200, baseline_batches=5)
    monitor = Monitor(settings, ledger=ledger)
    # When the cheap tier escalates 37% of its attempts: +7 points from the ledger's 30%
    fired = feed(monitor, records(37, 600))
    assert [a.state for a in fired] == ["fired"]
    assert fired[0].baseline == pytest.approx(0.30)
    assert "the ledger's last 3 finished batches" in fired[0].message


def test_attempt_outcomes_follow_the_record_status():
    ladder = ("cheap", "mid", "frontier")
    two = [{"tier": "cheap"}, {"tier": "mid"}]
    assert attempt_outcomes({"status": "accepted", "attempts": two}, ladder) == [("cheap", True), ("mid", False)]
    # the job ran out of budget (or was cancelled) before mid's answer went on: mid escalated
    assert attempt_outcomes({"status": "budget_exhausted", "attempts": two}, ladder) == [("cheap", True),
                                                                                         ("mid", True)]
    # an error on mid is a failure there, not an escalation
    failed = [{"tier": "cheap"}, {"tier": "mid", "error": "bad_request: no"}]
    assert attempt_outcomes({"status": "failed", "attempts": failed}, ladder) == [("cheap", True), ("mid", False)]
    assert attempt_outcomes({"status": "failed", "attempts": []}, ladder) == []


def test_cost_creep_fires_above_the_share_and_clears_below_the_clear_share(tmp_path):
    monitor = Monitor(settings_with(tmp_path, window_attempts=100, min_sample=50, cost_share=0.60,
                                    baselines={f"{PIPELINE}.cheap": 0.30}))
    assert feed(monitor, records(30, 300, cost=0.0058, alone=0.01)) == []        # 58%
    fired = feed(monitor, records(30, 300, cost=0.0062, alone=0.01))             # 62%
    assert [(a.kind, a.state, a.tier) for a in fired] == [("cost_creep", "fired", "frontier")]
    assert fired[0].baseline == 0.60 and 0.60 < fired[0].value <= 0.62 and fired[0].window == "last 100 jobs"
    assert feed(monitor, records(30, 300, cost=0.0057, alone=0.01)) == []        # 57%: not below 55% yet
    cleared = feed(monitor, records(30, 300, cost=0.0050, alone=0.01))
    assert [(a.kind, a.state) for a in cleared] == [("cost_creep", "cleared")]


def pairs(agree_points: int, n: int) -> Iterator[dict]:
    for agree in escalations(agree_points, n):
        yield {"pipeline": PIPELINE, "tier": "cheap", "shadow_tier": "frontier", "agree": int(agree)}


def test_shadow_agreement_drop_fires_against_a_learned_or_configured_baseline(tmp_path):
    learned = Monitor(settings_with(tmp_path / "a", shadow_window=100, min_shadow=100))
    assert learned.observe_shadow(pairs(90, 300)) == []          # baseline 90% from the first 100
    assert learned.observe_shadow(pairs(86, 300)) == []          # -4 points
    fired = learned.observe_shadow(pairs(80, 300))
    assert [(a.kind, a.state, a.tier) for a in fired] == [("shadow_agreement", "fired", "frontier")]
    assert fired[0].baseline == pytest.approx(0.90) and fired[0].window == "last 100 shadow pairs"
    assert "learned from the first 100 pairs" in fired[0].message
    assert [a.state for a in learned.observe_shadow(pairs(89, 300))] == ["cleared"]

    configured = Monitor(settings_with(tmp_path / "b", shadow_window=100, min_shadow=50, agreement_baseline=0.95))
    assert [a.state for a in configured.observe_shadow(pairs(88, 100))] == ["fired"]
    # what the ledger's cascade_shadow_agreement gauges show: the rolling share and its baseline
    assert configured.agreement() == {PIPELINE: (pytest.approx(0.88), 0.95)}


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path) -> Iterator[Ledger]:
    """An empty, migrated ledger: a SQLite file of this test, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = ledger_url(request.getfixturevalue("postgres_url"), tmp_path)
        with Ledger(url).engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    ledger = Ledger(url)
    ledger.migrate()
    yield ledger
    ledger.close()


def test_an_active_alert_survives_a_restart_and_is_not_sent_twice(drift, ledger):
    first = Monitor(drift, [LedgerSink(ledger)], ledger)
    assert [a.state for a in feed(first, records(40, 1000))] == ["fired"]
    # When the writer restarts while the rate is still high: nothing new; once it recovers: cleared
    again = Monitor(drift, [LedgerSink(ledger)], ledger)
    assert feed(again, records(40, 1000)) == []
    assert [a.state for a in feed(again, records(30, 1000))] == ["cleared"]
    assert [(r["kind"], r["state"]) for r in ledger.alerts()] == [("escalation_drift", "fired"),
                                                                  ("escalation_drift", "cleared")]


def test_two_writers_sharing_a_ledger_record_one_alert(drift, ledger):
    a, b = (Monitor(drift, [LedgerSink(ledger)], ledger) for _ in range(2))
    for record in records(40, 1000):
        a.observe_records([record])
        b.observe_records([record])
    assert [r["state"] for r in ledger.alerts()] == ["fired"]
    assert a.active == b.active == [("escalation_drift", PIPELINE, "cheap")]


def test_a_baseline_for_a_tier_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r'alerts.baselines."ticket-triage.cheapest": no pipeline '
                                          r"'ticket-triage' with a tier 'cheapest'"):
        settings_with(tmp_path, baselines={f"{PIPELINE}.cheapest": 0.3})


# -- the webhook ------------------------------------------------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers the scripted statuses in turn (then 200), keeps every request."""

    def __init__(self, statuses: list[int], hold: threading.Event | None = None):
        self.statuses = list(statuses)
        self.hold = hold
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.got = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Receiver = self.server  # type: ignore[assignment]
        if server.hold is not None:
            server.hold.wait(10)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.requests.append((self.path, dict(self.headers), body))
        status = server.statuses.pop(0) if server.statuses else 200
        if status == 200:       # before the answer: a sender that has its 200 finds it set
            server.got.set()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def an_alert() -> Alert:
    return Alert("escalation_drift", "fired", PIPELINE, "cheap", 0.30, 0.41, "last 2000 attempts",
                 "escalation rate of ticket-triage tier cheap is 41.0%", "look at reject reasons", {"points": 11.0})


def test_the_webhook_is_retried_after_a_500_and_arrives_signed_with_every_field(tmp_path, caplog):
    receiver = Receiver([500])
    try:
        settings = settings_with(tmp_path, webhook_url=receiver.url("/hook/s3cr3t-token"),
                                 webhook_secret_env="HOOK_KEY", webhook_retries=3)
        webhook = sinks_for(settings, environ={"HOOK_KEY": "k3y"})[-1]
        assert isinstance(webhook, WebhookSink)
        webhook.backoff_s = 0.05
        with caplog.at_level(logging.DEBUG):
            webhook(an_alert())
            assert webhook.flush(10)
        assert receiver.got.is_set() and len(receiver.requests) == 2       # the 500, then the retry
        path, headers, body = receiver.requests[-1]
        assert path == "/hook/s3cr3t-token" and headers["Content-Type"] == "application/json"
        expected = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
        assert headers["X-Cascade-Signature"] == expected
        payload = orjson.loads(body)
        assert set(payload) == ALERT_FIELDS
        assert payload["pipeline"] == PIPELINE and payload["tier"] == "cheap" and payload["baseline"] == 0.30
        assert payload["value"] == 0.41 and payload["window"] == "last 2000 attempts" and payload["check"]
        assert webhook.delivered == 1 and "s3cr3t" not in caplog.text
    finally:
        receiver.shutdown()


def test_a_webhook_that_keeps_failing_is_given_up_with_a_warning_that_hides_its_token(caplog):
    receiver = Receiver([503, 503, 503])
    try:
        webhook = WebhookSink(receiver.url("/hook/s3cr3t-token?key=s3cr3t"), retries=2, backoff_s=0.01)
        with caplog.at_level(logging.WARNING, logger="cascade.alerts"):
            webhook(an_alert())
            assert webhook.flush(10)
        assert len(receiver.requests) == 3 and webhook.failed == 1
        assert "gave up after 3 tries (last: HTTP 503)" in caplog.text
        assert f"alert webhook http://127.0.0.1:{receiver.server_address[1]}" in caplog.text
        assert "s3cr3t" not in caplog.text
        assert "X-Cascade-Signature" not in receiver.requests[0][1]     # no secret configured: unsigned
    finally:
        receiver.shutdown()


def test_a_slow_webhook_never_holds_up_the_monitor(drift):
    # Given a receiver that does not answer until the test lets it
    hold = threading.Event()
    receiver = Receiver([], hold)
    try:
        webhook = WebhookSink(receiver.url("/hook"), retries=0)
        monitor = Monitor(drift, [webhook])
        # When an alert fires: observe_records returns while the POST is still unanswered
        assert [a.state for a in feed(monitor, records(40, 1000))] == ["fired"]
        assert receiver.requests == [] and not webhook.flush(0.05)
        hold.set()
        assert webhook.flush(10) and webhook.delivered == 1
    finally:
        hold.set()
        receiver.shutdown()


# -- end to end: an embedded batch, then `cascade alerts` ------------------------------------------------


def test_an_embedded_batch_far_from_its_baseline_leaves_an_escalation_alert_that_cascade_alerts_lists(tmp_path):
    # Given a baseline of 1% for the cheap tier (the demo scenario escalates ~12% of its attempts), a small sample
    config = copy_config(tmp_path, lambda text: text.replace(
        "min_sample = 500", "min_sample = 20\nbaselines = { \"ticket-triage.cheap\" = 0.01 }").replace(
        "window_attempts = 2000", "window_attempts = 50"))
    write_tickets(tmp_path / "jobs.jsonl", 120)
    with SimServer(load_scenario(SCENARIO)) as sim:
        env = cascade_env(None, sim.url)
        done = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", PIPELINE, "--batch-id", "drift-1",
                        "--out", str(tmp_path / "out.jsonl"), "--config", str(config), "--no-progress"], env)
    assert done.returncode == 0, done.stderr.decode()
    assert "alert fired: escalation_drift pipeline=ticket-triage tier=cheap baseline=1.0%" in done.stderr.decode()
    # When the operator asks for alerts
    listed = run_cli(["cascade", "alerts", "--since", "1h", "--config", str(config)], env, timeout=60)
    # Then the escalation alert is there, with its tier, baseline, window and what to check; still active
    assert listed.returncode == 0, listed.stderr.decode()
    text = listed.stdout.decode()
    assert "FIRED    escalation_drift  ticket-triage/cheap" in text and "1.0%  last " in text
    assert "check: did the cheap model or the input format change?" in text
    assert "active now: escalation_drift ticket-triage/cheap since" in text
    as_json = run_cli(["cascade", "alerts", "--pipeline", PIPELINE, "--json", "--config", str(config)], env,
                      timeout=60)
    assert as_json.returncode == 0, as_json.stderr.decode()
    rows = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    drift = [r for r in rows if r["kind"] == "escalation_drift"]
    assert [(r["state"], r["pipeline"], r["tier"], r["baseline"]) for r in drift] == [
        ("fired", PIPELINE, "cheap", 0.01)]
    assert drift[0]["value"] > 0.06 and drift[0]["window"].startswith("last ") and drift[0]["details"]["batch"] == "drift-1"
    assert time.time() - drift[0]["at"] < 600
    other = run_cli(["cascade", "alerts", "--pipeline", "nope", "--config", str(config)], env, timeout=60)
    assert other.returncode == 0 and "(no alerts since 7d for nope)" in other.stderr.decode()


def test_a_webhook_url_that_is_not_http_is_a_config_error_that_does_not_show_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_settings(copy_config(tmp_path), environ={"CASCADE_ALERT_WEBHOOK_URL": "hooks.example.com/T0KEN"})
    assert str(error.value) == ("environment CASCADE_ALERT_WEBHOOK_URL: must start with http:// or https:// "
                                "(the URL is not shown: it may hold a token)")
