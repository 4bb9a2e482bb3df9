"""Processes waiting for one DuckDB file take turns first come, first served.

A writer waits about the queue ahead of it, never for ever behind newcomers:
so many processes doing short operations on one file all finish, none with a
:class:`DatabaseLockedError`. Readers (read-only opens) queue too, and share
their turn with the readers next to them. ``HEALTHSIM_STRESS=1`` runs the
many-process test at the size of issue 20 (16 processes x 50 operations)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from healthsim_state import DatabaseLockedError, StateManager
from healthsim_state.backends.filelock import SLOTS
from test_processes import python

STRESS = bool(os.environ.get("HEALTHSIM_STRESS"))

TURN = """
    import sys, time
    from healthsim_state.backends import open_backend
    path, mode, hold, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    backend = open_backend(path, read_only=mode == "read", lock_timeout=timeout)
    print("arrived", flush=True)
    try:
        with backend.session(write=mode == "write") as session:
            session.fetchall("SELECT 1")
            print("in", time.monotonic(), flush=True)
            if hold < 0:
                sys.stdin.readline()  # until the test lets go
            else:
                time.sleep(hold)
            print("out", time.monotonic(), flush=True)
    except Exception as error:
        print("error", type(error).__name__, error, flush=True)
"""


def queued(process, timeout: float = 60) -> None:
    """Return once ``process`` holds its place in the queue (a POSIX lock
    at or past ``filelock.SLOTS``, as /proc/locks shows), so that the next
    arrival surely comes after it however slow the machine is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:  # already through (a short timeout): its place came and went
            return
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if "->" not in fields and str(process.pid) in fields[4:5] and int(fields[6]) >= SLOTS:
                    return
        time.sleep(0.01)
    raise AssertionError(f"process {process.pid} took no place in the queue within {timeout} s")


def arrive(path, mode: str, hold: float, timeout: float = 60):
    """A process that opens ``path`` in ``mode`` (write, read: a read-only
    open) once it has said it arrived, and holds it ``hold`` seconds (or,
    if negative, until a line comes on its stdin)."""
    process = python(TURN, path, mode, hold, timeout, stdin=subprocess.PIPE)
    assert process.stdout.readline().strip() == "arrived", process.stderr.read()
    return process


def holding(path) -> object:
    """A writer that holds the file until told to let go."""
    holder = arrive(path, "write", -1)
    line = holder.stdout.readline()
    assert line.startswith("in "), holder.stderr.read()
    holder.entered = line.split()[1]
    return holder


def let_go(holder) -> None:
    holder.stdin.write("go\n")
    holder.stdin.flush()


def finished(process, timeout: float = 120) -> tuple[float, float]:
    """When ``process`` got its turn and when it let go."""
    out, err = process.communicate(timeout=timeout)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    lines.setdefault("in", getattr(process, "entered", None))
    assert "error" not in lines and lines["in"] and "out" in lines, (out, err)
    return float(lines["in"]), float(lines["out"])


@pytest.fixture
def store(db_path):
    StateManager(db_path).save_scenario("s", {"patient": [{"patient_id": "p"}]})
    return db_path


def test_waiting_processes_get_the_file_in_the_order_they_came(store):
    """Behind a holder, writers and readers arrive one after another: each
    writer goes alone, in its place; readers next to each other go together."""
    holder = holding(store)
    modes = ["write", "write", "read", "read", "write", "write", "read", "write"]
    waiters = []
    try:
        for mode in modes:
            waiters.append(arrive(store, mode, 0.5))
            queued(waiters[-1])
    finally:
        let_go(holder)
    finished(holder)
    turns = [finished(w) for w in waiters]
    order = sorted(range(len(modes)), key=lambda i: turns[i][0])
    assert order in ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 3, 2, 4, 5, 6, 7]), (order, turns)
    for i, mode in enumerate(modes[:-1]):
        overlapped = turns[i + 1][0] < turns[i][1]
        assert overlapped == (mode == modes[i + 1] == "read"), (i, turns)


def test_a_waiter_that_gives_up_or_dies_leaves_the_queue(store):
    """One waiter times out, one is killed while waiting: the one behind
    them gets the file as soon as the holder lets go, and the timed-out one
    says what the timeout always said."""
    holder = holding(store)
    impatient = arrive(store, "write", 0, timeout=0.5)
    queued(impatient)
    killed = arrive(store, "write", 0)
    queued(killed)
    patient = arrive(store, "write", 0)
    queued(patient)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    out, _ = impatient.communicate(timeout=60)
    assert out.startswith("error DatabaseLockedError"), out
    assert f"is locked by another process (PID {holder.pid}) and stayed locked for 0.5 s" in out
    let_go(holder)
    _, released = finished(holder)
    entered, _ = finished(patient)
    assert entered - released < 5  # not the 60 s timeout, nor a dead waiter's


def test_a_healthsim_holder_times_out_a_waiter_with_the_usual_error(store):
    holder = holding(store)
    try:
        with pytest.raises(DatabaseLockedError, match=r"stayed locked for 0\.3 s") as caught:
            StateManager(store, lock_timeout=0.3).list_scenarios()
    finally:
        let_go(holder)
        finished(holder)
    assert caught.value.pid == holder.pid and "HEALTHSIM_LOCK_TIMEOUT" in str(caught.value)


