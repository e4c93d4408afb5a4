"""`orderflow migrate` waits for a database that is not up yet, then says why it gave up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from orderflow.inventory.migrations import HEAD as INVENTORY_HEAD
from orderflow.loyalty.migrations import HEAD as LOYALTY_HEAD
from orderflow.orders.migrations import HEAD as ORDERS_HEAD
from tests.system import free_port

HEADS = {"orders": ORDERS_HEAD, "inventory": INVENTORY_HEAD, "loyalty": LOYALTY_HEAD}


def migrate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "orderflow", "migrate", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unreachable_database_is_retried_then_reported() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    done = migrate("orders", "--wait", "2", ORDERFLOW_ORDERS_DATABASE_URL=url)
    assert done.returncode == 1
    assert "retrying" in done.stderr
    assert "orders: database not reachable after 2 s" in done.stderr
    assert 1.0 < time.monotonic() - started < 30


def test_migrate_brings_each_database_to_its_head(tmp_path: Path) -> None:
    env = {
        f"ORDERFLOW_{name.upper()}_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
        for name in ("orders", "inventory", "loyalty")
    }
    done = migrate(**env)
    assert done.returncode == 0, done.stderr
    for name, head in HEADS.items():
        assert f"{name}: at revision {head}" in done.stdout
    again = migrate("inventory", **env)  # idempotent
    assert again.returncode == 0 and f"inventory: at revision {INVENTORY_HEAD}" in again.stdout
