"""Where the store is and how long to wait for it: the environment's settings.

``HEALTHSIM_DB`` names the default store (a file path, or a ``postgresql://``
URL); ``HEALTHSIM_LOCK_TIMEOUT`` the seconds an operation waits for another
process's lock; ``HEALTHSIM_RETRY_TIMEOUT`` the seconds a write that keeps
losing races with other clients' writes is run again for; ``HEALTHSIM_MAPPINGS`` (read by :mod:`.mapping.loader`) adds
directories of mapping files.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError

ENV_DB = "HEALTHSIM_DB"
ENV_LOCK_TIMEOUT = "HEALTHSIM_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 10.0
ENV_RETRY_TIMEOUT = "HEALTHSIM_RETRY_TIMEOUT"
DEFAULT_RETRY_TIMEOUT = 60.0
URL_SCHEMES = ("postgresql://", "postgres://")


def default_target() -> str:
    """``$HEALTHSIM_DB`` if set, else ``~/.healthsim/healthsim.duckdb``."""
    value = os.environ.get(ENV_DB)
    if value and is_url(value):
        return value
    return str(Path(value).expanduser() if value else Path.home() / ".healthsim" / "healthsim.duckdb")


def is_url(target: object) -> bool:
    """True for a PostgreSQL URL; anything else names a file."""
    return isinstance(target, str) and target.lower().startswith(URL_SCHEMES)


def default_lock_timeout() -> float:
    """``$HEALTHSIM_LOCK_TIMEOUT`` seconds if set, else 10."""
    return _seconds(ENV_LOCK_TIMEOUT, DEFAULT_LOCK_TIMEOUT)


def default_retry_timeout() -> float:
    """``$HEALTHSIM_RETRY_TIMEOUT`` seconds if set, else 60."""
    return _seconds(ENV_RETRY_TIMEOUT, DEFAULT_RETRY_TIMEOUT)


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise StoreError(f"{variable}={value!r} is not a number of seconds (0 or more)")
    return seconds