def test_the_queue_lives_beside_the_file_and_reads_create_nothing(tmp_path):
    path = tmp_path / "s.duckdb"
    sm = StateManager(path)
    sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb"]  # a first write makes only the store
    reader = StateManager(path, read_only=True)
    assert reader.load_scenario("s")["entity_count"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb"]  # nor does a read-only open
    sm.list_scenarios()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb", "s.duckdb.lock"]
    assert reader.load_scenario("s")["entity_count"] == 1  # readers queue once it is there


def test_without_fcntl_the_store_works_as_before(tmp_path, monkeypatch):
    """Windows has no fcntl: no queue, the backoff alone."""
    from healthsim_state.backends import filelock

    monkeypatch.setattr(filelock, "fcntl", None)
    path = tmp_path / "s.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
        assert sm.load_scenario("s")["entity_count"] == 1
    assert not (tmp_path / "s.duckdb.lock").exists()


# --- many processes, short operations -------------------------------------------------------

MIXED = """
    import json, random, sys, time
    from healthsim_state import StateManager
    path, worker, operations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(worker)
    sm = StateManager(path)  # the default 10 s lock timeout
    def patients(tag, n):
        return [{"patient_id": f"{tag}-{i}", "name": {"given": tag}} for i in range(n)]
    results = []
    for step in range(operations):
        name = f"shared-{rng.randrange(3)}"
        kind = rng.choice(["overwrite", "add", "delete_entities", "load", "history", "restore"])
        started = time.monotonic()
        try:
            if kind == "overwrite":
                sm.save_scenario(name, {"patient": patients(f"w{worker}s{step}", rng.randrange(1, 40))},
                                 overwrite=True)
            elif kind == "add":
                sm.add_entities(name, {"patient": patients(f"w{worker}a{step}", rng.randrange(1, 10))})
            elif kind == "delete_entities":
                keys = [p["patient_id"] for p in sm.load_scenario(name)["entities"].get("patient", [])][:3]
                sm.delete_entities(name, {"patient": keys}, missing_ok=True)
            elif kind == "load":
                sm.load_scenario(name)
            elif kind == "history":
                sm.scenario_history(name)
            else:
                sm.restore_scenario(name, 1)
            error = None
        except Exception as caught:
            error = f"{type(caught).__name__}: {caught}"
        results.append([kind, time.monotonic() - started, error])
    print(json.dumps(results))
"""


def run_mixed(path, processes: int, operations: int) -> dict:
    """``processes`` workers of :data:`MIXED` on three shared scenarios;
    what they did: operations, failures (their messages), the longest an
    operation took, and the seconds in all."""
    with StateManager(path) as sm:
        for i in range(3):
            sm.save_scenario(f"shared-{i}", {"patient": [{"patient_id": f"first-{i}"}]})
    started = time.monotonic()
    workers = [python(MIXED, path, worker, operations) for worker in range(processes)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err
        results.extend(json.loads(out))
    return {"operations": len(results), "failures": [r[2] for r in results if r[2]],
            "longest": max(r[1] for r in results), "seconds": time.monotonic() - started}


def test_many_processes_with_short_operations_all_get_their_turn(db_path):
    processes, operations = (16, 50) if STRESS else (8, 20)
    report = run_mixed(db_path, processes, operations)
    print(f"\n{processes} processes x {operations} mixed operations: {len(report['failures'])} failed, "
          f"longest operation {report['longest']:.2f} s, {report['seconds']:.1f} s in all")
    assert report["operations"] == processes * operations
    assert report["failures"] == []
    with StateManager(db_path) as sm:  # every scenario whole: its rows match its counts
        for item in sm.list_scenarios(limit=None):
            loaded = sm.load_scenario(item["scenario_id"])
            assert len(loaded["entities"].get("patient", [])) == item["entity_count"]


def test_threads_of_a_process_share_its_place_in_the_queue(db_path):
    """Threads writing and reading here while two other processes work the
    file: the threads' sessions overlap in one place of the queue, none waits
    for another thread's place, and everything gets through."""
    with StateManager(db_path) as sm:
        for i in range(3):
            sm.save_scenario(f"shared-{i}", {"patient": [{"patient_id": f"first-{i}"}]})
    others = [python(MIXED, db_path, worker, 10) for worker in (100, 101)]
    errors: list[str] = []

    def work(index: int) -> None:
        sm = StateManager(db_path)
        for step in range(8):
            try:
                if index % 2:
                    sm.load_scenario(f"shared-{step % 3}")
                else:
                    sm.save_scenario(f"t{index}", {"patient": [{"patient_id": f"{index}-{step}"}]}, overwrite=True)
            except Exception as error:  # every error counts against the test
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    for other in others:
        out, err = other.communicate(timeout=300)
        assert other.returncode == 0, err
        errors.extend(r[2] for r in json.loads(out) if r[2])
    assert errors == []
    with StateManager(db_path) as sm:
        assert [sm.load_scenario(f"t{i}")["entities"]["patient"][0]["patient_id"] for i in (0, 2)] == ["0-7", "2-7"]
