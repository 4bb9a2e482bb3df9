"""Parquet files of one type's typed rows, written by DuckDB's own writer
(no pyarrow): the rows go batch by batch into a table of a private
in-memory DuckDB with the type's column types, which is then written out.
Timestamps are written as UTC instants (``TIMESTAMP WITH TIME ZONE``,
``isAdjustedToUTC``), so Spark, pandas and Trino read instants, not local
times."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..mapping.model import Mapping
from .base import quote

_TABLE = "export"


class ParquetWriter:
    """A private in-memory DuckDB that writes Parquet files; close it (or use
    it as a context manager) when done. DuckDB is imported only here, by an
    export, not by every command that imports the export module."""

    def __init__(self) -> None:
        import duckdb

        from .duckdb_backend import CONFIG

        self._con: Any = duckdb.connect(":memory:", config=CONFIG)
        self._con.execute("SET TimeZone = 'UTC'")

    def write(self, mapping: Mapping, batches: Iterable[list[tuple]], target: Path) -> int:
        """The rows of ``batches`` (typed column values in the order of
        ``mapping.fields``) as the Parquet file ``target``, in the order
        given; returns the row count written."""
        from .duckdb_backend import DIALECT

        columns = ", ".join(f"{quote(f.column)} {DIALECT.column_type(f.type)}" for f in mapping.fields)
        self._con.execute(f"DROP TABLE IF EXISTS {_TABLE}")
        self._con.execute(f"CREATE TABLE {_TABLE} (_row BIGINT, {columns})")
        count = 0
        for batch in batches:
            with self._con.appender(_TABLE) as appender:
                appender.append_rows([(count + i, *row) for i, row in enumerate(batch)])
            count += len(batch)
        picked = ", ".join(f"CAST({quote(f.column)} AS TIMESTAMPTZ) AS {quote(f.column)}"
                           if f.type.family == "timestamp" else quote(f.column) for f in mapping.fields)
        self._con.sql(f"SELECT {picked} FROM {_TABLE} ORDER BY _row").write_parquet(str(target))  # the path is no SQL
        return count

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "ParquetWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
