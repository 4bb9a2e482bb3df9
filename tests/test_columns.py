"""The column-wise flatten stores exactly what the generated flatten stores.

For random, hostile and legacy-shaped input: every entity a plan serves gets
the row the generated ``flatten`` gives it (typed columns equal, residual text
equal byte for byte), every other entity goes through ``flatten`` itself, and
the problems are the same ones in the same order. Most examples run at codec
level (cheap); a few go through the database on both paths and compare the
stored rows. Then unit tests of shapes, plans and the bulk checks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
import strategies as S
from benchmarks.generate import legacy_scenario, scenario
from healthsim_state import StateManager, ValidationError
from healthsim_state.engine import batch as batch_module
from healthsim_state.engine import columns
from healthsim_state.engine.columns import Plan, flatten_columns, group_by_shape, residual_builder
from healthsim_state.engine.compile import compile_mapping
from healthsim_state.column_types import column_type, from_form, to_form
from healthsim_state.values import MISSING
from healthsim_state.mapping.loader import mapping_from_document
from healthsim_state.mapping.model import UUID4, Field
from test_hostile_input import hostile_entity

REPO = Path(__file__).resolve().parents[1]
RAW = oracle.load_mapping_dirs([REPO / "mappings"])
CODECS = {entity: compile_mapping(mapping_from_document(raw, entity)) for entity, raw in RAW.items()}
QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
         HealthCheck.function_scoped_fixture, HealthCheck.large_base_example]
CODEC_LEVEL = settings(max_examples=settings.default.max_examples * 2, suppress_health_check=QUIET)
THROUGH_THE_DATABASE = settings(max_examples=max(4, settings.default.max_examples // 3), suppress_health_check=QUIET)


# --- the comparison ------------------------------------------------------------------------

def _problems(problems) -> list[tuple]:
    return [(p.message, p.entity_type, p.position, p.path) for p in problems]


def _comparable(codec, row: tuple | None) -> tuple | None:
    """A row with decimals as Decimal values (a column may hold the float or
    the Decimal for one stored number) and fresh uuid4 defaults blanked."""
    if row is None:
        return None
    out = [row[0]]
    for f, value in zip(codec.mapping.fields, row[1:-1]):
        if value.__class__ is float and f.type.family == "decimal":
            value = decimal.Decimal(repr(value))
        if f.default == UUID4 and isinstance(value, str) and len(value) == 36:
            value = "<uuid4>"
        out.append((type(value), value))
    return (*out, row[-1])


def assert_same_rows(codec, items: list, min_group: int = 1) -> int:
    """Flatten ``items`` both ways; returns how many entities the plans served."""
    generic_problems: list = []
    generic = [codec.flatten(item, position, generic_problems) for position, item in enumerate(items)]
    batch, slow = flatten_columns(codec, items, 0, min_group=min_group)
    problems: list = []
    rows = {row[0]: row for row in batch.rows()} if batch is not None else {}
    served = len(rows)
    for j in slow:
        rows[j] = codec.flatten(items[j], j, problems)
    assert sorted(rows) == list(range(len(items)))
    assert _problems(problems) == _problems(generic_problems)
    for position, row in enumerate(generic):
        assert _comparable(codec, rows[position]) == _comparable(codec, row), (position, items[position])
    return served


def copies(draw, entities: list) -> list:
    """The entities and more of each shape: groups of several, so that the
    bulk checks meet columns mixing forms, nulls and kept values."""
    if not entities:
        return entities
    return entities + draw(st.lists(st.sampled_from(entities), max_size=6))


# --- properties at codec level ---------------------------------------------------------------

@CODEC_LEVEL
@given(data=st.data(), entity=st.sampled_from(sorted(RAW)), valid=st.booleans())
def test_random_entities_of_the_built_in_types_flatten_alike(data, entity, valid):
    items = data.draw(S.entity_lists(RAW[entity], max_size=5, valid=valid))
    items = copies(data.draw, items + data.draw(S.entity_lists(RAW[entity], max_size=5, valid=valid)))
    assert_same_rows(CODECS[entity], items)


@CODEC_LEVEL
@given(data=st.data(), raw=S.mappings())
def test_random_mappings_flatten_alike(data, raw):
    codec = compile_mapping(mapping_from_document(raw, "random mapping"))
    items = data.draw(S.entity_lists(raw, max_size=4, valid=data.draw(st.booleans())))
    assert_same_rows(codec, copies(data.draw, items))


@CODEC_LEVEL
@given(data=st.data(), entity=st.sampled_from(sorted(RAW)),
       items=st.lists(hostile_entity() | st.sampled_from([None, [], "x", 3]), max_size=5))
def test_hostile_entities_flatten_alike(data, entity, items):
    assert_same_rows(CODECS[entity], copies(data.draw, items))


@pytest.mark.parametrize("make", [scenario, legacy_scenario], ids=["canonical", "legacy"])
def test_the_benchmark_data_flattens_alike_and_all_of_it_goes_column_wise(make):
    for entity, items in make(40, seed=3).items():
        served = assert_same_rows(CODECS[entity], items, min_group=columns.MIN_GROUP)
        assert served == len(items), entity


# --- through the database ---------------------------------------------------------------------

UUID_DEFAULTS = {raw["table"]: {f["column"] for f in raw["fields"] if f.get("default") == "uuid4"}
                 for raw in RAW.values()}


def _stored(sm: StateManager, scenario_id: str) -> dict[str, list]:
    """Every stored row of the scenario, each value with its type (fresh uuid4 defaults blanked)."""
    import re
    con = duckdb.connect(str(sm.db_path), read_only=True)
    try:
        out = {}
        for codec in sm.registry.codecs.values():
            table = codec.mapping.table
            columns_ = [c for (c,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND column_name <> 'scenario_id' "
                "ORDER BY column_index", [table]).fetchall()]
            rows = con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in columns_)} FROM "{table}" '
                               "WHERE scenario_id = ?", [scenario_id]).fetchall()
            blank = [i for i, c in enumerate(columns_) if c in UUID_DEFAULTS.get(table, ())]
            for i in blank:
                rows = [row[:i] + (("<uuid4>" if isinstance(row[i], str) and re.fullmatch(r"[0-9a-f-]{36}", row[i])
                                    else row[i]),) + row[i + 1:] for row in rows]
            out[table] = sorted(map(repr, rows))
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory):
    root = tmp_path_factory.mktemp("both-ways")
    with StateManager(root / "generic.duckdb") as generic, StateManager(root / "columnar.duckdb") as columnar:
        yield {False: generic, True: columnar}


def _save_both_ways(both_ways: dict, entities: dict, monkeypatch) -> tuple:
    monkeypatch.setattr(columns, "MIN_GROUP", 1)
    name = f"s{next(_names)}"
    outcomes = []
    for columnar, sm in both_ways.items():
        monkeypatch.setattr(batch_module, "COLUMNAR", columnar)
        try:
            scenario_id = sm.save_scenario(name, entities)
            outcomes.append(("saved", _stored(sm, scenario_id)))
        except ValidationError as error:
            outcomes.append(("refused", _problems(error.problems)))
    return outcomes[0], outcomes[1]


_names = itertools.count()


@THROUGH_THE_DATABASE
@given(entities=S.scenario_entities({t: RAW[t] for t in ("patient", "encounter", "claim", "lab_result", "vital_sign",
                                                         "trial_visit")}, max_size=4),
       repeat=st.booleans())
def test_both_ways_store_the_same_rows(both_ways, monkeypatch, entities, repeat):
    if repeat:  # a key given twice: refused alike
        entities = {key: items + items[:1] for key, items in entities.items()}
    generic, columnar = _save_both_ways(both_ways, entities, monkeypatch)
    assert generic == columnar


def test_legacy_data_is_stored_alike_through_the_database(both_ways, monkeypatch):
    generic, columnar = _save_both_ways(both_ways, legacy_scenario(3, seed=8), monkeypatch)
    assert generic[0] == "saved" and generic == columnar


def test_a_column_of_one_text_in_every_row_goes_as_a_parameter_and_stores_the_same(both_ways, monkeypatch):
    """Text (dates, timestamps and JSON as text too) or NULL in every row of
    a chunk is a parameter of the insert, not an Arrow column: stored as the
    row-wise way stores it. A number is never one (``-0.0`` equals ``0.0``),
    nor a text a parameter would not carry as it is (NUL)."""
    from healthsim_state.backends import arrow_columns

    sent: list[list] = []
    lent = arrow_columns.lent_columns

    def recorded(*args, **kwargs):
        view, selected, params = lent(*args, **kwargs)
        sent.append(params)
        return view, selected, params

    monkeypatch.setattr(arrow_columns, "lent_columns", recorded)
    labs = [{"lab_result_id": f"l{i}", "unit": "mg/dL", "value": "a\x00b", "numeric_value": -0.0 if i % 2 else 0.0,
             "collected_time": "2024-01-15T10:30:00"} for i in range(40)]
    claims = [{"claim_id": f"c{i}", "other_diagnoses": ["E11.9"], "service_date": "2024-01-15",
               "extra_info": {"kept": True}} for i in range(40)]
    generic, columnar = _save_both_ways(both_ways, {"lab_result": labs, "claim": claims}, monkeypatch)
    assert generic[0] == "saved" and generic == columnar
    params = [value for each in sent for value in each]
    assert {"mg/dL", "2024-01-15T10:30:00", '["E11.9"]', None} <= set(params)
    assert '{"extra_info":{"kept":true}}' in params  # one residual for all: a parameter too
    assert not any(value.__class__ is float or value == "a\x00b" for value in params)
    signs = {("-0.0" in row, "'l1'" in row) for row in columnar[1]["lab_results"] if "'l0'" in row or "'l1'" in row}
    assert signs == {(False, False), (True, True)}  # a double keeps its sign


# --- shapes --------------------------------------------------------------------------------------

def test_entities_are_grouped_by_their_exact_key_sets_in_order_and_nested():
    nodes = columns.containers(CODECS["patient"])
    items = [{"patient_id": "a", "name": {"given": "A"}}, {"name": {"given": "B"}, "patient_id": "b"},
             {"patient_id": "c", "name": {"given": "C", "family": "D"}}, {"patient_id": "d", "name": "E F"},
             ["not", "an", "object"], {"patient_id": "e", "name": {"given": "F"}}]
    groups, slow = group_by_shape(items, nodes)
    assert sorted(slow) == [3, 4]  # a non-object on a mapped path, and a non-object entity
    assert sorted(idx for _, idx, _ in groups) == [[0, 5], [1], [2]]
    shapes = {tuple(idx): dict(shape) for shape, idx, _ in groups}
    assert shapes[(0, 5)] == {(): ("patient_id", "name"), ("name",): ("given",)}


def test_a_plan_takes_the_path_before_an_alias_and_leaves_the_alias_unmapped():
    codec = CODECS["patient"]
    plan = Plan(codec, (((), ("patient_id", "id", "given_name", "name")), (("name",), ("given",))))
    fed = {feed.field.column: (container, feed.key) for container, feeds, _ in plan.feeds for feed in feeds}
    assert fed["patient_id"] == ((), "patient_id") and fed["given_name"] == (("name",), "given")
    assert plan.leftovers == [((), "id"), ((), "given_name")]
    assert plan.usable and plan.constants  # source_type and source_system defaults


def test_a_shape_missing_a_required_field_is_left_to_the_generic_flatten():
    assert not Plan(CODECS["trial_visit"], (((), ("usubjid",)),)).usable  # no visit_num: a key without default
    assert Plan(CODECS["encounter"], (((), ("patient_id",)),)).usable  # encounter_id has one (uuid4)


def test_the_residual_code_puts_kept_values_back_in_field_order_making_objects_on_the_way():
    codec = CODECS["patient"]
    plan = Plan(codec, (((), ("patient_id", "middle_name", "extra", "name")), (("name",), ("given", "nick"))))
    index = {f.column: i for i, f in enumerate(codec.mapping.fields)}
    build = residual_builder(plan, (index["middle_name"],), (), checked=False)
    entity = {"patient_id": "p", "middle_name": None, "extra": 1, "name": {"given": "A", "nick": "Al"}}
    rest = build(entity, None)
    assert rest == {"extra": 1, "name": {"nick": "Al", "middle": None}}
    assert list(rest) == ["extra", "name"]  # the name object stays where it was given
    assert build(entity, MISSING) == {"extra": 1, "name": {"nick": "Al"}}
    assert rest == _generic_residual(codec, entity)


def _generic_residual(codec, entity: dict):
    import json
    residual = codec.flatten(entity, 0, [])[-1]
    return None if residual is None else json.loads(residual)


# --- the bulk checks agree with convert -----------------------------------------------------------

STRINGS = st.one_of(S.date_strings(), S.timestamp_strings(), st.text(max_size=28),
                    st.sampled_from(["2024-01-15", "20240115  ", "2024-W03-1", "2024-01-15T10:30:00",
                                     "2024-01-15 10:30:00", "2024-01-15T10:30:00.000000",
                                     "2024-01-15T10:30:00.000001", "2024-01-15T10:30:00.123+02",
                                     "2024-01-15T10:30:00,123456", "0001-01-01T00:00:00+01:00"]))


@CODEC_LEVEL
@given(family=st.sampled_from(["date", "timestamp", "varchar", "integer", "double", "decimal(12,2)",
                               "decimal(5,5)", "decimal(18,0)", "json", "boolean"]),
       values=st.lists(STRINGS | S.json_leaves() | st.floats() | st.sampled_from([0.0, -0.0, 1e-05, 123.45]),
                       min_size=1, max_size=8))
def test_a_value_the_bulk_check_passes_is_its_own_column_value_and_rendering(family, values):
    ctype = column_type(family)
    field = Field("c", ("c",), ctype)
    given = list(values)
    checked = list(values)
    odd, nulls = columns._CHECKS[ctype.family](field, checked)
    for j, value in enumerate(given):
        if j in odd or j in nulls:
            continue
        column, kept = ctype.convert(value)
        assert kept is MISSING, (value, kept)
        assert from_form(ctype, [checked[j]]) == from_form(ctype, [to_form(ctype, column)]), value
    assert all(given[j] is None for j in nulls)


def test_timestamps_with_offsets_become_the_instants_convert_gives():
    texts = ["2024-01-15T10:30:00-05:00", "2024-01-15T10:30Z", "2024-01-15 10:30:00", "0001-01-01T05:00:00+01:00",
             "9999-12-31T23:59:59.999999"]
    micros = columns.instants(texts)
    ctype = column_type("timestamp")
    assert [from_form(ctype, [m])[0] for m in micros] == [ctype.convert(t)[0] for t in texts]
    assert columns.instants(["0001-01-01T00:00:00+01:00"]) is None  # before year 1 in UTC: convert refuses it


# --- keep_open -----------------------------------------------------------------------------------------

def _other_process_can_open(path: Path) -> bool:
    import subprocess
    import sys
    code = ("import duckdb, sys\ntry:\n    duckdb.connect(sys.argv[1]).close()\nexcept duckdb.Error:\n"
            "    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 0


def test_keep_open_holds_the_file_between_operations_until_let_go(db_path):
    from healthsim_state.backends.duckdb_backend import WARM

    with StateManager(db_path) as sm:
        sm.save_scenario("a", {"patient": [{"patient_id": "p"}]})
    assert _other_process_can_open(db_path)  # the default: closed after each operation
    with StateManager(db_path, keep_open=600) as sm:
        sm.save_scenario("b", {"patient": [{"patient_id": "p"}]})
    with StateManager(db_path, read_only=True, keep_open=600) as reader:  # the other mode, in this process
        assert [s["name"] for s in reader.list_scenarios()] == ["b", "a"]
    assert not _other_process_can_open(db_path)  # kept, past close(), for any manager of this process
    WARM.release(db_path)
    assert _other_process_can_open(db_path)


def test_a_kept_read_write_instance_serves_readers_so_a_mixed_burst_opens_the_file_once(db_path, monkeypatch):
    """An MCP server's read-only and read-write managers of one file, in a
    burst that mixes their calls: reads use the writer's kept instance
    instead of letting it go and opening the file again in the other mode."""
    from healthsim_state import ReadOnlyError
    from healthsim_state.backends import duckdb_backend
    from healthsim_state.backends.duckdb_backend import WARM

    opened = []
    real_open = duckdb_backend._open_waiting

    def counting_open(path, timeout, *, read_only, **options):
        opened.append(read_only)
        return real_open(path, timeout, read_only=read_only, **options)

    monkeypatch.setattr(duckdb_backend, "_open_waiting", counting_open)
    try:
        writer = StateManager(db_path, keep_open=600)
        reader = StateManager(db_path, read_only=True, keep_open=600)
        for index in range(3):
            writer.save_scenario(f"s{index}", {"patient": [{"patient_id": "p"}]})
            assert [s["name"] for s in reader.list_scenarios()][0] == f"s{index}"
            assert reader.load_scenario(f"s{index}")["entity_count"] == 1
        # every session joined the writer's instance (the first opened the file, the others
        # took its kept connection): none opened the file read-only, which would have let the
        # kept read-write instance go (and the next write open the file again)
        assert opened == [False]
        with pytest.raises(ReadOnlyError):  # the read-only manager still refuses to write
            reader.save_scenario("x", {"patient": [{"patient_id": "p"}]})
        assert "x" not in {s["name"] for s in writer.list_scenarios()}
    finally:
        WARM.release(db_path)
    assert _other_process_can_open(db_path)


def test_keep_open_lets_the_file_go_once_idle(db_path):
    import time

    with StateManager(db_path, keep_open=0.2) as sm:
        sm.save_scenario("a", {"patient": [{"patient_id": "p"}]})
    deadline = time.monotonic() + 60  # a generous bound on a busy machine: this asserts no timing
    while not _other_process_can_open(db_path):
        assert time.monotonic() < deadline, "the kept file was never let go"
        time.sleep(0.2)
    with StateManager(db_path) as sm:
        assert sm.load_scenario("a")["entity_count"] == 1


def test_one_thread_lets_kept_files_go_however_their_idle_times_order(tmp_path):
    import threading
    import time

    from healthsim_state.backends.duckdb_backend import WARM

    def sweepers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "healthsim-keep-open")

    long_kept, short_kept = tmp_path / "long.duckdb", tmp_path / "short.duckdb"
    with StateManager(long_kept, keep_open=600) as sm:
        for index in range(4):  # a burst: each operation keeps the file anew
            sm.save_scenario(f"s{index}", {"patient": [{"patient_id": "p"}]})
    assert sweepers() == 1
    with StateManager(short_kept, keep_open=0.2) as sm:  # sooner than the sweeper waits for
        sm.save_scenario("a", {"patient": [{"patient_id": "p"}]})
    assert sweepers() == 1
    deadline = time.monotonic() + 60  # a generous bound on a busy machine: this asserts no timing
    while not _other_process_can_open(short_kept):
        assert time.monotonic() < deadline, "the file kept for 0.2 s was never let go"
        time.sleep(0.2)
    assert not _other_process_can_open(long_kept)  # still kept
    WARM.release(long_kept)
    assert _other_process_can_open(long_kept)


def test_keep_open_must_be_a_number_of_seconds():
    for bad in (-1, "1", True, float("nan"), 10_000):
        with pytest.raises(ValueError, match="keep_open"):
            StateManager(":memory:", keep_open=bad)


def test_a_kept_connection_serves_one_session_at_a_time_and_outlives_a_release(db_path):
    """A session on a kept file takes its idle connection; a session that
    starts meanwhile connects one of its own; letting the file go while a
    session has the connection closes it only when that session ends."""
    from healthsim_state.backends.duckdb_backend import WARM

    patient = {"patient": [{"patient_id": "p"}]}
    with StateManager(db_path, keep_open=600) as sm:
        sm.save_scenario("a", patient)
        with sm.snapshot("a") as snap:  # has the kept connection
            assert sm.load_scenario("a")["entity_count"] == 1  # on a connection of its own
            sm.save_scenario("b", patient)
            WARM.release(db_path)
            assert [e["patient_id"] for e in snap.entities("patient")] == ["p"]  # still open
        assert not _other_process_can_open(db_path)  # kept again when the snapshot ended
        assert [s["name"] for s in sm.list_scenarios()] == ["b", "a"]
    WARM.release(db_path)
    assert _other_process_can_open(db_path)
