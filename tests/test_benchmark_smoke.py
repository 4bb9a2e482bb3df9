"""The benchmark keeps working: its generator is deterministic and realistic,
what it saves loads back equal to the canonical form, and the runner prints
its JSON line. (No timings are asserted: CI machines are noisy.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import oracle
import pytest

from benchmarks.generate import PER_PATIENT, entity_count, legacy_scenario, scenario
from benchmarks.run import measure_latency, measure_mcp, measure_size
from healthsim_state import StateManager

REPO = Path(__file__).resolve().parents[1]


def test_generator_is_deterministic_and_covers_every_type():
    first, again = scenario(3, seed=7), scenario(3, seed=7)
    assert first == again and scenario(3, seed=8) != first
    assert entity_count(first) == 3 * PER_PATIENT
    assert all(first[kind] for kind in first), "every entity type is present"


def test_what_the_benchmark_saves_loads_back_canonical(sm):
    data = scenario(4, seed=11)
    sm.save_scenario("bench", data)
    loaded = sm.load_scenario("bench")["entities"]
    mappings = oracle.load_mapping_dirs([REPO / "mappings"])
    for kind, items in data.items():
        expected = oracle.expect(mappings[kind], items)
        assert oracle.diff(expected, loaded[kind], f"$.{kind}") is None


@pytest.mark.parametrize("shape", ["canonical", "legacy"])
def test_measure_size_reports_every_figure(tmp_path, shape):
    result = measure_size(400, 1, tmp_path, shape)
    assert result["entities"] == 400 and result["shape"] == shape
    for key in ("save_s", "load_s", "create_s", "save_entities_per_s", "load_entities_per_s", "save_us_per_entity",
                "load_us_per_entity", "db_bytes_per_entity", "read_json_s", "save_vs_read_json", "json_loads_s",
                "load_vs_json_loads", "read_json_open_to_close_s", "save_vs_read_json_open_to_close"):
        assert result[key] > 0, key
    assert result["read_json_open_to_close_s"] > result["read_json_s"]  # the connect and close on top
    # memory deltas of a tiny run can round to zero, but they are measured
    assert isinstance(result["input_rss_mb"], float) and isinstance(result["save_peak_rss_growth_mb"], float)


def test_the_documented_command_prints_one_json_line_per_size(tmp_path):
    output = subprocess.run([sys.executable, "-m", "benchmarks.run", "--sizes", "160,320", "--legacy", "240",
                             "--repeat", "1", "--workdir", str(tmp_path)], cwd=REPO, check=True, capture_output=True,
                            text=True)
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    assert [(line["entities"], line["shape"]) for line in lines] == [(160, "canonical"), (320, "canonical"),
                                                                       (240, "legacy")]


def test_latency_measures_run_at_a_tiny_scale(tmp_path):
    results = list(measure_latency(tmp_path, 1, scenarios=3, listed=5, big_patients=2, mcp=False))
    assert [r["measure"].split()[0] for r in results] == ["open"] * 2 + ["load"] * 4 + ["add_entities"] * 4 + [
        "overwrite", "delete"] + ["list_scenarios()"] * 2
    assert all(r["median_ms"] > 0 for r in results)
    assert {r.get("keep_open") for r in results if r["measure"].startswith("open")} == {0.0, 1.0}


def test_the_mcp_page_is_measured_over_stdio(tmp_path):
    (page, labs) = measure_mcp(tmp_path, 1)
    assert (page["entities"], labs["entities"]) == (1040, 1000) and page["median_ms"] > 0


def test_legacy_data_is_deterministic_and_saves_as_its_canonical_form(sm):
    data = legacy_scenario(2, seed=5)
    assert data == legacy_scenario(2, seed=5) and entity_count(data) == 2 * PER_PATIENT
    sm.save_scenario("legacy", data)
    loaded = sm.load_scenario("legacy")["entities"]
    mappings = oracle.load_mapping_dirs([REPO / "mappings"])
    for kind, items in data.items():
        assert oracle.diff(oracle.expect(mappings[kind], items), loaded[kind], f"$.{kind}") is None


def test_measure_size_on_a_postgres_server_beside_duckdb(tmp_path, pg_cluster):
    result = measure_size(400, 1, tmp_path, postgres=pg_cluster.url())
    for key in ("pg_save_s", "pg_load_s", "pg_save_entities_per_s", "pg_load_entities_per_s",
                "pg_db_bytes_per_entity", "pg_save_speed_vs_duckdb", "pg_load_speed_vs_duckdb"):
        assert result[key] > 0, key
    with pg_cluster.admin() as con:  # the run's schema is gone
        assert con.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'healthsim_bench_%'").fetchone() == (0,)


def test_the_versions_benchmark_measures_what_it_says(tmp_path):
    """Small sizes: each measure runs and reports sizes and counts that follow
    from what it did (the stream's memory figures come from the child's own
    peak, a number, not the parent's)."""
    from benchmarks.versions import measure_appends, measure_history, measure_stream

    history = measure_history(tmp_path, repeat=1, patients=2, versions=2)
    assert history["entities"] == 2 * PER_PATIENT and history["versions"] == 3
    assert history["file_bytes_after_overwrites"] >= history["file_bytes_one_version"] > 0
    assert 0 < history["file_bytes_compacted"] <= history["file_bytes_after_overwrites"]
    appends = measure_appends(tmp_path, repeat=1, sizes=(5, 50), batch=3)
    assert set(appends["ms_by_stored"]) == {5, 50} and appends["batch"] == 3
    stream = measure_stream(tmp_path, patients=20)
    assert stream["scenario_entities"] == 20 * PER_PATIENT
    expected = len(scenario(20, seed=3)["lab_result"])
    for mode in ("stream", "load"):
        assert stream[mode]["entities"] == expected
        assert isinstance(stream[mode]["peak_rss_growth_mb"], int) and stream[mode]["peak_rss_growth_mb"] >= 0


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_the_overwrite_series_saves_then_overwrites_every_entity(tmp_path, request, backend):
    """Each series: one save and the overwrites asked for, every entity
    changed each time, into a new store (on a server: a schema of its own,
    dropped after), and the bytes the store holds."""
    from benchmarks.versions import _patients, measure_overwrites

    postgres = request.getfixturevalue("pg_url") if backend == "postgres" else None
    result = measure_overwrites(tmp_path, repeat=2, entities=5, overwrites=3, postgres=postgres)
    assert result["backend"] == backend and result["series"] == 2 and result["entities"] == 5
    assert list(result["overwrite_ms_by_version"]) == [2, 3, 4] and result["save_ms"] > 0
    assert result["bytes_after_save"] > 0 and result["bytes_per_overwrite"] > 0  # every entity changed: it grew
    first, second = _patients(5, 0)["patient"], _patients(5, 1)["patient"]
    assert all(a != b for a, b in zip(first, second)) and [a["patient_id"] for a in first] == \
        [b["patient_id"] for b in second]
    if postgres:
        import psycopg

        with psycopg.connect(postgres, autocommit=True) as con:
            assert con.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'healthsim_overwrites_%'"
                               ).fetchone() == (0,)


