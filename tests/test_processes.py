"""Many processes, one database file: locks, concurrent work, crashes, bad files.

Every process here is a child of the test with bounded work and a timeout."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from healthsim_state.interop import run_query
from healthsim_state import DatabaseLockedError, StateManager, StoreError

REPO = Path(__file__).resolve().parents[1]


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


HOLD_LOCK = """
    import duckdb, sys, time
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    holder = python(HOLD_LOCK, path, seconds)
    assert holder.stdout.readline().strip() == "locked"
    return holder


# --- locks --------------------------------------------------------------------------

def test_a_held_lock_times_out_with_the_file_and_the_pid(db_path):
    StateManager(db_path).close()
    holder = hold_lock(db_path, 5)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseLockedError) as caught:
            StateManager(db_path, lock_timeout=0.5).list_scenarios()
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    error = caught.value
    assert waited >= 0.5  # it waited; no upper bound: a loaded machine may take its time
    assert str(db_path) in str(error) and f"PID {holder.pid}" in str(error) and error.pid == holder.pid
    assert "HEALTHSIM_LOCK_TIMEOUT" in str(error)
    assert isinstance(error, StoreError) and isinstance(error, RuntimeError)


def test_an_operation_waits_for_a_short_lock_and_succeeds(db_path):
    manager = StateManager(db_path)
    holder = hold_lock(db_path, 0.7)
    try:
        started = time.monotonic()
        manager.save_scenario("after the lock", {"patient": [{"patient_id": "p"}]})
        assert time.monotonic() - started >= 0.3
    finally:
        holder.wait(timeout=10)
    assert manager.scenario_exists("after the lock")


def test_the_lock_timeout_comes_from_the_environment(db_path, monkeypatch):
    StateManager(db_path).close()
    monkeypatch.setenv("HEALTHSIM_LOCK_TIMEOUT", "0.2")
    holder = hold_lock(db_path, 5)
    try:
        with pytest.raises(DatabaseLockedError, match=r"stayed locked for 0\.2 s"):
            StateManager(db_path).list_scenarios()
    finally:
        holder.kill()
        holder.wait()


def test_an_idle_manager_in_another_process_does_not_block_a_writer(db_path):
    idle = python("""
        import sys, time
        from healthsim_state import StateManager
        sm = StateManager(sys.argv[1])
        sm.save_scenario("from the idle one", {})
        print("idle", flush=True)
        time.sleep(30)
    """, db_path)
    try:
        assert idle.stdout.readline().strip() == "idle"
        with StateManager(db_path, lock_timeout=1) as sm:  # would time out if the idle process held the file
            sm.save_scenario("writer", {"patient": [{"patient_id": "p"}]})
            assert {s["name"] for s in sm.list_scenarios()} == {"from the idle one", "writer"}
    finally:
        idle.kill()
        idle.wait()


# --- many processes at once ------------------------------------------------------------

WORKER = """
    import json, random, sys
    from healthsim_state import StateManager, ScenarioNotFoundError
    path, worker, operations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(worker)
    sm = StateManager(path, lock_timeout=60)
    saved, errors = {}, []
    def entities(tag, n):
        return {"patient": [{"patient_id": f"{tag}-{i}", "name": {"given": tag}} for i in range(n)],
                "encounter": [{"encounter_id": f"{tag}-e{i}", "patient_id": f"{tag}-0"} for i in range(n)]}
    for step in range(operations):
        own, shared = f"w{worker}-{rng.randrange(5)}", f"shared-{rng.randrange(3)}"
        kind = rng.choice(["save", "overwrite", "load", "list", "delete", "shared"])
        try:
            if kind in ("save", "overwrite"):
                n = rng.randrange(1, 30)
                sm.save_scenario(own, entities(f"{own}-{step}", n), overwrite=True)
                saved[own] = (f"{own}-{step}", n)
            elif kind == "load" and own in saved:
                got = sm.load_scenario(own)["entities"]
                tag, n = saved[own]
                assert [p["patient_id"] for p in got["patient"]] == [f"{tag}-{i}" for i in range(n)], own
                assert len(got["encounter"]) == n
            elif kind == "list":
                sm.list_scenarios(limit=None)
            elif kind == "delete":
                sm.delete_scenario(own)
                saved.pop(own, None)
            elif kind == "shared":
                sm.save_scenario(shared, entities(f"{shared}-{worker}-{step}", 5), overwrite=True)
        except Exception as error:  # every error counts against the test
            errors.append(f"{kind} {own}: {type(error).__name__}: {error}")
    print(json.dumps({"saved": {k: list(v) for k, v in saved.items()}, "errors": errors}))
"""


