"""orderflow.platform.async_engine: SQLAlchemy's asyncio engine without its ORM, and the
whole `sqlalchemy.ext.asyncio` package as soon as anything asks it for more."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_engine_loads_without_the_orm_and_the_package_is_whole_when_asked() -> None:
    out = run(
        "import sys\n"
        "from orderflow.platform.async_engine import AsyncEngine, create_async_engine\n"
        "print('sqlalchemy.orm' in sys.modules)\n"
        "from sqlalchemy.ext.asyncio import AsyncSession\n"
        "from sqlalchemy.ext import asyncio as package\n"
        "print('sqlalchemy.orm' in sys.modules, AsyncSession.__name__)\n"
        "print(package.create_async_engine is create_async_engine,"
        " package.AsyncEngine is AsyncEngine)\n"
    )
    assert out.splitlines() == ["False", "True AsyncSession", "True True"]


def test_a_package_loaded_before_is_used_as_it_is() -> None:
    out = run(
        "import sqlalchemy.ext.asyncio as package\n"
        "from orderflow.platform.async_engine import create_async_engine\n"
        "print(create_async_engine is package.create_async_engine)\n"
    )
    assert out == "True"