# --- ours against the floor (benchmarks/floors.py) ---------------------------------------------

def test_every_floor_line_has_ours_a_floor_and_their_ratio(tmp_path):
    """Small sizes, one round: every measure of the issue's table prints its
    line, with both sides and their ratio measured (no timing is asserted)."""
    from benchmarks.floors import measure_floors

    lines = list(measure_floors(tmp_path, rounds=1, large_rounds=1, sizes=(800,), background=2, listed=5))
    assert [(line["measure"].split()[0], line.get("keep_open"), line.get("shape")) for line in lines] == [
        ("load", 0.0, None), ("load", 1.0, None), ("save", 0.0, None), ("save", 1.0, None),
        ("list_scenarios(limit=None)", 0.0, None), ("list_scenarios(limit=None)", 1.0, None),
        ("save", None, "canonical"), ("stored", None, "canonical"), ("save", None, "legacy"), ("stored", None, "legacy")]
    for line in lines:
        assert line["ours"] > 0 and line["floor"] > 0 and line["ratio"] > 0, line
        assert line["target"] > 0 and isinstance(line["met"], bool), line
    saves = [line for line in lines if line["measure"] == "save 50 entities"]
    assert all(line["statements"] > 0 and line["ratio_statements"] > 0 for line in saves)
    large = [line for line in lines if line.get("shape") and line["unit"] == "ms"]
    assert all(line["read_json"] > 0 and line["ratio_read_json"] > 0 and line["entities"] == 800 for line in large)


def test_the_arrow_floor_writes_the_rows_our_save_wrote(tmp_path):
    """The floor of a large save is our own INSERTs, fed the Arrow columns
    our codec made: replayed into an empty store, they give the same rows."""
    import duckdb

    from benchmarks.floors import recording, replay

    empty, ours, floor = tmp_path / "empty.duckdb", tmp_path / "ours.duckdb", tmp_path / "floor.duckdb"
    StateManager(empty).create()
    shutil.copyfile(empty, ours)
    shutil.copyfile(empty, floor)
    data = scenario(30, seed=4)
    with recording() as found:
        with StateManager(ours) as sm:
            sm.save_scenario("s", data)
    writes = found.writes()
    assert any(event[0] == "register" for event in writes)  # Arrow columns (small types may go by the appender)
    con = duckdb.connect(str(floor), config=found.connect[1]["config"])
    con.execute("BEGIN TRANSACTION")
    replay(con, writes)
    con.execute("COMMIT")
    con.execute("ATTACH ? AS ours (READ_ONLY)", [str(ours)])
    tables = [name for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'ours' AND table_name LIKE '%\\_\\_versions' "
        "ESCAPE '\\'").fetchall()]
    assert len(tables) == len(StateManager(empty).entity_types)  # a table a built-in type
    total = 0
    for table in tables:
        count, = con.execute(f'SELECT count(*) FROM ours."{table}"').fetchone()
        differ = con.execute(f'SELECT count(*) FROM ((FROM ours."{table}" EXCEPT ALL FROM floor."{table}") UNION ALL '
                             f'(FROM floor."{table}" EXCEPT ALL FROM ours."{table}"))').fetchone()
        assert differ == (0,), table
        total += count
    con.close()
    assert total == entity_count(data)
