"""Alembic environment of the orders service (run by orderflow.platform.migrations)."""

from alembic import context

from orderflow.orders.storage import metadata
from orderflow.platform.migrations import run_env

run_env(context, metadata)
