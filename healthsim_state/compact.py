"""Giving back the space a store no longer uses (``healthsim-state compact``,
:meth:`StateManager.compact`): a product feature built on a backend's
connection, not part of the driver interface.

A DuckDB file never shrinks: blocks that deletes, replaced rows and
checkpoints free stay in it for reuse. Compacting copies the store into a
fresh file and puts it in place of the old one. A PostgreSQL server reclaims
space by itself (autovacuum): there is nothing to compact.
"""

from __future__ import annotations

from .backends import Backend
from .backends.base import quote
from .errors import StoreError, StoreNotFoundError


def compact(backend: Backend) -> tuple[int, int]:
    """Compact the store; returns its size in bytes before and after."""
    if backend.dialect.name != "duckdb":
        raise StoreError(f"{backend.label}: this backend reclaims space by itself (PostgreSQL's autovacuum); "
                         "there is nothing to compact")
    return _compact_file(backend)


def _compact_file(backend: Backend) -> tuple[int, int]:
    """The copy is made while the connection holds the file's lock (and
    this process's writer turn), and moved into place before the lock is
    released, so no other process or thread can write to the old file
    meanwhile; a failure leaves the old file as it was."""
    from .backends.duckdb_backend import CONFIG

    if backend.read_only:
        raise StoreError(f"{backend.label} was opened read-only; compacting writes a new file")
    if backend.memory:
        return 0, 0
    path = backend.path
    if not path.is_file():
        raise StoreNotFoundError(f"no database at {path} (nothing has been saved there yet)")
    fresh = path.with_name(f".{path.name}.compact")
    with backend.connection(write=True) as con, backend.translated():
        fresh.unlink(missing_ok=True)
        before = path.stat().st_size
        try:
            con.execute("CHECKPOINT")
            source = quote(con.execute("SELECT current_database()").fetchone()[0])
            con.execute(f"ATTACH ? AS healthsim_compact (BLOCK_SIZE {CONFIG['default_block_size']})", [str(fresh)])
            con.execute(f"COPY FROM DATABASE {source} TO healthsim_compact")
            con.execute("DETACH healthsim_compact")
            fresh.replace(path)
        finally:
            fresh.unlink(missing_ok=True)
    return before, path.stat().st_size
