"""The ledger's tables (SQLAlchemy Core): one definition for SQLite and PostgreSQL; migrations/ versions them."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

#: one row per batch, kept up to date from its Redis record by the ledger writer
batches = Table(
    "batches", metadata,
    Column("id", String(128), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("source", Text, nullable=False, default=""),           # the input file name, as the producer gave it
    Column("mode", String(20), nullable=False, default=""),
    Column("state", String(20), nullable=False),                  # submitting | submitted | cancelled | finished
    Column("submitted_at", Float, nullable=False, index=True),    # epoch seconds
    Column("finished_at", Float),
    Column("total", Integer, nullable=False, default=0),
    Column("done", Integer, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("counterfactual_nanos", BigInteger, nullable=False, default=0),   # every job on the last tier alone
    Column("budget_nanos", BigInteger, nullable=False, default=0),
    Column("counters", JSON, nullable=False, default=dict),        # every counter of the Redis record
    Column("updated_at", Float, nullable=False),
)

#: one row per job of a batch: its result record, and the columns queries filter and group on
results = Table(
    "results", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # arrival order: what a follower reads after
    Column("batch_id", String(128), nullable=False),
    Column("job_id", String(256), nullable=False),
    Column("retry_round", Integer, nullable=False, default=0),
    Column("status", String(30), nullable=False),
    Column("tier", String(200), nullable=False),
    Column("model", String(200)),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("counterfactual_nanos", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False),
    Column("reason", Text),
    Column("tags", JSON),
    Column("record", Text, nullable=False),                        # the result record as the engine wrote it
    Column("finished_at", Float, nullable=False),
    UniqueConstraint("batch_id", "job_id", name="results_batch_job"),
    Index("results_batch_seq", "batch_id", "seq"),
    Index("results_finished", "finished_at"),
)

#: per batch and tier: the figures a finished batch ends with
tier_figures = Table(
    "tier_figures", metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("tier", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("escalated", Integer, nullable=False),
    Column("final_jobs", Integer, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("latency_p50_ms", Float),
    Column("latency_p95_ms", Float),
)

#: every alert fired or cleared (SLO drift, cost creep, shadow agreement, a scheduled run that failed)
alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),               # epoch seconds
    Column("kind", String(40), nullable=False),                    # escalation_drift | cost_creep | shadow_agreement
    #                                                                 | schedule_failed | audit_drift
    Column("state", String(10), nullable=False),                   # fired | cleared
    Column("pipeline", String(200), nullable=False, default=""),
    Column("tier", String(200), nullable=False, default=""),
    Column("baseline", Float),
    Column("value", Float),
    Column("window", Text, nullable=False, default=""),            # e.g. "last 2000 attempts"
    Column("message", Text, nullable=False),
    Column("check", Text, nullable=False, default=""),             # one line: what to check
    Column("details", JSON),
)

#: an answer accepted below the last tier, re-run on the last tier: labelled data for recalibration
shadow_pairs = Table(
    "shadow_pairs", metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("job_id", String(256), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("tier", String(200), nullable=False),                   # the tier that accepted
    Column("shadow_tier", String(200), nullable=False),
    Column("output", Text),
    Column("shadow_output", Text),
    Column("agree", Integer, nullable=False),                      # 1 | 0
    Column("cost_nanos", BigInteger, nullable=False, default=0),   # the shadow call: reported apart from the batch
    Column("attempt", JSON),                                       # the accepting attempt (confidence, samples...)
    Column("at", Float, nullable=False, index=True),
)

#: one row per schedule and run date: what a retried tick or a second beat finds and does not submit again
schedule_runs = Table(
    "schedule_runs", metadata,
    Column("schedule", String(200), primary_key=True),
    Column("run_date", String(10), primary_key=True),              # YYYY-MM-DD in the schedule's time zone
    Column("batch_id", String(128), nullable=False),
    Column("state", String(20), nullable=False),                   # submitting | submitted | failed
    Column("reason", Text, nullable=False, default=""),
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
