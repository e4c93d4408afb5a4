"""What the events machinery needs of a service's database: a connection in an open
transaction, and a way to run one.

A service's unit of work (`orderflow.platform.db.UnitOfWork` or a subclass with its
repositories) already is a `Transaction`: it has `.connection` and `commit()`, and
`async with` rolls it back unless committed. So the relay, the consumers and the outbox
share the service's transactions, locks and retries instead of bringing their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import CursorResult
from sqlalchemy.sql import Executable

from orderflow.platform.db import retry_transaction

T = TypeVar("T")
TxT = TypeVar("TxT", bound="Transaction")


class SqlConnection(Protocol):
    """A connection inside an open transaction (the unit of work's)."""

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        """Run one statement in the transaction."""
        ...


class Transaction(Protocol):
    """An open transaction: its connection, and commit (rolled back when not committed)."""

    @property
    def connection(self) -> SqlConnection: ...

    async def commit(self) -> None: ...


TransactionFactory = Callable[[], AbstractAsyncContextManager[TxT]]


async def in_transaction(
    begin: Callable[[], AbstractAsyncContextManager[TxT]],
    work: Callable[[TxT], Awaitable[T]],
) -> T:
    """Run work(tx) in one transaction, committed unless it raised; run again when the
    database says a retry can succeed (lock timeouts, serialisation failures, a raced key)."""

    async def attempt() -> T:
        async with begin() as tx:
            result = await work(tx)
            await tx.commit()
            return result

    return await retry_transaction(attempt)
