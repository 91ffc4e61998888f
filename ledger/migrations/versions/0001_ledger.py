"""The first ledger: batches, results, per-tier figures.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("pipeline", sa.String(200), nullable=False, index=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("submitted_at", sa.Float, nullable=False, index=True),
        sa.Column("finished_at", sa.Float),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("counterfactual_nanos", sa.BigInteger, nullable=False),
        sa.Column("budget_nanos", sa.BigInteger, nullable=False),
        sa.Column("counters", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "results",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("job_id", sa.String(256), nullable=False),
        sa.Column("retry_round", sa.Integer, nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("tier", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("counterfactual_nanos", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("tags", sa.JSON),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=False),
        sa.UniqueConstraint("batch_id", "job_id", name="results_batch_job"),
    )
    op.create_index("results_batch_seq", "results", ["batch_id", "seq"])
    op.create_index("results_finished", "results", ["finished_at"])
    op.create_table(
        "tier_figures",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(200), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("escalated", sa.Integer, nullable=False),
        sa.Column("final_jobs", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("latency_p50_ms", sa.Float),
        sa.Column("latency_p95_ms", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("tier_figures")
    op.drop_index("results_finished", "results")
    op.drop_index("results_batch_seq", "results")
    op.drop_table("results")
    op.drop_table("batches")
