"""Idempotency keys of the admin use cases: a repeat gets the first result, with no second
effect (ADR 0023).

A keyed request first *claims* its key in a short transaction (a row IN_PROGRESS with a
lease and a claim token); its effect then runs in one transaction that also *completes* the
claim (DONE, with the result), and only if the claim is still the one it took. So:

- the same key and the same request after it completed: the stored result, nothing done;
- the same key with another request (another fingerprint): IdempotencyKeyReusedError;
- while another request holds a live claim: RequestInProgressError;
- a claim whose lease ran out, or one held by the same owner (a retry of the same request
  by the gateway, whose first attempt may have died after claiming): taken over with a new
  token, so the earlier attempt, if it still runs, can no longer complete (its effect
  rolls back).

A refusal by a business rule (not found, negative balance, ...) is stored as the result
too: the same key and request give the same answer. Failures that say nothing about the
request (a database or network error) leave the claim to its lease.

Framework-free: a service hands in its `transact` and unit of work; storage is the
`IdempotencyRecords` protocol (SQL: orderflow.platform.idempotency_store).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from orderflow.errors import (
    ERRORS_BY_CODE,
    AccessError,
    ConflictError,
    DependencyError,
    IdempotencyKeyReusedError,
    OrderflowError,
    RequestInProgressError,
)
from orderflow.validation import check_id

MAX_KEY = 255
MAX_CALLER = 128
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETENTION_SECONDS = 86_400 * 2

T = TypeVar("T")


@dataclass(frozen=True)
class KeyRecord:
    """One key: who claimed it, until when, and (once done) the result as JSON text."""

    scope: str
    key: str
    fingerprint: str
    owner: str
    token: str
    lease_until_us: int
    result: str | None  # None while IN_PROGRESS
    created_us: int

    @property
    def done(self) -> bool:
        return self.result is not None


class IdempotencyRecords(Protocol):
    async def get(self, scope: str, key: str, *, lock: bool = False) -> KeyRecord | None: ...

    async def add_if_absent(self, record: KeyRecord) -> bool:
        """Insert record; False (nothing inserted) if its (scope, key) is taken."""
        ...

    async def take_over(
        self, record: KeyRecord, owner: str, token: str, lease_until_us: int
    ) -> bool:
        """Give the IN_PROGRESS claim record (with its token) to owner with token; False if
        it changed meanwhile."""
        ...

    async def complete(self, scope: str, key: str, token: str, result: str) -> bool:
        """Store the result of the claim with token; False if the claim is no longer it."""
        ...

    async def purge(self, before_us: int, limit: int) -> int:
        """Delete up to limit keys created before before_us; how many were deleted."""
        ...


class HasIdempotency(Protocol):
    @property
    def idempotency(self) -> IdempotencyRecords: ...


U = TypeVar("U", bound=HasIdempotency)


@dataclass(frozen=True)
class Keyed:
    """An idempotency key with what it applies to: the scope (caller, operation, target),
    the request's fingerprint, and the claiming owner."""

    key: str
    scope: str
    fingerprint: str
    owner: str


def keyed(
    key: str, caller: str, owner: str, operation: str, target: str, **request: Any
) -> Keyed | None:
    """The key of a request, checked; None without one. The request's fields (target
    included) make its fingerprint."""
    if not key:
        return None
    key = check_id("idempotency_key", key, max_len=MAX_KEY)
    if caller:
        caller = check_id("idempotency_scope", caller, max_len=MAX_CALLER)
    if owner:
        owner = check_id("lease_owner", owner, max_len=MAX_CALLER)
    text = json.dumps([operation, target, request], sort_keys=True, separators=(",", ":"))
    return Keyed(
        key=key,
        scope=f"{operation} {target} {caller}",
        fingerprint=hashlib.sha256(text.encode()).hexdigest(),
        owner=owner or f"anonymous-{uuid.uuid4().hex}",
    )


class _Replay(Exception):
    """The claim step found the key done: its stored result."""

    def __init__(self, result: str) -> None:
        super().__init__("replay")
        self.result = result


class _LostClaim(Exception):
    """The claim was taken over before the effect could complete it: roll the effect back."""


