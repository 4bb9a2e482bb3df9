"""The one small interface between the store and a database engine.

Everything above this module (the store gateway, the layout, evolution, the
manager, interop, the front ends) speaks to a :class:`Backend` and the
:class:`Session` it opens, never to a driver. What differs between engines is
kept as data in a :class:`Dialect` (type names, how a column is read back, how
it is compared) or behind the few methods below (connecting and waiting for
locks, transactions and their retries, bulk writes, streaming reads).

SQL text above this line uses ``?`` placeholders and the portable subset the
two engines share; values always travel as parameters.
"""

from __future__ import annotations

import itertools
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable, ContextManager, Iterator, Sequence, TypeVar

from ..column_types import ColumnType, from_form
from ..errors import ReadOnlyError, StoreError, TransactionConflictError

T = TypeVar("T")


def quote(identifier: str) -> str:
    """A quoted SQL identifier. Identifiers come from validated mappings only."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class Dialect:
    """What one engine calls things, as tables of data (the sqlglot way).

    ``types`` maps a mapping type's family to its SQL type (``decimal`` is
    ``DECIMAL(P,S)`` everywhere). ``read`` says how a load selects a column so
    that every engine hands back the engine-independent *read form* the codecs
    expect (see :mod:`healthsim_state.column_types`): ISO text for dates and
    timestamps, a float for a decimal of up to 15 digits and text for a
    longer one, JSON text for json. ``compare`` says how to compare a column
    exactly (in ``EXCEPT`` and ``IS DISTINCT FROM``), for a type the engine
    cannot compare as it is. ``indexed`` engines (PostgreSQL) get an index
    on each entity table's ``(scenario_id, _position)`` and on the tags' scenario,
    so one scenario's rows are found without reading the others'.
    ``table_exists`` is a query of one parameter, a table name, giving 1 if
    the current schema has that table, else 0 (every operation asks it once,
    through :meth:`Session.table_exists`, which a backend may answer another way).
    """

    name: str
    types: dict[str, str]
    read: dict[str, str]
    compare: dict[str, str] = field(default_factory=dict)
    indexed: bool = False
    table_exists: str = ("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() "
                         "AND table_catalog = current_database() AND table_name = ?")

    def column_type(self, ctype: ColumnType) -> str:
        if ctype.family == "decimal":
            return f"DECIMAL({ctype.precision},{ctype.scale})"
        return self.types[ctype.family]

    def read_expression(self, ctype: ColumnType, column: str) -> str:
        family = ctype.family
        if family == "decimal":
            family = "decimal_short" if ctype.precision <= 15 else "decimal_long"
        return self.read.get(family, "{}").format(quote(column))

    def compare_expression(self, ctype: ColumnType, column: str, table: str | None = None) -> str:
        name = quote(column) if table is None else f"{table}.{quote(column)}"
        return self.compare.get(ctype.family, "{}").format(name)


@dataclass(frozen=True)
class Constant:
    """One value for every row of a column-wise insert (a scenario id, a version)."""

    value: Any


class Session(ABC):
    """One transaction on the store: run SQL, write and read rows in bulk.

    Opened by :meth:`Backend.session`; committed when the ``with`` block ends
    normally, rolled back on any error.
    """

    dialect: Dialect
    writable: bool

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""

    @abstractmethod
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one query and return every row."""

    def table_exists(self, table: str) -> bool:
        """Whether the current schema holds ``table``."""
        return self.scalar(self.dialect.table_exists, [table]) > 0

    @property
    def reads_columns(self) -> bool:
        """Whether :meth:`fetch_columns` makes fewer objects than :meth:`fetchall`
        (a backend that hands results over by columns), so large reads use it."""
        return False

    def fetch_columns(self, sql: str, params: Sequence[Any], width: int) -> list[list]:
        """Run one query of ``width`` columns and return its values a column
        at a time (a list each); here by turning the rows around."""
        rows = self.fetchall(sql, params)
        return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    @abstractmethod
    def stream(self, sql: str, params: Sequence[Any], batch_size: int) -> Iterator[list[tuple]]:
        """Run one query and yield its rows ``batch_size`` at a time, holding
        no more than a batch in memory."""

    @abstractmethod
    def append(self, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) in bulk: no SQL
        statement per row."""

    def append_columns(self, table: str, columns: Sequence[str], arrays: Sequence[Any],
                       types: Sequence[ColumnType | None], length: int) -> None:
        """Insert ``length`` rows given column by column, in bulk: ``arrays[i]``
        holds the values of ``columns[i]`` (or is a :class:`Constant`), in the
        *form* of ``types[i]`` (see :mod:`healthsim_state.column_types`:
        ISO text for dates and timestamps, unscaled integers for decimals;
        None: values as a row holds them).

        This default turns the columns into rows for :meth:`append`; a backend
        overrides it with its fastest way to take columns."""
        series = [repeat(array.value, length) if isinstance(array, Constant)
                  else array if ctype is None else from_form(ctype, array)
                  for array, ctype in zip(arrays, types)]
        self.append(table, columns, list(zip(*series)))

    def create_staging(self, name: str, like: str, columns: Sequence[str]) -> str:
        """An empty temporary table ``name`` with these columns of table
        ``like``; returns its name (bare, as every table name passed to a
        session). Callers drop it when done (and a rollback drops it with
        everything else)."""
        return self.create_temp_as(name, f"SELECT {', '.join(map(quote, columns))} FROM {quote(like)} LIMIT 0")

    def create_temp_as(self, name: str, sql: str, params: Sequence[Any] = ()) -> str:
        """A temporary table ``name`` holding what ``sql`` selects; returns its
        name. (Temporary names start with ``_healthsim``, which no mapping's
        table may, so an unqualified name finds the right table.)"""
        quoted = quote(name)
        self.execute(f"DROP TABLE IF EXISTS {quoted}")
        self.execute(f"CREATE TEMP TABLE {quoted} AS {sql}", params)
        return name

    def analyze(self, table: str, columns: Sequence[str]) -> None:
        """Give the planner statistics of a temporary table just filled, for
        the ``columns`` queries join and filter on (an engine that plans
        without them does nothing)."""

    def grew(self, table: str, rows: int, columns: Sequence[str]) -> None:
        """Note that this transaction wrote ``rows`` rows into ``table``: an
        engine whose plans need statistics refreshes those of ``columns``
        once the table has grown a lot (see the PostgreSQL backend)."""

    def lock_layout(self) -> None:
        """Keep other clients from changing the layout until this transaction
        ends (a no-op where the engine admits one writer at a time)."""


@dataclass
class QueryResult:
    """What a read-only query returned: column names and SQL types, the rows
    (at most the limit asked for), and whether there were more."""

    columns: list[str]
    types: list[str]
    rows: list[tuple]
    truncated: bool = False


class Backend(ABC):
    """One store: a DuckDB file or a PostgreSQL database.

    ``label`` names it in messages (a path, or a URL without its password).
    """

    dialect: Dialect
    label: str
    read_only: bool

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store has been created (a file exists, ...)."""

    @abstractmethod
    def session(self, *, write: bool) -> ContextManager[Session]:
        """One transaction: open (waiting out other processes' locks), begin,
        yield a :class:`Session`, commit or roll back, release."""

    def close(self) -> None:
        """Release whatever the backend keeps between operations."""

    def compact(self) -> tuple[int, int]:
        """Give back the space that replaced rows and pruned versions leave
        unused; returns the store's size in bytes before and after."""
        raise StoreError(f"{self.label}: this backend reclaims space by itself (PostgreSQL's autovacuum); "
                         "there is nothing to compact")

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None, *, limit: int | None,
              timeout: float | None) -> QueryResult:
        """Run one read-only statement a user wrote (a ``SELECT``, or an
        ``EXPLAIN`` of one) with no way to write, to reach other files or the
        network; at most ``limit`` rows, stopped after ``timeout`` seconds.
        Raises :class:`~healthsim_state.errors.QueryError`."""

    retry_for: float = 60.0  # seconds a write that keeps losing races is run again for
    retries: int = 0  # times an operation of this backend was run again (for tests and benchmarks)

    def run(self, operation: Callable[[Session], T], *, write: bool) -> T:
        """``operation(session)`` in one transaction, run again from the start
        while it loses races with concurrent transactions
        (:class:`TransactionConflictError`): after a jittered, exponentially
        growing pause, for up to :attr:`retry_for` seconds, however many
        attempts that takes (a count alone gives up early under load)."""
        if write and self.read_only:
            raise ReadOnlyError(f"{self.label} was opened read-only; open it without read_only=True to write")
        started = time.monotonic()
        for attempt in itertools.count(1):
            try:
                with self.session(write=write) as session:
                    return operation(session)
            except TransactionConflictError as error:
                pause = _backoff(attempt)
                if time.monotonic() + pause - started > self.retry_for:
                    raise TransactionConflictError(
                        f"{error}; ran {attempt} times over {time.monotonic() - started:.1f} s and gave up "
                        "(HEALTHSIM_RETRY_TIMEOUT sets how long)") from None
            self.retries += 1
            time.sleep(pause)
        raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    """Seconds to pause before attempt ``attempt + 1``: "full jitter" (a
    uniform pick up to a cap that doubles from 5 ms to 0.5 s), so racers
    that collided spread out instead of colliding again."""
    return random.uniform(0, min(0.5, 0.005 * 2 ** attempt))
