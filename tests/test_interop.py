"""Interchange as a library: every JSON shape we import, the export document,
Parquet, migration of legacy files, read-only SQL, safe file names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from healthsim_state import ScenarioNotFoundError, StateManager, StoreError
from healthsim_state.interop import (
    DocumentError,
    OutputExistsError,
    QueryError,
    UnknownEntityTypeError,
    export_document,
    export_json,
    export_parquet,
    find_legacy_files,
    import_file,
    migrate,
    parse_document,
    read_document,
    records,
    run_query,
)
from healthsim_state.interop.files import default_target, safe_filename, write_atomic
from healthsim_state.interop.json_io import dumps, load_json_bytes
from healthsim_state.interop.legacy import content_tag, legacy_directories, summarize
from healthsim_state.interop.query import jsonable

DATA = Path(__file__).parent / "data" / "interop"
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-scenario.json"


# --- the accepted shapes ---------------------------------------------------------

SHAPES = [
    # file, shape, name, description, tags, counts by the file's keys
    ("export-v1.json", "export", "exported-cohort", "Written by healthsim-state export", ["export"], {"patients": 1}),
    ("predecessor.json", "predecessor", "pred-cohort", "Exported by the previous HealthSim state manager",
     ["diabetes", "legacy"], {"patients": 2, "encounters": 1}),
    ("workspace.json", "workspace", "ws-cohort", "An old PatientSim workspace", ["workspace"],
     {"patients": 1, "encounters": 1}),
    ("entities.json", "entities", None, None, [], {"patients": 2, "claims": 1}),
    ("singular.json", "entities", "singular-keys", None, [], {"patient": 1, "encounter": 1}),
]


@pytest.mark.parametrize("file, shape, name, description, tags, counts", SHAPES)
def test_each_shape_is_recognised(file, shape, name, description, tags, counts):
    doc = read_document(DATA / file)
    assert (doc.shape, doc.name, doc.description, doc.tags, doc.counts) == (shape, name, description, tags, counts)


@pytest.mark.parametrize("file, shape, name, description, tags, counts", SHAPES)
def test_each_shape_imports(sm, file, shape, name, description, tags, counts):
    result = import_file(sm, DATA / file)
    loaded = sm.load_scenario(result.name)
    assert result.name == (name or Path(file).stem)
    assert (loaded["description"], loaded["tags"]) == (description, tags)
    assert sum(len(items) for items in loaded["entities"].values()) == sum(counts.values())


def test_workspace_item_becomes_its_data_with_provenance(sm):
    import_file(sm, DATA / "workspace.json")
    patient = sm.load_scenario("ws-cohort")["entities"]["patient"][0]
    assert patient == {
        "patient_id": "p-200", "name": {"given": "Chen", "family": "Li"}, "birthDate": "1950-02-11",
        "_provenance": {"source_type": "generated", "source_system": "patientsim",
                        "skill_used": "diabetes-management", "generated_at": "2024-06-01T12:00:00"},
    }


def test_predecessor_entities_come_back_in_canonical_shape(sm):
    import_file(sm, DATA / "predecessor.json")
    entities = sm.load_scenario("pred-cohort")["entities"]
    assert entities["patient"][0]["name"] == {"given": "Ana", "family": "Silva"}
    assert entities["patient"][0]["_provenance"]["seed"] == 42
    assert entities["encounter"][0]["visit_note"] == "kept as given"


def test_a_single_object_is_a_one_item_list_and_null_an_empty_one():
    doc = parse_document({"patient": {"patient_id": "p"}, "encounters": None})
    assert doc.entities == {"patient": [{"patient_id": "p"}], "encounters": []}


def test_bare_lists_may_sit_beside_name_description_and_tags():
    doc = parse_document({"name": "n", "description": "d", "tags": "one", "patients": []})
    assert (doc.name, doc.description, doc.tags, doc.entities) == ("n", "d", ["one"], {"patients": []})


def test_workspace_provenance_null_or_absent_adds_nothing():
    items = [{"entity_id": "a", "entity_type": "patient", "data": {"patient_id": "a"}, "provenance": None},
             {"entity_id": "b", "entity_type": "patient", "data": {"patient_id": "b"}}]
    doc = parse_document({"metadata": {"name": "w"}, "entities": {"patients": items}})
    assert doc.entities == {"patients": [{"patient_id": "a"}, {"patient_id": "b"}]}


def test_name_comes_from_option_then_document_then_file_name(sm, tmp_path):
    (tmp_path / "from-file.json").write_text('{"patients": []}')
    (tmp_path / "named.json").write_text('{"name": "from-doc", "patients": []}')
    assert import_file(sm, tmp_path / "from-file.json").name == "from-file"
    assert import_file(sm, tmp_path / "named.json").name == "from-doc"
    assert import_file(sm, tmp_path / "named.json", name="given").name == "given"


# --- bad documents ------------------------------------------------------------------

BAD_DOCUMENTS = [
    # text, what the message says
    ('{"patients": [\n  {"id": "a",}\n]}', "not valid JSON: Expecting property name enclosed in double quotes "
                                           "at line 2, column 14"),
    ("", "not valid JSON: Expecting value at line 1, column 1"),
    ("[1, 2]", "expected a JSON object (a scenario document or entity lists), got an array"),
    ('"text"', "got a string"),
    ('{"format": "something-else", "entities": {}}', "unknown format 'something-else'"),
    ('{"format": "healthsim-scenario", "version": 2, "entities": {}}', "version 2 was written by a newer"),
    ('{"format": "healthsim-scenario", "entities": {}}', "without a valid version"),
    ('{"format": "healthsim-scenario", "version": 1}', "entities: missing"),
    ('{"name": "x", "entities": [1]}', "entities: expected an object of entity type to list, got an array"),
    ('{"name": 5, "entities": {}}', "name: expected a string, got a number"),
    ('{"tags": [1], "entities": {}}', "tags: expected a list of strings"),
    ('{"metadata": {"name": "w"}, "entities": {"patients": [{"id": "p"}]}}',
     "entities.patients[0]: expected a workspace item"),
]


@pytest.mark.parametrize("text, message", BAD_DOCUMENTS)
def test_bad_documents_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DocumentError) as caught:
        read_document(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_syntax_errors_carry_line_and_column():
    with pytest.raises(DocumentError) as caught:
        load_json_bytes(b'{\n\n   "a": tru }', "f.json")
    assert (caught.value.line, caught.value.column, caught.value.source) == (3, 9, "f.json")


def test_not_utf8_is_named(tmp_path):
    with pytest.raises(DocumentError, match=r"not UTF-8 text \(byte 14\)"):
        load_json_bytes(b'{"patients": "\xff"}', "latin.json")


def test_bad_entities_name_every_problem_and_change_nothing(sm, tmp_path):
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps({"patients": [{"id": "a", "birth_date": "not a date"}, {"id": "b", "dob": "x"}]}))
    with pytest.raises(DocumentError) as caught:
        import_file(sm, path)
    assert str(caught.value).splitlines()[0] == f"{path}: scenario not saved: 2 problems"
    assert len(caught.value.problems) == 2
    assert sm.list_scenarios() == []


def test_a_document_without_a_name_from_stdin_needs_one():
    from healthsim_state.interop.json_io import scenario_name

    with pytest.raises(DocumentError, match="no scenario name"):
        scenario_name(parse_document({"patients": []}, "<stdin>"), "-")


# --- export ---------------------------------------------------------------------------

def test_export_document_is_versioned_and_keeps_every_field(sm):
    sample = json.loads(SAMPLE.read_text())
    sm.save_scenario("sample", sample, description="d", tags=["a", "b"])
    doc = export_document(sm, "sample")
    assert list(doc) == ["format", "version", "name", "description", "tags", "created_at", "updated_at", "entities"]
    assert (doc["format"], doc["version"], doc["name"], doc["description"], doc["tags"]) == \
        ("healthsim-scenario", 1, "sample", "d", ["a", "b"])
    assert doc["created_at"].endswith("+00:00")
    plurals = {sm.registry.resolve(key).mapping.plural for key, items in sample.items() if items}
    assert set(doc["entities"]) == plurals  # plural names, non-empty types only
    loaded = sm.load_scenario("sample")["entities"]
    assert doc["entities"]["patients"] == loaded["patient"]
    assert doc["entities"]["patients"][0]["_provenance"]["seed"] == 20240115


def test_export_then_import_gives_back_the_same_scenario(sm, tmp_path):
    sm.save_scenario("sample", json.loads(SAMPLE.read_text()), description="round trip", tags=["x"])
    path = export_json(sm, "sample", tmp_path / "out.json")
    with StateManager(tmp_path / "other.duckdb") as other:
        result = import_file(other, path)
        again = other.load_scenario(result.name)
    original = sm.load_scenario("sample")
    assert (result.name, result.shape) == ("sample", "export")
    assert again["entities"] == original["entities"]
    assert (again["description"], again["tags"]) == ("round trip", ["x"])


def test_export_refuses_to_overwrite_without_force(sm, tmp_path):
    sm.save_scenario("s", {"patients": [{"patient_id": "p"}]})
    target = tmp_path / "s.json"
    target.write_text("precious")
    with pytest.raises(OutputExistsError, match="already exists; use --force"):
        export_json(sm, "s", target)
    assert target.read_text() == "precious"
    export_json(sm, "s", target, force=True)
    assert json.loads(target.read_text())["name"] == "s"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "etc-passwd.json"),
    ("/abs/path", "abs-path.json"),
    ("..", "scenario.json"),
    (".hidden", "hidden.json"),
    ("", "scenario.json"),
    ("a\\b:c*d?e", "a-b-c-d-e.json"),
    ("diabetes cohort 2024", "diabetes-cohort-2024.json"),
    ("Ünïcode-名前", "Ünïcode-名前.json"),
    ("CON", "_CON.json"),
    ("-rf", "rf.json"),
    ("x" * 300, "x" * 100 + ".json"),
])
def test_default_file_names_never_leave_the_directory(tmp_path, name, expected):
    target = default_target(tmp_path, name, ".json")
    assert target.name == expected
    assert target.parent == tmp_path
    assert safe_filename(name) == expected[:-5]


def test_export_with_a_hostile_name_writes_inside_the_directory(sm, tmp_path):
    sm.save_scenario("../../etc/passwd", {"patients": [{"patient_id": "p"}]})
    out = tmp_path / "out"
    out.mkdir()
    path = export_json(sm, "../../etc/passwd", out)
    assert path == out / "etc-passwd.json"
    assert json.loads(path.read_text())["name"] == "../../etc/passwd"


def test_write_atomic_never_replaces_without_force(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, b"one")
    with pytest.raises(OutputExistsError):
        write_atomic(path, b"two")
    write_atomic(path, b"three", force=True)
    assert path.read_bytes() == b"three"
    with pytest.raises(OutputExistsError, match="is a directory"):
        write_atomic(tmp_path, b"x", force=True)
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f.json", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_dumps_is_strict_json():
    assert json.loads(dumps({"a": [1, "é"]})) == {"a": [1, "é"]}
    with pytest.raises(ValueError):
        dumps({"a": float("nan")})


# --- Parquet ----------------------------------------------------------------------------

def test_parquet_export_has_typed_columns_in_saved_order(sm, tmp_path):
    sm.save_scenario("sample", json.loads(SAMPLE.read_text()), tags=["t"])
    result = export_parquet(sm, "sample", tmp_path / "pq")
    names = sorted(p.name for p in result.directory.iterdir())
    assert names == sorted(["manifest.json", "patients.parquet", "encounters.parquet", "diagnoses.parquet",
                            "lab_results.parquet", "vital_signs.parquet", "clinical_notes.parquet",
                            "members.parquet", "claims.parquet", "claim_lines.parquet", "prescriptions.parquet",
                            "subjects.parquet", "trial_visits.parquet"])
    con = duckdb.connect()
    patients = con.execute("SELECT patient_id, given_name, family_name, date_of_birth, generation_seed "
                           "FROM read_parquet(?)", [str(result.directory / "patients.parquet")]).fetchall()
    assert [(p[1], p[2], p[3].isoformat(), p[4]) for p in patients] == [
        ("Maria", "Gonzalez", "1958-03-14", 20240115), ("James", "Whitaker", "1971-11-02", None)]
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
                             [str(result.directory / "claims.parquet")]).fetchall())
    assert types["service_date"] == "DATE" and types["total_charge"].startswith("DECIMAL")
    assert "scenario_id" not in types and "_residual" not in types
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"], manifest["name"], manifest["tags"]) == \
        ("healthsim-parquet", 1, "sample", ["t"])
    assert manifest["entities"]["patient"]["rows"] == 2
    assert manifest["entities"]["patient"]["columns"][0] == {"column": "patient_id", "type": "varchar",
                                                             "path": "patient_id"}


def test_parquet_export_replaces_only_a_previous_export(sm, tmp_path):
    sm.save_scenario("s", {"patients": [{"patient_id": "p"}]})
    target = tmp_path / "pq"
    export_parquet(sm, "s", target)
    with pytest.raises(OutputExistsError, match="use --force"):
        export_parquet(sm, "s", target)
    sm.save_scenario("s", {"patients": [{"patient_id": "p"}, {"patient_id": "q"}]}, overwrite=True)
    export_parquet(sm, "s", target, force=True)
    rows = duckdb.connect().execute("SELECT patient_id FROM read_parquet(?)", [str(target / "patients.parquet")])
    assert rows.fetchall() == [("p",), ("q",)]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "manifest.json").write_text("{}")  # not ours
    with pytest.raises(OutputExistsError, match="not an empty directory or a healthsim-state Parquet export"):
        export_parquet(sm, "s", precious, force=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_parquet_into_an_existing_directory_uses_the_safe_name(sm, tmp_path):
    sm.save_scenario("../x y", {"patients": [{"patient_id": "p"}]})
    (tmp_path / "keep.txt").write_text("other files live here")
    result = export_parquet(sm, "../x y", tmp_path)
    assert result.directory == tmp_path / "x-y-parquet"


def test_parquet_of_an_empty_scenario_is_just_a_manifest(sm, tmp_path):
    sm.save_scenario("empty", {})
    result = export_parquet(sm, "empty", tmp_path / "e")
    assert [p.name for p in result.directory.iterdir()] == ["manifest.json"]


# --- migration --------------------------------------------------------------------------

@pytest.fixture
def legacy_home(tmp_path) -> Path:
    home = tmp_path / "home"
    scenarios, workspaces = legacy_directories(home)
    scenarios.mkdir(parents=True)
    workspaces.mkdir(parents=True)
    for name in ("predecessor.json", "entities.json"):
        (scenarios / name).write_bytes((DATA / name).read_bytes())
    (workspaces / "8d7f2a52.json").write_bytes((DATA / "workspace.json").read_bytes())
    (scenarios / "broken.json").write_text("{ nope")
    (scenarios / "notes.txt").write_text("not a scenario")
    return home


def _snapshot(directory: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_migrate_dry_run_then_real_then_again(legacy_home, tmp_path):
    db = tmp_path / "m.duckdb"
    files = find_legacy_files(legacy_directories(legacy_home))
    assert [p.name for p in files] == ["broken.json", "entities.json", "predecessor.json", "8d7f2a52.json"]
    before = _snapshot(legacy_home)

    dry = list(migrate(files, db, dry_run=True))
    assert [(r.status, r.name) for r in dry] == [("failed", None), ("migrated", "entities"),
                                                 ("migrated", "pred-cohort"), ("migrated", "ws-cohort")]
    assert all(r.dry_run for r in dry) and not db.exists()
    assert dry[2].counts == {"patient": 2, "encounter": 1}
    assert "not valid JSON" in dry[0].reason and "line 1, column 3" in dry[0].reason

    real = list(migrate(files, db))
    assert [(r.status, r.name) for r in real] == [(r.status, r.name) for r in dry]
    assert summarize(real) == {"migrated": 3, "skipped": 0, "failed": 1}
    with StateManager(db) as sm:
        ws = sm.load_scenario("ws-cohort")
        assert ws["tags"] == ["workspace", "migrated", content_tag((DATA / "workspace.json").read_bytes())]
        assert ws["entities"]["encounter"][0]["_provenance"]["source_type"] == "derived"

    again = list(migrate(files, db))
    assert [r.status for r in again] == ["failed", "skipped", "skipped", "skipped"]
    assert _snapshot(legacy_home) == before  # originals never touched


def test_migrate_dry_run_leaves_an_existing_database_untouched(legacy_home, tmp_path):
    db = tmp_path / "m.duckdb"
    files = find_legacy_files(legacy_directories(legacy_home))[1:]
    list(migrate(files[:1], db))
    before = db.read_bytes()
    results = list(migrate(files, db, dry_run=True))
    assert [r.status for r in results] == ["skipped", "migrated", "migrated"]
    assert db.read_bytes() == before


def test_migrate_changed_content_fails_until_overwrite(legacy_home, tmp_path):
    db = tmp_path / "m.duckdb"
    path = legacy_home / ".healthsim" / "scenarios" / "predecessor.json"
    list(migrate([path], db))
    doc = json.loads(path.read_text())
    doc["entities"]["patients"].pop()
    path.write_text(json.dumps(doc))
    (changed,) = migrate([path], db)
    assert changed.status == "failed" and "migrated from different content" in changed.reason
    (replaced,) = migrate([path], db, overwrite=True)
    assert (replaced.status, replaced.replaced) == ("migrated", True)
    with StateManager(db) as sm:
        assert len(sm.load_scenario("pred-cohort")["entities"]["patient"]) == 1
        assert content_tag(path.read_bytes()) in sm.load_scenario("pred-cohort")["tags"]


def test_migrate_refuses_a_scenario_it_did_not_create(tmp_path):
    db = tmp_path / "m.duckdb"
    with StateManager(db) as sm:
        sm.save_scenario("pred-cohort", {}, description="mine")
    (result,) = migrate([DATA / "predecessor.json"], db)
    assert result.status == "failed" and "already exists and was not migrated" in result.reason
    with StateManager(db) as sm:
        assert sm.load_scenario("pred-cohort")["description"] == "mine"


def test_migrate_two_files_with_one_name_in_one_run(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.json").write_text(json.dumps({"patients": [{"patient_id": folder}]}))
    files = find_legacy_files([tmp_path / "a", tmp_path / "b"])
    results = list(migrate(files, tmp_path / "m.duckdb"))
    assert [r.status for r in results] == ["migrated", "failed"]
    assert "also comes from" in results[1].reason


def test_migrate_reports_bad_entities_per_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"patients": [{"patient_id": "p", "birthDate": "yesterday"}]}))
    (dry,) = migrate([path], tmp_path / "m.duckdb", dry_run=True)
    (real,) = migrate([path], tmp_path / "m.duckdb")
    assert dry.status == real.status == "failed"
    assert dry.reason == real.reason and "patient[0] @ birthDate" in real.reason


# --- read-only SQL ------------------------------------------------------------------

@pytest.fixture(scope="module")
def filled_db(tmp_path_factory) -> Path:
    db_path = tmp_path_factory.mktemp("sql") / "filled.duckdb"
    with StateManager(db_path) as sm:
        sm.save_scenario("sample", json.loads(SAMPLE.read_text()), tags=["t"])
    return db_path


def test_sql_select_with_parameters(filled_db):
    result = run_query(filled_db, "SELECT given_name, date_of_birth FROM patients WHERE family_name = ?",
                       ["Gonzalez"])
    assert result.columns == ["given_name", "date_of_birth"]
    assert records(result) == [{"given_name": "Maria", "date_of_birth": "1958-03-14"}]
    cte = run_query(filled_db, "WITH s AS (SELECT * FROM scenarios) SELECT name FROM s")
    assert cte.rows == [("sample",)]


@pytest.mark.parametrize("query, message", [
    ("DELETE FROM patients", "only a read-only query"),
    ("DROP TABLE patients", "only a read-only query"),
    ("INSERT INTO scenario_tags VALUES ('x', 0, 'y')", "only a read-only query"),
    ("UPDATE scenarios SET name = 'x'", "only a read-only query"),
    ("ATTACH 'other.duckdb'", "only a read-only query"),
    ("COPY patients TO 'out.csv'", "only a read-only query"),
    ("PRAGMA database_size", "only a read-only query"),
    ("SET threads = 1", "only a read-only query"),
    ("SELECT 1; DELETE FROM patients", "exactly one statement; found 2"),
    ("SELECT 1; SELECT 2", "exactly one statement; found 2"),
    ("   ", "the query is empty"),
    ("SELEC 1", "does not parse"),
    ("SELECT * FROM read_csv('/etc/passwd')", "the query failed"),
    ("SELECT nope FROM patients", "the query failed"),
])
def test_sql_refuses_anything_but_one_select(filled_db, query, message):
    with pytest.raises(QueryError, match=message):
        run_query(filled_db, query)
    assert run_query(filled_db, "SELECT count(*) FROM patients").rows == [(2,)]


def test_sql_needs_an_existing_database(tmp_path):
    with pytest.raises(StoreError, match="no database at"):
        run_query(tmp_path / "nothing.duckdb", "SELECT 1")
    assert not (tmp_path / "nothing.duckdb").exists()


def test_jsonable_values():
    import datetime as dt
    from decimal import Decimal

    assert jsonable([Decimal("1.50"), Decimal("2"), float("nan"), dt.date(2024, 1, 2), b"\x01", {"k": (1,)}]) == \
        [1.5, 2, None, "2024-01-02", "01", {"k": [1]}]


def test_scenario_info_by_id_then_name(sm):
    first = sm.save_scenario("a", {"patients": [{"patient_id": "p"}]}, tags=["x"])
    assert sm.scenario_info(first)["name"] == "a"
    summary = sm.scenario_info("a")
    assert (summary["entity_counts"], summary["tags"]) == ({"patient": 1}, ["x"])
    with pytest.raises(ScenarioNotFoundError):
        sm.scenario_info("missing")


def test_sql_waits_for_a_lock_then_says_who_holds_it(filled_db, monkeypatch):
    import subprocess
    import sys

    from healthsim_state import DatabaseLockedError

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               "con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(30)",
                               str(filled_db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("HEALTHSIM_LOCK_TIMEOUT", "0.3")
        with pytest.raises(DatabaseLockedError, match=r"is locked by another process \(PID \d+\) and stayed locked for 0.3 s") \
                as caught:
            run_query(filled_db, "SELECT 1")
        assert caught.value.pid == holder.pid and f"(PID {holder.pid})" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    assert run_query(filled_db, "SELECT 1").rows == [(1,)]
