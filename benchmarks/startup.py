"""Start-up cost: what a command pays before it does anything. Prints one JSON line.

    python3 -m benchmarks.startup                  # or: python3 -m benchmarks.run --startup
    python3 -m benchmarks.startup --repeat 21

Each figure is the median wall time of ``--repeat`` fresh processes of this
Python, run with the healthsim_state this benchmark sits next to:

- ``help_s``: ``healthsim-state --help``, against ``click_rich_s``
  (``python -c "import click, rich"``); target ``help_vs_click_rich`` <= 3.
- ``import_s``: ``import healthsim_state``, against ``python_s`` (``python -c pass``);
  target < 0.060 s.
- ``list_s``: ``healthsim-state list --db small.duckdb`` on a store of one small
  scenario, the mapping-validation cache warm (as every run after the first
  finds it); target <= 0.2 s. ``list_cold_cache_s`` is the same with an empty
  cache each run, and ``duckdb_s`` is ``python -c "import duckdb"``, a floor
  ``list`` cannot go below. ``duckdb_open_s`` is the floor of any read of the
  store: import DuckDB, open the file read-only, run ``SELECT 1``;
  ``list_vs_duckdb_open`` is ``list_s`` over it (what healthsim-state adds).

``cpu`` holds the same figures as CPU time (user + system) of the processes,
which a busy machine moves less than wall time; ``load_average`` is the
1-minute load when the run ended.

The caches live in a temporary ``$XDG_CACHE_HOME``, so the user's are untouched.
Bytecode is written and used as an installed package's is (``PYTHONDONTWRITEBYTECODE``
is dropped for the runs).
No third-party tool (hyperfine) is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from healthsim_state.cli import main; sys.exit(main())"  # what the console script runs
TARGETS = {"help_vs_click_rich": 3.0, "import_s": 0.060, "list_s": 0.2}
OPEN = "import sys, duckdb; duckdb.connect(sys.argv[1], read_only=True).execute('SELECT 1').fetchall()"


def _medians(commands: dict[str, tuple], env: dict[str, str], repeat: int) -> tuple[dict, dict]:
    """Median wall time, and median CPU time (user + system), of each
    ``name: (argv, before_each)``. The commands take turns, run by run, so a
    machine's changing load weighs on each alike; CPU time moves less with the
    load than wall time does."""
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (argv, before_each) in commands.items():
            if before_each is not None:
                before_each()
            used = _children_cpu()
            start = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(_children_cpu() - used)
    return ({name: statistics.median(values) for name, values in wall.items()},
            {name: statistics.median(values) for name, values in cpu.items()})


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _small_store(path: Path, env: dict[str, str]) -> None:
    code = ("import sys; from healthsim_state import StateManager\n"
            "with StateManager(sys.argv[1]) as sm:\n"
            "    sm.save_scenario('small', {'patients': [{'id': 'p1', 'name': {'given': 'Ana'}}]})\n")
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True)


def measure_startup(workdir: Path, repeat: int) -> dict:
    """The figures described in the module's docstring, and whether each target is met."""
    cache = workdir / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "XDG_CACHE_HOME": str(cache)}
    env.pop("HEALTHSIM_DB", None)
    # An installed package has its bytecode compiled; without it every run would
    # compile each module from source (a first run here writes __pycache__).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    python = [sys.executable]
    store = workdir / "small.duckdb"
    _small_store(store, env)
    listing = python + ["-c", CLI, "list", "--db", str(store)]
    subprocess.run(listing, env=env, check=True, stdout=subprocess.DEVNULL)  # bytecode, cache written
    cold = workdir / "cold-cache"
    commands = {
        "python_s": (python + ["-c", "pass"], None),
        "import_s": (python + ["-c", "import healthsim_state"], None),
        "click_rich_s": (python + ["-c", "import click, rich"], None),
        "help_s": (python + ["-c", CLI, "--help"], None),
        "duckdb_s": (python + ["-c", "import duckdb"], None),
        "duckdb_open_s": (python + ["-c", OPEN, str(store)], None),
        "list_s": (listing, None),
    }
    result, cpu = _medians(commands, env, repeat)
    cold_env = {**env, "XDG_CACHE_HOME": str(cold)}
    cold_wall, cold_cpu = _medians(
        {"list_cold_cache_s": (listing, lambda: shutil.rmtree(cold, ignore_errors=True))}, cold_env, repeat)
    result.update(cold_wall)
    cpu.update(cold_cpu)
    result["help_vs_click_rich"] = result["help_s"] / result["click_rich_s"]
    cpu["help_vs_click_rich"] = cpu["help_s"] / cpu["click_rich_s"]
    result["list_vs_duckdb_open"] = result["list_s"] / result["duckdb_open_s"]
    cpu["list_vs_duckdb_open"] = cpu["list_s"] / cpu["duckdb_open_s"]
    result["targets_met"] = {name: result[name] <= limit for name, limit in TARGETS.items()}
    result["cpu"] = _rounded(cpu)
    result["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["repeat"] = repeat
    return _rounded(result)


def _rounded(figures: dict) -> dict:
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="runs per figure; medians are reported")
    parser.add_argument("--workdir", type=Path, help="where to put the store and cache (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        print(json.dumps(measure_startup(Path(tmp), args.repeat)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
