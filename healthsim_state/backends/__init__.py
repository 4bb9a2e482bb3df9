"""Backends: where a store lives. A ``postgresql://`` (or ``postgres://``) URL
selects PostgreSQL; anything else is a DuckDB file path (or ``:memory:``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import default_lock_timeout, default_retry_timeout, default_target, is_url
from .base import Backend, Dialect, Session, WriteNeeded, quote

__all__ = ["Backend", "Dialect", "Session", "WriteNeeded", "quote", "open_backend", "describe_target"]


def open_backend(target: str | os.PathLike | None = None, *, read_only: bool = False,
                 lock_timeout: float | None = None, keep_open: float = 0.0) -> Backend:
    """The backend for ``target`` (default: ``$HEALTHSIM_DB``, else
    ``~/.healthsim/healthsim.duckdb``). Nothing is created or connected yet.
    ``keep_open``: seconds a DuckDB file stays open after the process's last
    operation on it (0: closed after each operation)."""
    target = default_target() if target is None else target
    timeout = default_lock_timeout() if lock_timeout is None else float(lock_timeout)
    backend: Backend
    if is_url(target):
        from .postgres_backend import PostgresBackend  # needs the postgres extra

        backend = PostgresBackend(str(target), read_only=read_only, lock_timeout=timeout)
    else:
        from .duckdb_backend import DuckDBBackend

        backend = DuckDBBackend(Path(target), read_only=read_only, lock_timeout=timeout, keep_open=keep_open)
    backend.retry_for = default_retry_timeout()
    return backend


def describe_target(target: str | os.PathLike | None) -> str:
    """``target`` as messages show it: a URL without its password."""
    target = default_target() if target is None else target
    if is_url(target):
        from .urls import redact

        return redact(str(target))
    return str(Path(target).expanduser())
