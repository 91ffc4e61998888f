"""How fast the built-in alerts see the cheap model change, and whether they stay quiet when it does not.

Two long streams of demo tickets run through the embedded engine (`cascade-submit`, no Redis: the figures do
not depend on Celery) against the simulator, every latency 0. Each ticket's subject carries its index
("Ticket #123: ..."), and the scenario's [[drift]] entry changes the cheap model's outcome mix from a known
index on, so the change point is exact whatever order the calls arrive in:

  (a) escalation: hedges and malformed answers rise so the cheap tier's escalation rate moves +10 points;
  (b) quality: confidently wrong answers rise (they pass every verifier), escalation stays where it was;
      only shadow agreement at a 2% shadow rate can see it.

The result records and shadow pairs are then fed, in job order (a job's shadow pair right after its record),
to `cascade.ops.monitor.Monitor(settings)`: `observe_records([record])` per record, `observe_shadow([pair])`
per pair. A fired alert before a change (or of the wrong kind after it) is a false alarm.

    python -m benchmarks.drift [--stable 20000] [--after 3000] [--quality-stable 8000] [--quality-after 5000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import REPO, emit, log
from cascade.ops.monitor import Monitor

CHEAP = "gpt-4o-mini"
#: (a) hedges and malformed answers up 5 points each: escalation 14% -> 24%
ESCALATION_MIX = "{ correct = 0.68, wrong = 0.08, malformed = 0.10, hedge = 0.10, truncated = 0.04 }"
#: (b) confidently wrong answers up 22 points; what the verifiers catch (14%) is unchanged
QUALITY_MIX = "{ correct = 0.56, wrong = 0.30, malformed = 0.05, hedge = 0.05, truncated = 0.04 }"
#: the scenario's escalation rates (what `cascade calibrate` or earlier batches would give as baselines)
BASELINES = {"ticket-triage.cheap": 0.14, "ticket-triage.mid": 0.04}
#: shadow agreement the scenario gives (cheap right 78 of 86 accepted, frontier right 99%): an earlier batch's figure
AGREEMENT_BASELINE = 0.90


def scenario_text(drift_from: int, mix: str) -> str:
    """The demo scenario with no latency, no injected errors or limits, and the cheap model drifting."""
    text = (REPO / "examples" / "scenario.toml").read_text()
    text = re.sub(r"latency_ms = \[\d+, \d+\]", "latency_ms = [0, 0]", text)
    text = re.sub(r'error_rate = \{ "429" = 0\.01, "500" = 0\.01 \}', 'error_rate = { "429" = 0.0, "500" = 0.0 }', text)
    text = re.sub(r"^(rpm|tpm) = \d+\n", "", text, flags=re.MULTILINE)
    return text + (f'\n[[drift]]\nmodel = "{CHEAP}"\nindex = \'Ticket #(\\d+):\'\nfrom = {drift_from}\n'
                   f"outcome = {mix}\n")


def write_config(root: Path, shadow_rate: float, window: int) -> Path:
    """A copy of config/ with shadow sampling on and the scenario's baselines."""
    target = root / "config"
    shutil.copytree(REPO / "config", target, ignore=shutil.ignore_patterns("cascade-ledger.db*", "__pycache__"))
    path = target / "cascade.toml"
    text = path.read_text().replace("rate = 0.0 ", f"rate = {shadow_rate} ")
    text = text.replace("window_attempts = 2000 ", f"window_attempts = {window} ")
    baselines = ", ".join(f'"{k}" = {v}' for k, v in BASELINES.items())
    text = text.replace("[alerts]\n", f"[alerts]\nbaselines = {{ {baselines} }}\n"
                                    f"agreement_baseline = {AGREEMENT_BASELINE}\n")
    path.write_text(text)
    return path


def write_jobs(path: Path, n: int) -> None:
    """n demo tickets whose subject carries the job's index."""
    from cascade.examples.make_tickets import tickets

    with open(path, "wb") as out:
        for i, row in enumerate(tickets(n, seed=11)):
            row["subject"] = f"Ticket #{i}: {row['subject']}"
            row["id"] = f"J{i:06d}"
            out.write(orjson.dumps(row) + b"\n")


