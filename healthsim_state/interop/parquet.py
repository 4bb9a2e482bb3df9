"""Export a scenario as Parquet: a directory with one file per non-empty
entity type (its typed columns, in saved order) and a ``manifest.json``.

DuckDB writes the files itself (no pyarrow). The directory is built beside
the target and moved into place at the end, so a reader never sees half an
export. Parquet carries the typed columns only, for pandas, Spark or Trino;
the JSON export is the lossless one (unmapped fields, given spellings).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import duckdb

from ..errors import StoreError
from ..manager import StateManager
from ..store import connect_with_retry, default_lock_timeout, quote
from .files import check_directory_target, default_target, new_work_directory, replace_directory

MARKER = "healthsim-parquet"
VERSION = 1
MANIFEST = "manifest.json"

Progress = Callable[[str, int, int], None]  # (entity, done, total)


@dataclass
class ParquetExport:
    directory: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def parquet_target(name: str, path: str | os.PathLike | None, directory: str | os.PathLike = ".") -> Path:
    """Where the export goes: ``path``, or ``<safe name>-parquet`` in
    ``directory`` (or in ``path`` when it is a directory that is not itself
    a previous export)."""
    if path is None:
        return default_target(directory, name, "-parquet")
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file() and any(path.iterdir()):
        return default_target(path, name, "-parquet")
    return path


def export_parquet(manager: StateManager, name_or_id: str, path: str | os.PathLike | None = None, *,
                   force: bool = False, directory: str | os.PathLike = ".",
                   progress: Progress | None = None) -> ParquetExport:
    """Write the scenario's typed columns as Parquet; return where and what."""
    summary = manager.scenario_info(name_or_id)
    target = parquet_target(summary["name"], path, directory)
    check_directory_target(target, force=force, marker=MARKER)  # fail before any work
    codecs = manager.registry.codecs
    entities = [entity for entity, count in summary["entity_counts"].items() if count and entity in codecs]
    work = new_work_directory(target)
    try:
        files, tables = _write_files(manager, summary, entities, work, progress)
        manifest = _manifest(summary, tables)
        (work / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
        replace_directory(work, target, force=force, marker=MARKER)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ParquetExport(target, manifest, {entity: target / name for entity, name in files.items()})


def _write_files(manager: StateManager, summary: dict[str, Any], entities: list[str], work: Path,
                 progress: Progress | None) -> tuple[dict[str, str], dict[str, Any]]:
    # One connection, one transaction: every file comes from the same
    # snapshot, and we check it is still the scenario we summarised.
    con = connect_with_retry(Path(manager.db_path).expanduser(), default_lock_timeout())
    files: dict[str, str] = {}
    tables: dict[str, Any] = {}
    try:
        con.execute("BEGIN TRANSACTION")
        rows = con.execute("SELECT updated_at FROM scenarios WHERE scenario_id = ?",
                           [summary["scenario_id"]]).fetchall()
        if not rows or rows[0][0] != summary["updated_at"].replace(tzinfo=None):
            raise StoreError(f"scenario {summary['name']!r} was changed by another process during the export; "
                             "try again")
        for done, entity in enumerate(entities):
            mapping = manager.registry.codecs[entity].mapping
            columns = ", ".join(quote(f.column) for f in mapping.fields)
            sql = f"SELECT {columns} FROM {quote(mapping.table)} WHERE scenario_id = ? ORDER BY _position"
            file_name = f"{mapping.table}.parquet"
            con.sql(sql, params=[summary["scenario_id"]]).write_parquet(str(work / file_name))
            files[entity] = file_name
            tables[entity] = {
                "file": file_name, "table": mapping.table, "rows": summary["entity_counts"][entity],
                "columns": [{"column": f.column, "type": f.type.name, "path": f.dotted} for f in mapping.fields],
            }
            if progress is not None:
                progress(entity, done + 1, len(entities))
        con.execute("COMMIT")
    except duckdb.Error as error:
        raise StoreError(f"writing Parquet from {manager.db_path} failed: {error}") from None
    finally:
        con.close()
    return files, tables


def _manifest(summary: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MARKER,
        "version": VERSION,
        "scenario_id": summary["scenario_id"],
        "name": summary["name"],
        "description": summary["description"],
        "tags": summary["tags"],
        "created_at": summary["created_at"].isoformat(),
        "updated_at": summary["updated_at"].isoformat(),
        "timestamps": "UTC",
        "entities": tables,
    }
