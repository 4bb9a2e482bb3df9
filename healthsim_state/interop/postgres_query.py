"""A user's query on a PostgreSQL store (see :mod:`.query`): one ``SELECT``
or ``EXPLAIN`` in a ``READ ONLY`` transaction on a connection of its own.

The server runs the text only as a subquery (see
:mod:`~healthsim_state.backends.sandbox`), parsed as one statement (the
extended protocol takes exactly one), so it runs nothing but one query,
whatever the text holds; the read-only transaction refuses any write
(``SELECT ... FOR UPDATE``, ``nextval``, ...). The query runs with the URL's
role: what that role may read, the query may read.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import psycopg
from psycopg import errors as pg_errors

from ..backends.postgres_backend import PostgresBackend, _first_line, _reason, _rollback
from ..backends.sandbox import check_parameters, parameter_error, refusal, subquery
from ..backends.sqltext import bind_user_query, numbered, placeholder_names
from ..errors import QueryError, StoreNotFoundError
from .query import QueryResult


def run(backend: PostgresBackend, sql: str, params: Sequence[Any] | dict[str, Any] | None, *, limit: int | None,
        timeout: float | None) -> QueryResult:
    """Run one user query on a connection of its own (closed afterwards, and
    never committed, so no setting it makes outlives it).
    ``statement_timeout`` stops it after ``timeout`` seconds; at most
    ``limit`` + 1 rows are fetched. A database without the store's tables is
    :class:`StoreNotFoundError`, as a missing file is."""
    statement = subquery(sql)
    names = placeholder_names(statement)
    if names:
        check_parameters(names, params)
    # Values by name with no $name to take them go in order, for the server to count what the text takes.
    given = params if names or not isinstance(params, Mapping) else list(params.values())
    text, values = bind_user_query(statement, given)
    with backend.connection() as con:
        try:
            con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if con.execute("SELECT to_regclass('_healthsim_meta') IS NULL").fetchone()[0]:
                raise StoreNotFoundError(f"{backend.label} holds no healthsim-state store (nothing has been saved "
                                         "there yet)")
            if timeout is not None:
                con.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
            try:
                columns, takes = _parse(con, text)
            except (pg_errors.SyntaxError, pg_errors.FeatureNotSupported) as error:
                _rollback(con)
                raise _refused(con, sql, given, error, backend.url) from None
            if not names:
                check_parameters(takes, params)
            return _stream_query(con, text, values, columns, limit, timeout)
        except psycopg.Error as error:
            raise _query_error(error, timeout, backend.url) from None


def _refused(con: "psycopg.Connection", sql: str, params: Any, error: "psycopg.Error", url: str) -> QueryError:
    """Why the server did not take the subquery: ``?`` placeholders
    given no values, the text's own parse error when it has one (only
    parsed, never run), else what it is."""
    if not params and "?" in sql:  # not bound, so that a jsonb ? operator stays one
        try:
            short = parameter_error(_parse(con, numbered(subquery(sql)))[1], params)
        except psycopg.Error:
            short = None
        if short is not None:
            return short
    try:
        _parse(con, bind_user_query(sql, params)[0])
    except psycopg.Error as own:
        return _query_error(own, None, url)
    if isinstance(error, pg_errors.FeatureNotSupported) and "data-modifying" in str(error):
        return QueryError("the query tries to change the store (a data-modifying WITH); queries are read-only")
    return refusal(sql, _first_line(str(error)))


def _parse(con: "psycopg.Connection", sql: str) -> tuple[list[tuple[str, str]], int]:
    """Have the server parse ``sql`` as one statement (not run it); return
    the columns it would return, (name, type) each, and how many values
    its placeholders take."""
    encoding = con.info.encoding
    pgconn = con.pgconn
    prepared = pgconn.prepare(b"", sql.encode(encoding))
    if prepared.error_message:
        raise pg_errors.error_from_result(prepared, encoding)
    described = pgconn.describe_prepared(b"")
    columns = []
    for index in range(described.nfields):
        oid, fmod = described.ftype(index), described.fmod(index)
        info = con.adapters.types.get(oid)
        shown = info.get_type_display(oid=oid, fmod=fmod) if info else str(oid)
        columns.append(((described.fname(index) or b"").decode(encoding), shown))
    return columns, described.nparams


def _query_error(error: "psycopg.Error", timeout: float | None, url: str) -> QueryError:
    if isinstance(error, pg_errors.QueryCanceled) and timeout is not None:
        return QueryError(f"the query ran for more than {timeout:g} s and was stopped")
    if isinstance(error, pg_errors.ReadOnlySqlTransaction):
        return QueryError("the query tries to change the store; queries are read-only")
    if isinstance(error, pg_errors.SyntaxError):
        if "multiple commands" in str(error):
            return QueryError("give exactly one statement; found more than one")
        return QueryError(f"the query does not parse: {_first_line(str(error))}")
    return QueryError(f"the query failed: {_reason(error, url)}")


def _stream_query(con: "psycopg.Connection", sql: str, values: list[Any] | None, columns: list[tuple[str, str]],
                  limit: int | None, timeout: float | None) -> QueryResult:
    cursor = con.cursor()
    rows: list[tuple] = []
    size = 1000 if limit is None else max(1, min(limit + 1, 1000))
    stream = cursor.stream(sql, values, size=size)
    try:
        for row in stream:
            rows.append(row)
            if limit is not None and len(rows) > limit:
                break
    finally:
        stream.close()
    truncated = limit is not None and len(rows) > limit
    return QueryResult([name for name, _ in columns], [shown for _, shown in columns],
                       rows[:limit] if truncated else rows, truncated)
