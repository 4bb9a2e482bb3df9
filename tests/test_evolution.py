"""Edit a mapping, keep your data: each kind of edit on a store full of
scenarios (with unmapped data), then reopen and check that nothing is lost.

Additions (a field, an alias) apply when a client opens the store; any other
edit waits (a MappingDriftWarning, the store's mapping stays in force) until
``evolve=True`` or ``healthsim-state migrate-schema`` applies it."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthsim_state import (
    MappingDriftWarning,
    SchemaChangeError,
    StateManager,
    ValidationError,
    plan_schema_changes,
)
from healthsim_state import evolution
import clirun
from stores import Store, new_store

BASE_FIELDS = {
    "pid": "{column: pid, path: pid, type: varchar}",
    "given": "{column: given, path: name.given, type: varchar, aliases: [first_name]}",
    "age": "{column: age, path: age, type: integer}",
    "born": "{column: born, path: born, type: date}",
    "score": "{column: score, path: stats.score, type: double}",
    "code": "{column: code, path: code, type: varchar}",
}


def mapping_text(fields: dict[str, str], key: str = "pid") -> str:
    lines = ["entity: person", "table: people", f"primary_key: {key}", "fields:"]
    return "\n".join(lines + [f"  - {spec}" for spec in fields.values()]) + "\n"


PEOPLE = {
    "alpha": [
        {"pid": "a1", "name": {"given": "Ana", "middle": "B"}, "age": 40, "born": "1984-02-29", "code": "12",
         "nickname": "Annie", "stats": {"score": 1.5, "rank": 2}, "notes": [{"t": "x"}]},
        {"pid": "a2", "name": {"given": "Bo"}, "age": 7, "code": "A7", "nickname": 5, "stats": {"score": 2}},
    ],
    "beta": [
        {"pid": "a1", "name": {"given": "Other Ana"}, "born": "2000-01-01", "nickname": "Ann", "code": "3"},
        {"pid": "b2", "name": "Just A String", "age": None, "stats": {}},
    ],
}


class Db:
    """A store (on either backend) and the mapping directory it is opened with."""

    def __init__(self, root: Path, store: Store):
        self.root, self.store, self.steps = root, store, itertools.count()
        self.path = store.target
        self.maps = None

    def write(self, fields: dict[str, str], key: str = "pid") -> Path:
        # A fresh directory per edit, so nothing can mistake it for the last one.
        self.maps = self.root / f"maps{next(self.steps)}"
        self.maps.mkdir()
        (self.maps / "person.yaml").write_text(mapping_text(fields, key))
        return self.maps

    def open(self, evolve: bool = False) -> StateManager:
        return StateManager(self.path, mapping_dirs=[self.maps], evolve=evolve)

    def evolved(self) -> StateManager:
        """Open with every change of the mapping files applied (migrate-schema)."""
        manager = self.open(evolve=True)
        manager.schema_report  # noqa: B018 - opening applies the changes
        return manager

    def loads(self, evolve: bool = True) -> dict:
        with self.open(evolve=evolve) as sm:
            return {name: sm.load_scenario(name)["entities"]["person"] for name in PEOPLE}

    def sql(self, query: str) -> list:
        return self.store.sql(query)

    def snapshot(self) -> dict:
        return self.store.snapshot()


@pytest.fixture
def db(tmp_path, store) -> Db:
    database = Db(tmp_path, store)
    database.write(BASE_FIELDS)
    with database.open() as sm:
        for name, people in PEOPLE.items():
            sm.save_scenario(name, {"person": people})
    database.before = database.loads()
    return database


def edited(**changes: str | None) -> dict[str, str]:
    fields = dict(BASE_FIELDS)
    for name, spec in changes.items():
        if spec is None:
            fields.pop(name)
        else:
            fields[name] = spec
    return fields


def test_field_added_is_backfilled_from_unmapped_data(db):
    db.write(edited(nickname="{column: nickname, path: nickname, type: varchar}"))
    with db.open() as sm:  # an addition: applied on open, no evolve needed
        report = sm.schema_report
    assert report.for_entity('person').action == "fields added"
    assert "nickname: 2 stored values moved into the new column" in report.for_entity('person').changes
    assert db.loads() == db.before
    assert sorted(db.sql("SELECT nickname FROM people WHERE nickname IS NOT NULL")) == [("Ann",), ("Annie",)]
    residuals = [r for (r,) in db.sql("SELECT _residual FROM people WHERE _residual IS NOT NULL")]
    assert not any('"nickname":"Ann' in r for r in residuals)  # moved out of the residual...
    assert any('"nickname":5' in r for r in residuals)  # ...except the value that does not fit varchar


def test_alias_added_changes_nothing_stored(db):
    before = db.snapshot()
    db.write(edited(code="{column: code, path: code, type: varchar, aliases: [legacy_code]}"))
    with db.open() as sm:
        assert sm.schema_report.for_entity('person').action == "recorded"
        sm.save_scenario("new", {"person": [{"pid": "n", "legacy_code": "L"}]})
        assert sm.load_scenario("new")["entities"]["person"] == [{"pid": "n", "code": "L"}]
    after = db.snapshot()
    assert after["people__versions"][: len(before["people__versions"])] != [] and db.loads() == db.before


def test_field_removed_waits_for_evolve_then_gives_its_values_back_to_the_residual(db):
    before = db.snapshot()
    db.write(edited(age=None))
    assert db.loads(evolve=False) == db.before  # the files lack it: the store's field stays, unremarked
    assert db.snapshot() == before
    assert db.loads() == db.before
    columns = [c for c, _ in db.store.columns("people")]
    assert "age" not in columns


def test_type_changed_converts_every_value(db):
    before = db.snapshot()
    db.write(edited(age="{column: age, path: age, type: double}"))
    with pytest.warns(MappingDriftWarning, match=r"person: type changed: age integer -> double.*migrate-schema"):
        assert db.loads(evolve=False) == db.before  # the store's mapping stays in force until evolve
    assert db.snapshot() == before
    loaded = db.loads()
    assert loaded == db.before and type(loaded["alpha"][0]["age"]) is int  # still the int that was given
    assert ("age", db.store.type_name("double")) in db.store.columns("people")
    assert sorted(db.sql("SELECT age FROM people WHERE age IS NOT NULL")) == [(7.0,), (40.0,)]


def test_type_change_that_does_not_fit_is_refused_and_changes_nothing(db):
    before = db.snapshot()
    db.write(edited(code="{column: code, path: code, type: integer}"))
    with pytest.raises(SchemaChangeError) as caught:
        db.evolved()
    error = caught.value
    assert isinstance(error, ValidationError)
    # strings are not integers (the type rules of a save apply): every stored code blocks, and is listed
    assert [(p.entity_type, p.position, p.path, p.value) for p in error.problems] == [
        ("person", 0, "code", "12"), ("person", 1, "code", "A7"), ("person", 0, "code", "3")]
    assert "scenario 'alpha'" in str(error) and "scenario 'beta'" in str(error)
    assert "table 'people' left as it was" in str(error)
    assert db.snapshot() == before
    db.write(BASE_FIELDS)
    assert db.loads() == db.before


def test_column_renamed_is_a_rename(db):
    db.write(edited(given="{column: given_name, path: name.given, type: varchar}"))
    with db.evolved() as sm:
        assert sm.schema_report.for_entity('person').action == "renamed columns"
    assert db.loads() == db.before
    assert sorted(db.sql("SELECT given_name FROM people WHERE given_name IS NOT NULL")) == [
        ("Ana",), ("Bo",), ("Other Ana",)]


def test_path_changed_rewrites_entities_to_the_new_shape(db):
    db.write(edited(score="{column: score, path: score, type: double}"))
    loaded = db.loads()
    alpha = loaded["alpha"]
    assert alpha[0]["score"] == 1.5 and alpha[0]["stats"] == {"rank": 2}
    assert alpha[1]["score"] == 2 and "stats" not in alpha[1]
    assert loaded["beta"][1]["stats"] == {}  # an empty object that was given stays
    for scenario in loaded:  # nothing else changed
        for got, was in zip(loaded[scenario], db.before[scenario]):
            assert {k: v for k, v in got.items() if k not in ("score", "stats")} == \
                   {k: v for k, v in was.items() if k not in ("score", "stats")}


def test_key_changed_needs_every_stored_entity_to_have_it(db):
    before = db.snapshot()
    db.write(edited(), key="given")  # beta's second person has a string for a name: no name.given
    with pytest.raises(SchemaChangeError, match=r"person\[1\] @ name.given: scenario 'beta': required field"):
        db.evolved()
    assert db.snapshot() == before


def test_key_changed_is_checked_for_duplicates_within_each_scenario(tmp_path, store):
    database = Db(tmp_path, store)
    database.write(BASE_FIELDS)
    with database.open() as sm:
        sm.save_scenario("dups", {"person": [{"pid": "1", "code": "X"}, {"pid": "2", "code": "X"}]})
        sm.save_scenario("fine", {"person": [{"pid": "1", "code": "X"}, {"pid": "2", "code": "Y"}]})
    database.write(BASE_FIELDS, key="code")
    with pytest.raises(SchemaChangeError, match=r"scenario 'dups': duplicate key \(code='X'\): positions 0 and 1"):
        database.evolved()
    database.write(BASE_FIELDS)
    with database.open() as sm:
        sm.delete_scenario("dups")
        fine = sm.load_scenario("fine")["entities"]["person"]
    database.write(BASE_FIELDS, key="code")
    with database.evolved() as sm:
        assert sm.schema_report.for_entity("person").changes == ["key changed: pid -> code"]
        assert sm.load_scenario("fine")["entities"]["person"] == fine
        with pytest.raises(ValidationError, match="duplicate key"):
            sm.save_scenario("again", {"person": [{"pid": "1", "code": "Z"}, {"pid": "2", "code": "Z"}]})


def test_a_client_without_the_types_file_uses_the_stores_mapping(db):
    """The store's mappings are in force: a client whose files lack a type
    still reads and writes it, with every field, and nothing changes."""
    before = db.snapshot()
    empty = db.root / "empty"
    empty.mkdir()
    with StateManager(db.path, mapping_dirs=[empty]) as sm:
        assert "person" in sm.entity_types
        assert {name: sm.load_scenario(name)["entities"]["person"] for name in PEOPLE} == db.before
        assert sm.mapping_changes() == {}  # a type the files do not name is no change
    assert db.snapshot() == before


def test_dry_run_reports_and_changes_nothing(db):
    before = db.snapshot()
    maps = db.write(edited(nickname="{column: nickname, path: nickname, type: varchar}", age=None))
    report = plan_schema_changes(db.path, mapping_dirs=[maps])
    assert not report.applied
    text = "\n".join(report.lines())
    assert "person (people): rewritten" in text and "field added: nickname" in text and "field removed: age" in text
    assert db.snapshot() == before


@pytest.mark.parametrize("edit", [
    {"age": None, "nickname": "{column: nickname, path: nickname, type: varchar}"},  # a rewrite
    {"nickname": "{column: nickname, path: nickname, type: varchar}"},  # a column and a backfill
    {"given": "{column: first, path: name.given, type: varchar}"},  # a renamed column
])
def test_dry_run_lists_the_operations_that_applying_runs(db, monkeypatch, edit):
    maps = db.write(edited(**edit))
    dry = plan_schema_changes(db.path, mapping_dirs=[maps])
    executed = []
    run = evolution.execute
    monkeypatch.setattr(evolution, "execute", lambda session, operations: (executed.append(operations),
                                                                          run(session, operations)))
    with db.evolved() as sm:
        real = sm.schema_report
    assert [_comparable(op) for op in executed[0]] == [_comparable(op) for op in dry.operations]
    assert dry.operations and real.applied and not dry.applied
    assert dry.lines() == real.lines()
    assert db.loads() == db.before


def _comparable(operation: object) -> object:
    """What an operation says it does, with an update's rows in a fixed order
    (a scan may yield them in any); a rewrite holds no rows, only their count."""
    rows = getattr(operation, "rows", None)
    described = (type(operation), operation.describe())
    return described if rows is None else (*described, sorted(rows, key=repr))


def test_a_rewrite_with_a_renamed_table_reads_the_renamed_table_when_it_runs(db):
    text = mapping_text(edited(age=None)).replace("table: people", "table: folks")
    (db.write(BASE_FIELDS) / "person.yaml").write_text(text)
    dry = plan_schema_changes(db.path, mapping_dirs=[db.maps])
    described = [op.describe() for op in dry.operations]
    renamed = next(i for i, line in enumerate(described) if "RENAME TO" in line and "folks" in line)
    assert renamed < min(i for i, line in enumerate(described) if line.startswith("append "))
    with db.evolved() as sm:
        assert sm.schema_report.for_entity("person").rows == dry.for_entity("person").rows == 4
    assert db.loads() == db.before
    assert sorted(db.sql("SELECT pid FROM folks")) == [("a1",), ("a1",), ("a2",), ("b2",)]


@pytest.mark.parametrize("people", [1, 30])
def test_a_compiled_rewrite_holds_no_rows(tmp_path, store, people):
    """The list a rewrite compiles to is the same size whatever the rows: one
    small operation a scenario, naming what to read, not the rows rebuilt."""
    db = Db(tmp_path, store)
    db.write(BASE_FIELDS)
    with db.open() as sm:
        for name in ("alpha", "beta"):
            sm.save_scenario(name, {"person": [{"pid": f"p{i}", "age": i, "nickname": "x" * 100}
                                               for i in range(people)]})
    dry = plan_schema_changes(db.path, mapping_dirs=[db.write(edited(age=None))])
    rewrites = [op for op in dry.operations if isinstance(op, evolution.RewriteScenario)]
    assert [op.describe() for op in rewrites] == [f"append {people} rebuilt rows to _healthsim_rewrite"] * 2
    for op in dry.operations:
        held = [getattr(op, f.name) for f in dataclasses.fields(op)]
        assert not any(isinstance(value, list) for value in held), op
    with db.evolved() as sm:
        assert sm.schema_report.for_entity("person").rows == 2 * people
        assert [p["nickname"] for p in sm.load_scenario("beta")["entities"]["person"]] == ["x" * 100] * people


def test_a_rewrite_checks_each_scenario_again_when_it_runs(tmp_path, store):
    """A store changed between the checks and the run (not possible inside one
    transaction; here the dry run's list is run later) stops the rewrite."""
    db = Db(tmp_path, store)
    base = db.write(BASE_FIELDS)
    with db.open() as sm:
        sm.save_scenario("alpha", {"person": [{"pid": "a1", "code": "x"}, {"pid": "a2", "code": "y"}]})
    dry = plan_schema_changes(db.path, mapping_dirs=[db.write(BASE_FIELDS, key="code")])
    db.maps = base
    with db.open() as sm:
        sm.save_scenario("alpha", {"person": [{"pid": "a1", "code": "x"}, {"pid": "a2", "code": "x"}]},
                         overwrite=True)
        before = db.snapshot()
        with pytest.raises(SchemaChangeError, match="table 'people' left as it was") as caught:
            sm._backend.run(lambda session: evolution.execute(session, dry.operations), write=True)
    assert "duplicate" in str(caught.value).lower()
    assert db.snapshot() == before


# --- random sequences of edits -------------------------------------------------------------

POOL = {  # a field and what it can become; every one keeps the stored data loadable
    "nickname": ["{column: nickname, path: nickname, type: varchar}", "{column: nickname, path: nickname, type: json}"],
    "middle": ["{column: middle, path: name.middle, type: varchar}", "{column: mid, path: name.middle, type: varchar}"],
    "age": ["{column: age, path: age, type: integer}", "{column: age, path: age, type: bigint}",
            "{column: age, path: age, type: double}", "{column: age, path: age, type: varchar, strict: false}"],
    "born": ["{column: born, path: born, type: date}", "{column: born, path: born, type: varchar}",
             "{column: born, path: born, type: timestamp}"],
    "rank": ["{column: rank, path: stats.rank, type: integer}", "{column: rank, path: stats.rank, type: double}"],
    "code": ["{column: code, path: code, type: varchar}", "{column: code, path: code, type: integer}"],
}
EDITS = st.lists(st.tuples(st.sampled_from(sorted(POOL)), st.integers(0, 3), st.booleans()), min_size=1, max_size=6)


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
@settings(max_examples=settings.default.max_examples // 3 or 5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=EDITS)
def test_random_edit_sequences_never_lose_data(request, tmp_path_factory, backend, edits):
    root = tmp_path_factory.mktemp("edits")
    database = Db(root, new_store(request, backend, root / "db.duckdb"))
    fields = {"pid": BASE_FIELDS["pid"], "given": BASE_FIELDS["given"]}
    database.write(fields)
    with database.open() as sm:
        for name, people in PEOPLE.items():
            sm.save_scenario(name, {"person": people})
    expected = database.loads()
    for name, choice, present in edits:
        candidate = dict(fields)
        if present:
            candidate[name] = POOL[name][choice % len(POOL[name])]
        else:
            candidate.pop(name, None)
        before = database.snapshot()
        database.write(candidate)
        try:
            database.evolved().close()
            loaded = database.loads()
        except SchemaChangeError:
            assert database.snapshot() == before  # refused: untouched, and the store's mapping still reads it
            database.write(fields)
            assert database.loads(evolve=False) == expected
            continue
        assert loaded == expected, f"after {candidate}"
        fields = candidate


# --- the command line ----------------------------------------------------------------------

def run_cli(*args: str, mappings: Path) -> subprocess.CompletedProcess:
    """The command, run in this process (tests/clirun.py), with ``mappings`` in $HEALTHSIM_MAPPINGS."""
    return clirun.run(args, env={"HEALTHSIM_MAPPINGS": str(mappings)})


def test_cli_migrate_schema_dry_run_then_for_real(db):
    maps = db.write(edited(nickname="{column: nickname, path: nickname, type: varchar}"))
    before = db.snapshot()
    dry = run_cli("migrate-schema", "--dry-run", "--db", str(db.path), mappings=maps)
    assert dry.returncode == 0, dry.stderr
    assert "would change:" in dry.stdout and "field added: nickname (nickname, varchar)" in dry.stdout
    assert db.snapshot() == before
    real = run_cli("migrate-schema", "--db", str(db.path), mappings=maps)
    assert real.returncode == 0 and "changed:" in real.stdout and "2 stored values moved" in real.stdout
    again = run_cli("migrate-schema", "--db", str(db.path), mappings=maps)
    assert again.stdout.strip() == "the tables already follow the mappings"
    assert db.loads() == db.before


def test_cli_types_shows_the_stores_mapping_and_marks_local_changes(db):
    maps = db.write(edited(age=None, nickname="{column: nickname, path: nickname, type: varchar}"))
    result = run_cli("types", "person", "--db", str(db.path), mappings=maps)
    assert result.returncode == 0, result.stderr
    assert "\nage\tage\tinteger" in result.stdout  # the store's field, still in force
    assert "person: local files: field added: nickname (nickname, varchar) (applied at the next write)" \
        in result.stderr
    assert "person: local files: field removed: age (age): its values are kept as unmapped data (not in your " \
           "files: kept; migrate-schema would remove it)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refused_edit_is_one_error_line_listing_the_blockers(db):
    maps = db.write(edited(code="{column: code, path: code, type: integer}"))
    result = run_cli("migrate-schema", "--dry-run", "--db", str(db.path), mappings=maps)
    assert result.returncode == 1
    assert result.stderr.startswith("error: table 'people' left as it was")
    assert "person[1] @ code: scenario 'alpha'" in result.stderr
