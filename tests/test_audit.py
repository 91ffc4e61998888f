"""`cascade audit`: a labelled recorded set replayed through today's configuration against the figures `cascade
calibrate` stored; a more lenient threshold shows as drift, with exit status 3 and `audit_drift` alert rows."""

from __future__ import annotations

import shutil

import orjson
import pytest

from cascade.ledger.database import Ledger, ledger_url
from cascade.ops.audit import AuditError, run_audit
from cascade.worker.config import load_settings
from tests.cluster import cascade_env, run_cli
from tests.helpers import REPO, copy_recorded_config

DATASETS = REPO.parent / "shared" / "datasets"
TRAIN = DATASETS / "mmlu-oai-train.jsonl"

pytestmark = pytest.mark.skipif(not TRAIN.exists(), reason=f"{DATASETS} is not here")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The recorded examples' config with mmlu calibrated afresh on the training split (the dev set), once."""
    config = tmp_path_factory.mktemp("audit") / "config"
    copy_recorded_config(config)
    env = cascade_env(None, "http://127.0.0.1:1")
    fit = run_cli(["cascade", "calibrate", "-p", "mmlu", "-r", str(TRAIN), "--json", "--config",
                   str(config / "cascade.toml")], env)
    assert fit.returncode == 0, fit.stderr.decode()
    return config, env, orjson.loads(fit.stdout)


@pytest.fixture
def calibrated(fitted, tmp_path):
    """A copy of that config this test may edit."""
    config, env, report = fitted
    shutil.copytree(config, tmp_path / "config")
    return tmp_path / "config", env, report


def alerts(config) -> list[dict]:
    ledger = Ledger(ledger_url("", config))
    ledger.migrate()
    try:
        return ledger.alerts()
    finally:
        ledger.close()


def test_calibrate_stores_its_figures_and_an_audit_on_the_dev_set_passes(calibrated):
    config, env, report = calibrated
    stored = orjson.loads((config / "calibration" / "mmlu.json").read_bytes())["expected"]
    assert stored["accuracy"] == report["accuracy"] and stored["rows"] == 285
    assert stored["tiers"]["mini"]["escalation_rate"] == report["escalation"]["mini"]
    # When the same labelled set is replayed through the configuration as calibrated
    result = run_audit(load_settings(config / "cascade.toml", environ={}), "mmlu", TRAIN)
    # Then every figure is where calibration left it
    assert result.ok and [f.change_points for f in result.figures] == [0.0, 0.0, 0.0, 0.0]
    assert [(f.tier, f.attempts) for f in result.figures] == [("", 285), ("mini", 285), ("qwen72", 154),
                                                              ("gpt4o", 14)]
    done = run_cli(["cascade", "audit", "-p", "mmlu", "-r", str(TRAIN), "--config", str(config / "cascade.toml")], env)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "accuracy                          86.3%    86.3%     +0.0    285" in out
    assert "no drift beyond 5 points ([alerts] escalation_points)" in out
    assert alerts(config) == []


def test_a_more_lenient_threshold_is_drift_with_exit_status_and_alert_rows(calibrated):
    # Given a pipeline whose logprob threshold was lowered by hand after calibration
    config, env, _ = calibrated
    pipeline = config / "pipelines" / "mmlu.toml"
    text = pipeline.read_text()
    edited = text.replace('calibration = "calibration/mmlu.json" }', 'calibration = "calibration/mmlu.json", '
                                                                     'threshold = 0.3 }')
    assert edited != text
    pipeline.write_text(edited)
    # When the audit replays the dev set
    done = run_cli(["cascade", "audit", "-p", "mmlu", "-r", str(TRAIN), "--config", str(config / "cascade.toml")], env)
    # Then it says which figures moved, exits 3 and leaves one alert per drifted figure in the ledger
    out = done.stdout.decode()
    assert done.returncode == 3, done.stderr.decode()
    assert "accuracy                          86.3%    75.4%    -10.9    285  DRIFT" in out
    assert "mini accept rate                  46.0%    96.5%    +50.5    285  DRIFT" in out
    assert "DRIFT: 3 figure(s) moved more than 5 points" in out
    rows = alerts(config)
    assert [(a["kind"], a["state"], a["pipeline"], a["tier"]) for a in rows] == [
        ("audit_drift", "fired", "mmlu", ""), ("audit_drift", "fired", "mmlu", "mini"),
        ("audit_drift", "fired", "mmlu", "qwen72")]
    mini = rows[1]
    assert mini["baseline"] == pytest.approx(131 / 285) and mini["value"] == pytest.approx(275 / 285)
    assert mini["message"] == "mmlu: mini accept rate 96.5% against 46.0% at calibration (+50.5 points, limit 5)"
    assert mini["window"] == f"audit of 285 rows of {TRAIN}" and "pipelines/mmlu.toml" in mini["check"]


def test_an_audit_without_stored_figures_says_what_to_do(calibrated):
    config, env, _ = calibrated
    with pytest.raises(AuditError) as caught:
        run_audit(load_settings(config / "cascade.toml", environ={}), "gsm8k", TRAIN)
    assert str(caught.value) == ("pipeline gsm8k names no calibration file: an audit compares with the figures "
                                 "`cascade calibrate` stores in one")
    path = config / "calibration" / "mmlu.json"
    data = orjson.loads(path.read_bytes())
    del data["expected"]
    path.write_bytes(orjson.dumps(data))
    old = run_cli(["cascade", "audit", "-p", "mmlu", "-r", str(TRAIN), "--config", str(config / "cascade.toml")], env)
    assert old.returncode == 1
    assert old.stderr.decode().strip() == (f"Error: {path}: no expected figures (written before `cascade calibrate` "
                                           "stored them, or by hand): run `cascade calibrate -p mmlu` again")


def test_a_scheduled_audit_runs_once_per_date_and_keeps_its_drift_as_alerts(calibrated):
    # Given a lenient threshold and a nightly audit schedule of the dev set (no Redis needed: it only replays)
    config, env, _ = calibrated
    pipeline = config / "pipelines" / "mmlu.toml"
    pipeline.write_text(pipeline.read_text().replace('calibration = "calibration/mmlu.json" }',
                                                     'calibration = "calibration/mmlu.json", threshold = 0.3 }'))
    with (config / "cascade.toml").open("a") as f:
        f.write(f'\n[schedules.mmlu-audit]\npipeline = "mmlu"\nkind = "audit"\ninput = "{TRAIN}"\ncron = "0 3 * * *"\n')
    command = ["cascade", "schedules", "--config", str(config / "cascade.toml"), "run", "mmlu-audit", "--date",
               "2026-12-01"]
    # When it runs for a date, twice
    first, second = run_cli(command, env), run_cli(command, env)
    # Then the audit ran once: its run says so, its drift is three alerts naming the run, the second did nothing
    assert first.returncode == 0, first.stderr.decode()
    assert ("schedule mmlu-audit: run 2026-12-01 audited: audit of 285 rows of " in first.stderr.decode()
            and "accuracy 75.4% (calibrated 86.3%); 3 figures drifted" in first.stderr.decode())
    assert second.returncode == 0 and "already ran (audited: audit of 285 rows" in second.stderr.decode()
    rows = [a for a in alerts(config) if a["kind"] == "audit_drift"]
    assert len(rows) == 3 and {a["details"]["run_date"] for a in rows} == {"2026-12-01"}
