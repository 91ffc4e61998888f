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
