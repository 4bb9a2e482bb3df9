"""One store for a test, on either backend, and a look at its tables with the
engine's own driver (not through healthsim-state), so tests can check what
is stored the same way on DuckDB and PostgreSQL."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# What each engine calls a column type in information_schema, by mapping type.
TYPE_NAMES = {
    "duckdb": {"double": "DOUBLE", "integer": "INTEGER", "varchar": "VARCHAR", "json": "JSON"},
    "postgres": {"double": "double precision", "integer": "integer", "varchar": "character varying",
                 "json": "json"},
}


@dataclass
class Store:
    kind: str  # "duckdb" or "postgres"
    target: str  # a file path, or a postgresql:// URL

    @property
    def path(self) -> Path:
        assert self.kind == "duckdb", "a file path only exists for DuckDB"
        return Path(self.target)

    def type_name(self, mapping_type: str) -> str:
        return TYPE_NAMES[self.kind][mapping_type]

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of ``query`` (``?`` placeholders), read with the engine's driver."""
        return self.queries([(query, params)])[0]

    def queries(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple]]:
        """The rows of each query, read over one connection: a connection
        costs milliseconds, and a snapshot used to open one for every table."""
        if self.kind == "duckdb":
            import duckdb

            con = duckdb.connect(self.target, read_only=True)
            try:
                return [con.execute(query, list(params)).fetchall() for query, params in statements]
            finally:
                con.close()
        import psycopg

        from healthsim_state.backends.sqltext import numbered

        results = []
        with psycopg.connect(self.target, autocommit=True, cursor_factory=psycopg.RawCursor) as con:
            for query, params in statements:
                cursor = con.execute(numbered(query), list(params) or None)
                results.append(cursor.fetchall() if cursor.description else [])
        return results

    def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        """Change the store behind healthsim-state's back (to test what it then does)."""
        if self.kind == "duckdb":
            import duckdb

            con = duckdb.connect(self.target)
            try:
                con.execute(query, list(params))
            finally:
                con.close()
            return
        import psycopg

        from healthsim_state.backends.sqltext import numbered

        with psycopg.connect(self.target, autocommit=True, cursor_factory=psycopg.RawCursor) as con:
            con.execute(numbered(query), list(params) or None)

    def tables(self) -> list[str]:
        return [t for (t,) in self.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                       "current_schema() ORDER BY table_name")]

    def columns(self, table: str) -> list[tuple[str, str]]:
        return self.sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                        "current_schema() AND table_name = ? ORDER BY ordinal_position", [table])

    def snapshot(self) -> dict[str, list[str]]:
        """Every table's rows, as sorted reprs: equal snapshots, equal contents."""
        tables = self.tables()
        rows = self.queries([(f'SELECT * FROM "{t}"', ()) for t in tables])
        return {t: sorted(map(repr, table_rows)) for t, table_rows in zip(tables, rows)}


_databases = itertools.count()


def new_store(request: Any, kind: str, file: Path) -> Store:
    """A new, empty store of ``kind``: the DuckDB ``file``, or a fresh database
    on the session's test server, dropped when the test ends."""
    if kind == "duckdb":
        return Store("duckdb", str(file))
    cluster = request.getfixturevalue("pg_cluster")
    name = f"extra_{os.getpid()}_{next(_databases)}"
    request.addfinalizer(lambda: cluster.drop_database(name))
    return Store("postgres", cluster.create_database(name))
