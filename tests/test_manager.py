"""The public API of StateManager: the seed's five examples (in canonical shape),
isolation, atomicity, errors, listing, and the database file itself."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import healthsim_state
from healthsim_state import (
    HealthSimError,
    IncompatibleDatabaseError,
    ScenarioExistsError,
    ScenarioNotFoundError,
    StateManager,
    StoreError,
    ValidationError,
)

REPO = Path(__file__).resolve().parents[1]
PATIENT_ID = "123e4567-e89b-12d3-a456-426614174000"


def patient(pid: str = PATIENT_ID, given: str = "John", **extra) -> dict:
    return {"patient_id": pid, "name": {"given": given, "family": "Doe"}, "birthDate": "1980-01-15",
            "gender": "male", **extra}


def provenance(system: str = "patientsim") -> dict:
    return {"_provenance": {"source_type": "generated", "source_system": system}}


# --- the seed's five examples ------------------------------------------------------

def test_save_and_load_scenario(sm):
    flat = {"patient_id": PATIENT_ID, "given_name": "John", "family_name": "Doe",
            "date_of_birth": "1980-01-15", "gender": "male"}
    scenario_id = sm.save_scenario("test-scenario", {"patient": [flat], "encounter": []},
                                   description="Test scenario")
    loaded = sm.load_scenario("test-scenario")
    assert loaded["scenario_id"] == scenario_id
    assert loaded["name"] == "test-scenario"
    assert loaded["description"] == "Test scenario"
    assert loaded["entity_count"] == 1
    # The seed expected the flat given_name back; the product returns the canonical shape.
    assert loaded["entities"]["patient"] == [{**patient(), **provenance()}]
    assert set(loaded["entities"]) == set(sm.entity_types)
    assert loaded["entities"]["encounter"] == []


def test_list_scenarios(sm):
    sm.save_scenario("scenario-1", {"patient": []})
    sm.save_scenario("scenario-2", {"patient": []})
    names = [s["name"] for s in sm.list_scenarios()]
    assert names == ["scenario-2", "scenario-1"]  # newest first
    item = sm.list_scenarios()[0]
    assert {"scenario_id", "name", "description", "created_at", "updated_at", "entity_count", "tags"} <= set(item)


def test_delete_scenario(sm):
    sm.save_scenario("to-delete", {"patient": [patient()]})
    assert sm.delete_scenario("to-delete") is True
    assert "to-delete" not in [s["name"] for s in sm.list_scenarios()]
    assert sm.delete_scenario("to-delete") is False
    assert sm.scenario_exists("to-delete") is False


def test_overwrite_scenario(sm):
    first_id = sm.save_scenario("overwrite-test", {"patient": [{"given_name": "First"}]},
                                description="one", tags=["a"])
    created = sm.load_scenario(first_id)["created_at"]
    second_id = sm.save_scenario("overwrite-test", {"patient": [{"given_name": "Second"}]},
                                 overwrite=True, tags=["b"])
    loaded = sm.load_scenario("overwrite-test")
    assert second_id == first_id
    assert [p["name"]["given"] for p in loaded["entities"]["patient"]] == ["Second"]
    assert loaded["tags"] == ["b"] and loaded["description"] is None
    assert loaded["created_at"] == created and loaded["updated_at"] > created


def test_scenario_tags(sm):
    sm.save_scenario("tagged", {"patient": []}, tags=["Diabetes", "test"])
    assert [s["name"] for s in sm.list_scenarios(tag="diabetes")] == ["tagged"]
    assert sm.list_scenarios(tag="nonexistent") == []
    assert sm.load_scenario("tagged")["tags"] == ["Diabetes", "test"]


def test_a_list_gives_each_scenario_its_own_tags_in_order(sm):
    sm.save_scenario("first", {}, tags=["z", "a", "m"])
    sm.save_scenario("bare", {})
    sm.save_scenario("last", {}, tags=["b", "a"])
    listed = {item["name"]: item["tags"] for item in sm.list_scenarios()}
    assert listed == {"first": ["z", "a", "m"], "bare": [], "last": ["b", "a"]}
    assert [item["tags"] for item in sm.list_scenarios(limit=1, offset=1)] == [[]]
    # a full page reads its own scenarios' tags, a page that holds every scenario all the tags
    assert [item["tags"] for item in sm.list_scenarios(limit=2)] == [["b", "a"], []]
    assert [item["tags"] for item in sm.list_scenarios(limit=4)] == [["b", "a"], [], ["z", "a", "m"]]
    sm.delete_scenario("last")
    assert [item["tags"] for item in sm.list_scenarios(limit=None)] == [[], ["z", "a", "m"]]


# --- the shape of what comes back -------------------------------------------------------

def test_load_returns_utc_aware_datetimes_and_all_types(sm):
    sm.save_scenario("s", {})
    loaded = sm.load_scenario("s")
    for key in ("created_at", "updated_at"):
        assert loaded[key].tzinfo is not None and loaded[key].utcoffset() == dt.timedelta(0)
    assert loaded["entities"] == {t: [] for t in sm.entity_types}
    assert loaded["entity_count"] == 0 and loaded["tags"] == []


def test_plural_keys_and_order_are_kept(sm):
    ids = [f"p{i}" for i in (5, 1, 9, 3)]
    sm.save_scenario("s", {"patients": [{"patient_id": i} for i in ids]})
    assert [p["patient_id"] for p in sm.load_scenario("s")["entities"]["patient"]] == ids


def test_a_name_may_not_be_another_scenarios_id(sm):
    """Lookups take an id or a name: a name equal to an id would shadow it
    (a delete by the id could remove the other scenario)."""
    first = sm.save_scenario("alpha", {"patient": [patient()]})
    for write in (lambda: sm.save_scenario(first, {}), lambda: sm.add_entities(first + "", {}, create=True)
                  if not sm.scenario_exists(first) else sm.save_scenario(first, {})):
        with pytest.raises(ValidationError, match="is the id of another scenario"):
            write()
    assert [s["name"] for s in sm.list_scenarios()] == ["alpha"]
    assert sm.load_scenario(first)["name"] == "alpha"


def test_names_are_stored_verbatim(sm):
    names = ["O'Brien; DROP TABLE scenarios; --", "日本語 シナリオ", "../../etc/passwd", "line\nbreak", " "]
    for name in names:
        sm.save_scenario(name, {"patient": [patient()]})
    assert sorted(s["name"] for s in sm.list_scenarios()) == sorted(names)
    for name in names:
        assert sm.load_scenario(name)["name"] == name


def test_nul_characters_agree_on_every_backend(sm):
    """Text with NUL (which PostgreSQL text cannot hold): refused in names, tags
    and descriptions, kept in an entity (in its residual), found by no search."""
    for call in (lambda: sm.save_scenario("a\x00b", {}), lambda: sm.save_scenario("ok", {}, tags=["t\x00"]),
                 lambda: sm.save_scenario("ok", {}, description="d\x00")):
        with pytest.raises(ValidationError, match="NUL character"):
            call()
    sm.save_scenario("kept", {"patient": [patient(given="A\x00na", **{"k\x00": "v\x00"})]})
    (loaded,) = sm.load_scenario("kept")["entities"]["patient"]
    assert loaded["name"]["given"] == "A\x00na" and loaded["k\x00"] == "v\x00"
    assert sm.list_scenarios(search="\x00") == [] and sm.list_scenarios(tag="\x00") == []
    assert not sm.scenario_exists("a\x00b") and [s["name"] for s in sm.list_scenarios()] == ["kept"]


def test_entity_types_are_the_registered_singular_names(sm):
    assert len(sm.entity_types) == 15 and "lab_result" in sm.entity_types


def test_typed_columns_are_queryable_with_sql(sm, store):
    sid = sm.save_scenario("sql", {"patient": [patient(given="Ana"), patient("p2", given="Bo")]})
    sm.close()
    rows = store.sql("SELECT given_name, date_of_birth FROM patients WHERE scenario_id = ? ORDER BY _position", [sid])
    assert rows == [("Ana", dt.date(1980, 1, 15)), ("Bo", dt.date(1980, 1, 15))]


# --- isolation ---------------------------------------------------------------------------

def test_same_patient_id_in_two_scenarios_is_isolated(sm):
    sm.save_scenario("a", {"patient": [patient(given="Alice")]})
    sm.save_scenario("b", {"patient": [patient(given="Bob")]})
    sm.save_scenario("b", {"patient": [patient(given="Bobby")]}, overwrite=True)
    assert sm.load_scenario("a")["entities"]["patient"][0]["name"]["given"] == "Alice"
    sm.delete_scenario("b")
    assert sm.load_scenario("a")["entities"]["patient"] == [{**patient(given="Alice"), **provenance()}]


def test_delete_leaves_no_rows_behind(sm, store):
    sm.save_scenario("keep", {"patient": [patient()], "encounter": [{"patient_id": PATIENT_ID}]})
    sid = sm.save_scenario("gone", {"patient": [patient()], "encounter": [{"patient_id": PATIENT_ID}]},
                           tags=["x"])
    sm.delete_scenario(sid)
    sm.close()
    leftovers = {t: store.sql(f'SELECT count(*) FROM "{t}" WHERE scenario_id = ?', [sid])[0][0]
                 for t in store.tables() if t not in ("_healthsim_meta", "_healthsim_tables")}
    ((kept,),) = store.sql("SELECT count(*) FROM patients")
    assert set(leftovers.values()) == {0} and kept == 1


# --- atomicity -----------------------------------------------------------------------------

def big_scenario(bad_at: int | None = None, size: int = 10_000) -> dict:
    patients = [{"patient_id": f"p{i}", "name": {"given": f"G{i}"}, "birthDate": "1990-02-03"} for i in range(size)]
    if bad_at is not None:
        patients[bad_at]["birthDate"] = "1990-02-30"
    return {"patient": patients}


def test_invalid_entity_7000_of_10000_leaves_the_database_as_before(store):
    with StateManager(store.target) as sm:
        sm.save_scenario("existing", {"patient": [patient()]})
    before = store.snapshot()
    with StateManager(store.target) as sm:
        with pytest.raises(ValidationError) as caught:
            sm.save_scenario("big", big_scenario(bad_at=7000))
        assert not sm.scenario_exists("big")
    problem = caught.value.problems[0]
    assert (problem.entity_type, problem.position, problem.path, problem.value) == (
        "patient", 7000, "birthDate", "1990-02-30")
    assert "patient[7000] @ birthDate" in str(caught.value)
    assert store.snapshot() == before


def test_invalid_overwrite_leaves_the_old_scenario_intact(store):
    with StateManager(store.target) as sm:
        sm.save_scenario("big", big_scenario(size=2_000), tags=["v1"])
    before = store.snapshot()
    with StateManager(store.target) as sm:
        with pytest.raises(ValidationError):
            sm.save_scenario("big", big_scenario(bad_at=1999, size=2_000), overwrite=True, tags=["v2"])
        assert len(sm.load_scenario("big")["entities"]["patient"]) == 2_000
    assert store.snapshot() == before


def test_a_failure_inside_the_write_rolls_everything_back(store):
    """A value only the engine refuses (a lone surrogate: not UTF-8) fails in the
    middle of the bulk write, after the scenario row and other types were written."""
    with StateManager(store.target) as sm:
        sm.save_scenario("existing", {"patient": [patient()]})
    before = store.snapshot()
    with StateManager(store.target) as sm:
        entities = {"encounter": [{"encounter_id": "e1"}], "patient": [patient(), patient("p2", given="\ud800")]}
        with pytest.raises(ValidationError) as caught:
            sm.save_scenario("bad", entities)
        problem = caught.value.problems[0]
        assert (problem.entity_type, problem.position, problem.path) == ("patient", 1, "name.given")
    assert store.snapshot() == before


# --- validation errors ------------------------------------------------------------------------

def test_every_bad_entity_is_reported_with_a_cap_in_the_message(sm):
    entities = {"patient": [{"patient_id": i} for i in range(30)]}  # ints are not varchar
    with pytest.raises(ValidationError) as caught:
        sm.save_scenario("bad", entities)
    error = caught.value
    assert [p.position for p in error.problems] == list(range(30))
    assert "30 problems" in str(error) and "... and 10 more" in str(error)
    assert "expected a string, got 0 (type varchar)" in str(error)


@pytest.mark.parametrize("entities, fragment", [
    ({"spaceship": []}, "unknown entity type 'spaceship'; registered types:"),
    ({"patient": {"patient_id": "x"}}, "expected a list of entities, got dict"),
    ({"patient": ["not a dict"]}, "expected an object (a dict), got str"),
    ({"patient": [], "patients": []}, "given twice"),
    ({"member": [{"name": {"given": "A"}}]}, "member[0] @ member_id: required field is missing"),
    ({"patient": [{"patient_id": None}]}, "a key or required field may not be null"),
    ({"patient": [patient(), patient()]}, "duplicate key (patient_id='123e4567-e89b-12d3-a456-426614174000'): "
                                          "positions 0 and 1"),
    ({"trial_visit": [{"usubjid": "S-1", "visit_num": 1}, {"usubjid": "S-1", "visit_num": 1.0}]},
     "duplicate key (usubjid='S-1', visit_num=1.0): positions 0 and 1"),
    ({"patient": [{"x": float("nan")}]}, "patient[0] @ x: NaN and Infinity are not JSON numbers"),
    ({"patient": [{"x": (1, 2)}]}, "tuple is not a JSON value"),
    ({"patient": [{"x": {1: "a"}}]}, "key 1 is not a string"),
    ({"claim": [{"total_charge": 1.005}]}, "does not fit decimal(12,2) without losing a digit"),
    ({"vital_sign": [{"blood_pressure": {"systolic": True}}]}, "expected an integer"),
    ({"encounter": [{"period": {"start": "yesterday"}}]}, "expected an ISO date-time"),
    ({"patient": [{"birthDate": "1970-03"}]}, "expected a full ISO date"),
    ({"patient": [{"deceased": "no"}]}, "expected true or false"),
    ({"subject": [{"usubjid": "S", "name": "Jane Doe"}], }, None),  # blocked path: fine, kept as given
    (["patient"], "entities must be a dict"),
])
def test_bad_input_is_a_validation_error_naming_the_place(sm, entities, fragment):
    if fragment is None:
        sm.save_scenario("ok", entities)
        assert sm.load_scenario("ok")["entities"]["subject"][0]["name"] == "Jane Doe"
        return
    with pytest.raises(ValidationError) as caught:
        sm.save_scenario("bad", entities)
    assert fragment in str(caught.value)
    assert not sm.scenario_exists("bad")


@pytest.mark.parametrize("call, fragment", [
    (lambda sm: sm.save_scenario("", {}), "the scenario name must be a non-empty string"),
    (lambda sm: sm.save_scenario(None, {}), "the scenario name must be a non-empty string"),
    (lambda sm: sm.save_scenario("x", {}, description=5), "description must be a string"),
    (lambda sm: sm.save_scenario("x", {}, tags="one"), "tags must be a list of strings"),
    (lambda sm: sm.save_scenario("x", {}, tags=["ok", 3]), "tags[1]: a tag must be a non-empty string"),
    (lambda sm: sm.list_scenarios(limit=-1), "limit must be a non-negative integer"),
])
def test_bad_arguments_are_validation_errors(sm, call, fragment):
    with pytest.raises(ValidationError) as caught:
        call(sm)
    assert fragment in str(caught.value)


def test_existing_name_needs_overwrite(sm):
    sm.save_scenario("dup", {})
    with pytest.raises(ScenarioExistsError, match="overwrite=True"):
        sm.save_scenario("dup", {})
    assert issubclass(ScenarioExistsError, ValueError) and issubclass(ScenarioExistsError, HealthSimError)


def test_not_found_is_a_lookup_error_and_a_value_error(sm):
    with pytest.raises(ScenarioNotFoundError, match="'nope'") as caught:
        sm.load_scenario("nope")
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, ValueError)


# --- list_scenarios ---------------------------------------------------------------------------

def test_list_filters_combine_and_are_case_insensitive(sm):
    sm.save_scenario("Diabetes cohort", {}, tags=["Chronic"])
    sm.save_scenario("ER visits", {}, description="diabetic emergencies", tags=["acute"])
    sm.save_scenario("Asthma", {}, tags=["chronic"])
    assert [s["name"] for s in sm.list_scenarios(search="DIABET")] == ["ER visits", "Diabetes cohort"]
    assert [s["name"] for s in sm.list_scenarios(tag="CHRONIC")] == ["Asthma", "Diabetes cohort"]
    assert [s["name"] for s in sm.list_scenarios(tag="chronic", search="diab")] == ["Diabetes cohort"]
    assert [s["name"] for s in sm.list_scenarios(limit=1)] == ["Asthma"]
    assert sm.list_scenarios(search="%") == []  # a percent sign is text, not a wildcard


def test_overwrite_moves_a_scenario_to_the_top_of_the_list(sm):
    sm.save_scenario("old", {})
    sm.save_scenario("new", {})
    sm.save_scenario("old", {}, overwrite=True)  # changes nothing, writes nothing: stays where it is
    assert [s["name"] for s in sm.list_scenarios()] == ["new", "old"]
    sm.save_scenario("old", {}, description="now", overwrite=True)
    assert [s["name"] for s in sm.list_scenarios()] == ["old", "new"]


# --- the database file -------------------------------------------------------------------------

def test_default_path_is_created_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with StateManager() as sm:
        sm.save_scenario("x", {})
    assert (tmp_path / ".healthsim" / "healthsim.duckdb").is_file()


def test_module_functions_use_healthsim_db(monkeypatch, store):
    monkeypatch.setenv("HEALTHSIM_DB", store.target)
    sid = healthsim_state.save_scenario("m", {"patient": [patient()]}, tags=["t"])
    assert healthsim_state.load_scenario("m")["scenario_id"] == sid
    assert [s["name"] for s in healthsim_state.list_scenarios(tag="t")] == ["m"]
    assert healthsim_state.delete_scenario(sid) is True
    assert store.tables() and "scenarios" in store.tables()


def test_a_store_from_a_newer_version_is_refused(store):
    with StateManager(store.target) as sm:
        sm.save_scenario("s", {})
    store.execute("UPDATE _healthsim_meta SET value = '99' WHERE key = 'schema_version'")
    with StateManager(store.target) as sm, pytest.raises(IncompatibleDatabaseError, match="schema version 99"):
        sm.list_scenarios()


def test_a_file_that_is_not_a_database_is_refused_and_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"just some text, not a database" * 100)
    for attempt in (lambda: StateManager(path).list_scenarios(), lambda: StateManager(path).save_scenario("s", {})):
        with pytest.raises(StoreError, match="notes.duckdb"):
            attempt()
    assert path.read_bytes() == b"just some text, not a database" * 100


# --- time zones ---------------------------------------------------------------------------------

SAVE_IN_TZ = """
import sys
from healthsim_state import StateManager
with StateManager(sys.argv[1]) as sm:
    sm.save_scenario(sys.argv[2], {"encounter": [{"encounter_id": "e", "period": {"start": "2024-03-10T01:30:00-05:00"}}]})
    assert sm.load_scenario(sys.argv[2])["entities"]["encounter"][0]["period"]["start"] == "2024-03-10T01:30:00-05:00"
