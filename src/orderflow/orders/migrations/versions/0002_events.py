"""Events: the outbox, relay lease, inbox and parked tables, and the follow-up flags of an
order (stock.committed, loyalty.committed reported).

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
    for name in ("stock_committed", "loyalty_committed"):
        op.add_column(
            "orders", sa.Column(name, sa.Boolean, nullable=False, server_default=sa.false())
        )
    create_event_tables(op)


def downgrade() -> None:
    drop_event_tables(op)
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("loyalty_committed")
        batch.drop_column("stock_committed")
