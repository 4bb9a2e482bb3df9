"""Database URLs as messages may show them: never with a password."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# A password given as a query parameter (libpq takes ``?password=...`` too).
_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def redact(url: str) -> str:
    """``url`` with any password (after the user name, or as a ``password``
    parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<an unreadable database URL>"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    if password is None:
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a port that is not a number: shown as written
        port = ":" + parts.netloc.rpartition(":")[2] if parts.netloc.rpartition("@")[2].count(":") else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, query, parts.fragment))
