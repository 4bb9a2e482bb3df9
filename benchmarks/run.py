"""Benchmarks of healthsim-state. Prints one JSON line per measurement.

    python3 -m benchmarks.run                          # 10k, 100k and 1M entities, 3 runs each
    python3 -m benchmarks.run --sizes 10000 --repeat 5
    python3 -m benchmarks.run --latency                # the small-operation targets
    python3 -m benchmarks.run --sizes 100000 --postgres start   # and on a throwaway PostgreSQL server

Throughput (one line per size): median save and load seconds and entities per
second, the cost per entity (it must stay flat as sizes grow), the RSS the
input occupies and the peak RSS growth during a save, database bytes per entity,
and the reference floor: DuckDB's own ``read_json`` of the same entities
written as NDJSON, into one table per type, measured in the same run, with the
ratio of our save time to it. Each size runs in a fresh process so memory
figures are its own. With ``--postgres`` (a URL, or ``start`` for a throwaway
server with default durability), the same scenario is also saved and loaded
on PostgreSQL in the same run: ``pg_*`` figures, and DuckDB's time over the
server's (``pg_save_speed_vs_duckdb``, ``pg_load_speed_vs_duckdb``).

Latency (``--latency``): open + save 50 entities + close from a fresh
StateManager; load one 80-entity scenario from a database of 1,000 scenarios /
1M entities; ``list_scenarios()`` over 10,000 scenarios; overwrite and delete
of an 80,000-entity scenario. Medians of repeated runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from benchmarks.generate import PER_PATIENT, entity_count, scenario

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


# --- memory -----------------------------------------------------------------------

def _status(field: str) -> int:
    """A VmRSS / VmHWM figure of this process, in bytes (0 where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- one size ------------------------------------------------------------------------

def measure_size(size: int, repeat: int, workdir: Path, postgres: str | None = None) -> dict:
    from healthsim_state import StateManager

    gc.collect()
    baseline = _status("VmRSS")
    data = scenario(max(1, size // PER_PATIENT), seed=size)
    entities = entity_count(data)
    gc.collect()
    input_rss = _status("VmRSS") - baseline

    saves, loads, peak_growth, db_bytes = [], [], None, None
    server_runs: list[tuple[float, float, int]] = []
    for run in range(repeat):
        path = workdir / f"bench-{size}-{run}.duckdb"
        with StateManager(path) as sm:
            gc.collect()
            before = _status("VmRSS")
            tracked = _reset_peak()
            started = time.perf_counter()
            sm.save_scenario("bench", data)
            saves.append(time.perf_counter() - started)
            if run == 0 and tracked:
                peak_growth = _status("VmHWM") - before
            started = time.perf_counter()
            loaded = sm.load_scenario("bench")
            loads.append(time.perf_counter() - started)
            assert sum(len(v) for v in loaded["entities"].values()) == entities
            del loaded
        db_bytes = path.stat().st_size
        path.unlink()
        if postgres is not None:  # run for run, so both see the same load on a shared machine
            server_runs.append(postgres_run(data, entities, postgres, run))

    reference = measure_read_json(data, repeat, workdir)
    save, load = statistics.median(saves), statistics.median(loads)
    server = postgres_figures(server_runs, entities, save, load) if server_runs else {}
    return {
        "entities": entities,
        "runs": repeat,
        "save_s": round(save, 3),
        "load_s": round(load, 3),
        "save_entities_per_s": round(entities / save),
        "load_entities_per_s": round(entities / load),
        "save_us_per_entity": round(save / entities * 1e6, 2),
        "load_us_per_entity": round(load / entities * 1e6, 2),
        "input_rss_mb": round(input_rss / 2**20, 1),
        "save_peak_rss_growth_mb": None if peak_growth is None else round(peak_growth / 2**20, 1),
        "db_bytes_per_entity": round(db_bytes / entities, 1),
        "read_json_s": round(reference, 3),
        "save_vs_read_json": round(save / reference, 2),
        **server,
    }


# --- the same on a PostgreSQL server ------------------------------------------------------------

def postgres_run(data: dict, entities: int, url: str, run: int) -> tuple[float, float, int]:
    """Save and load ``data`` once on a PostgreSQL server, in a schema of its
    own (dropped after): seconds to save, to load, and the tables' bytes."""
    import psycopg

    from healthsim_state import StateManager

    schema = f"healthsim_bench_{os.getpid()}_{run}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            with StateManager(_with_search_path(url, schema)) as sm:
                sm.create()  # the tables exist, as on a server in use
                gc.collect()
                started = time.perf_counter()
                sm.save_scenario("bench", data)
                save = time.perf_counter() - started
                started = time.perf_counter()
                loaded = sm.load_scenario("bench")
                load = time.perf_counter() - started
                assert sum(len(v) for v in loaded["entities"].values()) == entities
                del loaded
            db_bytes = admin.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relkind = 'r' AND "
                "c.relnamespace = %s::regnamespace", [schema]).fetchone()[0]
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return save, load, int(db_bytes or 0)


def postgres_figures(runs: list[tuple[float, float, int]], entities: int, duckdb_save: float,
                     duckdb_load: float) -> dict:
    """Medians on the server, and how they compare with DuckDB's in this run:
    ``pg_save_speed_vs_duckdb`` is DuckDB's save time over PostgreSQL's (above
    1: the server saves faster), and the same for loads."""
    save = statistics.median(r[0] for r in runs)
    load = statistics.median(r[1] for r in runs)
    return {
        "pg_save_s": round(save, 3),
        "pg_load_s": round(load, 3),
        "pg_save_entities_per_s": round(entities / save),
        "pg_load_entities_per_s": round(entities / load),
        "pg_db_bytes_per_entity": round(runs[-1][2] / entities, 1),
        "pg_save_speed_vs_duckdb": round(duckdb_save / save, 2),
        "pg_load_speed_vs_duckdb": round(duckdb_load / load, 2),
    }


def _with_search_path(url: str, schema: str) -> str:
    from urllib.parse import quote

    option = "options=" + quote(f"-c search_path={schema}", safe="")
    return url + ("&" if "?" in url else "?") + option



def measure_read_json(data: dict, repeat: int, workdir: Path) -> float:
    """Median seconds for DuckDB to load the same entities from NDJSON files
    into one table per type (``read_json``, schema inferred), committed."""
    import duckdb

    files = {}
    for kind, items in data.items():
        path = workdir / f"{kind}.ndjson"
        with path.open("w") as out:
            for item in items:
                out.write(json.dumps(item, default=str))
                out.write("\n")
        files[kind] = path
    times = []
    for run in range(repeat):
        db = workdir / f"reference-{run}.duckdb"
        con = duckdb.connect(str(db))
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        for kind, path in files.items():
            relation = con.read_json(str(path), format="newline_delimited")
            relation.create(kind)
        con.execute("COMMIT")
        times.append(time.perf_counter() - started)
        con.close()
        db.unlink()
    for path in files.values():
        path.unlink()
    return statistics.median(times)


# --- latency --------------------------------------------------------------------------

def _median_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 2)


def measure_latency(workdir: Path, repeat: int, *, scenarios: int = 1000, listed: int = 10_000,
                    big_patients: int = 1000) -> Iterator[dict]:
    """The small-operation targets; the keyword arguments shrink them for a smoke test."""
    from healthsim_state import StateManager

    small = scenario(1, seed=1)
    fifty = {"patient": small["patient"], "encounter": small["encounter"], "lab_result": small["lab_result"],
             "vital_sign": small["vital_sign"], "claim": small["claim"], "claim_line": small["claim_line"][:13],
             "medication": small["medication"], "diagnosis": small["diagnosis"]}
    assert entity_count(fifty) == 50, entity_count(fifty)
    path = workdir / "small.duckdb"
    StateManager(path).close()  # the file exists, as it does for a user
    runs = []
    for run in range(max(repeat, 20)):
        started = time.perf_counter()
        with StateManager(path) as sm:
            sm.save_scenario(f"small-{run}", fifty)
        runs.append(time.perf_counter() - started)
    yield {"measure": "open + save 50 entities + close", "median_ms": _median_ms(runs), "runs": len(runs)}

    path = workdir / "large.duckdb"
    with StateManager(path) as sm:
        block = scenario(12, seed=2)  # 960 entities
        for index in range(scenarios):
            sm.save_scenario(f"bulk-{index}", block)
        sm.save_scenario("one", scenario(1, seed=3))
        total = sum(s["entity_count"] for s in sm.list_scenarios(limit=None))
        runs = []
        for _ in range(max(repeat, 20)):
            started = time.perf_counter()
            sm.load_scenario("one")
            runs.append(time.perf_counter() - started)
        yield {"measure": "load one 80-entity scenario", "scenarios": scenarios + 1, "entities_in_db": total,
               "median_ms": _median_ms(runs), "runs": len(runs)}
        big = scenario(big_patients, seed=4)  # 80,000 entities by default
        overwrite, delete = [], []
        for run in range(repeat):
            sm.save_scenario("big", big)
            started = time.perf_counter()
            sm.save_scenario("big", big, overwrite=True)
            overwrite.append(time.perf_counter() - started)
            started = time.perf_counter()
            sm.delete_scenario("big")
            delete.append(time.perf_counter() - started)
        yield {"measure": f"overwrite {entity_count(big):,}-entity scenario (validate + write both included)",
               "median_ms": _median_ms(overwrite), "runs": repeat}
        yield {"measure": f"delete {entity_count(big):,}-entity scenario", "median_ms": _median_ms(delete),
               "runs": repeat}

    path = workdir / "many.duckdb"
    with StateManager(path) as sm:
        one = {"patient": scenario(1, seed=5)["patient"]}
        for index in range(listed):
            sm.save_scenario(f"scenario {index}", one, tags=[f"t{index % 7}"], description=f"number {index}")
        runs = []
        for _ in range(max(repeat, 20)):
            started = time.perf_counter()
            sm.list_scenarios()
            runs.append(time.perf_counter() - started)
        yield {"measure": f"list_scenarios() over {listed:,} scenarios (limit 100)",
               "median_ms": _median_ms(runs), "runs": len(runs)}


# --- command line -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated entity counts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--latency", action="store_true", help="measure the small-operation targets instead")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    parser.add_argument("--workdir", type=Path, help="where to put databases (default: a temp dir)")
    parser.add_argument("--postgres", metavar="URL|start",
                        help="also measure save and load on a PostgreSQL server: a postgresql:// URL (a schema "
                             "a run is made there and dropped), or 'start' for a throwaway server on this machine")
    args = parser.parse_args(argv)

    cluster = None
    if args.postgres == "start":
        from benchmarks.pgcluster import Cluster

        cluster = Cluster.start(durable=True)  # fsync and all: a real server's figures
        args.postgres = cluster.url()
    try:
        return _run(args)
    finally:
        if cluster is not None:
            cluster.stop()


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.one:
            print(json.dumps(measure_size(args.one, args.repeat, workdir, args.postgres)), flush=True)
        elif args.latency:
            for result in measure_latency(workdir, args.repeat):
                print(json.dumps(result), flush=True)
        else:
            for size in (int(s) for s in args.sizes.split(",")):
                command = [sys.executable, "-m", "benchmarks.run", "--one", str(size), "--repeat", str(args.repeat)]
                if args.workdir:
                    command += ["--workdir", str(args.workdir)]
                if args.postgres:
                    command += ["--postgres", args.postgres]
                subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
