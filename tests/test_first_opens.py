"""Several processes making the same new DuckDB file at once.

DuckDB makes a new file in steps (creates it, locks it, writes its header);
a process opening the path between them found "exists, but it is not a
valid DuckDB database file" (1 round in 12 of four processes' first saves,
before the file was made whole: see ``duckdb_backend._make_whole``). Here
workers open a new file in each round at the same instant, some of them
with a first write that fails (its file is removed, but never another's
rows). The default run is a few seconds; ``HEALTHSIM_STRESS=1`` runs more
rounds. Then files half made by another program's DuckDB: waited for
while young, an error at once otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from healthsim_state import StateManager, StoreError
from healthsim_state.backends import duckdb_backend

REPO = Path(__file__).resolve().parents[1]
STRESS = bool(os.environ.get("HEALTHSIM_STRESS"))
WORKERS = 4
ROUNDS = 60 if STRESS else 10
GAP = 0.3  # seconds between rounds: one round's opens are done well within it

WORKER = """
    import json, sys, time
    from healthsim_state.backends.duckdb_backend import DuckDBBackend
    folder, worker, rounds, start, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])

    class Refused(Exception):
        pass

    outcomes = []
    for r in range(rounds):
        backend = DuckDBBackend(f"{folder}/r{r}.duckdb", lock_timeout=20)
        fails = (worker + r) % 3 == 0  # a first write that fails, in most rounds
        while time.time() < start + r * gap:  # all at once (a busy wait: a sleep wakes late)
            pass
        try:
            with backend.session(write=True) as session:
                session.execute("CREATE TABLE IF NOT EXISTS t (w INTEGER)")
                session.execute("INSERT INTO t VALUES (?)", [worker])
                if fails:
                    raise Refused()
            outcomes.append("saved")
        except Refused:
            outcomes.append("refused")
        except Exception as error:
            outcomes.append(f"{type(error).__name__}: {error}")
    print(json.dumps(outcomes))
"""


def test_processes_making_one_new_file_at_once_all_open_it_and_lose_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time() + 1.5  # the workers have imported by then
    workers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(tmp_path), str(w), str(ROUNDS),
                                 repr(start), str(GAP)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for w in range(WORKERS)]
    outcomes = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outcomes.append(json.loads(out))
    errors = {o for per_worker in outcomes for o in per_worker if o not in ("saved", "refused")}
    assert errors == set()
    for r in range(ROUNDS):
        saved = sorted(w for w in range(WORKERS) if outcomes[w][r] == "saved")
        path = tmp_path / f"r{r}.duckdb"
        assert saved, "every round has a worker whose write commits"
        with duckdb.connect(str(path), read_only=True) as con:
            assert sorted(w for (w,) in con.execute("SELECT w FROM t").fetchall()) == saved, f"round {r}"
    stores = {f"r{r}.duckdb" for r in range(ROUNDS)}
    left = {p.name for p in tmp_path.iterdir()}  # the stores, some queues, and nothing else (no scratch file)
    assert stores <= left and left - stores <= {f"{name}.lock" for name in stores}


# --- a file half made by a DuckDB outside the store -----------------------------------------

def a_database_file(folder: Path) -> bytes:
    made = folder / "made.duckdb"
    duckdb.connect(str(made)).close()
    return made.read_bytes()


def test_a_file_another_program_is_making_is_waited_for(tmp_path):
    """Another program's DuckDB makes the file in steps: an empty file now,
    its headers a moment later. The store waits for them, not fails."""
    whole = a_database_file(tmp_path)
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"")
    filler = threading.Timer(0.3, path.write_bytes, (whole,))
    filler.start()
    try:
        started = time.monotonic()
        assert StateManager(path).list_scenarios() == []
        assert time.monotonic() - started >= 0.25  # it did wait for the header
    finally:
        filler.join()


def test_an_empty_file_of_some_age_is_an_error_at_once(tmp_path):
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"")
    old = time.time() - 2 * duckdb_backend.YOUNG
    os.utime(path, (old, old))
    started = time.monotonic()
    with pytest.raises(StoreError, match="s.duckdb as a healthsim-state database: it is an empty file"):
        StateManager(path).save_scenario("s", {})
    assert time.monotonic() - started < duckdb_backend.YOUNG
    assert path.read_bytes() == b""


def test_a_new_file_of_another_kind_is_an_error_at_once(tmp_path):
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    started = time.monotonic()
    with pytest.raises(StoreError, match="it is an SQLite database"):
        StateManager(path).list_scenarios()
    assert time.monotonic() - started < duckdb_backend.YOUNG


def test_a_scratch_file_a_killed_maker_left_is_removed_by_the_next_maker(tmp_path):
    """A process killed between making its scratch file and linking it left
    ``.<name>.<pid>-<thread>.new``: the next process that makes the store
    removes it (its process is gone), and keeps a live process's."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # that process has exited
    target = tmp_path / "new.duckdb"
    dead = tmp_path / f".new.duckdb.{dead_pid}-1.new"
    dead_wal = tmp_path / f".new.duckdb.{dead_pid}-1.new.wal"
    live = tmp_path / f".new.duckdb.{os.getpid()}-1.new"
    for leftover in (dead, dead_wal, live):
        leftover.write_bytes(b"\0" * 16)
    with StateManager(str(target)) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    assert not dead.exists() and not dead_wal.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".new")) == [live.name]


