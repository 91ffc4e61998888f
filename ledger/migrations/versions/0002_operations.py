"""Operations: alerts, shadow pairs, scheduled runs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("tier", sa.String(200), nullable=False),
        sa.Column("baseline", sa.Float),
        sa.Column("value", sa.Float),
        sa.Column("window", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("check", sa.Text, nullable=False),
        sa.Column("details", sa.JSON),
    )
    op.create_table(
        "shadow_pairs",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("job_id", sa.String(256), primary_key=True),
        sa.Column("pipeline", sa.String(200), nullable=False, index=True),
        sa.Column("tier", sa.String(200), nullable=False),
        sa.Column("shadow_tier", sa.String(200), nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("shadow_output", sa.Text),
        sa.Column("agree", sa.Integer, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.JSON),
        sa.Column("at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "schedule_runs",
        sa.Column("schedule", sa.String(200), primary_key=True),
        sa.Column("run_date", sa.String(10), primary_key=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("schedule_runs")
    op.drop_table("shadow_pairs")
    op.drop_table("alerts")
