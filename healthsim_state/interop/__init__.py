"""Interchange: JSON import and export, Parquet export, migration of legacy
files, read-only SQL, and the summaries a front end shows.

One module a responsibility: :mod:`.json_io` (the JSON shapes), :mod:`.parquet`,
:mod:`.legacy` (migration), :mod:`.query` (read-only SQL), :mod:`.copy`
(between stores), :mod:`.files` (safe names, atomic writes).
The CLI is a thin layer over these functions.
"""

from .copy import CopyResult, copy_scenario, copy_scenarios
from .errors import DocumentError, OutputExistsError, QueryError, QueryParameterError, UnknownEntityTypeError
from .json_io import (
    ImportResult,
    ScenarioDocument,
    dumps,
    export_document,
    export_json,
    import_file,
    parse_document,
    read_document,
    save_document,
)
from .legacy import MigrationResult, find_legacy_files, legacy_directories, migrate
from .parquet import ParquetExport, export_parquet
from .query import QueryResult, jsonable, records, run_query

__all__ = [
    "DocumentError", "OutputExistsError", "QueryError", "QueryParameterError", "UnknownEntityTypeError",
    "ScenarioDocument", "ImportResult", "read_document", "parse_document", "import_file", "save_document",
    "export_document", "export_json", "dumps",
    "ParquetExport", "export_parquet",
    "MigrationResult", "migrate", "find_legacy_files", "legacy_directories",
    "QueryResult", "run_query", "records", "jsonable",
    "CopyResult", "copy_scenario", "copy_scenarios",
]
