"""One store, many clients: the store's own mappings are in force.

A client's mapping files may add to the store's set (applied on open, for
everyone); anything else they change waits for ``evolve`` / ``migrate-schema``.
Read-only opens never create, evolve or write; nothing creates a file but a
write; big scenarios are read in pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

import clirun
from healthsim_state import (
    MappingDriftWarning,
    ReadOnlyError,
    ScenarioNotFoundError,
    StateManager,
    StoreNotFoundError,
    ValidationError,
)
from healthsim_state.interop import run_query

REPO = Path(__file__).resolve().parents[1]
PATIENT_YAML = (REPO / "mappings" / "patient.yaml").read_text()


def patient_mapping(directory: Path, *, drop: str | None = None, extra: str | None = None,
                    move_ssn: bool = False) -> Path:
    """A copy of the built-in patient mapping, with a field dropped or added,
    or ssn moved to identifiers.ssn."""
    directory.mkdir(parents=True, exist_ok=True)
    text = PATIENT_YAML
    if move_ssn:
        text = text.replace("    path: ssn\n", "    path: identifiers.ssn\n")
    if drop is not None:
        lines = text.splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.strip() == f"- column: {drop}")
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("- column:"))
        # ... and the fhir: elements naming it (the section is checked with the file)
        text = "".join(line for line in lines[:start] + lines[end:]
                       if f"field: {drop}}}" not in line and f"with: {drop}}}" not in line)
    if extra is not None:  # at the end of the fields (before the fhir: section, if any)
        head, fhir, tail = text.partition("\nfhir:")
        text = head.rstrip("\n") + "\n" + extra + (fhir + tail if fhir else "")
    (directory / "patient.yaml").write_text(text)
    return directory


NICKNAME = "  - column: nickname\n    path: name.nickname\n    type: varchar\n    aliases: [nick]\n"
DEVICE_YAML = """\
entity: device_reading
table: device_readings
primary_key: reading_id
fields:
  - {column: reading_id, path: reading_id, type: varchar}
  - {column: taken_at, path: taken_at, type: timestamp}
  - {column: value, path: reading.value, type: double}