"""


def test_the_stored_instant_does_not_depend_on_the_machine_time_zone(store):
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        env = {**os.environ, "TZ": zone, "PGTZ": zone, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", SAVE_IN_TZ, store.target, zone], check=True, env=env)
    instants = {row[0] for row in store.sql("SELECT admission_time FROM encounters")}
    assert instants == {dt.datetime(2024, 3, 10, 6, 30)}


# --- no SQL per entity ---------------------------------------------------------------------------

def count_statements(monkeypatch, kind: str) -> list[str]:
    """Every SQL statement any session sends (execute and fetch alike)."""
    if kind == "duckdb":
        from healthsim_state.backends.duckdb_backend import DuckDBSession as session_class
    else:
        from healthsim_state.backends.postgres_backend import PostgresSession as session_class

    sent: list[str] = []
    inside = [0]  # fetch_columns may read by way of fetchall: one statement
    for name in ("execute", "fetchall", "fetch_columns"):
        original = getattr(session_class, name)

        def counted(self, sql, *args, _original=original):
            if not inside[0]:
                sent.append(sql)
            inside[0] += 1
            try:
                return _original(self, sql, *args)
            finally:
                inside[0] -= 1

        monkeypatch.setattr(session_class, name, counted)
    return sent


def statements_for(sm, kind: str, size: int, monkeypatch) -> tuple[int, int, int]:
    """Statements of a save, an overwrite and a load of ``size`` patients and encounters."""
    entities = {"patient": [{"patient_id": f"p{i}"} for i in range(size)],
                "encounter": [{"encounter_id": f"e{i}"} for i in range(size)]}
    sm.save_scenario(f"warm-up-{size}", {"patient": [{"patient_id": "p"}]})  # the store is made and synced
    sent = count_statements(monkeypatch, kind)
    counts = []
    for action in (lambda: sm.save_scenario(f"s{size}", entities),
                   lambda: sm.save_scenario(f"s{size}", entities, overwrite=True),
                   lambda: sm.load_scenario(f"s{size}")):
        before = len(sent)
        action()
        counts.append(len(sent) - before)
    monkeypatch.undo()
    assert len(sm.load_scenario(f"s{size}")["entities"]["encounter"]) == size
    return tuple(counts)


def test_statement_count_does_not_grow_with_entities(sm, store, monkeypatch):
    """Entities go in and out in bulk: 5,000 take as many statements as 10."""
    small = statements_for(sm, store.kind, 10, monkeypatch)
    large = statements_for(sm, store.kind, 5_000, monkeypatch)
    assert small == large, (small, large)


def test_a_session_knows_which_tables_exist_and_goes_on_after_asking(sm):
    """Every operation asks whether the store's tables are there (DuckDB asks
    its catalog, the server a query): a missing one fails nothing."""
    sm.save_scenario("s", {})
    with sm._backend.session(write=True) as session:
        assert session.table_exists("scenarios")
        assert not session.table_exists("no_such_table")
        session.execute("CREATE TABLE made_here (a INTEGER)")
        assert session.table_exists("made_here")  # this transaction's own
        assert session.fetchall("SELECT count(*) FROM scenarios") == [(1,)]


# --- streaming in chunks ------------------------------------------------------------------------

@pytest.fixture
def small_chunks(monkeypatch):
    from healthsim_state.engine import batch

    monkeypatch.setattr(batch, "CHUNK", 100)


def test_duplicate_keys_are_found_across_chunks(sm, small_chunks):
    patients = [{"patient_id": f"p{i}"} for i in range(1000)]
    patients[950]["patient_id"] = "p50"
    with pytest.raises(ValidationError, match=r"duplicate key \(patient_id='p50'\): positions 50 and 950"):
        sm.save_scenario("dups", {"patient": patients})
    assert not sm.scenario_exists("dups")


def test_a_problem_in_the_last_chunk_rolls_back_the_chunks_already_written(sm, store, small_chunks):
    sm.save_scenario("keep", {"patient": [patient()]})
    entities = big_scenario(bad_at=999, size=1000)
    entities["encounter"] = [{"encounter_id": f"e{i}"} for i in range(300)]
    with pytest.raises(ValidationError, match=r"patient\[999\] @ birthDate"):
        sm.save_scenario("late", entities)
    assert [s["name"] for s in sm.list_scenarios()] == ["keep"]
    assert store.sql("SELECT count(*) FROM patients") == [(1,)]
    assert store.sql("SELECT count(*) FROM encounters") == [(0,)]
    sm.save_scenario("late", big_scenario(size=1000))
    assert [p["patient_id"] for p in sm.load_scenario("late")["entities"]["patient"]] == [f"p{i}" for i in range(1000)]


# --- add_entities ---------------------------------------------------------------------------------

def test_add_entities_appends_and_replaces_by_key(sm):
    sm.save_scenario("grow", {"patient": [patient("p1", given="A"), patient("p2", given="B")]})
    result = sm.add_entities("grow", {"patients": [patient("p2", given="B2"), patient("p3", given="C")],
                                      "encounter": [{"encounter_id": "e1"}]})
    assert result["added"] == {"patient": 1, "encounter": 1} and result["replaced"] == {"patient": 1, "encounter": 0}
    assert result["entity_count"] == 4
    loaded = sm.load_scenario("grow")
    assert [(p["patient_id"], p["name"]["given"]) for p in loaded["entities"]["patient"]] == [
        ("p1", "A"), ("p2", "B2"), ("p3", "C")]
    assert loaded["entity_count"] == 4 and loaded["updated_at"] > loaded["created_at"]


def test_add_entities_in_batches_builds_a_big_scenario(sm, small_chunks):
    for start in range(0, 1000, 250):
        sm.add_entities("batched", {"lab_result": [{"lab_result_id": f"l{i}", "value": str(i)}
                                                   for i in range(start, start + 250)]})
    labs = sm.load_scenario("batched")["entities"]["lab_result"]
    assert [lab["lab_result_id"] for lab in labs] == [f"l{i}" for i in range(1000)]


def test_add_entities_composite_and_decimal_keys_match_stored_ones(sm):
    sm.add_entities("visits", {"trial_visit": [{"usubjid": "S-1", "visit_num": 1}, {"usubjid": "S-1", "visit_num": 2.5}]})
    result = sm.add_entities("visits", {"trial_visit": [{"usubjid": "S-1", "visit_num": 1.0, "visit_name": "again"}]})
    assert result["replaced"] == {"trial_visit": 1}
    visits = sm.load_scenario("visits")["entities"]["trial_visit"]
    assert [v.get("visit_name") for v in visits] == ["again", None]


def test_add_entities_is_atomic_and_validated(sm):
    sm.save_scenario("base", {"patient": [patient("p1")]})
    with pytest.raises(ValidationError, match=r"patient\[1\] @ birthDate"):
        sm.add_entities("base", {"encounter": [{"encounter_id": "e"}],
                                 "patient": [patient("p2"), patient("p3", birthDate="1990-13-01")]})
    assert sm.load_scenario("base")["entity_count"] == 1
    with pytest.raises(ScenarioNotFoundError, match="create=True"):
        sm.add_entities("absent", {"patient": [patient()]}, create=False)
    assert not sm.scenario_exists("absent")


def test_problems_of_every_kind_are_reported_in_one_run(sm):
    with pytest.raises(ValidationError) as caught:
        sm.save_scenario("mixed", {"spaceship": [], "patient": [{"patient_id": 1}], "encounter": "nope"})
    messages = str(caught.value)
    assert "3 problems" in messages and "unknown entity type 'spaceship'" in messages
    assert "patient[0] @ patient_id: expected a string" in messages and "expected a list of entities" in messages
    assert not sm.scenario_exists("mixed")


def test_scenario_info_is_the_summary_without_entities(sm):
    sid = sm.save_scenario("info", {"patient": [patient()], "encounter": [{}, {}]}, tags=["t"], description="d")
    info = sm.scenario_info("info")
    assert info["scenario_id"] == sid and info["entity_counts"] == {"patient": 1, "encounter": 2}
    assert (info["entity_count"], info["tags"], info["description"]) == (3, ["t"], "d")
    assert "entities" not in info and info == sm.scenario_info(sid)
    with pytest.raises(ScenarioNotFoundError):
        sm.scenario_info("nope")


def test_validate_checks_without_writing(sm):
    assert sm.validate({"patients": [patient()], "encounter": [{}]}) == {"patient": 1, "encounter": 1}
    with pytest.raises(ValidationError, match=r"patient\[1\] @ birthDate"):
        sm.validate({"patient": [patient(), patient("p2", birthDate="yesterday")]})
    assert sm.list_scenarios() == []


def test_a_stored_time_is_made_aware_as_replace_makes_it():
    """The fast form of a stored time's aware value (see scenarios._aware)
    is exactly ``replace(tzinfo=utc)``, whatever the fields."""
    from healthsim_state.store.scenarios import _aware

    utc = dt.timezone.utc
    for naive in (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                  dt.datetime(2026, 12, 7, 1, 2, 3), dt.datetime(2024, 2, 29, 12, 0, 0, 1),
                  dt.datetime(1970, 1, 1, 0, 0, 0, 500000)):
        made = _aware(naive)
        assert made == naive.replace(tzinfo=utc) and made.tzinfo is utc and made.fold == 0
        assert (made.year, made.month, made.day, made.hour, made.minute, made.second, made.microsecond) == (
            naive.year, naive.month, naive.day, naive.hour, naive.minute, naive.second, naive.microsecond)