def run_mixed_workers(target: str, processes: int, operations: int, timeout: float) -> float:
    """``processes`` workers of :data:`WORKER`, ``operations`` each, on one
    store: no worker may see an error, every scenario a worker saved last
    loads back whole, and every scenario listed is complete (its rows match
    its counts). Returns the seconds they took."""
    started = time.monotonic()
    workers = [python(WORKER, target, worker, operations) for worker in range(processes)]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=timeout)
        assert worker.returncode == 0, err
        reports.append(json.loads(out))
    elapsed = time.monotonic() - started
    assert [r["errors"] for r in reports] == [[]] * processes
    with StateManager(target) as sm:
        for report in reports:
            for name, (tag, n) in report["saved"].items():
                loaded = sm.load_scenario(name)
                assert [p["patient_id"] for p in loaded["entities"]["patient"]] == [f"{tag}-{i}" for i in range(n)]
                assert loaded["entity_count"] == 2 * n
        listed = sm.list_scenarios(limit=None)
        assert {name for r in reports for name in r["saved"]} <= {s["name"] for s in listed}
        for item in listed:
            loaded = sm.load_scenario(item["scenario_id"])
            assert sum(len(v) for v in loaded["entities"].values()) == item["entity_count"]
            assert {k: len(v) for k, v in loaded["entities"].items() if v} == item["entity_counts"]
    return elapsed


def test_four_processes_with_fifty_mixed_operations_each(db_path):
    StateManager(db_path).close()
    elapsed = run_mixed_workers(str(db_path), 4, 50, timeout=240)
    print(f"\n4 processes x 50 operations: {200 / elapsed:.1f} operations/s")


# --- crashes ----------------------------------------------------------------------------

CRASH_WORKER = """
    import sys, time
    from healthsim_state import StateManager
    path, action = sys.argv[1], sys.argv[2]
    sm = StateManager(path)
    big = victim(int(sys.argv[3]))
    print("ready", flush=True)
    started = time.monotonic()
    if action == "save":
        sm.save_scenario("victim", big)
    elif action == "overwrite":
        sm.save_scenario("victim", big, overwrite=True)
    elif action == "delete":
        sm.delete_scenario("victim")
    print(time.monotonic() - started, flush=True)
"""

VICTIM = """
    def victim(n, tag="new"):
        return {"patient": [{"patient_id": f"{tag}{i}", "name": {"given": f"N{i}"}, "x": {"y": [i]}}
                            for i in range(n)],
                "lab_result": [{"lab_result_id": f"{tag}{i}", "value": str(i)} for i in range(n)]}
"""
exec(textwrap.dedent(VICTIM))
ATTEMPTS = 7  # per action: 21 kill points in all


def keeper_entities() -> dict:
    return {"patient": [{"patient_id": f"k{i}", "birthDate": "2000-01-01", "tags": [i]} for i in range(300)],
            "claim": [{"claim_id": "c1", "total_charge": 10.5}]}


def run_crash_worker(path: Path, action: str, size: int, kill_after: float | None) -> tuple[bool, float | None]:
    """Run the action in a child; SIGKILL it ``kill_after`` seconds into the
    operation. Returns (was killed, the operation's seconds if it finished)."""
    worker = python(textwrap.dedent(VICTIM) + textwrap.dedent(CRASH_WORKER), path, action, size)
    assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
    if kill_after is None:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        return False, float(out.strip())
    time.sleep(kill_after)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    return worker.returncode == -signal.SIGKILL, None


