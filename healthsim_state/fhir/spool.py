"""Folded children (claim_line into Claim.item) grouped by their parent's key.

The store streams a type in saved order, not by parent, so an export must
group a type's children before it renders the parents. A few are grouped in
memory; past :data:`IN_MEMORY` they go to a temporary SQLite file (indexed by
parent key, each child pickled: its Decimals and dates come back as they were),
so memory holds one parent's children at a time, not the scenario's.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import tempfile
from typing import Any, Iterable

IN_MEMORY = 20_000
"""Children held in memory before the spool moves to a temporary file."""


class ChildSpool:
    """``add(parent_key, child)`` in saved order, then ``children(parent_key)``."""

    def __init__(self, in_memory: int | None = None):
        self._limit = IN_MEMORY if in_memory is None else in_memory
        self._groups: dict[tuple, list[dict[str, Any]]] = {}
        self._count = 0
        self._db: sqlite3.Connection | None = None
        self._path: str | None = None

    def add(self, parent_key: tuple, child: dict[str, Any]) -> None:
        self._count += 1
        if self._db is not None:
            self._db.execute("INSERT INTO child VALUES (?, ?, ?)", (_text(parent_key), self._count, _blob(child)))
            return
        self._groups.setdefault(parent_key, []).append(child)
        if self._count > self._limit:
            self._to_file()

    def extend(self, pairs: Iterable[tuple[tuple, dict[str, Any]]]) -> "ChildSpool":
        for parent_key, child in pairs:
            self.add(parent_key, child)
        if self._db is not None:
            self._db.execute("CREATE INDEX child_parent ON child (parent, seq)")
            self._db.commit()
        return self

    def children(self, parent_key: tuple) -> list[dict[str, Any]]:
        if self._db is None:
            return self._groups.get(parent_key, [])
        rows = self._db.execute("SELECT data FROM child WHERE parent = ? ORDER BY seq", (_text(parent_key),))
        return [pickle.loads(data) for (data,) in rows]

    def _to_file(self) -> None:
        handle, self._path = tempfile.mkstemp(prefix="healthsim-fhir-", suffix=".sqlite")
        os.close(handle)
        self._db = sqlite3.connect(self._path)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE child (parent TEXT, seq INTEGER, data BLOB)")
        seq = 0
        rows = []
        for parent_key, group in self._groups.items():
            for child in group:
                seq += 1
                rows.append((_text(parent_key), seq, _blob(child)))
        # the order within a parent is kept: seq grows in each group's saved order
        self._db.executemany("INSERT INTO child VALUES (?, ?, ?)", rows)
        self._groups = {}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._path is not None:
            os.unlink(self._path)
            self._path = None

    def __enter__(self) -> "ChildSpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(parent_key: tuple) -> str:
    return "\x1f".join(parent_key)


def _blob(child: dict[str, Any]) -> bytes:
    return pickle.dumps(child, protocol=pickle.HIGHEST_PROTOCOL)
