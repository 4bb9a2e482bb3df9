"""Copying a scenario with its history (``copy --history``, ``history=True``)
and the history export (``export --history``) read back by ``import``: every
kept version keeps its number, operation, time, description, tags, metadata
and changes, and loads the same entities as in the source; one transaction on
the target (a failure leaves nothing); the same from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.generate import scenario
from healthsim_state import ScenarioExistsError, StateManager, StoreError, ValidationError
from healthsim_state.interop import DocumentError, copy_scenarios, export_document, export_json, import_file
from healthsim_state.store import TypeRows

REPO = Path(__file__).resolve().parents[1]

ODD = {"patient": [{"patient_id": "odd", "name": {"given": "Zoë"}, "birthDate": "0001-01-01",
                    "unmapped": {"b": 1, "a": [2**100, None, "a\x00b"]}}],
       "claim": [{"claim_id": "c", "total_charge": -0.0, "total_paid": 12.25}]}



def fill(target: str, *, lone: bool = True) -> None:
    """A scenario through every kind of write, and one whose oldest versions
    were pruned. ``lone``: an entity holds a lone surrogate in an unmapped
    field (which a store keeps, and a JSON export writes as its escape)."""
    with StateManager(target) as sm:
        sm.save_scenario("cohort", scenario(3, seed=5), description="three", tags=["b", "a"],
                         metadata={"generator": "bench", "seed": 5, "ratio": 0.1, "big": 2**70})
        sm.save_scenario("cohort", scenario(2, seed=6), overwrite=True, tags=["v2"],
                         metadata={"nested": {"z": 1, "y": [1.5, None, "é"]}})
        odd = {**ODD, "patient": [{**ODD["patient"][0], "lone": "\ud800"}]} if lone else ODD
        sm.add_entities("cohort", odd, metadata={"step": "add"})
        sm.update_scenario("cohort", description="renamed", add_tags=["c"])
        sm.delete_entities("cohort", {"patient": ["odd"]}, metadata={"why": "test"})
        sm.restore_scenario("cohort", 3)
        sm.save_scenario("pruned", {"patient": [{"patient_id": "p1"}, {"patient_id": "p2"}]})
        sm.add_entities("pruned", {"patient": [{"patient_id": "p3"}]})
        sm.delete_entities("pruned", {"patient": ["p1"]})
        sm.prune_history("pruned", keep=2)


def same_history(source: str, target: str, name: str) -> None:
    """The target's scenario has the source's versions, and each loads the same."""
    with StateManager(source, read_only=True) as a, StateManager(target, read_only=True) as b:
        history = a.scenario_history(name)
        assert b.scenario_history(name) == history
        for version in [None] + [v["version"] for v in history]:
            left, right = a.load_scenario(name, version=version), b.load_scenario(name, version=version)
            for key in ("name", "description", "tags", "created_at", "updated_at", "entity_count", "entity_counts",
                        "version", "entities"):
                assert right[key] == left[key], (version, key)


def test_fill_makes_the_history_the_tests_need(file_store):
    fill(file_store.target)
    with StateManager(file_store.target) as sm:
        assert [v["operation"] for v in sm.scenario_history("cohort")] == [
            "restore", "delete_entities", "update", "add", "overwrite", "save"]
        assert [v["version"] for v in sm.scenario_history("pruned")] == [3, 2]


@pytest.mark.parametrize("direction", ["file to server", "server to file"])
def test_copy_with_history_between_a_file_and_a_server(file_store, server_store, direction):
    source, target = (file_store, server_store) if direction == "file to server" else (server_store, file_store)
    fill(source.target)
    results = copy_scenarios(source.target, target.target, ["cohort", "pruned"], history=True)
    assert [(r.name, r.ok, r.replaced) for r in results] == [("cohort", True, False), ("pruned", True, False)]
    for name in ("cohort", "pruned"):
        same_history(source.target, target.target, name)
    with StateManager(target.target) as sm:  # the copy goes on as any scenario does
        sm.add_entities("pruned", {"patient": [{"patient_id": "p4"}]})
        assert [p["patient_id"] for p in sm.load_scenario("pruned")["entities"]["patient"]] == ["p2", "p3", "p4"]
        assert sm.scenario_history("pruned")[0]["version"] == 4


def test_copy_with_history_within_one_kind_of_store(store, second_store):
    fill(store.target)
    copy_scenarios(store.target, second_store.target, all=True, history=True)
    for name in ("cohort", "pruned"):
        same_history(store.target, second_store.target, name)
    # rows are shared between versions as in the source, not written once a version
    count = "SELECT count(*) FROM patients__versions"
    assert second_store.sql(count) == store.sql(count)


def test_a_failure_midway_leaves_nothing_on_the_target(store, second_store, monkeypatch):
    fill(store.target)
    with StateManager(second_store.target) as sm:
        sm.save_scenario("other", {"patient": [{"patient_id": "kept"}]})
    calls = []
    original = TypeRows.append_history

    def failing(self, rows):
        calls.append(self.mapping.entity)
        if len(calls) == 3:
            raise StoreError("the disk is full (a test)")
        original(self, rows)

    monkeypatch.setattr(TypeRows, "append_history", failing)
    with pytest.raises(StoreError, match="disk is full"):
        copy_scenarios(store.target, second_store.target, ["cohort"], history=True)
    assert len(calls) == 3  # two bulk writes happened before it failed
    with StateManager(second_store.target, read_only=True) as sm:
        assert [s["name"] for s in sm.list_scenarios()] == ["other"]
    assert second_store.sql("SELECT count(*) FROM scenario_versions") == [(1,)]
    assert second_store.sql("SELECT count(*) FROM patients__versions") == [(1,)]
    assert second_store.sql("SELECT count(*) FROM encounters__versions") == [(0,)]


def test_an_existing_scenario_is_refused_unless_overwrite_which_replaces_it_whole(store, second_store):
    fill(store.target)
    with StateManager(second_store.target) as sm:
        old_id = sm.save_scenario("cohort", {"patient": [{"patient_id": "here"}]})
        sm.save_scenario("cohort", {"patient": [{"patient_id": "here too"}]}, overwrite=True)
    with pytest.raises(ScenarioExistsError, match="'cohort' already exists in .*overwrite"):
        copy_scenarios(store.target, second_store.target, ["cohort"], history=True)
    (result,) = copy_scenarios(store.target, second_store.target, ["cohort"], history=True, overwrite=True)
    assert result.replaced and result.target_id == old_id
    same_history(store.target, second_store.target, "cohort")
    assert second_store.sql("SELECT count(*) FROM patients__versions WHERE patient_id LIKE 'here%'") == [(0,)]


def test_a_type_the_target_lacks_in_an_old_version_refuses_the_copy(file_store, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "gadget.yaml").write_text("entity: gadget\ntable: gadgets\nprimary_key: id\n"
                                      "fields:\n  - {column: id, path: id, type: varchar}\n")
    with StateManager(file_store.target, mapping_dirs=[maps]) as sm:
        sm.save_scenario("s", {"gadget": [{"id": "g"}], "patient": [{"patient_id": "p"}]})
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]}, overwrite=True)
    target = str(tmp_path / "target.duckdb")
    with pytest.raises(ValidationError, match="unknown entity type 'gadget'"):
        copy_scenarios(file_store.target, target, ["s"], history=True)
    with StateManager(target) as sm:
        assert sm.list_scenarios() == []


# --- the history document -------------------------------------------------------------------------

def test_export_history_then_import_gives_the_same_history(store, second_store, tmp_path):
    fill(store.target)
    with StateManager(store.target) as sm:
        for name in ("cohort", "pruned"):
            export_json(sm, name, tmp_path / f"{name}.json", history=True)
    with StateManager(second_store.target) as sm:
        results = [import_file(sm, tmp_path / f"{name}.json") for name in ("cohort", "pruned")]
    assert [(r.name, r.shape) for r in results] == [("cohort", "history"), ("pruned", "history")]
    for name in ("cohort", "pruned"):
        same_history(store.target, second_store.target, name)
    # the file says it plainly: versions oldest first, each entity with the versions holding it
    document = json.loads((tmp_path / "pruned.json").read_text())
    assert document["format"] == "healthsim-scenario-history" and document["version"] == 1
    assert [(v["version"], v["operation"], v["entity_count"]) for v in document["versions"]] == [
        (2, "add", 3), (3, "delete_entities", 2)]
    assert [(h["since"], h["until"], h["position"], h["entity"]["patient_id"])
            for h in document["entities"]["patients"]] == [(1, 3, 0, "p1"), (1, None, 1, "p2"), (2, None, 2, "p3")]


def test_a_plain_export_still_imports_as_one_version(file_store, tmp_path):
    fill(file_store.target, lone=False)
    with StateManager(file_store.target) as sm:
        export_json(sm, "cohort", tmp_path / "plain.json")
    with StateManager(str(tmp_path / "b.duckdb")) as sm:
        result = import_file(sm, tmp_path / "plain.json")
        assert result.shape == "export"
        assert [v["operation"] for v in sm.scenario_history("cohort")] == ["save"]


def test_a_bad_history_document_says_where_and_writes_nothing(file_store, tmp_path):
    fill(file_store.target)
    with StateManager(file_store.target) as sm:
        document = export_document(sm, "pruned", history=True)
    document["entities"]["patients"][1]["until"] = 9
    document["entities"]["patients"][2]["position"] = 0
    document["versions"][0]["at"] = "yesterday"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    target = str(tmp_path / "b.duckdb")
    with StateManager(target) as sm, pytest.raises(DocumentError) as caught:
        import_file(sm, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: scenario history not saved")
    assert "versions[0].at" in message and "expected an ISO date-time" in message
    assert "entities.patient[1].until: until must be null (still current) or a version" in message
    assert "two entities hold position 0 in version 2" in message
    with StateManager(target) as sm:
        assert sm.list_scenarios() == []
    document["versions"] = [{"version": 0}]
    path.write_text(json.dumps(document))
    with StateManager(target) as sm, \
            pytest.raises(DocumentError, match="consecutive integers of 1 or more, oldest first"):
        import_file(sm, path)
    del document["versions"]
    path.write_text(json.dumps(document))
    with StateManager(target) as sm, pytest.raises(DocumentError, match="versions: expected a non-empty list"):
        import_file(sm, path)


def test_entities_a_history_document_holds_are_checked_as_a_save_checks_them(file_store, tmp_path):
    fill(file_store.target, lone=False)
    with StateManager(file_store.target) as sm:
        document = export_document(sm, "pruned", history=True)
    patients = document["entities"]["patients"]
    patients[2]["entity"]["patient_id"] = "p2"  # p2 (since 1) and this one (since 2) are both current
    path, target = tmp_path / "twice.json", str(tmp_path / "b.duckdb")
    path.write_text(json.dumps(document))
    with StateManager(target) as sm, pytest.raises(DocumentError) as caught:
        import_file(sm, path)
    assert "patient @ entities.patient: version 2 holds two entities with the key (patient_id='p2')" \
        in str(caught.value)
    assert "version 3 holds two entities" in str(caught.value)
    patients[2]["entity"]["patient_id"] = "p3"
    patients[0]["entity"]["birthDate"] = "not a date"
    path.write_text(json.dumps(document))
    with StateManager(target) as sm, pytest.raises(DocumentError) as caught:
        import_file(sm, path)
    assert "patient[0] @ birthDate: (written in version 1)" in str(caught.value)
    with StateManager(target) as sm:
        assert sm.list_scenarios() == []


def test_a_history_document_under_another_name_but_not_other_tags(file_store, tmp_path):
    fill(file_store.target, lone=False)
    with StateManager(file_store.target) as sm:
        export_json(sm, "pruned", tmp_path / "p.json", history=True)
    target = str(tmp_path / "b.duckdb")
    with StateManager(target) as sm:
        assert import_file(sm, tmp_path / "p.json", name="renamed").name == "renamed"
        assert [v["version"] for v in sm.scenario_history("renamed")] == [3, 2]
        with pytest.raises(DocumentError, match="p.json: a history document keeps its versions' descriptions and "
                                                "tags; save it without a new description or tags"):
            import_file(sm, tmp_path / "p.json", name="again", tags=["x"])
        assert not sm.scenario_exists("again")


def test_history_and_one_version_are_not_both_asked(file_store):
    fill(file_store.target)
    with StateManager(file_store.target) as sm, pytest.raises(ValidationError, match="not both"):
        export_document(sm, "cohort", version=2, history=True)
    with StateManager(file_store.target) as sm, sm.snapshot("cohort", version=2) as snapshot, \
            pytest.raises(ValidationError, match="a history holds every version: read it from a snapshot of the "
                                                 "scenario, not of one version"):
        snapshot.history()


# --- the command line -----------------------------------------------------------------------------

def run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    env.pop("HEALTHSIM_DB", None)
    return subprocess.run([sys.executable, "-m", "healthsim_state.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_copy_command_with_history(file_store, server_store, tmp_path):
    fill(file_store.target)
    done = run("copy", "--all", "--history", "--from", file_store.target, "--to", server_store.target,
               home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("copied 'cohort' (") and \
        done.stdout.splitlines()[0].endswith(f"entities, every version) to {server_store.target}")
    for name in ("cohort", "pruned"):
        same_history(file_store.target, server_store.target, name)
    back = str(tmp_path / "back.duckdb")
    assert run("copy", "cohort", "--history", "--from", server_store.target, "--to", back,
               home=tmp_path).returncode == 0
    same_history(file_store.target, back, "cohort")
    refused = run("copy", "cohort", "--history", "--from", server_store.target, "--to", back, home=tmp_path)
    assert refused.returncode == 1 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    helped = run("copy", "--help", home=tmp_path)
    assert "--history" in helped.stdout and "every kept version" in helped.stdout


def test_the_export_and_import_commands_with_history(file_store, tmp_path):
    fill(file_store.target)
    out = tmp_path / "cohort.json"
    done = run("export", "cohort", "--history", "-o", str(out), "--db", file_store.target, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"exported 'cohort' ({_count(file_store.target)} entities, 6 versions) to {out}\n"
    target = str(tmp_path / "b.duckdb")
    imported = run("import", str(out), "--db", target, home=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(f"imported {out} as 'cohort' (")
    same_history(file_store.target, target, "cohort")
    usage = run("export", "cohort", "--history", "--version", "2", "--db", file_store.target, home=tmp_path)
    assert usage.returncode == 2 and "--history is for the JSON export of every version" in usage.stderr
    parquet = run("export", "cohort", "--history", "--format", "parquet", "--db", file_store.target, home=tmp_path)
    assert parquet.returncode == 2 and "not with --format parquet" in parquet.stderr
    helped = run("export", "--help", home=tmp_path)
    assert "--history" in helped.stdout and "every kept version" in helped.stdout


def _count(target: str) -> int:
    with StateManager(target, read_only=True) as sm:
        return sm.scenario_info("cohort")["entity_count"]
