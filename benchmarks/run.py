"""Benchmarks of healthsim-state. Prints one JSON line per measurement.

    python3 -m benchmarks.run                          # 10k, 100k and 1M entities, and 100k legacy-shaped
    python3 -m benchmarks.run --sizes 10000 --legacy "" --repeat 5
    python3 -m benchmarks.run --latency                # the small-operation targets
    python3 -m benchmarks.run --startup                # start-up cost (benchmarks/startup.py)
    python3 -m benchmarks.run --floors                 # ours against DuckDB's own floor (benchmarks/floors.py)
    python3 -m benchmarks.run --sizes 100000 --postgres start   # and on a throwaway PostgreSQL server

Throughput (one line per size and shape): median save and load seconds and
entities per second, the cost per entity (it must stay flat as sizes grow), the
RSS the input occupies and the peak RSS growth during a save (and their
ratio), database bytes per entity, and two references measured run for run
with the saves: DuckDB's own ``read_json`` of the same entities written as
NDJSON, into one table per type (``save_vs_read_json``; timed from an open connection to
its commit, and ``save_vs_read_json_open_to_close`` from its connect to its
close, as a save is), and the standard library's
``json.loads`` of those NDJSON lines into dicts (``load_vs_json_loads``). A
save is into a new file, so it includes making the store; ``create_s`` is
that alone, measured apart. ``shape`` is ``canonical`` (:func:`scenario`) or
``legacy`` (:func:`legacy_scenario`: flat aliases, explicit nulls, offsets) or
``keyless`` (:func:`keyless_scenario`: the clinical types without their keys,
which the store makes from each entity's content; ``--keyless SIZES``).
Each size runs in a fresh process so memory figures are its own. With
``--postgres`` (a URL, or ``start`` for a throwaway server with default
durability), the same scenario is also saved and loaded on PostgreSQL in the
same run: ``pg_*`` figures, and DuckDB's time over the server's
(``pg_save_speed_vs_duckdb``, ``pg_load_speed_vs_duckdb``).

Latency (``--latency``): open + save 50 entities + close from a fresh
StateManager; load one 80-entity scenario (canonical and legacy-shaped) from a
database of 1,000 scenarios / 1M entities; ``list_scenarios()`` over 10,000
scenarios; ``add_entities`` of 200 entities to a small and to an 80,000-entity
scenario; overwrite and delete of an 80,000-entity scenario; an MCP
``load_scenario`` page of 1,000 entities over stdio (with the ``mcp`` extra).
Each small operation is measured as a fresh manager opens the file for it
(``keep_open: 0``, the default) and with ``keep_open`` (the file kept open
between operations). Medians of repeated runs.
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
from typing import Callable, Iterator

from benchmarks.generate import (
    PER_PATIENT,
    entity_count,
    keyless_scenario,
    legacy_scenario,
    ndjson_lines,
    scenario,
    write_ndjson,
)

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
LEGACY_SIZES = (100_000,)


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

def measure_size(size: int, repeat: int, workdir: Path, shape: str = "canonical",
                 postgres: str | None = None) -> dict:
    from healthsim_state import StateManager

    gc.collect()
    baseline = _status("VmRSS")
    make = {"legacy": legacy_scenario, "keyless": keyless_scenario}.get(shape, scenario)
    data = make(max(1, size // PER_PATIENT), seed=size)
    entities = entity_count(data)
    gc.collect()
    input_rss = _status("VmRSS") - baseline

    saves, loads, creates, peak_growth, db_bytes = [], [], [], None, None
    server_runs: list[tuple[float, float, int]] = []
    lines = ndjson_lines(data)
    every = [line for part in lines.values() for line in part]
    files = write_ndjson(lines, workdir)
    committed, closed, parsing = [], [], []
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
        empty = workdir / f"empty-{run}.duckdb"
        started = time.perf_counter()
        StateManager(empty).create()
        creates.append(time.perf_counter() - started)
        empty.unlink()
        # the references run for run with the saves, so a change in the shared
        # machine's speed during the run moves both sides of each ratio
        commit, close = read_json_once(files, workdir / f"reference-{run}.duckdb")
        committed.append(commit)
        closed.append(close)
        parsing.append(json_loads_once(every))

    for path in files.values():
        path.unlink()
    reference, reference_closed = statistics.median(committed), statistics.median(closed)
    parsing = statistics.median(parsing)
    save, load = statistics.median(saves), statistics.median(loads)
    server = postgres_figures(server_runs, entities, save, load) if server_runs else {}
    return {
        "entities": entities,
        "shape": shape,
        "runs": repeat,
        "save_s": round(save, 3),
        "load_s": round(load, 3),
        "create_s": round(statistics.median(creates), 3),
        "save_entities_per_s": round(entities / save),
        "load_entities_per_s": round(entities / load),
        "save_us_per_entity": round(save / entities * 1e6, 2),
        "load_us_per_entity": round(load / entities * 1e6, 2),
        "input_rss_mb": round(input_rss / 2**20, 1),
        "save_peak_rss_growth_mb": None if peak_growth is None else round(peak_growth / 2**20, 1),
        "save_peak_vs_input": None if peak_growth is None or input_rss <= 0 else round(peak_growth / input_rss, 2),
        "db_bytes_per_entity": round(db_bytes / entities, 1),
        "read_json_s": round(reference, 3),
        "save_vs_read_json": round(save / reference, 2),
        "read_json_open_to_close_s": round(reference_closed, 3),
        "save_vs_read_json_open_to_close": round(save / reference_closed, 2),
        "json_loads_s": round(parsing, 3),
        "load_vs_json_loads": round(load / parsing, 2),
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


def json_loads_once(lines: list[str]) -> float:
    """Seconds for ``json.loads`` to turn the NDJSON lines into dicts."""
    gc.collect()
    started = time.perf_counter()
    parsed = list(map(json.loads, lines))
    elapsed = time.perf_counter() - started
    del parsed
    return elapsed


def read_json_once(files: dict[str, Path], db: Path) -> tuple[float, float]:
    """Seconds for DuckDB to load the NDJSON files into a new database, one
    table per type (``read_json``, schema inferred): from an open connection
    to its commit (the issue's reference), and from the connect to the close.
    The second is what a save is timed as (it opens the file and closes it);
    DuckDB writes the commit to its log and the tables into the file at the
    close, where a save's larger commit does both at once."""
    import duckdb

    opened = time.perf_counter()
    con = duckdb.connect(str(db))
    started = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    for kind, path in files.items():
        con.read_json(str(path), format="newline_delimited").create(kind)
    con.execute("COMMIT")
    committed = time.perf_counter() - started
    con.close()
    closed = time.perf_counter() - opened
    db.unlink()
    return committed, closed


# --- latency --------------------------------------------------------------------------

def _median_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 2)


