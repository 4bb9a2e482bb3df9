"""Every error a user of healthsim-state can cause.

Each class subclasses the builtin a caller would already catch (``ValueError``,
``LookupError``, ``RuntimeError``) and our common base :class:`HealthSimError`.
Validation errors carry *all* the problems found (a user fixing a 10,000-entity
file wants every problem in one run), each with the place it was found; the
message shows the first :data:`SHOWN_PROBLEMS` of them.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

SHOWN_PROBLEMS = 20
_VALUE_PREVIEW = 80


class HealthSimError(Exception):
    """Base class of every error raised by healthsim-state."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, and where it is.

    ``entity_type`` and ``position`` (0-based index in the type's list) are None
    when the problem is not inside one entity; ``path`` is a dotted path inside
    the entity (or a key of the save call, such as ``entities.foo``).
    """

    message: str
    entity_type: str | None = None
    position: int | None = None
    path: str | None = None
    value: Any = None

    def __str__(self) -> str:
        where = []
        if self.entity_type is not None:
            where.append(self.entity_type)
        if self.position is not None:
            where.append(f"[{self.position}]")
        place = "".join(where)
        if self.path:
            place = f"{place} @ {self.path}" if place else self.path
        return f"{place}: {self.message}" if place else self.message


def preview(value: Any) -> str:
    """A short repr of a user's value for an error message."""
    text = repr(value)
    if len(text) > _VALUE_PREVIEW:
        text = text[: _VALUE_PREVIEW - 3] + "..."
    return text


class ValidationError(HealthSimError, ValueError):
    """Input that cannot be saved. Nothing was written.

    ``problems`` holds every problem found; the message lists the first
    :data:`SHOWN_PROBLEMS`.
    """

    def __init__(self, problems: list[Problem], summary: str = "invalid input"):
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{summary}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  - {p}" for p in self.problems[:SHOWN_PROBLEMS]]
        if count > SHOWN_PROBLEMS:
            lines.append(f"  ... and {count - SHOWN_PROBLEMS} more")
        super().__init__("\n".join(lines))


class MappingError(ValidationError):
    """A mapping file (or a set of them) is malformed. Nothing was loaded.

    Each problem's ``path`` is ``<file>: <key>`` and its message says what to do.
    """

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, summary="invalid mapping")


class FhirMappingError(MappingError):
    """A mapping's ``fhir:`` section cannot be used (a field or entity type it
    names does not exist, a value map or code system that does not fit).
    Each problem's ``path`` is ``<file> (entity E): fhir[i] (Resource).<key>``
    and its message says what to do."""


class FhirInputError(HealthSimError, ValueError):
    """A FHIR resource that cannot be read: the message names the resource
    type, its id and the element. ``resource_type``, ``resource_id`` and
    ``element`` carry them for callers."""

    def __init__(self, message: str, *, resource_type: str | None = None, resource_id: str | None = None,
                 element: str | None = None):
        where = f"{resource_type or 'resource'}/{resource_id or '?'}" + (f" @ {element}" if element else "")
        super().__init__(f"{where}: {message}")
        self.resource_type, self.resource_id, self.element = resource_type, resource_id, element


class ScenarioExistsError(HealthSimError, ValueError):
    """A save used the name of an existing scenario without ``overwrite=True``."""


class ScenarioNotFoundError(HealthSimError, LookupError, ValueError):
    """No scenario has the given id or name."""


class AmbiguousScenarioError(HealthSimError, LookupError, ValueError):
    """A string is one scenario's id and another's name (which saves refuse,
    so only data written otherwise can hold it). The message names both."""


class VersionNotFoundError(HealthSimError, LookupError, ValueError):
    """A scenario has no such version (never written, or pruned)."""


class EntityNotFoundError(HealthSimError, LookupError, ValueError):
    """A key names no entity of the scenario (:meth:`StateManager.delete_entities`).
    ``missing`` maps each entity type to the keys not found; nothing was changed."""

    def __init__(self, message: str, *, missing: dict[str, list] | None = None):
        super().__init__(message)
        self.missing = missing or {}


class UnknownEntityTypeError(HealthSimError, LookupError, ValueError):
    """No mapping in force declares this entity type."""


class StoreError(HealthSimError, RuntimeError):
    """The store cannot be used (not a DuckDB file, newer version, unreachable
    server, ...)."""


class StoreNotFoundError(StoreError, LookupError):
    """A store opened read-only (or asked to be read) does not exist. Nothing
    was created."""


class ReadOnlyError(StoreError):
    """A write on a store opened with ``read_only=True``."""


class ServerConnectionError(StoreError, ConnectionError):
    """A database server could not be used: unreachable host, refused
    connection, wrong user or password, no such database, lost connection.
    The message names the problem and the URL without its password."""


class MissingExtraError(StoreError, ImportError):
    """The store needs an optional dependency that is not installed; the
    message says which extra to install (``pip install
    'healthsim-state[postgres]'``)."""


class TransactionConflictError(StoreError):
    """Another transaction kept changing the same data at the same time; the
    operation was run again for ``HEALTHSIM_RETRY_TIMEOUT`` seconds (60 by
    default) and gave up. Nothing was written."""


class IncompatibleDatabaseError(StoreError):
    """The database was written by a newer, unknown version of healthsim-state,
    or with table layouts that the loaded mappings do not match."""


class DatabaseLockedError(StoreError):
    """Another process held the database file's lock for longer than the lock
    timeout. ``path`` is the file; ``pid`` the holder's process id when DuckDB
    reports it."""

    def __init__(self, message: str, *, path: object = None, pid: int | None = None):
        super().__init__(message)
        self.path = path
        self.pid = pid


class SchemaChangeError(ValidationError):
    """An edited mapping cannot be applied to the stored data without losing
    or corrupting some of it (a value that does not fit a changed type, a
    duplicate under a changed key). Nothing was changed; ``problems`` lists the
    scenarios, positions and values in the way."""

    def __init__(self, problems: list[Problem], *, table: str):
        self.table = table
        ValidationError.__init__(self, problems, summary=f"table {table!r} left as it was: the edited mapping "
                                 "does not fit the stored data")


class QueryError(HealthSimError, ValueError):
    """A query that is not a single read-only statement, or that the database
    rejects or stops (too long)."""


class QueryParameterError(QueryError):
    """The values given for a query do not match its placeholders: another
    number of values in order (``?``, ``$1``), or other names (``$name``).
    The message says what the query takes and what was given."""


class MappingDriftWarning(UserWarning):
    """This client's mapping files differ from the mappings in force in the
    store in more than additions. The store's mappings stay in force and
    nothing was rewritten; the message names each pending change and how to
    apply it (``healthsim-state migrate-schema``, or
    ``StateManager(..., evolve=True)``)."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_caller(warning: Warning) -> None:
    """Issue ``warning`` at the first frame outside this package: the user's
    own line, however deep in the package it was raised.

    Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` does the same;
    3.11 lacks it, so the stack level is counted here. Frames of the import
    machinery are not counted, as ``warnings.warn`` does not count them.
    """
    level = 2  # 1 is this line, 2 the caller of this function
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR) or _is_import_frame(frame)):
        if not _is_import_frame(frame):
            level += 1
        frame = frame.f_back
    warnings.warn(warning, stacklevel=level)


def _is_import_frame(frame: Any) -> bool:
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name
