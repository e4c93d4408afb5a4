"""The saga's step log: order_steps, one row per step of an order's saga (ADR 26).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_steps",
        # INTEGER PRIMARY KEY on SQLite (the rowid, counted up); BIGSERIAL on PostgreSQL.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("driver", sa.String(16), nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.UniqueConstraint("order_id", "step_id", name="uq_order_steps_step"),
    )


def downgrade() -> None:
    op.drop_table("order_steps")
