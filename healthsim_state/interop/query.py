"""Read-only SQL over a store, for the ``sql`` command and the MCP ``query`` tool.

The one query runner, built on the backends (not part of their interface):
the engine's own runner (:mod:`.duckdb_query`, :mod:`.postgres_query`) runs
the text on a connection of its own: one ``SELECT`` or ``EXPLAIN``,
read-only, no other files or network, a row limit and a timeout; values go in
as parameters (``?`` or ``$name``), never spliced into the text. Here the
results become JSON-ready values.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import os
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Sequence

from ..backends import open_backend
from ..values import parse_exact

__all__ = ["QueryResult", "run_query", "jsonable", "records", "json_rows"]

JSON_TYPES = ("JSON", "json", "jsonb")
# Each engine's runner, by its dialect's name (imported when used: PostgreSQL's needs the extra).
RUNNERS = {"duckdb": ".duckdb_query", "postgres": ".postgres_query"}


@dataclass
class QueryResult:
    """What a read-only query returned: column names and SQL types, the rows
    (at most the limit asked for), and whether there were more."""

    columns: list[str]
    types: list[str]
    rows: list[tuple]
    truncated: bool = False


def run_query(target: str | os.PathLike | None, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
              *, limit: int | None = None, timeout: float | None = None,
              lock_timeout: float | None = None) -> QueryResult:
    """Run one read-only query on the store (a file path or a URL)."""
    backend = open_backend(target, read_only=True, lock_timeout=lock_timeout)
    try:
        runner = importlib.import_module(RUNNERS[backend.dialect.name], __package__)
        return runner.run(backend, sql, params, limit=limit, timeout=timeout)
    finally:
        backend.close()


def json_rows(result: QueryResult, *, exact: bool = False) -> list[list[Any]]:
    """The rows as JSON values: a JSON column's text becomes the JSON it
    holds. With ``exact``, a decimal (or a number in a JSON column) that no
    float holds stays a ``Decimal`` with every digit (for a writer that
    keeps them, :func:`~healthsim_state.values.dump_exact`); without,
    it is the nearest float."""
    parse = [t in JSON_TYPES for t in result.types]
    cell = _exact_cell if exact else jsonable
    return [[_json_cell(v, exact) if is_json else cell(v) for v, is_json in zip(row, parse)] for row in result.rows]


def records(result: QueryResult, *, exact: bool = False) -> list[dict[str, Any]]:
    """The rows as JSON-ready objects, column name to value."""
    return [dict(zip(result.columns, row)) for row in json_rows(result, exact=exact)]


def _json_cell(value: Any, exact: bool) -> Any:
    if isinstance(value, str):
        try:
            parsed = parse_exact(value)
        except ValueError:
            return value
        return parsed if exact else jsonable(parsed)
    return jsonable(value)


def _exact_cell(value: Any) -> Any:
    return value if isinstance(value, Decimal) and value.is_finite() else jsonable(value)


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
