"""Many writers on few scenarios: no write may lose a race.

N processes each run M random operations (overwrite, add, delete_entities,
load, history, restore) on 3 shared scenarios of one store, on both
backends. Every operation must succeed: a write that collides with another
is run again (PostgreSQL) or waits its turn for the file (DuckDB), never
handed back to its caller as a failure. Afterwards every scenario loads
whole, its counts match its rows, and its history has every version.

The default size (4 x 10) suits CI; ``HEALTHSIM_STRESS=1`` runs the full
16 x 50. The test prints operations, failures, retries and time."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import pytest

from healthsim_state import StateManager, StoreError, TransactionConflictError
from healthsim_state.backends import base, open_backend
from test_processes import python

SCENARIOS = ("shared-0", "shared-1", "shared-2")
FULL = os.environ.get("HEALTHSIM_STRESS") == "1"
PROCESSES, OPERATIONS = (16, 50) if FULL else (4, 10)

STRESS_WORKER = """
    import json, random, sys, time
    from healthsim_state import StateManager
    target, worker, operations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    names = sys.argv[4:]
    rng = random.Random(worker)
    sm = StateManager(target)
    failures, kinds, slowest = [], {}, 0.0

    def patients(tag, n):
        return [{"patient_id": f"p{rng.randrange(40)}", "name": {"given": tag}} for _ in range(n)]

    def entities(tag, n):
        unique = {p["patient_id"]: p for p in patients(tag, n)}
        return {"patient": list(unique.values()),
                "encounter": [{"encounter_id": f"{tag}-e{i}", "patient_id": p} for i, p in enumerate(unique)]}

    def check(loaded):
        got = {k: len(v) for k, v in loaded["entities"].items() if v}
        assert got == loaded["entity_counts"], (got, loaded["entity_counts"])

    for step in range(operations):
        name, tag = rng.choice(names), f"w{worker}-{step}"
        kind = rng.choice(["overwrite", "add", "delete_entities", "load", "history", "restore"])
        started = time.monotonic()
        try:
            if kind == "overwrite":
                sm.save_scenario(name, entities(tag, rng.randrange(1, 30)), overwrite=True)
            elif kind == "add":
                sm.add_entities(name, {"patient": patients(tag, rng.randrange(1, 5))[:1]})
            elif kind == "delete_entities":
                sm.delete_entities(name, {"patient": [f"p{rng.randrange(40)}" for _ in range(3)]}, missing_ok=True)
            elif kind == "load":
                check(sm.load_scenario(name))
            elif kind == "history":
                versions = [v["version"] for v in sm.scenario_history(name)]
                assert versions == list(range(versions[0], 0, -1)), versions
            else:
                version = rng.randrange(1, sm.scenario_info(name)["version"] + 1)
                sm.restore_scenario(name, version)
        except Exception as error:  # every error counts against the test
            failures.append(f"{kind} {name}: {type(error).__name__}: {error}")
        slowest = max(slowest, time.monotonic() - started)
        kinds[kind] = kinds.get(kind, 0) + 1
    print(json.dumps({"failures": failures, "retries": sm._backend.retries, "kinds": kinds,
                      "slowest": slowest}))
