"""A user's query on a DuckDB file (see :mod:`.query`): one ``SELECT`` or
``EXPLAIN``, on a read-only connection of its own that cannot reach other
files or the network, its settings locked, stopped after the timeout."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import duckdb

from ..backends.duckdb_backend import DuckDBBackend, _first_line
from ..backends.sandbox import ALLOWED, QUERY_WORDS, check_parameters, explains, refusal, subquery
from ..backends.sqltext import first_keyword
from ..errors import QueryError, StoreNotFoundError
from .query import QueryResult

# A user's query: read-only, no other files, no network; then no progress bar
# on stderr, and the settings locked (see run()).
QUERY_CONFIG = {"enable_external_access": False}
QUERY_STATEMENTS = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)


def run(backend: DuckDBBackend, sql: str, params: Sequence[Any] | dict[str, Any] | None, *, limit: int | None,
        timeout: float | None) -> QueryResult:
    if backend.memory:
        raise QueryError("queries run on a database file; this store is in memory")
    if not backend.path.is_file():
        raise StoreNotFoundError(f"no database at {backend.path} (nothing has been saved there yet)")
    with backend.connection(write=False, config=QUERY_CONFIG) as con:
        con.execute("SET enable_progress_bar = false")
        con.execute("SET lock_configuration = true")
        statement = checked_statement(con, sql)
        check_parameters(_takes(statement), params)
        try:
            with interrupt_after(con, timeout):
                cursor = con.execute(statement, params if params is not None else [])
                description = cursor.description or []
                rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise QueryError(f"the query ran for more than {timeout:g} s and was stopped") from None
        except duckdb.Error as error:
            raise QueryError(f"the query failed: {_first_line(str(error))}") from None
    truncated = limit is not None and len(rows) > limit
    return QueryResult([d[0] for d in description], [str(d[1]) for d in description],
                       rows[:limit] if truncated else rows, truncated)


def checked_statement(con: duckdb.DuckDBPyConnection, sql: str) -> "duckdb.Statement":
    """The one statement to run for a user's ``sql``: it as a subquery (see
    :mod:`~healthsim_state.backends.sandbox`), parsed by DuckDB's own parser.
    Raises :class:`QueryError` unless ``sql`` is one statement that the
    parser reads as a ``SELECT`` (``WITH``, ``FROM t``, ``VALUES``,
    ``DESCRIBE``, ``SUMMARIZE`` are selects to DuckDB) or an ``EXPLAIN`` of
    one, and the subquery one ``SELECT`` (or that ``EXPLAIN``)."""
    wrapped = subquery(sql)
    kind = _only_statement(con, sql).type
    if kind not in QUERY_STATEMENTS:  # named as written (DuckDB calls ANALYZE a VACUUM)
        keyword = first_keyword(sql)
        raise QueryError(f"only {ALLOWED} is allowed; this is "
                         f"{keyword.upper() if keyword and keyword not in QUERY_WORDS else kind.name}")
    try:
        statements = con.extract_statements(wrapped)
    except duckdb.Error as error:
        raise refusal(sql, _first_line(str(error))) from None
    expected = duckdb.StatementType.EXPLAIN if explains(sql) else duckdb.StatementType.SELECT
    if [s.type for s in statements] != [expected]:  # what the subquery's parentheses cannot hold does not parse
        raise refusal(sql, f"it reads as {', '.join(s.type.name for s in statements)}")
    return statements[0]


def _takes(statement: "duckdb.Statement") -> int | list[str]:
    """What the statement's placeholders take: names, or a count of values
    in order (DuckDB names ``?`` and ``$1`` by their numbers)."""
    names = statement.named_parameters
    if all(name.isdigit() for name in names):
        return max(map(int, names), default=0)
    return sorted(names)


def _only_statement(con: duckdb.DuckDBPyConnection, sql: str) -> "duckdb.Statement":
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(f"the query does not parse: {_first_line(str(error))}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement; found {len(statements)}")
    return statements[0]


@contextmanager
def interrupt_after(con: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    """Interrupt whatever ``con`` runs once ``seconds`` have passed."""
    if seconds is None:
        yield
        return
    timer = threading.Timer(seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
