"""Read-only SQL over a database file.

The file is opened read-only (DuckDB refuses every write), with access to
other files and the network turned off (no ``read_csv('/etc/...')``), and the
text must be exactly one statement that DuckDB's own parser classifies as a
``SELECT`` (``WITH``, ``FROM t``, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE`` are
all select statements to DuckDB). Values go in as parameters (``?`` or
``$name``), never spliced into the text.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

import duckdb

from ..errors import DatabaseLockedError, StoreError
from ..store import default_lock_timeout
from .errors import QueryError

_CONFIG = {"enable_external_access": False, "lock_configuration": True}


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple]

    def records(self) -> list[dict[str, Any]]:
        """Rows as JSON-ready dicts (see :func:`jsonable`)."""
        return [{c: jsonable(v) for c, v in zip(self.columns, row)} for row in self.rows]


def connect_read_only(path: str | os.PathLike, *, lock_timeout: float | None = None,
                      external_access: bool = False) -> duckdb.DuckDBPyConnection:
    """The database file, read-only (and, unless ``external_access``, with no
    access to other files). While another process holds the file's write
    lock, retry with backoff for up to ``lock_timeout`` seconds (default
    ``$HEALTHSIM_LOCK_TIMEOUT``, else 10), as the store does."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StoreError(f"no database at {path}")
    config = dict(_CONFIG) if not external_access else {}
    timeout = default_lock_timeout() if lock_timeout is None else lock_timeout
    deadline, delay = time.monotonic() + timeout, 0.005
    while True:
        try:
            return duckdb.connect(str(path), read_only=True, config=config)
        except duckdb.Error as error:
            text = str(error)
            if "Could not set lock" not in text and "Conflicting lock" not in text:
                raise StoreError(f"cannot open {path} read-only: {_first_line(error)}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseLockedError(f"{path} is locked by another process and stayed locked for "
                                          f"{timeout:g} s; wait for it to finish, or raise HEALTHSIM_LOCK_TIMEOUT",
                                          path=path) from None
            time.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 2, 0.25)


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one SELECT statement."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("the query is empty")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(f"the query does not parse: {_first_line(error)}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement; found {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only a read-only SELECT (or WITH ... SELECT) query is allowed; this is {kind.name}")


def run_query(path: str | os.PathLike, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
              ) -> QueryResult:
    """Run one SELECT on the database file, read-only."""
    con = connect_read_only(path)
    try:
        check_select(con, sql)
        try:
            cursor = con.execute(sql, params if params is not None else [])
            description = cursor.description or []
            rows = cursor.fetchall()
        except duckdb.Error as error:
            raise QueryError(f"the query failed: {_first_line(error)}") from None
    finally:
        con.close()
    return QueryResult([d[0] for d in description], [str(d[1]) for d in description], rows)


def jsonable(value: Any) -> Any:
    """A query value as JSON: dates and times as ISO text, decimals as
    numbers, NaN and infinities as null, lists and structs recursively."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
