"""Export a scenario as Parquet: a directory with one file per non-empty
entity type (its typed columns, in saved order) and a ``manifest.json``.

The rows come from one snapshot of the store (any backend), batch by batch,
into DuckDB's own Parquet writer (:mod:`healthsim_state.backends.parquet_file`:
timestamps as UTC instants, which Spark, pandas and Trino read as such). The
directory is built beside the target and moved into place at the end, so a
reader never sees half an export. Parquet carries the typed columns only; the JSON export is the
lossless one (unmapped fields, given spellings).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..backends.parquet_file import ParquetWriter
from ..manager import Snapshot, StateManager
from .files import check_directory_target, default_target, new_work_directory, replace_directory

MARKER = "healthsim-parquet"
VERSION = 1
MANIFEST = "manifest.json"
BATCH = 50_000

Progress = Callable[[str, int, int], None]  # (entity, done, total)


@dataclass
class ParquetExport:
    directory: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def parquet_target(name: str, path: str | os.PathLike | None, directory: str | os.PathLike = ".") -> Path:
    """Where the export goes: ``path``, or ``<safe name>-parquet`` in
    ``directory``, or in ``path`` when it is an existing directory that is not
    itself a previous export (as a JSON export writes inside a directory)."""
    if path is None:
        return default_target(directory, name, "-parquet")
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file():
        return default_target(path, name, "-parquet")
    return path


def export_parquet(manager: StateManager, name_or_id: str, path: str | os.PathLike | None = None, *,
                   force: bool = False, directory: str | os.PathLike = ".", progress: Progress | None = None,
                   version: int | None = None) -> ParquetExport:
    """Write the scenario's typed columns as Parquet; return where and what."""
    with manager.snapshot(name_or_id, version=version) as snapshot:
        target = parquet_target(snapshot.info["name"], path, directory)
        check_directory_target(target, force=force, marker=MARKER)  # fail before any work
        work = new_work_directory(target)
        try:
            tables = _write_files(snapshot, work, progress)
            manifest = _manifest(snapshot.info, tables)
            (work / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
            replace_directory(work, target, force=force, marker=MARKER)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return ParquetExport(target, manifest, {entity: target / t["file"] for entity, t in tables.items()})


def _write_files(snapshot: Snapshot, work: Path, progress: Progress | None) -> dict[str, Any]:
    entities = snapshot.entity_types()
    tables: dict[str, Any] = {}
    with ParquetWriter() as writer:
        for done, entity in enumerate(entities):
            mapping = snapshot.registry.codecs[entity].mapping
            file_name = f"{mapping.table}.parquet"
            rows = writer.write(mapping, snapshot.typed_rows(entity, batch_size=BATCH), work / file_name)
            tables[entity] = {
                "file": file_name, "table": mapping.table, "rows": rows,
                "columns": [{"column": f.column, "type": f.type.name, "path": f.dotted} for f in mapping.fields],
            }
            if progress is not None:
                progress(entity, done + 1, len(entities))
    return tables


def _manifest(summary: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MARKER,
        "version": VERSION,
        "scenario_id": summary["scenario_id"],
        "name": summary["name"],
        "scenario_version": summary.get("version"),
        "description": summary["description"],
        "tags": summary["tags"],
        "created_at": summary["created_at"].isoformat(),
        "updated_at": summary["updated_at"].isoformat(),
        "timestamps": "UTC",
        "entities": tables,
    }
