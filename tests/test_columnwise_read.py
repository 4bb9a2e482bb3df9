"""A large load reads each type a column at a time (``Session.fetch_columns``;
on DuckDB by way of NumPy where it is installed) and rebuilds the entities
from the columns (``Codec.rebuild_columns``): the same entities, in the same
order, as reading a tuple a row. Checked with NumPy, and with the rows
turned into columns (the way of a backend that hands over rows, forced here
to be taken), on both backends, and for rows stored out of position order."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import oracle
import strategies as S
from benchmarks.generate import scenario
from healthsim_state import StateManager
from healthsim_state.store import rows as rows_module
from healthsim_state.backends import base, duckdb_backend
from healthsim_state.store.rows import _in_position_order

RAW = oracle.load_mapping_dirs([Path(__file__).resolve().parents[1] / "mappings"])
QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
ROWWISE, COLUMNWISE = 10**12, 1  # thresholds: every type read a row at a time, or a column at a time


def _typed(columns):
    """Values with their types (True is not 1, -0.0 is not 0.0) and NaN comparable."""
    return [[(type(v).__name__, repr(v)) for v in column] for column in columns]


# --- the session: columns as fetchall would give them ---------------------------------------------

VALUES = """SELECT * FROM (VALUES
    (1::INTEGER, 9223372036854775807::BIGINT, 'nan'::DOUBLE, true, 'a', NULL::VARCHAR),
    (NULL, -9223372036854775808, NULL, NULL, NULL, NULL),
    (-2147483648, NULL, '-inf'::DOUBLE, false, '', NULL),
    (3, 0, -0.0::DOUBLE, NULL, ?, NULL)) t(i, b, d, f, s, n)"""


@pytest.fixture
def session():
    with StateManager(":memory:") as sm:
        sm.create()
        with sm._backend.session(write=False) as duckdb_session:
            yield duckdb_session


@pytest.mark.parametrize("numpy", [True, False])
def test_columns_hold_what_the_rows_hold(session, monkeypatch, numpy):
    """NULL stays apart from NaN, booleans from integers, and the extremes of
    each integer type survive."""
    monkeypatch.setattr(duckdb_backend, "NUMPY", numpy)
    params = ["\u00e9\U0001F600 end"]
    rows = session.fetchall(VALUES, params)
    columns = session.fetch_columns(VALUES, params, 6)
    assert _typed(columns) == _typed(zip(*rows))
    assert columns[2][1] is None and columns[2][0] != columns[2][0]  # NULL, then NaN
    assert columns[5] == [None] * 4


@pytest.mark.parametrize("numpy", [True, False])
def test_no_rows_give_empty_columns(session, monkeypatch, numpy):
    monkeypatch.setattr(duckdb_backend, "NUMPY", numpy)
    assert session.fetch_columns("SELECT 1::INTEGER AS a, 'x' AS b WHERE 1 = ?", [0], 2) == [[], []]


def test_columns_of_one_name_are_kept_apart(session):
    assert session.fetch_columns("SELECT ?::INTEGER AS a, 2 AS a", [1], 2) == [[1], [2]]


NOT_IMPORTABLE = """
import sys
from healthsim_state import StateManager
from healthsim_state.store import rows
from healthsim_state.backends import duckdb_backend
assert duckdb_backend.NUMPY
sys.modules["numpy"] = None  # found on the path, but its import fails
rows.COLUMNWISE_READ = 1
sm = StateManager(":memory:")
sm.save_scenario("s", {"patient": [{"patient_id": "p1"}, {"patient_id": "p2"}]})
assert [p["patient_id"] for p in sm.load_scenario("s")["entities"]["patient"]] == ["p1", "p2"]
assert duckdb_backend.NUMPY is False
print("read by rows")
"""


def test_a_numpy_that_does_not_import_leaves_reads_to_rows():
    done = subprocess.run([sys.executable, "-c", NOT_IMPORTABLE], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "read by rows"


def test_position_order_is_restored_for_every_column():
    columns = [[3, 0, 2, 1], ["d", "a", "c", "b"], [None, 1, None, 2]]
    assert _in_position_order(columns) == [[0, 1, 2, 3], ["a", "b", "c", "d"], [1, 2, None, None]]
    ordered = [[0, 1, 5], ["a", "b", "c"]]
    assert _in_position_order(ordered) is ordered
    assert _in_position_order([[], []]) == [[], []]


# --- whole loads: column-wise equals row-wise ------------------------------------------------------

def _load_both_ways(sm, monkeypatch, name, **kwargs):
    monkeypatch.setattr(rows_module, "COLUMNWISE_READ", ROWWISE)
    by_rows = sm.load_scenario(name, **kwargs)
    monkeypatch.setattr(rows_module, "COLUMNWISE_READ", COLUMNWISE)
    by_columns = sm.load_scenario(name, **kwargs)
    return by_rows, by_columns


def _read_by(monkeypatch, way):
    """``numpy``: as configured (DuckDB reads columns by way of NumPy; the
    server, rows); ``turned``: every backend made to read columns by turning
    its rows around (``Session.fetch_columns`` of the base class)."""
    if way == "turned":
        monkeypatch.setattr(duckdb_backend, "NUMPY", False)
        for session_class in (base.Session, duckdb_backend.DuckDBSession):
            monkeypatch.setattr(session_class, "reads_columns", property(lambda self: True))


@pytest.mark.parametrize("way", ["numpy", "turned"])
def test_a_load_reads_the_same_either_way_even_out_of_stored_order(sm, monkeypatch, way):
    _read_by(monkeypatch, way)
    data = scenario(2, seed=11)
    sm.save_scenario("s", data)
    labs = data["lab_result"]
    changed = {**labs[0], "value": "changed"}  # same key: it keeps position 0, stored last
    sm.add_entities("s", {"lab_result": [changed]})

    by_rows, by_columns = _load_both_ways(sm, monkeypatch, "s")
    assert by_columns == by_rows
    assert [lab["lab_result_id"] for lab in by_columns["entities"]["lab_result"]] == \
        [lab["lab_result_id"] for lab in labs]
    assert by_columns["entities"]["lab_result"][0]["value"] == "changed"
    old_rows, old_columns = _load_both_ways(sm, monkeypatch, "s", version=1)
    assert old_columns == old_rows
    assert old_columns["entities"]["lab_result"][0]["value"] == labs[0]["value"]


_names = itertools.count()


@pytest.mark.parametrize("way", ["numpy", "turned"])
def test_entities_streamed_in_batches_read_the_same_either_way(sm, store, monkeypatch, way):
    """``iter_entities`` (and so copies between stores) pages through a type by
    ``_position``; by columns each page is columns, and the next page starts
    after the last position of the one before."""
    _read_by(monkeypatch, way)
    pages = _count_column_reads(monkeypatch)
    data = scenario(2, seed=12)
    sm.save_scenario("s", data)
    changed = {**data["lab_result"][3], "value": "changed"}
    sm.add_entities("s", {"lab_result": [changed]})
    expected = sm.load_scenario("s")["entities"]["lab_result"]
    assert len(expected) > 7
    streamed = {}
    for threshold in (ROWWISE, COLUMNWISE):
        monkeypatch.setattr(rows_module, "COLUMNWISE_READ", threshold)
        streamed[threshold] = list(sm.iter_entities("s", "lab_result", batch_size=3))
    assert streamed[COLUMNWISE] == streamed[ROWWISE] == expected
    by_columns = way == "turned" or store.kind == "duckdb"
    assert len(pages) == (len(expected) // 3 + 1 if by_columns else 0), pages  # the last page is short


def _count_column_reads(monkeypatch) -> list[str]:
    """The statements read a column at a time from here on (one each, also
    where DuckDB's way hands over to the base class's)."""
    sent, inside = [], [0]
    for session_class in (base.Session, duckdb_backend.DuckDBSession):
        original = session_class.fetch_columns

        def counted(self, sql, params, width, _original=original):
            if not inside[0]:
                sent.append(sql)
            inside[0] += 1
            try:
                return _original(self, sql, params, width)
            finally:
                inside[0] -= 1

        monkeypatch.setattr(session_class, "fetch_columns", counted)
    return sent


@settings(max_examples=max(5, settings.default.max_examples // 4), suppress_health_check=QUIET)
@given(entities=S.scenario_entities(RAW, max_size=4))
def test_random_entities_load_the_same_either_way(memory_sm, entities):
    name = f"s{next(_names)}"
    memory_sm.save_scenario(name, entities)
    with pytest.MonkeyPatch.context() as patch:
        by_rows, by_columns = _load_both_ways(memory_sm, patch, name)
        _read_by(patch, "turned")
        _, turned = _load_both_ways(memory_sm, patch, name)
    assert by_columns == by_rows
    assert turned == by_rows