"""


def seed(target: str) -> None:
    with StateManager(target) as sm:
        for name in SCENARIOS:
            sm.save_scenario(name, {"patient": [{"patient_id": f"p{i}"} for i in range(20)]})


def run_stress(target: str, processes: int, operations: int) -> dict:
    """The workers at once; what they report, summed, and the seconds taken."""
    started = time.monotonic()
    workers = [python(STRESS_WORKER, target, worker, operations, *SCENARIOS) for worker in range(processes)]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err
        reports.append(json.loads(out))
    return {"operations": processes * operations, "failures": [f for r in reports for f in r["failures"]],
            "retries": sum(r["retries"] for r in reports), "seconds": time.monotonic() - started,
            "slowest": max(r["slowest"] for r in reports)}


def test_many_processes_mixing_writes_on_three_scenarios_lose_no_operation(store):
    seed(store.target)
    result = run_stress(store.target, PROCESSES, OPERATIONS)
    print(f"\nstress on {store.kind}: {PROCESSES} processes x {OPERATIONS} operations = {result['operations']}, "
          f"{len(result['failures'])} failed, {result['retries']} retries, {result['seconds']:.1f} s "
          f"(slowest operation {result['slowest']:.2f} s)")
    assert result["failures"] == []
    with StateManager(store.target) as sm:
        for name in SCENARIOS:
            loaded = sm.load_scenario(name)
            assert {k: len(v) for k, v in loaded["entities"].items() if v} == loaded["entity_counts"]
            history = sm.scenario_history(name)
            assert [v["version"] for v in history] == list(range(loaded["version"], 0, -1))
            assert history[0]["entity_counts"] == loaded["entity_counts"]


# --- running a write again: bounded by time, not by a count ----------------------------------

class FakeClock:
    """time.monotonic and time.sleep for base.run: sleeping moves the clock."""

    def __init__(self):
        self.now, self.pauses = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


class Conflicted(base.Backend):
    """A backend whose sessions lose a race ``losses`` times, then work."""

    dialect = base.Dialect("fake", {}, {})
    label, read_only = "fake store", False

    def __init__(self, losses: float):
        self.losses = losses

    def exists(self) -> bool:
        return True

    @contextmanager
    def _connection(self, writable: bool, exclusive: bool):
        if self.losses > 0:
            self.losses -= 1
            raise TransactionConflictError("fake store: another transaction changed the same data")
        yield None

    def _begin(self, session) -> None:
        pass

    _commit = _rollback = _begin


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(base, "time", fake)
    return fake


def test_a_write_that_loses_many_races_is_run_until_it_wins(clock):
    backend = Conflicted(losses=40)  # more than any fixed count of attempts allowed
    assert backend.run(lambda session: "written", write=True) == "written"
    assert backend.retries == 40 and clock.now < backend.retry_for


def test_the_pauses_are_jittered_and_grow_to_a_cap(clock):
    Conflicted(losses=30).run(lambda session: None, write=True)
    assert all(0 <= pause <= 0.5 for pause in clock.pauses)
    assert len(set(clock.pauses)) == len(clock.pauses)  # random, so racers spread out
    assert sum(clock.pauses[:5]) < 0.3 < sum(clock.pauses[-10:])  # short at first, longer later


def test_a_write_that_never_wins_gives_up_after_the_retry_time_saying_so(clock):
    backend = Conflicted(losses=float("inf"))
    backend.retry_for = 5.0
    with pytest.raises(TransactionConflictError) as caught:
        backend.run(lambda session: None, write=True)
    assert 4.0 < clock.now <= 5.0
    message = str(caught.value)
    assert message.startswith("fake store: another transaction changed the same data; ran ")
    assert f"times over {clock.now:.1f} s and gave up (HEALTHSIM_RETRY_TIMEOUT sets how long)" in message


class Recording(Conflicted):
    """A backend that records the sessions it opens: (write, exclusive)."""

    def __init__(self):
        super().__init__(losses=0)
        self.opened = []

    @contextmanager
    def _connection(self, writable: bool, exclusive: bool):
        self.opened.append((writable, exclusive))
        yield None


def test_a_write_that_must_change_the_layout_runs_again_holding_the_layout_lock_alone(clock):
    backend = Recording()

    def change_layout(session):
        if not backend.opened[-1][1]:
            raise base.LayoutLockNeeded("the layout changes")
        return "changed"

    assert backend.run(change_layout, write=True) == "changed"
    assert backend.opened == [(True, False), (True, True)]
    assert backend.retries == 0 and clock.pauses == []  # not a lost race: no pause


def test_a_read_that_finds_a_write_needed_runs_it_first_then_reads_again_once(clock):
    backend, writes = Recording(), []

    def read(session):
        if not writes:
            raise base.WriteNeeded()
        return "read"

    assert backend.run(read, write=False, write_first=lambda session: writes.append("done")) == "read"
    assert writes == ["done"] and backend.opened == [(False, False), (True, False), (False, False)]
    writes.clear()
    with pytest.raises(base.WriteNeeded):  # without a write to run first, it is the caller's
        Recording().run(read, write=False)


def test_the_retry_time_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTHSIM_RETRY_TIMEOUT", "2.5")
    assert open_backend(str(tmp_path / "a.duckdb")).retry_for == 2.5
    monkeypatch.setenv("HEALTHSIM_RETRY_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="HEALTHSIM_RETRY_TIMEOUT='soon' is not a number of seconds"):
        open_backend(str(tmp_path / "a.duckdb"))
