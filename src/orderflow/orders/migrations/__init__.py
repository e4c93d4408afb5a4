"""The orders service's Alembic history."""

# The newest revision: a server reports SERVING only once its database is at it.
# tests/integration/test_schema_readiness.py checks it against the history itself.
HEAD = "0003"