def run_stream(root: Path, name: str, n: int, drift_from: int, mix: str, shadow_rate: float, window: int
               ) -> tuple[Any, list[dict], dict[str, dict], dict, float]:
    """One embedded batch through the simulator: (settings, records by job order, pairs by job id, summary, s)."""
    import os
    import subprocess

    from cascade.simulator import SimServer, parse_scenario
    from cascade.worker.config import load_settings

    folder = root / name
    folder.mkdir()
    config = write_config(folder, shadow_rate, window)
    jobs, out = folder / "jobs.jsonl", folder / "results.jsonl"
    write_jobs(jobs, n)
    scenario = parse_scenario(scenario_text(drift_from, mix), str(REPO / "examples" / "scenario.toml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    with SimServer(scenario) as sim:
        env |= {"CASCADE_PROVIDER_BASE_URL": sim.url, "CASCADE_PROVIDER_API_KEY": "sim-key"}
        log(f"{name}: {n:,} jobs, the cheap model changes at job {drift_from:,}")
        started = time.monotonic()
        done = subprocess.run([str(Path(sys.executable).parent / "cascade-submit"), str(jobs), "-p", "ticket-triage",
                               "--batch-id", f"drift-{name}", "--out", str(out), "--config", str(config),
                               "--no-progress", "--json"], env=env, capture_output=True, check=False)
        seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"benchmark: cascade-submit failed:\n{done.stderr.decode()[-3000:]}")
    summary = orjson.loads(done.stdout)
    records = sorted((orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()),
                     key=lambda r: r["id"])
    db = sqlite3.connect(config.parent / "cascade-ledger.db")
    db.row_factory = sqlite3.Row
    pairs = {row["job_id"]: dict(row) for row in db.execute("select * from shadow_pairs")}
    db.close()
    for pair in pairs.values():
        pair["attempt"] = orjson.loads(pair["attempt"]) if pair["attempt"] else None
    log(f"{name}: {len(records):,} records, {len(pairs):,} shadow pairs in {seconds:.0f} s")
    return load_settings(config, environ={}), records, pairs, summary, seconds


def detect(settings: Any, records: list[dict], pairs: dict[str, dict], change: int, kind: str
           ) -> dict[str, Any]:
    """Feed the stream in job order; the first `kind` alert at or after `change`, and the false alarms."""
    monitor = Monitor(settings, sinks=(), ledger=None)
    detected, false_alarms, fired = None, [], []
    for index, record in enumerate(records):
        alerts = list(monitor.observe_records([record]))
        if record["id"] in pairs:
            alerts += monitor.observe_shadow([pairs[record["id"]]])
        for alert in alerts:
            if alert.state != "fired":
                continue
            fired.append((index, alert.kind, alert.tier, alert.message))
            if index >= change and alert.kind == kind and detected is None:
                detected = index
            elif index < change or alert.kind != kind:
                false_alarms.append((index, alert.kind, alert.tier, alert.message))
    for index, kind_, tier, message in fired:
        log(f"  alert at job {index:,}: {kind_} {tier}: {message}")
    seconds = None
    if detected is not None:
        seconds = round(records[detected]["finished_at"] - records[change]["finished_at"], 2)
    return {"jobs": None if detected is None else detected - change, "seconds": seconds,
            "false_alarms": false_alarms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stable", type=int, default=20_000, help="jobs before change (a)")
    parser.add_argument("--after", type=int, default=3_000, help="jobs after change (a)")
    parser.add_argument("--quality-stable", type=int, default=8_000, help="jobs before change (b)")
    parser.add_argument("--quality-after", type=int, default=5_000, help="jobs after change (b)")
    parser.add_argument("--shadow-rate", type=float, default=0.02)
    parser.add_argument("--window", type=int, default=1000, help="[alerts] window_attempts for the run")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cascade-drift-"))
    try:
        settings, records, pairs, summary_a, seconds_a = run_stream(
            root, "escalation", args.stable + args.after, args.stable, ESCALATION_MIX, args.shadow_rate, args.window)
        a = detect(settings, records, pairs, args.stable, "escalation_drift")
        settings, records, pairs, summary_b, seconds_b = run_stream(
            root, "quality", args.quality_stable + args.quality_after, args.quality_stable, QUALITY_MIX,
            args.shadow_rate, args.window)
        b = detect(settings, records, pairs, args.quality_stable, "shadow_agreement")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    batch_cost = summary_a["cost_usd"] + summary_b["cost_usd"]
    shadow_cost = summary_a["shadow"]["cost_usd"] + summary_b["shadow"]["cost_usd"]
    for where, alarm in [("a", x) for x in a["false_alarms"]] + [("b", x) for x in b["false_alarms"]]:
        log(f"  FALSE ALARM in stream {where}: job {alarm[0]:,} {alarm[1]} {alarm[2]}: {alarm[3]}")
    emit({
        "escalation_detect_jobs": a["jobs"],
        "escalation_detect_seconds": a["seconds"],
        "quality_detect_jobs": b["jobs"],
        "quality_detect_seconds": b["seconds"],
        "false_alarms": len(a["false_alarms"]) + len(b["false_alarms"]),
        "stable_jobs": args.stable + args.quality_stable,
        "shadow_cost_share": round(shadow_cost / batch_cost, 4) if batch_cost else None,
        "shadow_rate": args.shadow_rate,
        "shadow_pairs": summary_a["shadow"]["jobs"] + summary_b["shadow"]["jobs"],
        "window_attempts": args.window,
        "jobs": args.stable + args.after + args.quality_stable + args.quality_after,
        "run_seconds": round(seconds_a + seconds_b, 1),
    })


if __name__ == "__main__":
    main()