def _timed(operation: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        operation()
        times.append(time.perf_counter() - started)
    return times


def _line(measure: str, runs: list[float], **extra: object) -> dict:
    return {"measure": measure, **extra, "median_ms": _median_ms(runs), "runs": len(runs)}


KEEP_OPEN = 1.0
"""Seconds the file stays open between operations in the ``keep_open`` measures."""


def measure_latency(workdir: Path, repeat: int, *, scenarios: int = 1000, listed: int = 10_000,
                    big_patients: int = 1000, mcp: bool = True) -> Iterator[dict]:
    """The small-operation targets; the keyword arguments shrink them for a smoke test.
    Each small operation opens a fresh manager, as a command line call does."""
    from healthsim_state import StateManager

    runs = max(repeat, 20)
    small = scenario(1, seed=1)
    fifty = {"patient": small["patient"], "encounter": small["encounter"], "lab_result": small["lab_result"],
             "vital_sign": small["vital_sign"], "claim": small["claim"], "claim_line": small["claim_line"][:13],
             "medication": small["medication"], "diagnosis": small["diagnosis"]}
    assert entity_count(fifty) == 50, entity_count(fifty)
    names = iter(range(10**9))
    for keep in (0.0, KEEP_OPEN):
        path = workdir / f"small-{keep}.duckdb"
        StateManager(path).create()  # the file exists, as it does for a user

        def save() -> None:
            with StateManager(path, keep_open=keep) as sm:
                sm.save_scenario(f"small-{next(names)}", fifty)

        yield _line("open + save 50 entities + close", _timed(save, runs), keep_open=keep)

    path = workdir / "large.duckdb"
    with StateManager(path, keep_open=KEEP_OPEN) as sm:
        block = scenario(12, seed=2)  # 960 entities
        for index in range(scenarios):
            sm.save_scenario(f"bulk-{index}", block)
        sm.save_scenario("one", scenario(1, seed=3))
        sm.save_scenario("one-legacy", legacy_scenario(1, seed=3))
        total = sum(s["entity_count"] for s in sm.list_scenarios(limit=None))
    for name in ("one", "one-legacy"):
        for keep in (0.0, KEEP_OPEN):
            def load() -> None:
                with StateManager(path, keep_open=keep) as sm:
                    sm.load_scenario(name)

            load()
            yield _line(f"load one 80-entity scenario ({'legacy-shaped' if 'legacy' in name else 'canonical'})",
                        _timed(load, runs), keep_open=keep, scenarios=scenarios + 2, entities_in_db=total)

    adds = [{"lab_result": [{**lab, "lab_result_id": f"{lab['lab_result_id']}-{i}-{k}"} for i, lab in
                            enumerate(scenario(10, seed=6)["lab_result"][:100])],
             "vital_sign": [{**vital, "vital_sign_id": f"{vital['vital_sign_id']}-{k}"} for vital in
                            scenario(13, seed=6)["vital_sign"][:100]]} for k in range(runs)]
    assert entity_count(adds[0]) == 200
    big = scenario(big_patients, seed=4)  # 80,000 entities by default
    with StateManager(path, keep_open=KEEP_OPEN) as sm:
        sm.save_scenario("big", big)
        sm.save_scenario("small", scenario(1, seed=5))
    for target in ("small", "big"):
        for keep in (0.0, KEEP_OPEN):
            batches = iter(adds)

            def add() -> None:
                with StateManager(path, keep_open=keep) as sm:
                    sm.add_entities(target, next(batches))

            stored = "80-entity" if target == "small" else f"{entity_count(big):,}-entity"
            yield _line(f"add_entities of 200 entities to a {stored} scenario", _timed(add, runs), keep_open=keep)

    overwrite, delete = [], []
    with StateManager(path) as sm:
        for run in range(repeat):
            started = time.perf_counter()
            sm.save_scenario("big", big, overwrite=True)
            overwrite.append(time.perf_counter() - started)
        for run in range(repeat):
            sm.save_scenario(f"big-{run}", big)
            started = time.perf_counter()
            sm.delete_scenario(f"big-{run}")
            delete.append(time.perf_counter() - started)
    yield _line(f"overwrite {entity_count(big):,}-entity scenario (validate + write both included)", overwrite)
    yield _line(f"delete {entity_count(big):,}-entity scenario", delete)

    path = workdir / "many.duckdb"
    with StateManager(path, keep_open=KEEP_OPEN) as sm:
        one = {"patient": scenario(1, seed=5)["patient"]}
        for index in range(listed):
            sm.save_scenario(f"scenario {index}", one, tags=[f"t{index % 7}"], description=f"number {index}")
    for keep in (0.0, KEEP_OPEN):
        def listing() -> None:
            with StateManager(path, keep_open=keep) as sm:
                sm.list_scenarios()

        yield _line(f"list_scenarios() over {listed:,} scenarios (limit 100)", _timed(listing, runs), keep_open=keep)

    if mcp:
        yield from measure_mcp(workdir, repeat)


def measure_mcp(workdir: Path, repeat: int) -> Iterator[dict]:
    """``load_scenario`` pages over stdio, end to end, from an MCP client (the
    SDK's) to ``healthsim-state mcp`` in its own process: the whole of a
    1,040-entity scenario, and 1,000 lab results of a larger one."""
    try:
        import anyio
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client
    except ImportError:
        return
    from healthsim_state import StateManager

    path = workdir / "mcp.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("page", scenario(13, seed=9))  # 1,040 entities of all 14 types
        sm.save_scenario("labs", scenario(100, seed=9))
    calls = [("MCP load_scenario page of a whole 1,040-entity scenario", {"name_or_id": "page"}),
             ("MCP load_scenario page of 1,000 lab results",
              {"name_or_id": "labs", "entity_types": ["lab_result"], "limit_per_type": 1000})]
    results: list[dict] = []

    async def run() -> None:
        root = Path(__file__).resolve().parents[1]
        parameters = StdioServerParameters(
            command=sys.executable, args=["-m", "healthsim_state.mcp_server", "--db", str(path)], cwd=str(root),
            env={**os.environ, "PYTHONPATH": str(root)})
        with open(workdir / "mcp.log", "w") as log:
            async with Client(stdio_client(parameters, errlog=log), read_timeout_seconds=120) as client:
                for measure, arguments in calls:
                    times = []
                    for _ in range(max(repeat, 10)):
                        started = time.perf_counter()
                        result = await client.call_tool("load_scenario", arguments)
                        times.append(time.perf_counter() - started)
                    assert not result.is_error, result.content[0].text
                    count = sum(len(v) for v in result.structured_content["entities"].values())
                    results.append(_line(measure, times, entities=count))

    anyio.run(run)
    yield from results


# --- command line -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated entity counts (default: %(default)s)")
    parser.add_argument("--legacy", default=",".join(map(str, LEGACY_SIZES)),
                        help="comma-separated entity counts of legacy-shaped data (default: %(default)s)")
    parser.add_argument("--keyless", default="",
                        help="comma-separated entity counts of data whose clinical types leave their keys to the "
                             "store (default: none)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--latency", action="store_true", help="measure the small-operation targets instead")
    parser.add_argument("--startup", action="store_true",
                        help="measure start-up (--help, import, list) instead; see benchmarks/startup.py")
    parser.add_argument("--floors", action="store_true",
                        help="measure each operation against its floor instead (python3 -m benchmarks.floors "
                             "takes that benchmark's options)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    parser.add_argument("--shape", default="canonical", help=argparse.SUPPRESS)  # internal: with --one
    parser.add_argument("--workdir", type=Path, help="where to put databases (default: a temp dir)")
    parser.add_argument("--postgres", metavar="URL|start",
                        help="also measure save and load on a PostgreSQL server: a postgresql:// URL (a schema "
                             "a run is made there and dropped), or 'start' for a throwaway server on this machine")
    args = parser.parse_args(argv)
    if args.floors:
        from benchmarks.floors import main as floors

        return floors(["--workdir", str(args.workdir)] if args.workdir else [])
    from benchmarks.postgres import run_with_postgres

    return run_with_postgres(args, _run)


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.startup:
            from benchmarks.startup import measure_startup

            print(json.dumps(measure_startup(workdir, args.repeat)), flush=True)
        elif args.one:
            print(json.dumps(measure_size(args.one, args.repeat, workdir, args.shape, args.postgres)), flush=True)
        elif args.latency:
            for result in measure_latency(workdir, args.repeat):
                print(json.dumps(result), flush=True)
        else:
            runs = [(int(n), "canonical") for n in args.sizes.split(",") if n] + \
                [(int(n), "legacy") for n in args.legacy.split(",") if n] + \
                [(int(n), "keyless") for n in args.keyless.split(",") if n]
            for size, shape in runs:
                command = [sys.executable, "-m", "benchmarks.run", "--one", str(size), "--shape", shape,
                           "--repeat", str(args.repeat)]
                if args.workdir:
                    command += ["--workdir", str(args.workdir)]
                if args.postgres:
                    command += ["--postgres", args.postgres]
                subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
