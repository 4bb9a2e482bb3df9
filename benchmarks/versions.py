"""What versions and many clients cost: history storage and overwrite, load of
the newest version, appends into a big scenario, streaming one type.

    python3 -m benchmarks.versions                # every measure, one JSON line each
    python3 -m benchmarks.versions --only appends # or: history, stream, overwrites
    python3 -m benchmarks.versions --only overwrites --postgres start  # on a fresh server

``history``: an 80,000-entity scenario (1,000 patients of benchmarks.generate)
overwritten 10 times with 1% of its entities changed each time. It prints the
file size after the 10 versions against a file holding one version (and after
``compact``, which gives back the blocks DuckDB keeps free for reuse); the
median overwrite of 1% against a full rewrite of the same scenario (what an
overwrite cost before versions: every row deleted and written again); and the
median load of the newest version against the load of a scenario that has one
version only.

``appends``: ``add_entities`` of 100 patients into scenarios that already hold
100 ... 150,000 patients: the cost should follow the batch, not what is stored.

``stream``: peak memory growth while ``iter_entities`` streams one type of a
1,000,000-entity scenario, against ``load_scenario`` of that type.

``overwrites``: a 20,000-entity scenario saved into a fresh store (new
tables, never analyzed; on PostgreSQL with ``--postgres``, a URL or
``start`` for a throwaway server, a new schema each series), then overwritten
10 times with every entity changed. Targets: every overwrite within 3x the
save, and version 10 within 1.5x version 2 (the first overwrite). Each
position's median over ``--repeat`` series; with them, the bytes the store
holds after the save and what each overwrite adds (tables and indexes; on
PostgreSQL before any vacuum gives dead rows' room back).

Timings are medians; the machine is shared, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.generate import scenario
from healthsim_state import StateManager

REPO = Path(__file__).resolve().parents[1]


def _median_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 1)


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _changed(data: dict, round_: int, fraction: float = 0.01) -> dict:
    """``data`` with ``fraction`` of every type's entities changed (a new note)."""
    out = {}
    for kind, items in data.items():
        step = max(1, round(1 / fraction))
        out[kind] = [dict(item, revision=round_) if i % step == round_ % step else item
                     for i, item in enumerate(items)]
    return out


def measure_history(workdir: Path, repeat: int, patients: int = 1000, versions: int = 10) -> dict:
    data = scenario(patients, seed=7)
    one = workdir / "one.duckdb"
    sm = StateManager(one)
    sm.save_scenario("s", data)
    one_size = one.stat().st_size
    many = workdir / "many.duckdb"
    shutil.copy(one, many)
    sm = StateManager(many)
    overwrites = []
    for round_ in range(1, versions + 1):
        changed = _changed(data, round_)
        overwrites.append(_timed(lambda: sm.save_scenario("s", changed, overwrite=True)))
    many_size = many.stat().st_size
    rewrites = []
    scratch = StateManager(workdir / "rewrite.duckdb")
    scratch.save_scenario("s", data)
    for round_ in range(repeat):
        changed = _changed(data, round_ + 1)
        rewrites.append(_timed(lambda: (scratch.delete_scenario("s"), scratch.save_scenario("s", changed))))
    loads_newest = [_timed(lambda: sm.load_scenario("s")) for _ in range(repeat)]
    loads_single = [_timed(lambda: StateManager(one).load_scenario("s")) for _ in range(repeat)]
    compacted = sm.compact()["bytes_after"]
    entities = sum(len(v) for v in data.values())
    return {
        "measure": "history", "entities": entities, "versions": versions + 1,
        "file_bytes_one_version": one_size, "file_bytes_after_overwrites": many_size,
        "file_ratio": round(many_size / one_size, 2), "file_bytes_compacted": compacted,
        "file_ratio_compacted": round(compacted / one_size, 2),
        "overwrite_1pct_ms": _median_ms(overwrites), "full_rewrite_ms": _median_ms(rewrites),
        "overwrite_ratio": round(statistics.median(overwrites) / statistics.median(rewrites), 2),
        "load_newest_ms": _median_ms(loads_newest), "load_single_version_ms": _median_ms(loads_single),
        "load_ratio": round(statistics.median(loads_newest) / statistics.median(loads_single), 2),
    }


