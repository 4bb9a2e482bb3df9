"""Where the store is and how long to wait for it: the environment's settings.

``HEALTHSIM_DB`` names the default store (a file path, or a ``postgresql://``
URL); ``HEALTHSIM_LOCK_TIMEOUT`` the seconds an operation waits for another
process's lock; ``HEALTHSIM_MAPPINGS`` (read by :mod:`.mapping.loader`) adds
directories of mapping files.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError

ENV_DB = "HEALTHSIM_DB"
ENV_LOCK_TIMEOUT = "HEALTHSIM_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 10.0
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
    value = os.environ.get(ENV_LOCK_TIMEOUT)
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise StoreError(f"{ENV_LOCK_TIMEOUT}={value!r} is not a number of seconds (0 or more)")
    return seconds
