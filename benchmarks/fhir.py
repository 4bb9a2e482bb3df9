"""FHIR benchmark: export to Bulk Data NDJSON against our JSON export, and import back.

    python3 -m benchmarks.fhir                       # 100k entities, 3 runs
    python3 -m benchmarks.fhir --sizes 1000000 --repeat 1 --no-import

One JSON line per size, each size in a fresh process (its memory figures are
its own): the median seconds of ``export --format json`` of the scenario
(``json_export_s``: the document built and written as the CLI does) and of
``export --format fhir`` (``fhir_export_s``), their ratio
(``fhir_vs_json_export``, target <= 2), the resources written, the peak RSS
growth during the FHIR export (``fhir_export_peak_rss_growth_mb``, target under
200 MB at 1M entities), and the import of that NDJSON directory back
(``import_resources_per_s``, target >= 20,000). The scenario is
:func:`benchmarks.generate.scenario` (every built-in type, ~80 entities a patient).
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

from benchmarks.generate import PER_PATIENT, entity_count, scenario
from benchmarks.run import _reset_peak, _status

DEFAULT_SIZES = (100_000,)
REPO = Path(__file__).resolve().parents[1]


def _timed(operation, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = operation()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(size: int, repeat: int, workdir: Path, *, with_import: bool = True) -> dict:
    """Every figure of one size (see the module docstring)."""
    from healthsim_state import StateManager
    from healthsim_state.interop.json_io import dumps, export_document

    data = scenario(max(1, size // PER_PATIENT))
    entities = entity_count(data)
    with StateManager(workdir / "bench.duckdb") as manager:
        manager.save_scenario("bench", data)
        del data

        def json_export() -> int:
            text = dumps(export_document(manager, "bench"))
            (workdir / "bench.json").write_bytes(text.encode("utf-8"))
            return len(text)

        def fhir_export() -> dict:
            shutil.rmtree(workdir / "fhir", ignore_errors=True)
            return manager.export_fhir("bench", workdir / "fhir")

        json_s, _ = _timed(json_export, repeat)
        fhir_s, manifest = _timed(fhir_export, repeat)
        shutil.rmtree(workdir / "fhir")
        before = _status("VmRSS")
        peak_known = _reset_peak()
        manifest = fhir_export()
        growth = (_status("VmHWM") - before) / 2**20 if peak_known else None
        resources = sum(item["count"] for item in manifest["output"])
        result = {
            "entities": entities, "resources": resources, "repeat": repeat,
            "json_export_s": round(json_s, 3), "fhir_export_s": round(fhir_s, 3),
            "fhir_vs_json_export": round(fhir_s / json_s, 2),
            "fhir_export_resources_per_s": round(resources / fhir_s),
            "fhir_export_peak_rss_growth_mb": None if growth is None else round(growth, 1),
        }
        if with_import:
            import_s, report = _timed(lambda: manager.import_fhir([workdir / "fhir"], "back", overwrite=True), repeat)
            result.update(import_s=round(import_s, 3), import_resources_per_s=round(resources / import_s),
                          import_entities_made=sum(report.made.values()))  # type: ignore[attr-defined]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated entity counts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--no-import", action="store_true", help="measure the export only (for the large sizes)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    parser.add_argument("--workdir", type=Path, help="where to put databases and exports (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.one:
            print(json.dumps(measure(args.one, args.repeat, Path(tmp), with_import=not args.no_import)), flush=True)
            return 0
        for size in (int(n) for n in args.sizes.split(",") if n):
            command = [sys.executable, "-m", "benchmarks.fhir", "--one", str(size), "--repeat", str(args.repeat)]
            if args.no_import:
                command.append("--no-import")
            if args.workdir:
                command += ["--workdir", str(args.workdir)]
            subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
