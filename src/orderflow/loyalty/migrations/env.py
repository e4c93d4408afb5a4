"""Alembic environment of the loyalty service (run by orderflow.platform.migrations)."""

from alembic import context

from orderflow.loyalty.storage import metadata
from orderflow.platform.migrations import run_env

run_env(context, metadata)
