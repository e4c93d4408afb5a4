"""Fixtures shared by every test layer: database URLs for SQLite and PostgreSQL.

PostgreSQL tests use a fresh database per test on the local server
(ORDERFLOW_TEST_PG, default postgresql://postgres@127.0.0.1:5432). Without a server
they are skipped, except under CI=true, where a missing server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import grpc.aio
import pytest

PG_ADMIN_DSN = os.environ.get("ORDERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    # grpc.aio shares one completion queue and poller thread among its servers and
    # channels, and shuts them down when the last one is garbage collected. Tests create
    # and drop hundreds, each on its own event loop; a shutdown that ran inside a garbage
    # collection once waited for the poller thread forever and hung the run. Holding a
    # reference from here keeps one poller for the whole session, as a serving process has.
    grpc.aio.init_grpc_aio()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The container tests first, then the chaos soak, then the rest in file order.

    `make test` hands whole modules to two pytest-xdist workers in this order, one module
    each to begin with and the next to whichever is nearly done: these two take minutes
    each, and so start side by side, one per worker, instead of one after the other in the
    same worker while the other does everything else (within a module the order stays).
    """
    first = ("containers", "chaos")
    rank: dict[Path, int] = {}  # a file moves whole: its module-scoped fixtures start once
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        mine = next((i for i, name in enumerate(first) if name in marks), len(first))
        rank[item.path] = min(rank.get(item.path, mine), mine)
    items.sort(key=lambda item: rank[item.path])  # stable: the order within a rank stays


# Figures a test reports for whoever reads the run (the chaos soak's seed and counts): the
# test records them with record_property("summary", text) and they are printed after the
# results. A report reaches this process from pytest-xdist's workers too, whose own output
# is never shown.
_summaries: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        found = [str(value) for name, value in report.user_properties if name == "summary"]
        _summaries.extend((report.nodeid, text) for text in found)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for nodeid, text in _summaries:
        terminalreporter.write_sep("-", nodeid)
        terminalreporter.write_line(text.strip("\n"))


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


class PgDatabases:
    """Creates throwaway PostgreSQL databases and drops them after the test."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def create(self, label: str = "db") -> str:
        name = f"of_test_{label}_{uuid.uuid4().hex[:10]}"
        conn = await _pg_admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.names.append(name)
        return _pg_url(name)

    async def drop_all(self) -> None:
        if not self.names:
            return
        conn = await _pg_admin()
        try:
            for name in self.names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pg_databases() -> AsyncIterator[PgDatabases]:
    dbs = PgDatabases()
    yield dbs
    await dbs.drop_all()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> Callable[[str], str]:
    """sqlite_url("inventory") -> a SQLite URL for a fresh file in the test's tmp dir."""

    def make(label: str = "db") -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/{label}.db"

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Parametrises a test over both storage backends."""
    yield request.param


@pytest.fixture
async def make_db_url(
    backend: str, sqlite_url: Callable[[str], str], pg_databases: PgDatabases
) -> Callable[[str], object]:
    """await make_db_url("inventory") -> a fresh database URL on the test's backend."""

    async def make(label: str = "db") -> str:
        if backend == "sqlite":
            return sqlite_url(label)
        return await pg_databases.create(label)

    return make


def pg_databases_sync(labels: list[str]) -> tuple[dict[str, str], Callable[[], None]]:
    """Create one fresh PostgreSQL database per label (for module-scoped systems)."""
    import asyncio

    dbs = PgDatabases()

    async def create() -> dict[str, str]:
        return {label: await dbs.create(label) for label in labels}

    urls = asyncio.run(create())
    return urls, lambda: asyncio.run(dbs.drop_all())