"""


# --- the store's mappings are in force -------------------------------------------------------

def test_a_client_without_mapping_files_loads_what_another_client_added(tmp_path):
    db = tmp_path / "shared.duckdb"
    mine = patient_mapping(tmp_path / "mine", extra=NICKNAME)
    (mine / "device_reading.yaml").write_text(DEVICE_YAML)
    with StateManager(db, mapping_dirs=[mine]) as writer:
        writer.save_scenario("s", {"patient": [{"patient_id": "p1", "nick": "Annie", "ssn": "1"}],
                                   "device_reading": [{"reading_id": "r1", "reading": {"value": 1.5}}]})
    with StateManager(db) as plain:  # built-in mappings only, no environment
        assert "device_reading" in plain.entity_types
        loaded = plain.load_scenario("s")["entities"]
        assert loaded["patient"][0]["name"] == {"nickname": "Annie"}
        assert loaded["device_reading"] == [{"reading_id": "r1", "reading": {"value": 1.5}}]
        plain.save_scenario("t", {"patient": [{"patient_id": "p2", "nick": "Bo"}]})  # the store's alias works
    assert run_query(db, "SELECT nickname FROM patients ORDER BY nickname").rows == [("Annie",), ("Bo",)]


def test_changes_beyond_additions_wait_and_warn_once(tmp_path):
    db = tmp_path / "shared.duckdb"
    StateManager(db).save_scenario("s", {"patient": [{"patient_id": "p1", "ssn": "123"}]})
    edited = patient_mapping(tmp_path / "edited", move_ssn=True, extra=NICKNAME)
    with pytest.warns(MappingDriftWarning) as caught:
        with StateManager(db, mapping_dirs=[edited]) as sm:
            assert sm.load_scenario("s")["entities"]["patient"][0]["ssn"] == "123"  # the store's path
            assert sm.mapping_changes()["patient"]["pending"] == ["path changed: ssn ssn -> identifiers.ssn"]
            assert sm.schema_report.for_entity("patient").changes[0] == "field added: nickname (name.nickname, varchar)"
    (warning,) = caught
    text = str(warning.message)
    assert "patient: path changed: ssn ssn -> identifiers.ssn" in text
    assert "healthsim-state migrate-schema" in text and "evolve=True" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process and store
        StateManager(db, mapping_dirs=[edited]).load_scenario("s")
    assert run_query(db, "SELECT ssn, nickname FROM patients").rows == [("123", None)]
    with StateManager(db, mapping_dirs=[edited], evolve=True) as sm:  # now apply it
        assert sm.schema_report.for_entity("patient").action == "rewritten"
    assert StateManager(db, mapping_dirs=[edited]).load_scenario("s")["entities"]["patient"][0]["identifiers"] == \
        {"ssn": "123"}


@pytest.mark.parametrize("operation", ["load", "save", "entity_types"])
def test_the_drift_warning_points_at_the_callers_line(tmp_path, operation):
    """However deep in the package the warning is raised, it names the user's
    call (this file and line), not a line of the package."""
    db = tmp_path / "shared.duckdb"
    StateManager(db).save_scenario("s", {"patient": [{"patient_id": "p1"}]})
    sm = StateManager(db, mapping_dirs=[patient_mapping(tmp_path / "edited", move_ssn=True)])
    with pytest.warns(MappingDriftWarning) as caught:
        if operation == "load":
            _, line = sm.load_scenario("s"), this_line()
        elif operation == "save":
            _, line = sm.save_scenario("t", {"patient": [{"patient_id": "p2"}]}), this_line()
        else:
            _, line = sm.entity_types, this_line()
    (warning,) = caught
    assert (warning.filename, warning.lineno) == (__file__, line)


def this_line() -> int:
    return sys._getframe(1).f_lineno


def test_what_the_files_lack_is_kept_without_a_warning(tmp_path):
    """A field another client added, or one a release dropped from the built-in
    files, is not a change these files state: no warning, nothing removed."""
    db = tmp_path / "shared.duckdb"
    StateManager(db).save_scenario("s", {"patient": [{"patient_id": "p1", "ssn": "123"}]})
    lacking = patient_mapping(tmp_path / "lacking", drop="ssn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with StateManager(db, mapping_dirs=[lacking]) as sm:
            assert sm.load_scenario("s")["entities"]["patient"][0]["ssn"] == "123"
            assert sm.mapping_changes()["patient"] == {
                "additions": [], "pending": [], "absent": ["field removed: ssn (ssn): its values are kept as unmapped data"]}
    assert run_query(db, "SELECT ssn FROM patients").rows == [("123",)]


def test_the_cli_says_it_in_one_line(tmp_path):
    db = tmp_path / "shared.duckdb"
    StateManager(db).save_scenario("s", {"patient": [{"patient_id": "p1"}]})
    edited = patient_mapping(tmp_path / "edited", move_ssn=True)
    result = clirun.run(["list", "--db", db], env={"HEALTHSIM_MAPPINGS": str(edited)})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: the mapping files differ from the mappings in force")
    assert "patient: path changed: ssn ssn -> identifiers.ssn" in lines[0]


CLIENT = """
    import json, sys
    from healthsim_state import StateManager
    db, name = sys.argv[1], sys.argv[2]
    loaded = set()
    for line in sys.stdin:  # a step number: save, load what is new; "all": load every scenario
        step = line.strip()
        with StateManager(db) as sm:  # a fresh open each time
            if step != "all":
                sm.save_scenario(f"{name}-{step}", {"patient": [
                    {"patient_id": f"{name}{step}", "ssn": step, "name": {"nickname": name, "given": "G"}}]})
            loads = {s["name"]: sm.load_scenario(s["name"])["entities"]["patient"]
                     for s in sm.list_scenarios(limit=None) if step == "all" or s["name"] not in loaded}
        loaded.update(loads)
        print(json.dumps(loads), flush=True)
