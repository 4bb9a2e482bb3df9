"""The collector's pause around hot loops, and where a kept result lands."""

import gc

import pytest

import healthsim_state.manager as manager_module
from healthsim_state import StateManager
from healthsim_state.engine.batch import no_cyclic_gc


def _in_generation(obj, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


@pytest.fixture
def collector():
    """The collector enabled, its counts reset (no collection starts during a
    test's few allocations), and its state as found afterwards."""
    was_enabled = gc.isenabled()
    gc.enable()
    gc.collect()
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    if not was_enabled:
        gc.disable()


def test_pause_resumes_and_leaves_young_objects_young(collector):
    with no_cyclic_gc():
        assert not gc.isenabled()
        made = [[]]
    assert gc.isenabled()
    assert not _in_generation(made, 2)


def test_kept_result_goes_to_the_oldest_generation(collector):
    with no_cyclic_gc(kept=True):
        made = [[]]
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert _in_generation(made, 2)


def test_kept_leaves_the_callers_frozen_objects_frozen(collector):
    frozen = [[]]
    gc.freeze()
    count = gc.get_freeze_count()
    with no_cyclic_gc(kept=True):
        made = [[]]
    assert gc.get_freeze_count() == count
    assert _in_generation(frozen, 2) is False  # still in the permanent generation
    assert not _in_generation(made, 2)


def test_a_collector_the_caller_disabled_stays_disabled(collector):
    gc.disable()
    with no_cyclic_gc(kept=True):
        made = [[]]
    assert not gc.isenabled()
    assert not _in_generation(made, 2)


@pytest.mark.parametrize("threshold, oldest", [(1, True), (10_000, False)])
def test_load_keeps_a_large_result_out_of_the_young_generations(tmp_path, collector, monkeypatch, threshold, oldest):
    monkeypatch.setattr(manager_module, "KEPT_RESULT", threshold)
    patients = [{"patient_id": f"P{i}", "name": {"given": "Ann"}, "_provenance": {"source_type": "generated"}}
                for i in range(20)]
    with StateManager(tmp_path / "store.duckdb") as sm:
        sm.save_scenario("s", {"patients": patients})
        gc.collect()
        loaded = sm.load_scenario("s")
    entity = loaded["entities"]["patient"][0]
    assert entity["name"] == {"given": "Ann"}
    assert gc.is_tracked(entity)  # holds containers: the collector looks at it
    assert _in_generation(entity, 2) is oldest
    assert gc.isenabled() and gc.get_freeze_count() == 0