def measure_appends(workdir: Path, repeat: int, sizes=(100, 10_000, 50_000, 150_000), batch: int = 100) -> dict:
    curve = {}
    for stored in sizes:
        sm = StateManager(workdir / f"appends-{stored}.duckdb")
        sm.save_scenario("s", {"patient": [{"patient_id": f"s{i}", "name": {"given": "S"}, "x": i}
                                           for i in range(stored)]})
        runs = []
        for round_ in range(repeat):
            batch_items = [{"patient_id": f"b{round_}-{i}", "name": {"given": "B"}} for i in range(batch)]
            runs.append(_timed(lambda: sm.add_entities("s", {"patient": batch_items})))
        curve[stored] = _median_ms(runs)
    first, last = curve[sizes[0]], curve[sizes[-1]]
    return {"measure": "appends", "batch": batch, "ms_by_stored": curve, "ratio_largest_to_smallest":
            round(last / first, 2)}


STREAM = """
import sys
from pathlib import Path
from healthsim_state import StateManager

def status(field):
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0

sm = StateManager(sys.argv[1], read_only=True)
sm.scenario_info("s")  # open once: what opening costs is not the stream's
try:
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here (ru_maxrss survives exec: the parent's)
except OSError:
    pass  # not Linux, or not allowed: the peak is the process's whole life
before = status("VmRSS")
if sys.argv[2] == "stream":
    count = sum(1 for _ in sm.iter_entities("s", sys.argv[3], batch_size=10_000))
else:
    count = len(sm.load_scenario("s", entity_types=[sys.argv[3]])["entities"][sys.argv[3]])
print(count, status("VmHWM") - before)
"""


def measure_stream(workdir: Path, patients: int = 12_500, kind: str = "lab_result") -> dict:
    db = workdir / "stream.duckdb"
    data = scenario(patients, seed=3)
    StateManager(db).save_scenario("s", data)
    total = sum(len(v) for v in data.values())
    del data
    out = {}
    for mode in ("stream", "load"):
        result = subprocess.run([sys.executable, "-c", STREAM, str(db), mode, kind], capture_output=True,
                                text=True, check=True, cwd=REPO)
        count, mb = map(int, result.stdout.split())
        out[mode] = {"entities": count, "peak_rss_growth_mb": mb}
    return {"measure": "stream", "scenario_entities": total, "type": kind, **out}


def _patients(count: int, round_: int, changed: float = 1.0) -> dict:
    """``count`` patients, the share ``changed`` of them (every one, by
    default) different in each ``round_`` (a mapped column and an unmapped
    field)."""
    every = max(1, round(1 / changed))
    return {"patient": [{"patient_id": f"p{i}", "mrn": f"M{i}",
                         "name": {"given": f"G{round_ if i % every == 0 else 0}-{i}", "family": "F"},
                         "birthDate": f"19{i % 90 + 10}-0{i % 9 + 1}-1{i % 9}",
                         "revision": round_ if i % every == 0 else 0}
                        for i in range(count)]}


def _overwrite_series(target: str, entities: int, overwrites: int, changed: float = 1.0
                      ) -> tuple[list[float], int, int]:
    """Seconds of the first save, then of each overwrite (the share
    ``changed`` of the entities changed), in a new store; and the bytes the
    store holds after the save and after the last overwrite."""
    rounds = [_patients(entities, round_, changed) for round_ in range(overwrites + 1)]
    times, sizes = [], []
    with StateManager(target) as sm:
        sm.create()  # the tables exist, empty and never analyzed, as on a new server
        for round_, data in enumerate(rounds):
            times.append(_timed(lambda: sm.save_scenario("s", data, overwrite=round_ > 0)))
            if round_ in (0, overwrites):
                sizes.append(_stored_bytes(target))
    return times, sizes[0], sizes[-1]


