"""Orders with their lines (JSON), idempotency keys and saga state.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("subtotal", sa.BigInteger, nullable=False),
        sa.Column("discount", sa.BigInteger, nullable=False),
        sa.Column("redeem_points", sa.BigInteger, nullable=False),
        sa.Column("points_redeemed", sa.BigInteger, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("points_earned", sa.BigInteger, nullable=False),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.String(500), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_fingerprint", sa.String(128), nullable=False),
        sa.Column("settled", sa.Boolean, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=False),
        sa.Column("lease_expires_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.UniqueConstraint("customer_id", "idempotency_key", name="uq_orders_customer_key"),
        sa.CheckConstraint("total >= 0", name="ck_orders_total"),
    )
    op.create_index("ix_orders_created", "orders", ["created_us", "id"])
    op.create_index("ix_orders_customer_created", "orders", ["customer_id", "created_us", "id"])
    op.create_index("ix_orders_unsettled", "orders", ["settled", "lease_expires_us"])


def downgrade() -> None:
    op.drop_index("ix_orders_unsettled", table_name="orders")
    op.drop_index("ix_orders_customer_created", table_name="orders")
    op.drop_index("ix_orders_created", table_name="orders")
    op.drop_table("orders")
