"""Alembic environment of the inventory service (run by orderflow.platform.migrations)."""

from alembic import context

from orderflow.inventory.storage import metadata
from orderflow.platform.migrations import run_env

run_env(context, metadata)