# --- a file removed between DuckDB's open and its lock ----------------------------------------

def test_a_connection_to_a_file_removed_before_its_lock_is_made_again(tmp_path, monkeypatch):
    """DuckDB opens a file, then locks it; a failed first write elsewhere
    removes its new file while it holds that lock. A connect that opened the
    file just before the removal gets the lock just after, on a file no longer
    at the path: a save through it committed into the removed file, and was
    lost with it (seen about once in 300 rounds of the test above under
    HEALTHSIM_STRESS). Here the removal is made to fall in that moment."""
    path = tmp_path / "s.duckdb"
    removed = tmp_path / "removed.duckdb"
    real_connect = duckdb.connect
    moves = []

    def connect(database=":memory:", *args, **kwargs):
        con = real_connect(database, *args, **kwargs)
        if database == str(path) and not moves:  # the first open of the path: its file goes from under it
            os.rename(path, removed)
            real_connect(str(tmp_path / "new.duckdb")).close()
            os.rename(tmp_path / "new.duckdb", path)
            moves.append(database)
        return con

    monkeypatch.setattr(duckdb, "connect", connect)
    StateManager(path).save_scenario("kept", {"patients": [{"id": "p1"}]})
    monkeypatch.undo()
    assert moves  # the removal did fall between an open and its use
    assert StateManager(path, read_only=True).load_scenario("kept")["entity_counts"] == {"patient": 1}


def test_a_file_removed_while_duckdb_opens_it_is_made_again(tmp_path, monkeypatch):
    """The same removal a moment earlier: DuckDB found the file, then could
    not open it ("No such file or directory"). The path is tried again (and
    the file made anew), not reported as a file that cannot be opened."""
    path = tmp_path / "s.duckdb"
    StateManager(path).save_scenario("first", {})
    path.unlink()
    duckdb.connect(str(path)).close()  # an empty new file, as another process's first write makes it
    real_connect = duckdb.connect
    removals = []

    def connect(database=":memory:", *args, **kwargs):
        if database == str(path) and not removals:
            path.unlink()  # that first write failed: its file is removed
            removals.append(database)
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": No such file or directory')
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", connect)
    StateManager(path).save_scenario("kept", {"patients": [{"id": "p1"}]})
    monkeypatch.undo()
    assert removals
    assert StateManager(path, read_only=True).load_scenario("kept")["entity_counts"] == {"patient": 1}
