"""`cascade report`: a real finished batch in the ledger, its HTML page opened in real headless Chromium (Debian's
package, driven by Playwright): no console errors, every chart drawn, the figures the ledger holds, no HTML
injection from job data; a screenshot kept in tests/artifacts/report.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from cascade.ledger.database import Ledger, ledger_url
from cascade.simulator import SimServer
from tests.cluster import cascade_env, fast_scenario, run_cli, write_tickets
from tests.debian import install
from tests.helpers import REPO, copy_config

ARTIFACTS = REPO / "tests" / "artifacts"
HOSTILE = '<img src=x onerror="document.title=1"><script>document.title=2</script>'
CHARTS = {"cost", "escalation-cheap", "escalation-mid", "rejects", "shadow", "latency", "budget"}


def chromium() -> str:
    """The system Chromium, installed from Debian when missing; the test skips only when that fails."""
    path = shutil.which("chromium")
    if path is None and install("chromium"):
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium package is not installed and cannot be installed here")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 200-job batch with a budget (embedded mode), plus shadow pairs and alerts written to its ledger."""
    tmp = tmp_path_factory.mktemp("report")
    config = copy_config(tmp, lambda text: text.replace(
        '# baselines = { "ticket-triage.cheap" = 0.30 }', 'baselines = { "ticket-triage.cheap" = 0.15 }'))
    write_tickets(tmp / "jobs.jsonl", 200)
    with SimServer(fast_scenario()) as sim:
        env = cascade_env(None, sim.url)
        done = run_cli(["cascade-submit", str(tmp / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "rep-1",
                        "--budget", "0.05", "--out", str(tmp / "out.jsonl"), "--config", str(config), "--no-progress"],
                       env)
    assert done.returncode == 0, done.stderr.decode()
    ledger = Ledger(ledger_url("", config.parent))
    ledger.write_shadow_pairs([{"batch_id": "rep-1", "job_id": f"T-{i:05d}", "pipeline": "ticket-triage",
                                "tier": "cheap" if i % 4 else "mid", "shadow_tier": "frontier", "output": HOSTILE,
                                "shadow_output": "{}", "agree": int(i % 5 != 0), "cost_nanos": 570_000}
                               for i in range(20)])
    ledger.record_alert({"kind": "escalation_drift", "state": "fired", "pipeline": "ticket-triage", "tier": "cheap",
                         "baseline": 0.15, "value": 0.22, "window": "last 200 attempts",
                         "message": f"escalation of cheap at 22% {HOSTILE}", "check": "the cheap model's answers"})
    yield {"config": config, "ledger": ledger, "env": cascade_env(None, "http://127.0.0.1:1"), "tmp": tmp}
    ledger.close()


def open_page(path: Path, screenshot: Path | None = None) -> dict:
    """Load a page in headless Chromium; what it logged, each chart's size and marks, the figures shown."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            charts = {}
            for svg in page.query_selector_all("svg.chart"):
                marks = [m.bounding_box() for m in svg.query_selector_all("rect.bar, circle.point")]
                charts[svg.get_attribute("data-chart")] = (svg.bounding_box(), marks)
            out = {
                "errors": errors, "charts": charts, "title": page.title(),
                "figures": {el.get_attribute("data-figure"): (el.get_attribute("data-value"), el.inner_text())
                            for el in page.query_selector_all("[data-figure]")},
                "injected": page.query_selector_all("main img, main script"),
                "alerts": page.inner_text("[data-section=alerts]"),
                "bands": len(page.query_selector_all("svg.chart rect.band")),
                "text": page.inner_text("main"),
            }
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return out
        finally:
            browser.close()


def test_a_batch_report_renders_in_chromium_with_the_ledgers_figures(finished):
    # Given a finished batch in the ledger; When its report is written and opened in Chromium
    out = finished["tmp"] / "batch.html"
    made = run_cli(["cascade", "report", "rep-1", "--out", str(out), "--config", str(finished["config"])],
                   finished["env"])
    assert made.returncode == 0, made.stderr.decode()
    assert "report: batch rep-1, 200 jobs in 1 batches" in made.stderr.decode()
    page = open_page(out, ARTIFACTS / "report.png")
    # Then nothing failed, and every chart is drawn at a real size with visible marks
    assert page["errors"] == []
    assert set(page["charts"]) == CHARTS
    for name, (box, marks) in page["charts"].items():
        assert box["width"] > 100 and box["height"] > 50, name
        assert marks and all(m["width"] > 0 and m["height"] > 0 for m in marks), name
    # And the figures are the ledger's
    batch = finished["ledger"].batch("rep-1")
    figures = page["figures"]
    assert figures["jobs"] == ("200", "200") and batch["done"] == 200
    assert float(figures["cost_usd"][0]) == pytest.approx(batch["cost_nanos"] / 1e9, abs=1e-12)
    assert figures["cost_usd"][1] == f"${batch['cost_nanos'] / 1e9:,.6f}"
    assert figures["last_tier_cost_usd"][1] == f"${batch['counterfactual_nanos'] / 1e9:,.6f}"
    assert figures["shadow_pairs"][0] == "20" and figures["alerts"][0] == "1"
    assert "20 pairs, agreement 80.0%" in page["text"]
    tiers = {f["tier"]: f for f in finished["ledger"].tier_figures("rep-1")}
    assert f"{tiers['cheap']['escalated'] / tiers['cheap']['attempts']:.1%}" in page["text"]
    # And the cheap tier's escalation is drawn against its SLO band from [alerts] baselines
    assert page["bands"] == 1 and "baseline 15.0% ([alerts] baselines); band +/- 5 points" in page["text"]
    # And job data shows as text, never as markup
    assert page["injected"] == [] and page["title"] == "Cascade report: batch rep-1"
    assert HOSTILE in page["alerts"]
    html = out.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")


def test_a_pipeline_report_covers_its_batches_and_says_when_there_are_no_shadow_pairs(finished, tmp_path):
    config = copy_config(tmp_path)
    shutil.copy(finished["config"].parent / "cascade-ledger.db", config.parent / "cascade-ledger.db")
    ledger = Ledger(ledger_url("", config.parent))
    with ledger.engine.begin() as conn:          # the same batch, without the pairs written above
        conn.exec_driver_sql("DELETE FROM shadow_pairs")
    ledger.close()
    out = tmp_path / "pipeline.html"
    made = run_cli(["cascade", "report", "--pipeline", "ticket-triage", "--since", "1d", "--out", str(out),
                    "--config", str(config)], finished["env"])
    assert made.returncode == 0, made.stderr.decode()
    page = open_page(out)
    assert page["errors"] == [] and "shadow" not in page["charts"]
    assert "no shadow pairs in this period" in page["text"]
    assert page["figures"]["batches"][0] == "1" and page["figures"]["jobs"][0] == "200"
    assert "rep-1" in page["text"] and page["bands"] == 0
    assert "no baseline for cheap: set [alerts] baselines, run cascade calibrate, or keep earlier batches" in page["text"]


def test_unknown_batches_and_empty_pipelines_are_clear_errors(finished):
    config, env, out = str(finished["config"]), finished["env"], str(finished["tmp"] / "x.html")
    ghost = run_cli(["cascade", "report", "ghost-1", "--out", out, "--config", config], env)
    assert ghost.returncode == 1 and ghost.stderr.decode().strip() == "Error: no batch 'ghost-1' in the ledger"
    empty = run_cli(["cascade", "report", "--pipeline", "nightly", "--out", out, "--config", config], env)
    assert empty.returncode == 1
    assert empty.stderr.decode().startswith("Error: pipeline 'nightly' has no batches in the ledger since ")
    both = run_cli(["cascade", "report", "rep-1", "--pipeline", "ticket-triage", "--out", out, "--config", config],
                   env)
    assert both.returncode == 2 and "give a BATCH or --pipeline P (one of them)" in both.stderr.decode()
    since = run_cli(["cascade", "report", "rep-1", "--since", "1d", "--out", out, "--config", config], env)
    assert since.returncode == 2
    assert "--since goes with --pipeline; a batch's report covers the whole batch" in since.stderr.decode()
    assert not Path(out).exists()
