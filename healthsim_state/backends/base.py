"""The one small interface between the store and a database engine.

Everything above this module (the store gateway, the layout, evolution, the
manager, interop, the front ends) speaks to a :class:`Backend` and the
:class:`Session` it opens, never to a driver. What differs between engines is
kept as data in a :class:`Dialect` (type names, how a column is read back, how
it is compared) or behind the few hooks below (connecting and waiting for
locks, begin, commit, roll back, release, what a driver's error means; bulk
writes, streaming reads).

A transaction's life is written once, here (:meth:`Backend.session`, the way
dlt's ``SqlClientBase`` and SQLAlchemy's ``do_begin``/``do_commit`` dialect
hooks shape it), and so are running one again (:meth:`Backend.run`) and the
pauses between attempts (:class:`Backoff`). User queries and compaction are
product features built on top (:mod:`healthsim_state.interop.query`,
:mod:`healthsim_state.compact`), not part of this interface.

SQL text above this line uses ``?`` placeholders and the portable subset the
two engines share; values always travel as parameters.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
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
    ``read_after`` names the families a read of rows a tuple at a time
    selects as they are, turning each non-null value into its read form in
    Python after (:meth:`to_read_form`): for an engine that plans a cast or
    a formatting expression dearer than it turns its own values into Python
    objects (DuckDB: about a third of a small load's queries was that).
    It must give exactly what ``read`` gives.
    ``lock_rows`` ends a write's look-up of a scenario (`` FOR UPDATE`` where
    writers run side by side), so every write locks its scenario's row before
    it touches any of the scenario's rows: one lock, taken first, in one order.
    ``versions_storage`` ends the ``CREATE TABLE`` of a versions table: the
    engine's storage options for it (see :func:`healthsim_state.layout.entity_ddl`).
    ``row_id`` names the system column of a row's physical place where the
    engine fetches rows by a list of them directly (PostgreSQL's ``ctid``):
    an overwrite then retires the current rows it compared by their places,
    without reading every version of the scenario's rows a second time.
    """

    name: str
    types: dict[str, str]
    read: dict[str, str]
    compare: dict[str, str] = field(default_factory=dict)
    read_after: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    indexed: bool = False
    lock_rows: str = ""
    versions_storage: str = ""
    row_id: str = ""
    table_exists: str = ("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() "
                         "AND table_catalog = current_database() AND table_name = ?")

    def column_type(self, ctype: ColumnType) -> str:
        if ctype.family == "decimal":
            return f"DECIMAL({ctype.precision},{ctype.scale})"
        return self.types[ctype.family]

    def read_expression(self, ctype: ColumnType, column: str) -> str:
        return self.read.get(_read_family(ctype), "{}").format(quote(column))

    def to_read_form(self, ctype: ColumnType) -> Callable[[Any], Any] | None:
        """What turns a column's own value into its read form, where the
        engine reads the column as it is (see ``read_after``); None where
        :meth:`read_expression` does it in SQL (or nothing needs doing)."""
        return self.read_after.get(_read_family(ctype))

    def compare_expression(self, ctype: ColumnType, column: str, table: str | None = None) -> str:
        name = quote(column) if table is None else f"{table}.{quote(column)}"
        return self.compare.get(ctype.family, "{}").format(name)


def _read_family(ctype: ColumnType) -> str:
    """The key of ``Dialect.read``: a decimal's depends on its precision."""
    if ctype.family == "decimal":
        return "decimal_short" if ctype.precision <= 15 else "decimal_long"
    return ctype.family


@dataclass(frozen=True)
class Constant:
    """One value for every row of a column-wise insert (a scenario id, a version)."""

    value: Any


def rows_of_columns(arrays: Sequence[Any], types: Sequence[ColumnType | None], length: int) -> list[tuple]:
    """Columns as :meth:`Session.append_columns` takes them, turned into rows
    of the values a row holds (``date``, ``datetime``, ``Decimal``)."""
    series = [repeat(array.value, length) if isinstance(array, Constant)
              else array if ctype is None else from_form(ctype, array)
              for array, ctype in zip(arrays, types)]
    return list(zip(*series))


class Session(ABC):
    """One transaction on the store: run SQL, write and read rows in bulk.

    Opened by :meth:`Backend.session`; committed when the ``with`` block ends
    normally, rolled back on any error. ``exclusive``: the session holds the
    store's layout lock alone (see :meth:`lock_layout`).
    """

    dialect: Dialect
    writable: bool
    exclusive: bool = False

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
        self.append(table, columns, rows_of_columns(arrays, types, length))

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
        """Make sure this transaction alone may change the store's layout
        (tables, columns, the mappings in force) until it ends. Where the
        engine admits one writer at a time, it does already; a backend whose
        sessions hold the layout lock shared raises :class:`LayoutLockNeeded`
        unless this session holds it alone."""


class LayoutLockNeeded(Exception):
    """Raised in a write transaction that holds the layout lock shared and
    finds it must change the layout. Not an error: :meth:`Backend.run` runs
    the operation again from the start holding the lock alone (a lock is
    never upgraded, so two clients cannot deadlock on it)."""


