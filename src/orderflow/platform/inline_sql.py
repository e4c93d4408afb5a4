"""Statements of SQLite's inline units of work, run straight on the driver (ADR 8, issue 15).

SQLAlchemy Core spends 50-80 µs of CPU on a statement that SQLite itself runs in 5-15:
a cache key, the look-up of its compiled form, an execution context, a cursor result. A
`StatementPlan` does that work once per shape of statement (its cache key and the names
of the parameters it is given): the SQL, where each positional parameter comes from (a
parameter given, or a value the statement carries, such as a literal in its WHERE), the
bind and result processors of the types (JSON, Boolean), and the result's keys. Running
a plan is one sqlite3 call and a light result with the API repositories use (`first`,
`all`, `scalar_one_or_none`, `scalars`, `rowcount`, rows with attributes and `_mapping`),
and driver errors come out as SQLAlchemy's (IntegrityError, OperationalError), so
retries recognise them.

The statements and their compilation are SQLAlchemy's own, as are the processors: only
the dispatch is skipped. A statement a plan cannot run the same way (text, post-compile
or expanding parameters, Python-side column defaults, executemany with RETURNING) goes
through SQLAlchemy as before (`plan_for` answers None).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import TextClause

# Where a positional parameter's value comes from.
_GIVEN, _CARRIED, _CONSTANT = 0, 1, 2
# The most plans one database keeps (statement shapes are few; this only bounds a leak).
MAX_PLANS = 1000

Processor = Callable[[Any], Any] | None


class InlineResult(IteratorResult[Any]):
    """A statement's rows (if it returns any) and the rows it changed."""

    def __init__(
        self, metadata: SimpleResultMetaData, rows: list[Any], rowcount: int, returns_rows: bool
    ) -> None:
        super().__init__(metadata, iter(rows))
        self.rowcount = rowcount
        self.returns_rows = returns_rows


_NO_ROWS = SimpleResultMetaData([])


class StatementPlan:
    """One shape of statement, compiled for SQLite: run it with `run`."""

    __slots__ = ("metadata", "returns_rows", "sources", "sql", "textual")

    def __init__(
        self,
        sql: str,
        sources: Sequence[tuple[int, Any, Processor]],
        metadata: SimpleResultMetaData | None,
        *,
        textual: bool = False,
    ) -> None:
        self.sql = sql
        self.sources = tuple(sources)
        self.returns_rows = metadata is not None
        self.metadata = metadata or _NO_ROWS
        # Plain SQL text: whether it returns rows, and their keys, only the driver knows
        # (as SQLAlchemy reads them from the cursor, without type processing).
        self.textual = textual

    def values(self, given: Mapping[str, Any], carried: Sequence[Any]) -> list[Any]:
        """The positional parameters for one set of given parameters."""
        out = []
        for kind, ref, processor in self.sources:
            if kind == _GIVEN:
                value = given[ref]
            elif kind == _CARRIED:
                value = carried[ref].value
            else:
                value = ref
            out.append(value if processor is None else processor(value))
        return out

    def run(
        self,
        connection: sqlite3.Connection,
        parameters: Sequence[Mapping[str, Any]],
        carried: Sequence[Any],
    ) -> InlineResult:
        """Run on the driver's connection, once per parameter set (executemany if more)."""
        try:
            if len(parameters) == 1:
                values: Any = self.values(parameters[0], carried)
                cursor = connection.execute(self.sql, values)
            else:
                values = [self.values(p, carried) for p in parameters]
                cursor = connection.executemany(self.sql, values)
            if self.textual and cursor.description:
                keys = [column[0] for column in cursor.description]
                rows = cursor.fetchall()
                return InlineResult(SimpleResultMetaData(keys), rows, cursor.rowcount, True)
            rows = cursor.fetchall() if self.returns_rows else []
            return InlineResult(self.metadata, rows, cursor.rowcount, self.returns_rows)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sql, values, exc, sqlite3.Error) from exc


def plan_for(
    statement: Executable, keys: Sequence[str], many: bool, dialect: Dialect, cache_key: Any
) -> StatementPlan | None:
    """The plan of statement given parameters named keys (many: several sets), or None
    when SQLAlchemy must run it (see the module docstring)."""
    textual = isinstance(statement, TextClause)
    if not (
        textual or getattr(statement, "is_select", False) or getattr(statement, "is_dml", False)
    ):
        return None
    compiled: Any = statement.compile(  # type: ignore[attr-defined]
        dialect=dialect, column_keys=list(keys), for_executemany=many, cache_key=cache_key
    )
    if (
        not compiled.positional
        or compiled.positiontup is None
        or compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.escaped_bind_names
        or getattr(compiled, "_insertmanyvalues", None) is not None
    ):
        return None
    metadata = None
    if getattr(statement, "is_select", False) or compiled.effective_returning:
        if many or not compiled._ordered_columns or compiled._textual_ordered_columns:
            return None
        columns = compiled._result_columns
        names = [c.keyname for c in columns]
        if not names or len(set(names)) != len(names):
            return None
        processors = [c.type._cached_result_processor(dialect, None) for c in columns]
        metadata = SimpleResultMetaData(
            names,
            extra=[c.objects for c in columns],
            _processors=processors if any(processors) else None,
        )
    given = set(keys)
    matched, _ = compiled._cache_key_bind_match
    carried_at = {
        bind: i for i, original in enumerate(cache_key.bindparams) for bind in matched[original]
    }
    bind_processors = compiled._bind_processors
    sources: list[tuple[int, Any, Processor]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        processor = bind_processors.get(name)
        # As SQLCompiler.construct_params chooses each value.
        if bind.key in given:
            sources.append((_GIVEN, bind.key, processor))
        elif name in given:
            sources.append((_GIVEN, name, processor))
        elif bind.required or bind.callable:
            return None  # SQLAlchemy says what is missing
        elif bind in carried_at:
            sources.append((_CARRIED, carried_at[bind], processor))
        else:
            sources.append((_CONSTANT, bind.value, processor))
    return StatementPlan(str(compiled), sources, metadata, textual=textual)