def _stored_bytes(target: str) -> int:
    """The bytes of a store: its tables with their indexes in the URL's
    schema on a server, the file (and its write-ahead log) of DuckDB's."""
    if not target.startswith("postgresql"):
        return sum(os.path.getsize(path) for path in (target, target + ".wal") if os.path.exists(path))
    import psycopg

    with psycopg.connect(target) as con:
        return int(con.execute("SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class "
                               "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace")
                   .fetchone()[0])


def _fresh_stores(workdir: Path, postgres: str | None):
    """Targets of new stores, one a call: a DuckDB file, or a new schema on the server."""
    if postgres is None:
        for series in range(1_000_000):
            yield str(workdir / f"overwrites-{series}.duckdb")
        return
    import psycopg

    from benchmarks.run import _with_search_path

    for series in range(1_000_000):
        schema = f"healthsim_overwrites_{os.getpid()}_{series}"
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield _with_search_path(postgres, schema)
        finally:
            with psycopg.connect(postgres, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def measure_overwrites(workdir: Path, repeat: int, entities: int = 20_000, overwrites: int = 10,
                       postgres: str | None = None, changed: float = 1.0) -> dict:
    stores = _fresh_stores(workdir, postgres)
    runs = [_overwrite_series(next(stores), entities, overwrites, changed) for _ in range(repeat)]
    stores.close()
    medians = [statistics.median(times) for times in zip(*(times for times, _, _ in runs))]
    save, rest = medians[0], medians[1:]
    saved_bytes = statistics.median(saved for _, saved, _ in runs)
    return {"measure": "overwrites", "backend": "postgres" if postgres else "duckdb", "entities": entities,
            "changed": changed, "series": repeat, "save_ms": round(save * 1000, 1),
            "bytes_after_save": int(saved_bytes),
            "bytes_per_overwrite": int(statistics.median((last - saved) / overwrites for _, saved, last in runs)),
            "overwrite_ms_by_version": {version: round(t * 1000, 1) for version, t in enumerate(rest, start=2)},
            "worst_overwrite_vs_save": round(max(rest) / save, 2),
            "version_10_vs_2": round(rest[min(8, len(rest) - 1)] / rest[0], 2),
            "targets_met": max(rest) <= 3 * save and rest[min(8, len(rest) - 1)] <= 1.5 * rest[0]}


MEASURES = {"history": measure_history, "appends": measure_appends, "stream": measure_stream,
            "overwrites": measure_overwrites}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(MEASURES), action="append", help="one measure (repeatable)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing; medians are reported")
    parser.add_argument("--workdir", type=Path, help="where to put databases (default: a temp dir)")
    parser.add_argument("--postgres", metavar="URL|start",
                        help="run overwrites on a PostgreSQL server: a postgresql:// URL (a schema a series is "
                             "made there and dropped), or 'start' for a throwaway server on this machine")
    parser.add_argument("--changed", type=float, default=1.0, metavar="SHARE",
                        help="overwrites: the share of entities each overwrite changes (default 1: all; 0.01: "
                             "1%%, issue 24's target of at most 1.3x the first save)")
    args = parser.parse_args(argv)
    from benchmarks.postgres import run_with_postgres

    return run_with_postgres(args, _run)


def _run(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="healthsim-versions-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.only or list(MEASURES):
            measure = MEASURES[name]
            if name == "stream":
                result = measure(workdir)
            elif name == "overwrites":
                result = measure(workdir, args.repeat, postgres=args.postgres, changed=args.changed)
            else:
                result = measure(workdir, args.repeat)
            print(json.dumps(result), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
