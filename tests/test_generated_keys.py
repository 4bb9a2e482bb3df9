"""Generated keys are a function of the input (issue 22, "Identity"): an
entity that leaves out a ``default: uuid4`` key gets a UUID made from its
content, so saving the same data again changes nothing, two imports of one
file diff as equal, and one changed entity is one entity removed and one
added."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from benchmarks.generate import scenario
from healthsim_state import StateManager
from healthsim_state.engine.batch import ScenarioBatch
from healthsim_state.engine.keys import NAMESPACE, content_key

DIAGNOSES = [{"code": "E11.9", "description": "Type 2 diabetes", "patient_id": "p1", "diagnosed_date": "2024-01-15"},
             {"code": "I10", "display": "Hypertension", "patient_id": "p1"},  # an alias of description
             {"code": "I10", "display": "Hypertension", "patient_id": "p1"},  # equal: a second entity
             {"code": "J45", "patient_id": "p2", "extra": {"b": 1, "a": [1.5, None]}}]


def keys_of(sm: StateManager, name: str, entity: str = "diagnosis", key: str = "diagnosis_id") -> list[str]:
    return [e[key] for e in sm.load_scenario(name)["entities"][entity]]


def test_a_key_is_the_documented_uuid5():
    assert content_key("diagnosis", "diagnosis_id", 1, "ab" * 20) == \
        str(uuid.uuid5(NAMESPACE, f"diagnosis/diagnosis_id/1/{'ab' * 20}"))


def test_saving_the_same_keyless_data_again_changes_nothing(sm, store):
    sm.save_scenario("s", {"diagnoses": copy.deepcopy(DIAGNOSES)})
    first = keys_of(sm, "s")
    assert len(set(first)) == 4 and all(uuid.UUID(k).version == 5 for k in first)
    before = store.snapshot()
    sm.save_scenario("s", {"diagnoses": copy.deepcopy(DIAGNOSES)}, overwrite=True)
    assert store.snapshot() == before and sm.scenario_info("s")["version"] == 1
    assert sm.add_entities("s", {"diagnosis": [DIAGNOSES[0]]})["version"] == 1  # the same entity: stored already


def test_one_file_saved_as_two_scenarios_diffs_as_equal(sm):
    sm.save_scenario("a", {"diagnoses": copy.deepcopy(DIAGNOSES)})
    sm.save_scenario("b", {"diagnoses": copy.deepcopy(DIAGNOSES)})
    assert keys_of(sm, "a") == keys_of(sm, "b")
    assert sm.diff_scenarios("a", "b") == {}


def test_one_changed_keyless_entity_is_one_removed_and_one_added(sm):
    sm.save_scenario("s", {"diagnoses": copy.deepcopy(DIAGNOSES)})
    before = keys_of(sm, "s")
    edited = copy.deepcopy(DIAGNOSES)
    edited[3]["code"] = "J45.909"
    sm.save_scenario("s", {"diagnoses": edited}, overwrite=True)
    after = keys_of(sm, "s")
    assert after[:3] == before[:3] and after[3] != before[3]
    assert sm.scenario_history("s")[0]["changes"] == {"diagnosis": {"added": 1, "changed": 0, "removed": 1}}
    assert sm.diff_scenarios("s", a_version=1) == {
        "diagnosis": {"added": [after[3]], "removed": [before[3]], "changed": []}}


def test_equal_entities_are_told_apart_by_their_occurrence(sm):
    sm.save_scenario("s", {"diagnoses": copy.deepcopy(DIAGNOSES)})
    keys = keys_of(sm, "s")
    sm.save_scenario("s", {"diagnoses": copy.deepcopy(DIAGNOSES[:2] + DIAGNOSES[3:])}, overwrite=True)
    assert keys_of(sm, "s") == [keys[0], keys[1], keys[3]]  # the second of the equal two went
    assert sm.scenario_history("s")[0]["changes"] == {"diagnosis": {"added": 0, "changed": 0, "removed": 1}}


def test_a_given_key_is_kept_and_stored_keys_are_never_rewritten(sm):
    """A store written when keys were random keeps them: they are the entities' keys now."""
    stored = [{**d, "diagnosis_id": str(uuid.uuid4())} for d in DIAGNOSES[:2]]
    sm.save_scenario("s", {"diagnoses": stored})
    loaded = sm.load_scenario("s")["entities"]["diagnosis"]
    sm.save_scenario("s", {"diagnoses": loaded}, overwrite=True)
    assert sm.scenario_info("s")["version"] == 1
    sm.add_entities("s", {"diagnosis": [DIAGNOSES[3]]})
    assert keys_of(sm, "s")[:2] == [d["diagnosis_id"] for d in stored]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_row_and_the_column_flatten_make_the_same_keys(seed):
    """Which way an entity is flattened depends on how many share its shape;
    its key must not."""
    data = scenario(12, seed=seed)
    registry = StateManager(":memory:").registry
    keyless = {}
    for entity, items in data.items():
        codec = registry.resolve(entity)
        generated = [f.dotted for f in codec.mapping.fields if f.default == "uuid4"]
        keyless[entity] = [{k: v for k, v in item.items() if k not in generated} for item in items]
    made = []
    for columnar in (True, False):
        keys = {}
        for codec, chunk in ScenarioBatch(registry, copy.deepcopy(keyless), columnar=columnar).chunks():
            generated = [i + 1 for i, f in enumerate(codec.mapping.fields) if f.default == "uuid4"]
            keys.setdefault(codec.mapping.entity, []).extend(
                [row[i] for i in generated] for row in chunk.all_rows())
        made.append(keys)
    assert made[0] == made[1]
    assert len(made[0]["lab_result"]) > 12 and all(uuid.UUID(key).version == 5 for (key,) in made[0]["lab_result"])


def test_the_quickstart_run_twice_makes_one_version(tmp_path):
    """The issue's report: the second run made a version 2 that replaced every keyless entity."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HEALTHSIM_DB": str(tmp_path / "q.duckdb"), "HOME": str(tmp_path)}
    for _ in range(2):
        done = subprocess.run([sys.executable, str(repo / "examples" / "quickstart.py")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    with StateManager(tmp_path / "q.duckdb", read_only=True) as sm:
        assert [v["version"] for v in sm.scenario_history("sample")] == [1]