@pytest.mark.parametrize("action", ["save", "overwrite", "delete"])
def test_sigkill_at_random_points_leaves_a_consistent_file(tmp_path, action):
    size = 40_000
    template = tmp_path / "template.duckdb"
    with StateManager(template) as sm:
        sm.save_scenario("keeper", keeper_entities(), tags=["keep"])
        if action != "save":
            sm.save_scenario("victim", victim(size, "old"))
        expected_keeper = sm.load_scenario("keeper")
    # How long the operation takes here, so the kill points fall inside it.
    probe = tmp_path / "probe.duckdb"
    shutil.copy(template, probe)
    _, duration = run_crash_worker(probe, action, size, None)
    rng = random.Random(action)
    kills = 0
    for attempt in range(ATTEMPTS):
        path = tmp_path / f"crash-{attempt}.duckdb"
        shutil.copy(template, path)
        kills += run_crash_worker(path, action, size, rng.uniform(0.0, duration))[0]
        with StateManager(path) as sm:
            assert sm.load_scenario("keeper") == expected_keeper
            names = {s["name"] for s in sm.list_scenarios()}
            if "victim" in names:  # all of the old one, or all of the new one
                loaded = sm.load_scenario("victim")
                tag = loaded["entities"]["patient"][0]["patient_id"][:3]
                assert tag in (("new",) if action == "save" else ("old", "new") if action == "overwrite" else ("old",))
                assert loaded["entities"]["patient"] == [
                    {"patient_id": f"{tag}{i}", "name": {"given": f"N{i}"}, "x": {"y": [i]},
                     "_provenance": {"source_type": "generated", "source_system": "patientsim"}} for i in range(size)]
                assert len(loaded["entities"]["lab_result"]) == size and loaded["entity_count"] == 2 * size
            ((rows,),) = run_query(path, "SELECT count(*) FROM patients").rows
            counted = sum(s["entity_counts"].get("patient", 0) for s in sm.list_scenarios(limit=None))
            assert rows == counted, "no rows of an interrupted operation are left behind"
            ((stray,),) = run_query(path, "SELECT count(*) FROM patients__versions r WHERE NOT EXISTS (SELECT 1 "
                                          "FROM scenario_versions v WHERE v.scenario_id = r.scenario_id AND "
                                          "v.version = coalesce(r._until, r._since))").rows
            assert stray == 0, "every row belongs to versions that were written"
    # Most kills land mid-operation (timings on a shared machine vary, so not all need to).
    assert kills >= 3, f"only {kills} of {ATTEMPTS} kills landed before the operation ended"


# --- bad files and places ------------------------------------------------------------------

def test_a_truncated_database_is_a_clear_error_and_is_not_touched(tmp_path):
    path = tmp_path / "cut.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("x", keeper_entities())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    before = path.read_bytes()
    with pytest.raises(StoreError, match="cut.duckdb"):
        StateManager(path).list_scenarios()
    assert path.read_bytes() == before


def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory for the database"):
        StateManager(blocker / "db.duckdb").save_scenario("s", {})


FULL_DISK = """
    import resource, signal, sys
    from healthsim_state import StateManager, StoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead
    size = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    big = {"patient": [{"patient_id": f"p{i}", "name": {"given": "x" * 200}} for i in range(60000)]}
    try:
        sm = StateManager(sys.argv[1])
        sm.save_scenario("too big", big)
        sm.close()
        print("saved")
    except StoreError as error:
        print("StoreError", error)
"""


def test_a_full_disk_is_a_clear_error_and_loses_nothing_saved_before(tmp_path):
    path = tmp_path / "full.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("before", keeper_entities())
        expected = sm.load_scenario("before")
    limit = path.stat().st_size + (path.with_suffix(".duckdb.wal").stat().st_size
                                   if path.with_suffix(".duckdb.wal").exists() else 0) + 256 * 1024
    worker = python(FULL_DISK, path, limit)
    out, err = worker.communicate(timeout=120)
    assert out.startswith("StoreError"), (out, err)
    assert "full.duckdb" in out
    with StateManager(path) as sm:
        assert sm.load_scenario("before") == expected
        assert not sm.scenario_exists("too big")