"""
STATE = ("SELECT (SELECT value FROM _healthsim_meta WHERE key = 'generation'), "
         "(SELECT table_oid FROM duckdb_tables() WHERE table_name = 'patients')")


def test_two_clients_with_different_mappings_rewrite_nothing_after_the_first_open(tmp_path):
    """Client A's files drop a field and add one; client B's are the built-ins.
    Alternating opens, 20 each: no table is rewritten after the first open,
    and every scenario loads back the same from both: each client loads each
    new scenario at its next open, and every scenario once more after all 40.
    (Loading every scenario at every open made this test 0.8 s an open.)"""
    db = tmp_path / "shared.duckdb"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    clients = {
        "a": subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT), str(db), "a"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**env, "HEALTHSIM_MAPPINGS": str(patient_mapping(tmp_path / "a", drop="ssn",
                                                                                    extra=NICKNAME))}),
        "b": subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT), str(db), "b"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env),
    }
    states, seen = [], {}
    try:
        for step in range(20):
            for name, client in clients.items():
                client.stdin.write(f"{step}\n")
                client.stdin.flush()
                loads = json.loads(client.stdout.readline())
                for scenario, entities in loads.items():  # every client sees every scenario the same
                    assert seen.setdefault(scenario, entities) == entities, (name, scenario)
                states.append(run_query(db, STATE).rows[0])
        for name, client in clients.items():  # after every open: all 40, as each client first saw them
            client.stdin.write("all\n")
            client.stdin.flush()
            assert json.loads(client.stdout.readline()) == seen, name
    finally:
        for client in clients.values():
            client.stdin.close()
            client.wait(timeout=60)
    assert len(seen) == 40
    assert len(set(states[1:])) == 1, f"a table was rewritten after the first open: {states}"
    assert seen["b-0"] == [{"patient_id": "b0", "ssn": "0", "name": {"nickname": "b", "given": "G"},
                            "_provenance": {"source_type": "generated", "source_system": "patientsim"}}]


# --- read-only opens -------------------------------------------------------------------------------

def test_read_only_never_creates_a_file(tmp_path):
    path = tmp_path / "none.duckdb"
    reader = StateManager(path, read_only=True)
    for call in (reader.list_scenarios, lambda: reader.load_scenario("x"), lambda: reader.scenario_info("x")):
        with pytest.raises(StoreNotFoundError, match=f"no database at {path}"):
            call()
    assert not path.exists()
    assert len(reader.entity_types) == 15  # what a new store would take


def test_read_only_writes_nothing_and_says_so(tmp_path):
    path = tmp_path / "s.duckdb"
    StateManager(path).save_scenario("s", {"patient": [{"patient_id": "p"}]})
    before = path.read_bytes()
    reader = StateManager(path, read_only=True, mapping_dirs=[patient_mapping(tmp_path / "m", extra=NICKNAME)])
    writes = [lambda: reader.save_scenario("t", {}), lambda: reader.add_entities("s", {}),
              lambda: reader.delete_scenario("s"), lambda: reader.restore_scenario("s", 1),
              lambda: reader.prune_history("s", 1), lambda: reader.set_history_limit(3)]
    for write in writes:
        with pytest.raises(ReadOnlyError, match="read-only"):
            write()
    assert reader.load_scenario("s")["entities"]["patient"] == [
        {"patient_id": "p", "_provenance": {"source_type": "generated", "source_system": "patientsim"}}]
    assert reader.mapping_changes()["patient"]["additions"] == ["field added: nickname (name.nickname, varchar)"]
    assert path.read_bytes() == before  # the addition waits for a client that writes


READER = """
    import sys
    from healthsim_state import StateManager
    entities = StateManager(sys.argv[1], read_only=True).iter_entities("s", "patient", batch_size=1)
    next(entities)  # the store is open, a snapshot held
    print("reading", flush=True)
    sys.stdin.readline()
    print(sum(1 for _ in entities) + 1, flush=True)