class WriteNeeded(Exception):
    """Raised in a read transaction that finds the store must be written
    first (its layout upgraded, this client's mapping additions applied):
    :meth:`Backend.run` given a ``write_first`` operation runs it in a write,
    then the read again. Without one, it is the caller's to handle."""


class Backoff:
    """The pauses between attempts at something another client holds up (a
    write that lost a race, a file another process has open), until a
    deadline. Each pause is a uniform pick up to a cap that doubles from
    10 ms to 0.5 s, and at least ``floor`` of it: 0 ("full jitter") spreads
    racers that collided the most, so they do not collide again; a waiter
    for a lock takes half (fewer attempts in vain, none in a burst). The last
    pause ends at the deadline, for one last attempt. Counted in time, not
    attempts: a count gives up early under load."""

    FIRST, LONGEST = 0.01, 0.5  # seconds: the first cap, the last

    def __init__(self, deadline: float, *, floor: float = 0.0):
        self.started = time.monotonic()
        self.deadline = deadline
        self.floor = floor
        self.attempts = 1  # the first is under way

    @classmethod
    def lasting(cls, seconds: float) -> "Backoff":
        return cls(time.monotonic() + seconds)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self) -> bool:
        """After a failed attempt: pause, and True for another attempt; or
        False (no pause) once the deadline has passed: give up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        cap = min(self.LONGEST, self.FIRST * 2 ** (self.attempts - 1))
        time.sleep(min(random.uniform(self.floor * cap, cap), remaining))
        self.attempts += 1
        return True


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

    retry_for: float = 60.0  # seconds a write that keeps losing races is run again for
    retries: int = 0  # times an operation of this backend was run again after a lost race (for tests and benchmarks)
    driver_errors: tuple[type[BaseException], ...] = ()  # what the driver raises; :meth:`translate` makes them ours

    def close(self) -> None:
        """Release whatever the backend keeps between operations."""

    # --- the transaction template: the session's life, written once ------------------------------

    @contextmanager
    def session(self, *, write: bool, exclusive: bool = False) -> Iterator[Session]:
        """One transaction: acquire a connection (waiting out other clients'
        locks; ``exclusive``: holding the layout lock alone), begin, yield a
        :class:`Session`, commit, or roll back on any error, release. A
        driver's error leaves as ours (:meth:`translated`)."""
        with self.translated(), self._connection(write and not self.read_only, exclusive) as session:
            try:
                self._begin(session)
                yield session
                self._commit(session)
            except BaseException:
                self._rollback(session)
                raise

    @abstractmethod
    def _connection(self, writable: bool, exclusive: bool) -> ContextManager[Session]:
        """Hook: a session on a connection ready for its transaction (queued,
        locked, as the engine needs), released when the block ends: normally
        after a commit, by an error after a rollback."""

    @abstractmethod
    def _begin(self, session: Session) -> None:
        """Hook: begin the session's transaction."""

    @abstractmethod
    def _commit(self, session: Session) -> None:
        """Hook: commit it."""

    @abstractmethod
    def _rollback(self, session: Session) -> None:
        """Hook: roll it back, quietly (the connection may be gone)."""

    def translate(self, error: BaseException) -> Exception:
        """Hook: our error (:mod:`healthsim_state.errors`) for one of
        :attr:`driver_errors`: a lost race is a
        :class:`TransactionConflictError`, worth running again."""
        return StoreError(f"the database {self.label} could not be used: {error}")

    @contextmanager
    def translated(self) -> Iterator[None]:
        """The one place a driver's error becomes ours. Sessions use it too,
        where a caller inside the transaction must see ours (a bulk write the
        store diagnoses while it has the rows at hand)."""
        try:
            yield
        except self.driver_errors as error:
            raise self.translate(error) from None

    # --- running an operation: once, or again ------------------------------------------------------

    def run(self, operation: Callable[[Session], T], *, write: bool,
            write_first: Callable[[Session], Any] | None = None) -> T:
        """``operation(session)`` in one transaction, run again from the start
        when it must: while it loses races with concurrent transactions
        (:class:`TransactionConflictError`), after a :class:`Backoff` pause,
        for up to :attr:`retry_for` seconds, however many attempts that takes;
        holding the layout lock alone when it asks for it
        (:class:`LayoutLockNeeded`); and, a read that finds the store must be
        written first (:class:`WriteNeeded`), after ``write_first`` has run in
        a write (once)."""
        if write and self.read_only:
            raise ReadOnlyError(f"{self.label} was opened read-only; open it without read_only=True to write")
        backoff = Backoff.lasting(self.retry_for)
        exclusive = False
        while True:
            try:
                with self.session(write=write, exclusive=exclusive) as session:
                    return operation(session)
            except LayoutLockNeeded:
                if exclusive or not write:
                    raise
                exclusive = True
            except WriteNeeded:
                if write_first is None:
                    raise
                self.run(write_first, write=True)
                write_first = None
            except TransactionConflictError as error:
                if not backoff.wait():
                    raise TransactionConflictError(
                        f"{error}; ran {backoff.attempts} times over {backoff.elapsed:.1f} s and gave up "
                        "(HEALTHSIM_RETRY_TIMEOUT sets how long)") from None
                self.retries += 1
