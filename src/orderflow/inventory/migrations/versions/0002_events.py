"""Events: the outbox, relay lease, inbox and parked tables, and the low-stock mark of an
item (item.low_stock once per crossing).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orderflow.events.tables import create_event_tables, drop_event_tables

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "items", sa.Column("low_stock", sa.Boolean, nullable=False, server_default=sa.false())
    )
    create_event_tables(op)


def downgrade() -> None:
    drop_event_tables(op)
    with op.batch_alter_table("items") as batch:
        batch.drop_column("low_stock")
