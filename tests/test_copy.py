"""Copying scenarios between stores: file to server, server to file, file to
file, server to server; exact, one transaction each, refusing what exists
unless told; the same from the command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import clirun
from benchmarks.generate import scenario
from healthsim_state import ScenarioExistsError, ScenarioNotFoundError, StateManager, ValidationError
from healthsim_state.interop import copy_scenarios


ODD = {"patient": [{"patient_id": "odd", "name": {"given": "Zoë"}, "birthDate": "0001-01-01",
                    "unmapped": {"b": 1, "a": [2**100, None, "a\x00b"]}, "lone": "\ud800"}],
       "claim": [{"claim_id": "c", "total_charge": -0.0, "total_paid": 12.25}],
       "encounter": [{"encounter_id": "e", "period": {"start": "2024-03-10T01:30:00.000001-05:00"}}]}



def fill(target: str) -> dict[str, dict]:
    """Three scenarios with everything a copy must keep; returns their loads."""
    with StateManager(target) as sm:
        sm.save_scenario("cohort", scenario(3, seed=5), description="three patients", tags=["b", "a"],
                         metadata={"generator": "bench", "seed": 5})
        sm.save_scenario("cohort", scenario(2, seed=6), overwrite=True, tags=["v2"],
                         metadata={"generator": "bench", "seed": 6, "nested": {"z": 1, "y": [1.5]}})
        sm.save_scenario("odd", ODD)
        sm.save_scenario("empty", {}, description=None)
        return {name: sm.load_scenario(name) for name in ("cohort", "odd", "empty")}


def same_scenario(a: dict, b: dict) -> None:
    for key in ("name", "description", "tags", "entity_count", "entity_counts", "entities"):
        assert a[key] == b[key], key


def newest_metadata(target: str, name: str):
    with StateManager(target, read_only=True) as sm:
        return sm.scenario_history(name)[0]["metadata"]


@pytest.mark.parametrize("direction", ["file to server", "server to file"])
def test_copy_between_a_file_and_a_server_is_exact_both_ways(file_store, server_store, direction):
    source, target = (file_store, server_store) if direction == "file to server" else (server_store, file_store)
    expected = fill(source.target)
    results = copy_scenarios(source.target, target.target, ["cohort", "odd", "empty"])
    assert [(r.name, r.entity_count, r.replaced, r.ok) for r in results] == [
        ("cohort", expected["cohort"]["entity_count"], False, True), ("odd", 3, False, True), ("empty", 0, False, True)]
    with StateManager(target.target) as sm:
        for name, loaded in expected.items():
            copied = sm.load_scenario(name)
            same_scenario(copied, loaded)
            assert copied["version"] == 1 and copied["scenario_id"] != loaded["scenario_id"]
            assert copied["created_at"] == loaded["created_at"] and copied["updated_at"] > loaded["updated_at"]
    assert newest_metadata(target.target, "cohort") == {"generator": "bench", "seed": 6,
                                                        "nested": {"z": 1, "y": [1.5]}}
    # and back again, into a third store: still the same
    back = str(Path(file_store.target).with_name("back.duckdb"))
    copy_scenarios(target.target, back, all=True)
    with StateManager(back) as sm:
        for name, loaded in expected.items():
            same_scenario(sm.load_scenario(name), loaded)
        assert [s["name"] for s in sm.list_scenarios()] == ["empty", "odd", "cohort"]  # the source's order


def test_copy_within_one_kind_of_store(store, second_store):
    expected = fill(store.target)
    copy_scenarios(store.target, second_store.target, all=True)
    with StateManager(second_store.target) as sm:
        for name, loaded in expected.items():
            same_scenario(sm.load_scenario(name), loaded)


def test_an_existing_scenario_is_refused_unless_overwrite(store, second_store):
    fill(store.target)
    with StateManager(second_store.target) as sm:
        sm.save_scenario("odd", {"patient": [{"patient_id": "already here"}]})
    with pytest.raises(ScenarioExistsError, match="'odd' already exists in .*overwrite"):
        copy_scenarios(store.target, second_store.target, ["odd"])
    results = copy_scenarios(store.target, second_store.target, ["cohort", "odd"], keep_going=True)
    assert [(r.name, r.ok) for r in results] == [("cohort", True), ("odd", False)]
    with StateManager(second_store.target) as sm:
        assert sm.load_scenario("odd")["entities"]["patient"][0]["patient_id"] == "already here"
    (result,) = copy_scenarios(store.target, second_store.target, ["odd"], overwrite=True)
    assert result.replaced
    with StateManager(second_store.target) as sm:
        copied = sm.load_scenario("odd")
        assert copied["entities"]["patient"][0]["patient_id"] == "odd" and copied["version"] == 2
        assert [v["operation"] for v in sm.scenario_history("odd")] == ["overwrite", "save"]


def test_a_copy_onto_what_holds_the_same_writes_nothing(store, second_store):
    """Onto itself, or a second time into another store: nothing to write, no version."""
    fill(store.target)
    before = store.snapshot()
    results = copy_scenarios(store.target, store.target, all=True, overwrite=True)
    assert [(r.name, r.ok, r.replaced, r.unchanged) for r in results] == [
        ("cohort", True, True, True), ("odd", True, True, True), ("empty", True, True, True)]
    assert store.snapshot() == before
    copy_scenarios(store.target, second_store.target, ["odd"])
    copied = second_store.snapshot()
    (again,) = copy_scenarios(store.target, second_store.target, ["odd"], overwrite=True)
    assert again.unchanged and second_store.snapshot() == copied


def test_a_copy_the_target_refuses_writes_nothing_of_it(file_store, server_store, tmp_path):
    """The source knows a type (from its client's mapping files) that the
    target does not: that scenario is refused as a whole, the others go in."""
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "gadget.yaml").write_text("entity: gadget\ntable: gadgets\nprimary_key: id\n"
                                      "fields:\n  - {column: id, path: id, type: varchar}\n")
    with StateManager(file_store.target, mapping_dirs=[maps]) as sm:
        sm.save_scenario("with gadgets", {"gadget": [{"id": "g"}], "patient": [{"patient_id": "p"}]})
        sm.save_scenario("plain", {"patient": [{"patient_id": "p"}]})
    results = copy_scenarios(file_store.target, server_store.target, all=True, keep_going=True)
    assert [(r.name, r.ok) for r in results] == [("with gadgets", False), ("plain", True)]
    assert "unknown entity type 'gadget'" in results[0].error
    with StateManager(server_store.target) as sm:
        assert [s["name"] for s in sm.list_scenarios()] == ["plain"]
    assert server_store.sql("SELECT count(*) FROM patients") == [(1,)]
    with pytest.raises(ValidationError, match="unknown entity type 'gadget'"):
        copy_scenarios(file_store.target, server_store.target, ["with gadgets"])
    (again,) = copy_scenarios(file_store.target, server_store.target, ["with gadgets"], mapping_dirs=[maps])
    assert again.ok and again.entity_count == 2


def test_progress_counts_entities_up_to_the_total(store, second_store):
    expected = fill(store.target)
    seen: list[tuple[str, int, int]] = []
    copy_scenarios(store.target, second_store.target, all=True, progress=lambda *a: seen.append(a))
    total = sum(s["entity_count"] for s in expected.values())
    assert seen and all(t == total for _, _, t in seen)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen) and seen[-1][1] == total


def test_bad_calls(store, second_store):
    fill(store.target)
    with pytest.raises(ValidationError, match="name the scenarios to copy, or ask for all"):
        copy_scenarios(store.target, second_store.target, ["odd"], all=True)
    with pytest.raises(ValidationError, match="name the scenarios to copy"):
        copy_scenarios(store.target, second_store.target)
    with pytest.raises(ScenarioNotFoundError):
        copy_scenarios(store.target, second_store.target, ["nope"])


# --- the command ----------------------------------------------------------------------------------

def run(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The command, run in this process (tests/clirun.py)."""
    return clirun.run(args, env=clirun.env_for(home))


def test_the_copy_command(file_store, server_store, tmp_path):
    fill(file_store.target)
    url = server_store.target.replace("postgres@", "postgres:shown-nowhere@")  # trusted: any password does
    done = run("copy", "cohort", "nope", "odd", "--from", file_store.target, "--to", url, home=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("copied 'cohort' (") and lines[0].endswith(
        f"entities) to {url.replace('shown-nowhere', '***')}")
    assert lines[1].startswith("copied 'odd' (3 entities)")
    assert lines[2] == "3 scenarios: 2 copied, 1 failed"
    assert done.stderr == "error: no scenario has the id or name 'nope'\n"
    assert "shown-nowhere" not in done.stdout + done.stderr

    again = run("copy", "odd", "--from", file_store.target, "--to", url, home=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr
    replaced = run("copy", "--all", "--overwrite", "--from", url, "--to", str(tmp_path / "back.duckdb"),
                   home=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.splitlines()[-1] == "2 scenarios: 2 copied, 0 failed"

    onto_itself = run("copy", "odd", "--overwrite", "--from", url, "--to", url, home=tmp_path)
    assert onto_itself.returncode == 0, onto_itself.stderr
    assert onto_itself.stdout == f"'odd' unchanged in {url.replace('shown-nowhere', '***')}: it holds the same " \
        "already\n"

    usage = run("copy", "odd", "--all", "--from", file_store.target, "--to", url, home=tmp_path)
    assert usage.returncode == 2 and "not both" in usage.stderr
    missing = run("copy", "--all", "--from", str(tmp_path / "none.duckdb"), "--to", url, home=tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no database at ")
    assert not (tmp_path / "none.duckdb").exists()
