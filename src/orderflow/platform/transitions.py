"""Per-order records that move through a state machine: the table of one move, and the one
way every service applies it (try the usual case in one statement, else lock and decide).

A domain describes each move as a `Transition` (pure data: no I/O); a service runs it with
a `TransitionRunner` over its repository. Inventory's reservations and loyalty's
applications both work this way. Framework-free: the runner is handed the service's
`transact`, so it knows no database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Generic, Protocol, TypeVar

from orderflow.errors import ConcurrentChangeError, InvalidStateError, NotFoundError

S = TypeVar("S", bound=Enum)  # a record's state
E = TypeVar("E")  # what a move changes besides the state (the domain's description of it)
R = TypeVar("R", bound="Stateful")  # the record
T = TypeVar("T")
S_contra = TypeVar("S_contra", bound=Enum, contravariant=True)
U = TypeVar("U")  # the service's unit of work
U_co = TypeVar("U_co", covariant=True)


class Outcome(Enum):
    """What a transition does to a record in a given state (`Transition.outcome`)."""

    MOVE = auto()  # allowed: move to the target, with the effect of the source state
    DONE = auto()  # already done: change nothing, return the record as it is
    TOMBSTONE = auto()  # no record: leave one in the target state (a late first step is refused)
    MISSING = auto()  # no record, and none may be invented: NotFoundError
    INVALID = auto()  # any other state: InvalidStateError


@dataclass(frozen=True)
class Transition(Generic[S, E]):
    """One move of a state machine: to target from each state in moves (with its effect),
    a no-op from a state in done, a tombstone (or not found) when there is no record.

    `fast_from` is the usual source: the runner first tries source -> target in one
    conditional statement, which restates `outcome(fast_from) is MOVE` in SQL.
    """

    target: S
    moves: Mapping[S, E]
    done: frozenset[S]
    tombstone: bool
    fast_from: S | None = None

    def __post_init__(self) -> None:
        if self.fast_from is not None and self.fast_from not in self.moves:
            raise ValueError(f"the fast path must start from a state in moves: {self.fast_from}")
        if self.done & set(self.moves):
            raise ValueError("a state cannot be both done and a source of the move")

    def outcome(self, state: S | None) -> Outcome:
        """The domain rule: what this transition does to a record in state (None: no record)."""
        if state is None:
            return Outcome.TOMBSTONE if self.tombstone else Outcome.MISSING
        if state in self.done:
            return Outcome.DONE
        if state in self.moves:
            return Outcome.MOVE
        return Outcome.INVALID


class Stateful(Protocol):
    """A record with a state (a reservation, a loyalty application)."""

    @property
    def state(self) -> Any: ...


class StateRecords(Protocol[S_contra, R]):
    """A repository of per-order records with a state, as the runner and services use it
    inside one unit of work."""

    async def get(self, order_id: str, *, lock: bool = False) -> R | None: ...

    async def add(self, record: R, now: int) -> None:
        """Insert record; an existing one for its order fails the transaction (it is retried)."""
        ...

    async def add_if_absent(self, record: R, now: int) -> bool:
        """Insert record; False (nothing inserted) if its order already has one."""
        ...

    async def move(self, order_id: str, source: S_contra, target: S_contra, now: int) -> R | None:
        """source -> target in one conditional statement: the moved record, or None (nothing
        changed) if it was not in source."""
        ...


class Transact(Protocol[U_co]):
    """Run work in one unit of work, committed unless it raised (a service's `transact`)."""

    def __call__(self, work: Callable[[U_co], Awaitable[T]], /) -> Awaitable[T]: ...


@dataclass(frozen=True, kw_only=True)
class TransitionRunner(Generic[U, S, E, R]):
    """Applies a service's transitions to its records, the same way for every service.

    records(uow) is the repository; effect(uow, moved, what, now) makes the rest of a move
    (`what` is the table's entry for the state it left: stock counters, ledger entries);
    tombstone(order_id, state) is the record left when there was none; noun names the
    record in error messages.
    """

    transact: Transact[U]
    records: Callable[[U], StateRecords[S, R]]
    effect: Callable[[U, R, E, int], Awaitable[None]]
    tombstone: Callable[[str, S], R]
    clock: Callable[[], int]
    noun: str

    async def apply(self, transition: Transition[S, E], order_id: str) -> R:
        """Move the order's record by transition; its record afterwards."""
        source = transition.fast_from
        if source is not None:
            # The usual case in one statement: source -> target, then its effect.
            async def fast(uow: U) -> R | None:
                now = self.clock()
                moved = await self.records(uow).move(order_id, source, transition.target, now)
                if moved is not None:
                    await self.effect(uow, moved, transition.moves[source], now)
                return moved

            moved = await self.transact(fast)
            if moved is not None:
                return moved

        async def locked(uow: U) -> R:
            return await self._decide(uow, transition, order_id)

        return await self.transact(locked)

    async def _decide(self, uow: U, transition: Transition[S, E], order_id: str) -> R:
        """Lock the record and apply the domain's rule to the state it is in."""
        now = self.clock()
        records = self.records(uow)
        record = await records.get(order_id, lock=True)
        state: S | None = None if record is None else record.state
        outcome = transition.outcome(state)
        if outcome is Outcome.DONE and record is not None:  # (`and`: for the type checker)
            return record
        if outcome is Outcome.TOMBSTONE:
            tombstone = self.tombstone(order_id, transition.target)
            await records.add(tombstone, now)
            return tombstone
        if outcome is Outcome.MISSING:
            raise NotFoundError(f"order {order_id} has no {self.noun}", order_id=order_id)
        if outcome is Outcome.INVALID or state is None:
            raise InvalidStateError(
                f"the {self.noun} of order {order_id} is {_name(state)}; "
                f"it cannot become {_name(transition.target)}",
                order_id=order_id,
                state=_name(state),
            )
        moved = await records.move(order_id, state, transition.target, now)
        if moved is None:  # the row is locked: only a writer outside orderflow gets here
            raise ConcurrentChangeError(
                f"the {self.noun} of order {order_id} changed meanwhile", order_id=order_id
            )
        await self.effect(uow, moved, transition.moves[state], now)
        return moved


def _name(state: Enum | None) -> str:
    return "absent" if state is None else str(state.value)