def _stored_error(error: OrderflowError) -> bool:
    """A refusal that is the answer to the request itself (stored and replayed), not a
    failure of the moment (conflicts, dependencies, access)."""
    return not isinstance(error, ConflictError | DependencyError | AccessError) and (
        type(error) is not OrderflowError
    )


class IdempotentRunner(Generic[U]):
    """Runs keyed use cases of one service (see the module docstring)."""

    def __init__(
        self,
        transact: Callable[[Callable[[U], Awaitable[Any]]], Awaitable[Any]],
        clock: Callable[[], int],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.transact = transact
        self.now = clock
        self.lease_us = int(lease_seconds * 1_000_000)
        self.retention_us = int(retention_seconds * 1_000_000)

    async def run(
        self,
        request: Keyed | None,
        work: Callable[[U], Awaitable[T]],
        encode: Callable[[T], dict[str, Any]],
        decode: Callable[[dict[str, Any]], T],
    ) -> T:
        """work(uow) in one transaction, once per key: a repeat gets the first result."""
        if request is None:
            result: T = await self.transact(work)
            return result
        try:
            token = await self.transact(lambda uow: self._claim(uow, request))
        except _Replay as replay:
            return self._decoded(replay.result, decode)

        async def effect(uow: U) -> T:
            value = await work(uow)
            stored = json.dumps({"ok": encode(value)}, separators=(",", ":"))
            if not await uow.idempotency.complete(request.scope, request.key, token, stored):
                raise _LostClaim
            return value

        try:
            done: T = await self.transact(effect)
            return done
        except _LostClaim:
            pass
        except OrderflowError as error:
            if not _stored_error(error):
                raise
            stored = json.dumps(
                {"error": {"code": error.code, "message": error.message, "details": error.details}},
                separators=(",", ":"),
                default=str,
            )

            async def refuse(uow: U) -> bool:
                return await uow.idempotency.complete(request.scope, request.key, token, stored)

            if await self.transact(refuse):
                raise
        # Another attempt took the claim over: answer as it stands now.
        found = await self.transact(lambda uow: uow.idempotency.get(request.scope, request.key))
        if found is not None and found.result is not None:
            return self._decoded(found.result, decode)
        raise self._in_progress(request)

    async def _claim(self, uow: U, request: Keyed) -> str:
        now = self.now()
        token = uuid.uuid4().hex
        mine = KeyRecord(
            scope=request.scope,
            key=request.key,
            fingerprint=request.fingerprint,
            owner=request.owner,
            token=token,
            lease_until_us=now + self.lease_us,
            result=None,
            created_us=now,
        )
        if await uow.idempotency.add_if_absent(mine):
            return token
        found = await uow.idempotency.get(request.scope, request.key, lock=True)
        if found is None:  # purged between the two statements: claim it on the next attempt
            raise RequestInProgressError("the idempotency key changed; try again")
        if found.fingerprint != request.fingerprint:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used for another request",
                idempotency_key=request.key,
            )
        if found.result is not None:
            raise _Replay(found.result)
        if found.owner != request.owner and found.lease_until_us > now:
            raise self._in_progress(request)
        if not await uow.idempotency.take_over(found, request.owner, token, now + self.lease_us):
            raise self._in_progress(request)
        return token

    @staticmethod
    def _in_progress(request: Keyed) -> RequestInProgressError:
        return RequestInProgressError(
            "a request with this Idempotency-Key is still running", idempotency_key=request.key
        )

    @staticmethod
    def _decoded(result: str, decode: Callable[[dict[str, Any]], T]) -> T:
        stored = json.loads(result)
        if "ok" in stored:
            return decode(stored["ok"])
        error = stored["error"]
        cls = ERRORS_BY_CODE.get(error["code"], OrderflowError)
        raise cls(error["message"], **error.get("details", {}))

    async def purge(self, batch: int = 1000) -> int:
        """Forget keys older than the retention, a batch per transaction."""
        total = 0
        while True:
            cutoff = self.now() - self.retention_us

            async def sweep(uow: U, cutoff: int = cutoff) -> int:
                return await uow.idempotency.purge(cutoff, batch)

            deleted: int = await self.transact(sweep)
            total += deleted
            if deleted < batch:
                return total
