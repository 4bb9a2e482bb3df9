"""Nothing lost at the edges (issue 11): what a hostile test pass found, one
test (or table) per finding, through the library and interop. The command
line's and the MCP server's side of the same findings are in test_cli.py and
test_mcp_server.py."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from benchmarks.generate import entity_count, scenario
from healthsim_state import (
    EntityNotFoundError,
    ScenarioExistsError,
    StateManager,
    StoreError,
    ValidationError,
)
from healthsim_state.backends import duckdb_backend
from healthsim_state import values
from healthsim_state.values import dump_residual_json, parse_json, render_decimal
from healthsim_state.interop import (
    DocumentError,
    export_document,
    export_parquet,
    import_file,
    migrate,
    parse_document,
    run_query,
)
from healthsim_state.interop.json_io import dumps, load_json_bytes as parse_file

DATA = Path(__file__).parent / "data" / "interop"


def rows_of(db: Path, scenario_id: str, *, current: bool = False) -> dict[str, int]:
    """Every table of the store that holds rows of the scenario (of any
    version, or only ``current`` ones), with how many."""
    tables = [t for (t,) in run_query(db, "SELECT table_name FROM duckdb_tables() WHERE NOT internal").rows]
    found = {}
    for table in tables:
        columns = run_query(db, f'SELECT * FROM "{table}" LIMIT 0').columns
        if "scenario_id" in columns:
            where = " AND _until IS NULL" if current and "_until" in columns else ""
            count = run_query(db, f'SELECT count(*) FROM "{table}" WHERE scenario_id = ?{where}',
                              [scenario_id]).rows[0][0]
            if count:
                found[table] = count
    return found


# --- items 2 and 3: every row is the scenario's, and goes with it ------------------------------

@pytest.fixture
def file_sm(db_path):
    """A manager of a DuckDB file: for the tests that look into the file itself."""
    with StateManager(db_path) as manager:
        yield manager


def test_the_export_holds_every_row_the_store_holds(file_sm, db_path):
    sm = file_sm
    data = scenario(2)
    scenario_id = sm.save_scenario("all", data)
    document = export_document(sm, "all")
    exported = {key: len(items) for key, items in document["entities"].items()}
    assert len(exported) == 14 and sum(exported.values()) == entity_count(data)
    stored = {t.removesuffix("__versions"): n for t, n in rows_of(db_path, scenario_id).items()
              if t.endswith("__versions")}
    assert stored == exported


def test_delete_leaves_no_row_in_any_table_history_included(file_sm, db_path):
    sm = file_sm
    data = scenario(1)
    scenario_id = sm.save_scenario("doomed", data, tags=["a"])
    sm.save_scenario("doomed", {"patients": data["patient"]}, overwrite=True)  # the rest is history now
    sm.add_entities("doomed", {"patient": [{**data["patient"][0], "gender": "other"}]})
    everything, current = rows_of(db_path, scenario_id), rows_of(db_path, scenario_id, current=True)
    assert everything["claims__versions"] and "claims__versions" not in current
    assert sm.delete_scenario("doomed") is True
    assert rows_of(db_path, scenario_id) == {}


def test_an_overwrite_leaves_only_the_new_rows_current(file_sm, db_path):
    sm = file_sm
    scenario_id = sm.save_scenario("s", {"patients": [{"patient_id": f"p{i}"} for i in range(4)],
                                         "claims": [{"claim_id": "c"}]})
    sm.save_scenario("s", {"patients": [{"patient_id": "p0"}]}, overwrite=True)
    current = rows_of(db_path, scenario_id, current=True)
    assert (current["patients__versions"], current.get("claims__versions")) == (1, None)
    everything = rows_of(db_path, scenario_id)
    assert (everything["patients__versions"], everything["claims__versions"]) == (4, 1)  # version 1, for restore
    added = sm.add_entities("s", {"patients": [{"patient_id": "p1"}, {"patient_id": "p0"}]})
    assert (added["added"], added["replaced"], added["entity_count"]) == ({"patient": 1}, {"patient": 1}, 2)
    assert sm.load_scenario("s")["entity_count"] == len(sm.load_scenario("s")["entities"]["patient"]) == 2


def test_the_parquet_manifest_counts_the_rows_its_files_hold(sm, tmp_path):
    sm.save_scenario("s", {"patients": [{"patient_id": f"p{i}"} for i in range(5)]})
    sm.save_scenario("s", {"patients": [{"patient_id": "p9"}, {"patient_id": "p1"}]}, overwrite=True)
    result = export_parquet(sm, "s", tmp_path / "pq")
    rows = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)",
                                    [str(result.directory / "patients.parquet")]).fetchone()[0]
    assert result.manifest["entities"]["patient"]["rows"] == rows == 2


# --- item 4: a number no float holds keeps every digit -------------------------------------------

BIG = Decimal("12345678901234567890.123456789")


@pytest.mark.parametrize("given, rendered", [
    (Decimal("1.5"), 1.5), (Decimal("1.50"), 1.5), (Decimal("0.1"), 0.1), (Decimal("-0.0"), -0.0),
    (Decimal("100"), 100), (Decimal("1E+2"), 100.0), (Decimal(10**30), 10**30),
    (BIG, BIG), (Decimal("0.10000000000000001"), Decimal("0.10000000000000001")),
    (Decimal("1E+400"), Decimal("1E+400")), (Decimal("-1E-400"), Decimal("-1E-400")),
])
def test_a_decimal_renders_as_the_float_it_is_else_stays_a_decimal(given, rendered):
    got = render_decimal(given)
    assert type(got) is type(rendered) and repr(got) == repr(rendered)


def test_a_decimal_no_float_holds_comes_back_with_every_digit(sm):
    entities = {
        "patient": [{"patient_id": "p", "extra": BIG, "deep": {"list": [Decimal("1E+400"), 1.5, Decimal("1.50")]}}],
        "lab_result": [{"lab_result_id": "l", "numeric_value": Decimal("0.10000000000000001")}],  # a double field
        "clinical_note": [{"note_id": "n", "extra": {"x": 1}}],
    }
    sm.save_scenario("digits", entities)
    loaded = sm.load_scenario("digits")["entities"]
    patient, lab = loaded["patient"][0], loaded["lab_result"][0]
    assert repr(patient["extra"]) == repr(BIG)
    assert [repr(v) for v in patient["deep"]["list"]] == ["Decimal('1E+400')", "1.5", "1.5"]
    assert repr(lab["numeric_value"]) == "Decimal('0.10000000000000001')"
    column = run_query(sm.db_path, "SELECT numeric_value FROM lab_results").rows[0][0]
    assert column == 0.1  # the typed column holds the nearest double, for SQL


def test_json_and_decimal_columns_keep_every_digit(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "amount.yaml").write_text(
        "entity: amount\ntable: amounts\nprimary_key: id\nfields:\n"
        "  - {column: id, path: id, type: varchar}\n"
        "  - {column: money, path: money, type: 'decimal(38,9)'}\n"
        "  - {column: doc, path: doc, type: json}\n")
    with StateManager(tmp_path / "a.duckdb", mapping_dirs=[mappings]) as sm:
        sm.save_scenario("s", {"amount": [{"id": "1", "money": BIG, "doc": {"n": BIG, "m": [Decimal("1E+400")]}},
                                          {"id": "2", "money": Decimal("1.5"), "doc": {"n": 1.5}}]})
        first, second = sm.load_scenario("s")["entities"]["amount"]
        assert repr(first["money"]) == repr(BIG) and repr(first["doc"]["n"]) == repr(BIG)
        assert first["doc"]["m"] == [Decimal("1E+400")]
        assert second == {"id": "2", "money": 1.5, "doc": {"n": 1.5}}
        money, doc = run_query(tmp_path / "a.duckdb", "SELECT money, CAST(doc AS VARCHAR) FROM amounts "
                                                      "ORDER BY id").rows[0]
        assert money == BIG and json.loads(doc, parse_float=Decimal)["n"] == BIG  # SQL sees the digits


def test_the_json_export_writes_every_digit_and_an_import_reads_them_back(sm, tmp_path):
    sm.save_scenario("digits", {"patient": [{"patient_id": "p", "extra": [BIG, Decimal("1E+400"), 0.1]}]})
    text = dumps(export_document(sm, "digits"))
    assert '"extra": [\n          12345678901234567890.123456789,\n          1E+400,\n          0.1\n' in text
    (tmp_path / "digits.json").write_text(text)
    import_file(sm, tmp_path / "digits.json", name="again")
    again = sm.load_scenario("again")["entities"]["patient"][0]["extra"]
    assert [repr(v) for v in again] == [repr(BIG), "Decimal('1E+400')", "0.1"]


def test_only_entities_holding_such_numbers_pay_for_them(sm, monkeypatch):
    """A residual holding a number no float holds is marked by a leading space;
    every other one is read by the C parser alone."""
    assert dump_residual_json({"a": 1.5, "b": [1, "x"]}) == '{"a":1.5,"b":[1,"x"]}'
    assert dump_residual_json({"a": BIG}) == ' {"a":12345678901234567890.123456789}'
    assert parse_json(' {"a":12345678901234567890.123456789}') == {"a": BIG}
    sm.save_scenario("plain", {"patient": [{"patient_id": f"p{i}", "x": {"y": 0.5}} for i in range(50)]})
    sm.save_scenario("exact", {"patient": [{"patient_id": "p", "x": BIG}]})
    calls = []
    real = values.parse_exact
    monkeypatch.setattr(values, "parse_exact", lambda text: calls.append(text) or real(text))
    assert len(sm.load_scenario("plain")["entities"]["patient"]) == 50 and calls == []
    assert sm.load_scenario("exact")["entities"]["patient"][0]["x"] == BIG and len(calls) == 1


def test_version_metadata_keeps_every_digit(sm):
    sm.save_scenario("s", {}, metadata={"seed": BIG, "ratio": 0.25})
    assert sm.scenario_history("s")[0]["metadata"] == {"seed": BIG, "ratio": 0.25}


# --- item 5: a key given twice in a JSON file ------------------------------------------------------

TWICE = [  # (text, the key, where the message says it is, its path, the line of the second one)
    ('{"patients": [{"patient_id": "a"}],\n "patients": []}', "patients", "lines 1 and 2", "patients", 2),
    ('{"name": "s",\n "entities": {\n  "patients": [],\n  "patients": [{"patient_id": "b"}]}}', "patients",
     "lines 3 and 4", "entities.patients", 4),
    ('{"patients": [{"patient_id": "a", "gender": "f",\n   "gender": "m"}]}', "gender", "lines 1 and 2",
     "patients[0].gender", 2),
    ('{"metadata": {"name": "w", "name": "v"}, "entities": {}}', "name", "line 1 (columns 15 and 28)",
     "metadata.name", 1),
]


@pytest.mark.parametrize("text, key, where, path, line", TWICE)
def test_a_key_given_twice_is_refused_naming_the_key_and_the_line(text, key, where, path, line):
    with pytest.raises(DocumentError) as caught:
        parse_file(text.encode(), "f.json")
    message = str(caught.value).splitlines()[0]
    assert message.startswith("f.json: not a usable JSON document: a key is given twice") and \
        f"{key!r} at {where}" in message, message
    (problem,) = caught.value.problems
    assert (problem.path, caught.value.line) == (path, line)


def test_a_file_with_a_key_given_twice_changes_nothing(sm, tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"patients": [{"patient_id": "a"}], "patients": [{"patient_id": "b"}]}')
    with pytest.raises(DocumentError, match="'patients' at line 1"):
        import_file(sm, path, name="twice")
    assert not sm.scenario_exists("twice")


# --- item 6: a date or time that holds none ---------------------------------------------------------

class NotATime(dt.datetime):
    """Behaves as pandas.NaT does (pandas is no dependency): a datetime
    subclass whose fields are NaN, whose text is 'NaT', and whose replace()
    gives itself back."""

    def __new__(cls):
        return super().__new__(cls, 1970, 1, 1)

    year = month = day = hour = minute = second = microsecond = property(lambda self: float("nan"))

    def isoformat(self, *args, **kwargs) -> str:
        return "NaT"

    def __str__(self) -> str:
        return "NaT"

    def replace(self, *args, **kwargs):
        return self

    def utcoffset(self):
        return None


class Nanos(dt.datetime):
    """Behaves as a pandas.Timestamp with nanoseconds does: its text has nine digits of fraction."""

    def isoformat(self, *args, **kwargs) -> str:
        return super().isoformat(*args, **kwargs) + "789"


@pytest.mark.parametrize("entity_type, entity, path", [
    ("encounter", {"encounter_id": "e", "period": {"start": NotATime()}}, "period.start"),  # a timestamp field
    ("encounter", {"encounter_id": "e", "serviceDate": NotATime()}, "period.start"),  # by an alias
    ("patient", {"patient_id": "p", "birthDate": NotATime()}, "birthDate"),  # a date field
    ("encounter", {"encounter_id": "e", "unmapped": {"when": NotATime()}}, "unmapped.when"),
])
def test_a_datetime_that_holds_no_time_is_refused_never_dropped(sm, entity_type, entity, path):
    with pytest.raises(ValidationError, match="NaT is not a date or date-time") as caught:
        sm.save_scenario("nat", {entity_type: [entity]})
    (problem,) = caught.value.problems
    assert (problem.entity_type, problem.position, problem.path) == (entity_type, 0, path)
    assert not sm.scenario_exists("nat")


def test_pandas_nat_is_refused(sm):
    import pandas  # in the test extra: this test never skips

    with pytest.raises(ValidationError, match="period.start"):
        sm.save_scenario("nat", {"encounter": [{"encounter_id": "e", "period": {"start": pandas.NaT}}]})


def test_a_datetime_subclass_keeps_what_it_renders(sm):
    moment = Nanos(2024, 1, 15, 10, 30, 0, 123456)
    sm.save_scenario("ns", {"encounter": [{"encounter_id": "e", "period": {"start": moment}}]})
    start = sm.load_scenario("ns")["entities"]["encounter"][0]["period"]["start"]
    assert start == "2024-01-15T10:30:00.123456789"
    column = run_query(sm.db_path, "SELECT admission_time FROM encounters").rows[0][0]
    assert column == dt.datetime(2024, 1, 15, 10, 30, 0, 123456)


# --- item 7: threads in one process --------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True], ids=["a-manager-each", "one-shared-manager"])
def test_eight_threads_add_and_save_and_never_conflict(db_path, monkeypatch, shared):
    conflicts = []
    real = duckdb_backend.translate

    def counting(error, label):
        translated = real(error, label)
        conflicts.append(type(translated).__name__)
        return translated

    monkeypatch.setattr(duckdb_backend, "translate", counting)
    StateManager(db_path).save_scenario("base", {"patients": [{"patient_id": "p"}]})
    one = StateManager(db_path) if shared else None
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def work(i: int) -> None:
        sm = one or StateManager(db_path)
        start.wait()
        try:
            for j in range(3):
                sm.add_entities("base", {"patients": [{"patient_id": f"t{i}-{j}"}]})
            outcomes.append(sm.save_scenario("new", {"patients": [{"patient_id": f"n{i}"}]}))
        except Exception as error:  # noqa: BLE001 - every outcome is checked below
            outcomes.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if isinstance(o, str)]
    losers = [o for o in outcomes if not isinstance(o, str)]
    assert len(winners) == 1 and len(losers) == 7 and all(isinstance(o, ScenarioExistsError) for o in losers), losers
    with StateManager(db_path) as sm:
        assert sm.scenario_info("base")["entity_count"] == 25
        assert sm.scenario_info("new")["scenario_id"] == winners[0]
    assert conflicts == []  # writers took turns: no transaction had to be run again


# --- item 8: a notebook's own connection ------------------------------------------------------------------

def test_a_notebooks_own_connection_to_the_file_is_explained(db_path):
    StateManager(db_path).save_scenario("s", {})
    notebook = duckdb.connect(str(db_path))  # DuckDB's default settings, not ours
    try:
        with pytest.raises(StoreError, match="open in this process through another DuckDB connection .* close that "
                                             r"connection \(con.close\(\)\)"):
            StateManager(db_path, lock_timeout=0.1).list_scenarios()
    finally:
        notebook.close()
    assert [s["name"] for s in StateManager(db_path).list_scenarios()] == ["s"]


# --- item 9: no extension is fetched for a user's path --------------------------------------------------

def test_an_sqlite_file_is_refused_as_such_and_left_alone(tmp_path):
    path = tmp_path / "lite.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    before = path.read_bytes()
    attempts = [lambda: StateManager(path).list_scenarios(), lambda: StateManager(path).save_scenario("s", {}),
                lambda: StateManager(path, read_only=True).list_scenarios(), lambda: run_query(path, "SELECT 1")]
    for attempt in attempts:
        with pytest.raises(StoreError, match="lite.db as a healthsim-state database: it is an SQLite database, not "
                                             "a DuckDB database"):
            attempt()
    assert path.read_bytes() == before


def test_every_connection_the_store_opens_has_extension_autoinstall_and_autoload_off(file_sm, db_path):
    sm = file_sm
    sm.save_scenario("s", {})
    settings = "SELECT current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions')"
    for write in (False, True):
        with sm._backend.session(write=write) as session:
            assert session.fetchall(settings) == [(False, False)]
    assert run_query(db_path, settings).rows == [(False, False)]
    assert run_query(db_path, "SELECT current_setting('enable_progress_bar')").rows == [(False,)]  # item 11


# --- item 11: 1e400 in a JSON file ----------------------------------------------------------------------------

def test_1e400_in_a_json_file_is_kept_exactly_or_said_to_be_out_of_range(sm, tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text('{"patients": [{"patient_id": "p", "score": 1e400, "tiny": -1e-400}]}')
    import_file(sm, kept)
    patient = sm.load_scenario("kept")["entities"]["patient"][0]
    assert (patient["score"], patient["tiny"]) == (Decimal("1E+400"), Decimal("-1E-400"))
    mapped = tmp_path / "mapped.json"
    mapped.write_text('{"lab_results": [{"lab_result_id": "l", "numeric_value": 1e400}]}')
    with pytest.raises(DocumentError, match=r"numeric_value: the number is out of the range of a double"):
        import_file(sm, mapped)
    assert not sm.scenario_exists("mapped")


# --- item 12: Parquet ----------------------------------------------------------------------------------------------

def test_parquet_timestamps_are_utc_instants(sm, tmp_path):
    sm.save_scenario("s", {"encounters": [{"encounter_id": "e", "period": {"start": "2024-03-10T01:30:00-05:00"}}]})
    result = export_parquet(sm, "s", tmp_path / "pq")
    file = str(result.directory / "encounters.parquet")
    con = duckdb.connect()
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
                             [file]).fetchall())
    assert types["admission_time"] == "TIMESTAMP WITH TIME ZONE"
    logical = dict(con.execute("SELECT name, logical_type FROM parquet_schema(?)", [file]).fetchall())
    assert "isAdjustedToUTC=1" in logical["admission_time"].replace(" ", "")
    con.execute("SET TimeZone = 'America/Chicago'")
    (start,) = con.execute("SELECT admission_time FROM read_parquet(?)", [file]).fetchone()
    assert start.astimezone(dt.timezone.utc) == dt.datetime(2024, 3, 10, 6, 30, tzinfo=dt.timezone.utc)


def test_parquet_into_an_existing_empty_directory_writes_inside_it(sm, tmp_path):
    sm.save_scenario("s", {"patients": [{"patient_id": "p"}]})
    (tmp_path / "out").mkdir()
    result = export_parquet(sm, "s", tmp_path / "out")
    assert result.directory == tmp_path / "out" / "s-parquet"
    assert sorted(p.name for p in result.directory.iterdir()) == ["manifest.json", "patients.parquet"]


# --- item 13: what legacy files know -------------------------------------------------------------------------------

def test_migration_keeps_created_at_and_what_a_workspace_file_knows(tmp_path):
    db = tmp_path / "m.duckdb"
    results = list(migrate([DATA / "workspace.json", DATA / "predecessor.json"], db))
    assert [r.status for r in results] == ["migrated", "migrated"]
    with StateManager(db) as sm:
        workspace = sm.scenario_info("ws-cohort")
        assert workspace["created_at"] == dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
        (version,) = sm.scenario_history("ws-cohort")
        source = version["metadata"]["migrated_from"]
        assert (source["workspace_id"], source["product"], source["schema_version"], source["updated_at"]) == \
            ("8d7f2a52-1c7e-4b0e-9a55-0f3c2d1e9b10", "patientsim", "2.0", "2024-06-02T08:30:00")
        assert source["provenance_summary"] == {"total_entities": 2, "by_source_type": {"generated": 2},
                                                "skills_used": ["diabetes-management"]}
        assert (source["file"], source["shape"], len(source["sha256"])) == (str(DATA / "workspace.json"),
                                                                           "workspace", 64)
        predecessor = sm.scenario_info("pred-cohort")
        assert predecessor["created_at"] == dt.datetime(2024, 11, 2, 9, 15, tzinfo=dt.timezone.utc)
        assert predecessor["updated_at"] > predecessor["created_at"]


def test_an_import_keeps_created_at_so_a_copy_between_stores_keeps_its_date(tmp_path):
    with StateManager(tmp_path / "a.duckdb") as a, StateManager(tmp_path / "b.duckdb") as b:
        a.save_scenario("s", {"patients": [{"patient_id": "p"}]}, created_at="2021-05-06T07:08:09+02:00")
        (tmp_path / "s.json").write_text(dumps(export_document(a, "s")))
        import_file(b, tmp_path / "s.json")
        assert b.scenario_info("s")["created_at"] == a.scenario_info("s")["created_at"] == \
            dt.datetime(2021, 5, 6, 5, 8, 9, tzinfo=dt.timezone.utc)
        source = b.scenario_history("s")[0]["metadata"]["imported_from"]
        assert source["shape"] == "export" and "updated_at" in source
        b.save_scenario("s", {}, overwrite=True, created_at="1999-01-01T00:00:00")  # an overwrite keeps the date
        assert b.scenario_info("s")["created_at"].year == 2021


@pytest.mark.parametrize("value", ["yesterday", 5, NotATime(), "2024-01-01T00:00:00+01:00"[:7]])
def test_created_at_must_be_a_date_time(sm, value):
    with pytest.raises(ValidationError, match="created_at"):
        sm.save_scenario("s", {}, created_at=value)
    assert not sm.scenario_exists("s")


def test_a_documents_created_at_must_be_a_date_time():
    with pytest.raises(DocumentError, match="created_at: expected an ISO date-time"):
        parse_document({"name": "x", "created_at": "last week", "entities": {}}, "f.json")


# --- item 14: limits ------------------------------------------------------------------------------------------------

LIMITS = [
    (lambda sm: sm.save_scenario("n" * 201, {}), "name: the scenario name is 201 characters long; at most 200"),
    (lambda sm: sm.save_scenario("s", {}, tags=["t" * 101]), "tags[0]: the tag is 101 characters long; at most 100"),
    (lambda sm: sm.save_scenario("s", {}, tags=[f"t{i}" for i in range(101)]), "tags: 101 tags; at most 100"),
    (lambda sm: sm.save_scenario("s", {}, description="d" * 10_001),
     "description: the description is 10001 characters long; at most 10000"),
    (lambda sm: sm.save_scenario("s", {}, metadata={"m": "x" * 64_000}),
     "metadata: metadata is larger than 64000 characters of JSON"),
    (lambda sm: sm.save_scenario("a\x00b", {}), "name: the scenario name holds a NUL character"),
    (lambda sm: sm.save_scenario("s", {}, tags=["a\x00"]), "tags[0]: the tag holds a NUL character"),
    (lambda sm: sm.save_scenario("s", {}, description="\x00"), "description: the description holds a NUL"),
    (lambda sm: sm.add_entities("n" * 201, {}), "name: the scenario name is 201 characters long"),
    (lambda sm: sm.rename_scenario("s0", "n" * 201), "scenario not renamed: 1 problem"),
    (lambda sm: sm.update_scenario("s0", add_tags=["t" * 101]), "add_tags[0]: the tag is 101 characters long"),
    (lambda sm: sm.update_scenario("s0", description="d" * 10_001), "the description is 10001 characters long"),
]


@pytest.mark.parametrize("call, message", LIMITS)
def test_limits_say_what_and_where(sm, call, message):
    sm.save_scenario("s0", {}, tags=["keep"])
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(sm)
    assert [(s["name"], s["tags"], s["version"]) for s in sm.list_scenarios()] == [("s0", ["keep"], 1)]


def test_the_limits_themselves_are_allowed(sm):
    sm.save_scenario("n" * 200, {}, tags=["t" * 100] + [f"t{i}" for i in range(99)], description="d" * 10_000)
    assert len(sm.scenario_info("n" * 200)["tags"]) == 100


# --- item 15: paging, rename, update, delete by key, JSON columns ----------------------------------------------

def test_list_pages_with_offset(sm):
    for i in range(5):
        sm.save_scenario(f"s{i}", {})
    names = [s["name"] for s in sm.list_scenarios()]
    assert [s["name"] for s in sm.list_scenarios(limit=2, offset=1)] == names[1:3]
    assert sm.list_scenarios(offset=5) == [] and len(sm.list_scenarios(limit=None, offset=3)) == 2
    with pytest.raises(ValidationError, match="offset must be a non-negative integer"):
        sm.list_scenarios(offset=-1)


def test_rename_keeps_the_id_the_entities_the_versions_and_updated_at(sm):
    scenario_id = sm.save_scenario("old", {"patients": [{"patient_id": "p"}]})
    sm.save_scenario("old", {"patients": [{"patient_id": "q"}]}, overwrite=True)
    before = sm.scenario_info("old")
    renamed = sm.rename_scenario("old", "new")
    assert (renamed["scenario_id"], renamed["name"], renamed["version"], renamed["updated_at"]) == \
        (scenario_id, "new", 2, before["updated_at"])
    assert not sm.scenario_exists("old") and len(sm.scenario_history("new")) == 2
    assert sm.load_scenario(scenario_id, version=1)["entities"]["patient"][0]["patient_id"] == "p"
    assert sm.rename_scenario(scenario_id, "new")["version"] == 2  # the same name: nothing changes


def test_rename_refuses_a_taken_name_and_an_id(sm):
    first = sm.save_scenario("a", {})
    sm.save_scenario("b", {})
    with pytest.raises(ScenarioExistsError, match="scenario 'b' already exists"):
        sm.rename_scenario("a", "b")
    for name in (first, sm.scenario_info("b")["scenario_id"]):
        with pytest.raises(ValidationError, match="a name may not be a scenario's id"):
            sm.rename_scenario("a", name)
    assert sorted(s["name"] for s in sm.list_scenarios()) == ["a", "b"]


def test_update_changes_description_and_tags_as_a_new_version_with_the_same_entities(sm):
    sm.save_scenario("s", {"patients": [{"patient_id": "p"}]}, description="first", tags=["a", "b"])
    updated = sm.update_scenario("s", description=None, add_tags=["c", "a"], remove_tags=["b"])
    assert (updated["description"], updated["tags"], updated["version"]) == (None, ["a", "c"], 2)
    assert sm.update_scenario("s", tags=["a", "c"])["version"] == 2  # nothing changed: nothing written
    assert sm.update_scenario("s", tags=[], description="second")["tags"] == []
    history = sm.scenario_history("s")
    assert [(v["operation"], v["tags"], v["description"], v["changes"]) for v in history] == [
        ("update", [], "second", {}), ("update", ["a", "c"], None, {}),
        ("save", ["a", "b"], "first", {"patient": {"added": 1, "changed": 0, "removed": 0}})]
    assert sm.load_scenario("s")["entities"]["patient"] == sm.load_scenario("s", version=1)["entities"]["patient"]
    assert sm.restore_scenario("s", 1)["tags"] == ["a", "b"]


def test_delete_entities_by_key_single_and_composite(sm):
    sm.save_scenario("s", {"patients": [{"patient_id": f"p{i}"} for i in range(4)],
                           "claim_lines": [{"claim_id": "C", "line_number": n} for n in (1, 2, 3)],
                           "trial_visits": [{"usubjid": "S", "visit_num": 1, "visit_date": "2024-01-15"}]})
    result = sm.delete_entities("s", {"patients": ["p1", "p3", "p1"], "claim_line": [["C", 2]],
                                      "trial_visit": [["S", 1.0]]})
    assert result["deleted"] == {"patient": 2, "claim_line": 1, "trial_visit": 1}
    assert (result["not_found"], result["entity_count"], result["version"]) == ({}, 4, 2)
    loaded = sm.load_scenario("s")["entities"]
    assert [p["patient_id"] for p in loaded["patient"]] == ["p0", "p2"]
    assert [c["line_number"] for c in loaded["claim_line"]] == [1, 3] and loaded["trial_visit"] == []
    (latest, _) = sm.scenario_history("s")
    assert latest["operation"] == "delete_entities" and latest["changes"]["patient"]["removed"] == 2
    sm.add_entities("s", {"patients": [{"patient_id": "p9"}]})  # positions go on after a gap
    assert [p["patient_id"] for p in sm.load_scenario("s")["entities"]["patient"]] == ["p0", "p2", "p9"]
    assert sm.diff_scenarios("s", a_version=1, b_version=2)["patient"]["removed"] == ["p1", "p3"]


def test_delete_entities_refuses_an_unknown_key_unless_missing_ok(sm):
    sm.save_scenario("s", {"patients": [{"patient_id": "p0"}, {"patient_id": "p1"}]})
    with pytest.raises(EntityNotFoundError, match=r"holds no entity with these keys \(patient: 'nope'\); nothing "
                                                  "was deleted") as caught:
        sm.delete_entities("s", {"patient": ["p0", "nope"]})
    assert caught.value.missing == {"patient": ["nope"]} and isinstance(caught.value, LookupError)
    assert sm.scenario_info("s")["entity_count"] == 2
    result = sm.delete_entities("s", {"patient": ["p0", "nope"]}, missing_ok=True)
    assert (result["deleted"], result["not_found"]) == ({"patient": 1}, {"patient": ["nope"]})
    again = sm.delete_entities("s", {"patient": ["p0"]}, missing_ok=True)
    assert (again["deleted"], again["version"]) == ({}, 2)  # nothing to delete: no version


@pytest.mark.parametrize("keys, message", [
    ({"claim_line": ["C"]}, r"keys.claim_line\[0\]: the key has 2 parts \(claim_id, line_number\)"),
    ({"spaceship": ["x"]}, "keys.spaceship: unknown entity type 'spaceship'"),
    ({"patient": [None]}, r"keys.patient\[0\]: patient_id: a key may not be null"),
    ({"patient": "p0"}, "keys.patient: expected a list of keys"),
    ({"trial_visit": [["S", "one"]]}, r"visit_num: expected a number"),
    (["p0"], "keys must map an entity type to a list of keys"),
])
def test_delete_entities_checks_its_keys(sm, keys, message):
    sm.save_scenario("s", {"patients": [{"patient_id": "p0"}]})
    with pytest.raises(ValidationError, match=message):
        sm.delete_entities("s", keys)
    assert sm.scenario_info("s")["version"] == 1


def test_sql_json_columns_come_back_as_json_and_explain_is_allowed(file_sm, db_path):
    sm = file_sm
    from healthsim_state.interop import records

    sm.save_scenario("s", {"claims": [{"claim_id": "c", "other_diagnoses": [{"code": "E11.9", "rank": 2}]}]})
    result = run_query(db_path, "SELECT other_diagnoses, CAST(other_diagnoses AS VARCHAR) AS text FROM claims")
    assert records(result) == [{"other_diagnoses": [{"code": "E11.9", "rank": 2}],
                                "text": '[{"code":"E11.9","rank":2}]'}]
    plan = run_query(db_path, "EXPLAIN SELECT * FROM patients")
    assert plan.rows and "explain" in " ".join(plan.columns).lower()


# --- item 16: progress by entities -----------------------------------------------------------------------------------

def test_a_save_reports_progress_by_entities(sm, monkeypatch):
    from healthsim_state.engine import batch

    monkeypatch.setattr(batch, "CHUNK", 100)
    seen: list[tuple[int, int]] = []
    sm.save_scenario("big", {"patients": [{"patient_id": f"p{i}"} for i in range(250)],
                             "claims": [{"claim_id": f"c{i}"} for i in range(30)]}, progress=lambda *a: seen.append(a))
    assert seen == [(100, 280), (200, 280), (250, 280), (280, 280)]
    seen.clear()
    sm.add_entities("big", {"patients": [{"patient_id": "p0"}, {"patient_id": "new"}]},
                    progress=lambda *a: seen.append(a))
    assert seen == [(2, 2)]


def test_a_diff_sees_every_digit(sm):
    sm.save_scenario("d", {"patient": [{"patient_id": "p", "x": Decimal("0.10000000000000001")}]})
    sm.save_scenario("d", {"patient": [{"patient_id": "p", "x": Decimal("0.100000000000000010")}]}, overwrite=True)
    assert sm.diff_scenarios("d", a_version=1, b_version=2) == {"patient": {"added": [], "removed": [], "changed": [
        {"key": "p", "paths": ["x"]}]}}
