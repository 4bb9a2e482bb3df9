"""A small read selects dates, timestamps, short decimals and json as DuckDB
stores them and makes their read form in Python (``Dialect.read_after``):
that must give exactly what the SQL read expressions give, edge values too."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthsim_state.backends.duckdb_backend import DIALECT
from healthsim_state.column_types import column_type


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


def _both_ways(con, type_name: str, values: list) -> tuple[list, list]:
    """The values stored in a column of ``type_name``, read with the read
    expression and read as they are then turned into their read form."""
    ctype = column_type(type_name)
    con.execute("CREATE OR REPLACE TEMP TABLE t (i INTEGER, v " + DIALECT.column_type(ctype) + ")")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    expression = DIALECT.read_expression(ctype, "v")
    by_sql = [v for (v,) in con.execute(f"SELECT {expression} FROM t ORDER BY i").fetchall()]
    convert = DIALECT.to_read_form(ctype)
    assert convert is not None, type_name
    raw = [v for (v,) in con.execute("SELECT v FROM t ORDER BY i").fetchall()]
    return by_sql, [None if v is None else convert(v) for v in raw]


def _same(by_sql: list, in_python: list) -> None:
    assert [(type(v), v) for v in in_python] == [(type(v), v) for v in by_sql]


EDGE_DATES = [dt.date(1, 1, 1), dt.date(99, 12, 31), dt.date(999, 2, 3), dt.date(2000, 2, 29), dt.date(9999, 12, 31)]
EDGE_TIMES = [dt.datetime(1, 1, 1), dt.datetime(5, 3, 4, 5, 6, 7, 10), dt.datetime(2020, 1, 1, 0, 0, 0, 1),
              dt.datetime(2020, 1, 1, 23, 59, 59, 999999), dt.datetime(9999, 12, 31, 23, 59, 59, 500000)]


def test_edge_dates_and_timestamps_read_the_same(con):
    _same(*_both_ways(con, "date", [*EDGE_DATES, None]))
    _same(*_both_ways(con, "timestamp", [*EDGE_TIMES, None]))


@pytest.mark.parametrize("type_name, values", [
    ("decimal(15,15)", ["0.123456789012345", "-0.000000000000001", "0.999999999999999", "0"]),
    ("decimal(15,0)", ["999999999999999", "-999999999999999", "1", "0"]),
    ("decimal(12,2)", ["0.1", "0.29", "-1234567890.12", "1e-2"]),
    ("decimal(4,3)", ["1.005", "-0.001", "9.999"]),
])
def test_edge_short_decimals_read_the_same(con, type_name, values):
    _same(*_both_ways(con, type_name, [*map(Decimal, values), None]))


def test_json_text_reads_as_written(con):
    texts = ['{"b": 1.50, "a": [1e400, -0.0], "a": null}', '"\\u00e9\\ud83d\\ude00"', "[]", "null", None]
    _same(*_both_ways(con, "json", texts))


@settings(max_examples=25)
@given(st.lists(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59))
                | st.none(), min_size=1, max_size=20))
def test_any_timestamp_reads_the_same(con, values):
    _same(*_both_ways(con, "timestamp", values))


@settings(max_examples=25)
@given(st.integers(1, 15).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, p))).flatmap(
    lambda ps: st.tuples(st.just(ps), st.lists(st.integers(-(10 ** ps[0] - 1), 10 ** ps[0] - 1), min_size=1, max_size=20))))
def test_any_short_decimal_reads_the_same(con, case):
    (precision, scale), unscaled = case
    values = [Decimal(u).scaleb(-scale) for u in unscaled]
    _same(*_both_ways(con, f"decimal({precision},{scale})", values))


@settings(max_examples=15)
@given(st.lists(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                             max_leaves=8), min_size=1, max_size=5))
def test_any_json_reads_the_same(con, documents):
    _same(*_both_ways(con, "json", [json.dumps(d) for d in documents]))