"""


def test_several_read_only_processes_read_at_once(tmp_path):
    path = tmp_path / "s.duckdb"
    StateManager(path).save_scenario("s", {"patient": [{"patient_id": f"p{i}"} for i in range(5)]})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    readers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(READER), str(path)], text=True, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(3)]
    try:
        assert [r.stdout.readline().strip() for r in readers] == ["reading"] * 3  # all three hold the file
        for r in readers:
            r.stdin.write("go\n")
            r.stdin.flush()
        assert [r.stdout.readline().strip() for r in readers] == ["5"] * 3
    finally:
        for r in readers:
            r.kill()
            r.wait()


def test_opening_creates_nothing_until_the_first_write(tmp_path):
    path = tmp_path / "later.duckdb"
    sm = StateManager(path)
    assert sm.list_scenarios() == [] and not sm.scenario_exists("x") and sm.delete_scenario("x") is False
    with pytest.raises(ScenarioNotFoundError):
        sm.load_scenario("x")
    with pytest.raises(ValidationError):
        sm.save_scenario("bad", {"patient": [{"birthDate": "not a date"}]})
    assert not path.exists()  # a failed first write leaves no file either
    sm.save_scenario("first", {})
    assert path.exists()


# --- reading big scenarios in pieces --------------------------------------------------------------

@pytest.fixture
def big(tmp_path):
    sm = StateManager(tmp_path / "big.duckdb")
    sm.save_scenario("big", {"patient": [{"patient_id": f"p{i}", "n": i} for i in range(3000)],
                             "encounter": [{"encounter_id": f"e{i}"} for i in range(50)]})
    return sm


def fetched_rows(monkeypatch) -> list[int]:
    """How many rows each query hands back to Python."""
    from healthsim_state.backends.duckdb_backend import DuckDBSession

    sizes: list[int] = []
    original = DuckDBSession.fetchall

    def counted(self, sql, params=()):
        rows = original(self, sql, params)
        sizes.append(len(rows))
        return rows

    monkeypatch.setattr(DuckDBSession, "fetchall", counted)
    return sizes


def test_load_a_slice_reads_only_the_slice(big, monkeypatch):
    sizes = fetched_rows(monkeypatch)
    page = big.load_scenario("big", entity_types=["patients"], limit=10, offset=2995)
    assert list(page["entities"]) == ["patient"]
    assert [p["n"] for p in page["entities"]["patient"]] == [2995, 2996, 2997, 2998, 2999]
    assert max(sizes) < 10, sizes  # a range in SQL, not everything then sliced
    whole = big.load_scenario("big")["entities"]
    pieces = [big.load_scenario("big", limit=700, offset=o)["entities"] for o in range(0, 3000, 700)]
    assert [p for piece in pieces for p in piece["patient"]] == whole["patient"]
    assert [e for piece in pieces for e in piece["encounter"]] == whole["encounter"]
    assert big.load_scenario("big", limit=0)["entities"]["patient"] == []


@pytest.mark.parametrize("call, message", [
    (lambda sm: sm.load_scenario("big", limit=-1), "limit must be a non-negative integer"),
    (lambda sm: sm.load_scenario("big", offset=True), "offset must be a non-negative integer"),
    (lambda sm: sm.load_scenario("big", entity_types=["spaceship"]), "unknown entity type 'spaceship'"),
    (lambda sm: sm.load_scenario("big", entity_types="patient"), "a list of entity type names"),
    (lambda sm: sm.iter_entities("big", "patient", batch_size=0), "batch_size must be a positive integer"),
    (lambda sm: sm.iter_entities("big", "spaceship"), "unknown entity type 'spaceship'"),
    (lambda sm: sm.iter_entities("nope", "patient"), "no scenario has the id or name 'nope'"),
])
def test_bad_slices_are_clear_errors(big, call, message):
    with pytest.raises(ValueError, match=message):
        call(big)


def test_iter_entities_streams_in_batches_from_one_snapshot(big, monkeypatch):
    sizes = fetched_rows(monkeypatch)
    stream = big.iter_entities("big", "patient", batch_size=400)
    first = next(stream)
    # another writer replaces the scenario meanwhile: the stream keeps its snapshot
    writer = threading.Thread(target=lambda: StateManager(big.db_path).save_scenario(
        "big", {"patient": [{"patient_id": "other"}]}, overwrite=True))
    writer.start()
    writer.join(timeout=60)
    rest = list(stream)
    assert [first["n"]] + [p["n"] for p in rest] == list(range(3000))
    assert max(sizes) <= 400, sizes
    assert [p["patient_id"] for p in big.iter_entities("big", "patients")] == ["other"]


def test_add_entities_reads_the_batch_not_the_scenario(big, monkeypatch):
    sizes = fetched_rows(monkeypatch)
    result = big.add_entities("big", {"patient": [{"patient_id": "p5", "n": -5}, {"patient_id": "new", "n": 1}]})
    assert result["added"] == {"patient": 1} and result["replaced"] == {"patient": 1}
    assert max(sizes) < 10, sizes  # stored keys are matched in SQL, never read into Python (3,000 here)
    patients = big.load_scenario("big", entity_types=["patient"])["entities"]["patient"]
    assert patients[5]["n"] == -5 and patients[-1]["patient_id"] == "new" and len(patients) == 3001
