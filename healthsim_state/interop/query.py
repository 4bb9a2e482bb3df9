"""Read-only SQL over a store, for the ``sql`` command and the MCP ``query`` tool.

The one query runner: the backend runs the text (see
:meth:`~healthsim_state.backends.base.Backend.query`: one ``SELECT`` or
``EXPLAIN``, read-only, no other files or network, a row limit and a
timeout); values go in as parameters (``?`` or ``$name``), never spliced into
the text. Here the results become JSON-ready values.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import uuid
from decimal import Decimal
from typing import Any, Sequence

from ..backends import open_backend
from ..backends.base import QueryResult
from ..values import parse_exact

__all__ = ["QueryResult", "run_query", "jsonable", "records", "json_rows"]

JSON_TYPES = ("JSON", "json", "jsonb")


def run_query(target: str | os.PathLike | None, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
              *, limit: int | None = None, timeout: float | None = None,
              lock_timeout: float | None = None) -> QueryResult:
    """Run one read-only query on the store (a file path or a URL)."""
    backend = open_backend(target, read_only=True, lock_timeout=lock_timeout)
    try:
        return backend.query(sql, params, limit=limit, timeout=timeout)
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
