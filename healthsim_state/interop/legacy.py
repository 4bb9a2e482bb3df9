"""Migrate the JSON files of earlier HealthSim versions into the database.

Earlier versions kept one JSON file per scenario in ``~/.healthsim/scenarios``
and ``~/.healthsim/workspaces``. :func:`migrate` imports each file as one
scenario (any shape :mod:`.json_io` reads), each in its own transaction, and
never modifies, moves or deletes a file.

A migrated scenario keeps what the file knew: its ``created_at``, and in the
metadata of the version the migration makes, ``migrated_from``: the file, its
shape and SHA-256, and the file's other facts about the scenario (a workspace
file's ``workspace_id``, ``product``, ``schema_version``, ``updated_at`` and
``provenance_summary``; see :meth:`ScenarioDocument.metadata`).

Re-running is safe. A migrated scenario carries the tags ``migrated`` and
``migrated:sha256:<first 16 hex digits of the file's SHA-256>``; the tag is
written in the same transaction as the scenario, so it cannot be missing from
a migrated scenario nor present on one that was not. A file whose scenario
(same name) already carries its content's tag is skipped; a scenario of that
name that does not (another file, or the file changed since) is reported as
a failure unless ``overwrite``, which replaces it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..engine.batch import ScenarioBatch
from ..engine.registry import Registry
from ..errors import HealthSimError, StoreNotFoundError, ValidationError
from ..manager import StateManager
from .errors import DocumentError
from .json_io import ScenarioDocument, load_json_bytes, parse_document, scenario_name

LEGACY_DIRS = ("scenarios", "workspaces")
MIGRATED_TAG = "migrated"
HASH_TAG_PREFIX = "migrated:sha256:"

MIGRATED, SKIPPED, FAILED = "migrated", "skipped", "failed"


@dataclass
class MigrationResult:
    """What happened to one file (or, in a dry run, what would)."""

    path: Path
    status: str = FAILED
    name: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    scenario_id: str | None = None
    replaced: bool = False
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "status": self.status, "dry_run": self.dry_run, "name": self.name,
                "scenario_id": self.scenario_id, "counts": self.counts, "replaced": self.replaced,
                "reason": self.reason}


def legacy_directories(home: str | os.PathLike | None = None) -> list[Path]:
    """``~/.healthsim/scenarios`` and ``~/.healthsim/workspaces``."""
    base = Path(home) if home is not None else Path.home()
    return [base / ".healthsim" / name for name in LEGACY_DIRS]


def find_legacy_files(directories: Iterable[str | os.PathLike]) -> list[Path]:
    """The ``*.json`` files directly in each existing directory, by name,
    each file once."""
    found: list[Path] = []
    seen: set[Path] = set()
    for directory in directories:
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.json")):
            key = path.resolve()
            if path.is_file() and key not in seen:
                seen.add(key)
                found.append(path)
    return found


def content_tag(data: bytes) -> str:
    """``migrated:sha256:<first 16 hex digits>`` of a file's bytes."""
    return HASH_TAG_PREFIX + hashlib.sha256(data).hexdigest()[:16]


def summarize(results: Iterable[MigrationResult]) -> dict[str, int]:
    counts = {MIGRATED: 0, SKIPPED: 0, FAILED: 0}
    for result in results:
        counts[result.status] += 1
    return counts


def migrate(files: Iterable[str | os.PathLike], db_path: str | os.PathLike | None = None, *,
            dry_run: bool = False, overwrite: bool = False,
            mapping_dirs: Iterable[str | os.PathLike] | None = None) -> Iterator[MigrationResult]:
    """Migrate each file; yield one :class:`MigrationResult` per file, in order.

    ``dry_run`` reads the database (if it exists) without opening it for
    writing, validates every file and yields what a real run would do.
    """
    files = [Path(f) for f in files]
    if dry_run:
        with StateManager(db_path, mapping_dirs=mapping_dirs, read_only=True) as reader:
            try:
                existing = {item["name"]: item["tags"] for item in reader.list_scenarios(limit=None)}
            except StoreNotFoundError:
                existing = {}  # nothing saved yet: nothing migrated
            registry = reader.registry
        claimed: dict[str, Path] = {}
        for path in files:
            yield _migrate_one(path, registry, existing, claimed, overwrite, None)
        return
    with StateManager(db_path, mapping_dirs=mapping_dirs) as manager:
        existing = {item["name"]: item["tags"] for item in manager.list_scenarios(limit=None)}
        claimed: dict[str, Path] = {}
        for path in files:
            yield _migrate_one(path, manager.registry, existing, claimed, overwrite, manager)


def _migrate_one(path: Path, registry: Registry, existing: dict[str, list[str]], claimed: dict[str, Path],
                 overwrite: bool, manager: StateManager | None) -> MigrationResult:
    result = MigrationResult(path, dry_run=manager is None)
    try:
        data = path.read_bytes()  # hashed and parsed from the same bytes
        document = parse_document(load_json_bytes(data, str(path)), str(path))
        name = result.name = scenario_name(document, path)
        result.counts = _counts(registry, document)
        tag = content_tag(data)
        if name in claimed:
            result.reason = (f"the scenario name {name!r} also comes from {claimed[name]} in this run; "
                             "rename one of them")
            return result
        claimed[name] = path
        current_tags = existing.get(name)
        if current_tags is not None and not overwrite:
            _refuse_existing(result, name, tag, current_tags)
            return result
        tags = [t for t in document.tags if not t.startswith(HASH_TAG_PREFIX)] + [MIGRATED_TAG, tag]
        if manager is None:
            ScenarioBatch(registry, document.entities).validate()
        else:
            result.scenario_id = manager.save_scenario(
                name, document.entities, description=document.description, tags=tags,
                overwrite=current_tags is not None, created_at=document.created_at,
                metadata=document.metadata("migrated_from", sha256=hashlib.sha256(data).hexdigest()))
            existing[name] = tags
        result.status, result.replaced = MIGRATED, current_tags is not None
    except DocumentError as error:
        result.reason = _with_first_problem(error.reason, error.problems)
    except ValidationError as error:
        result.reason = _with_first_problem(str(error).splitlines()[0], error.problems)
    except OSError as error:
        result.reason = f"cannot read the file: {error.strerror or error}"
    except HealthSimError as error:
        result.reason = str(error).splitlines()[0]
    return result


def _refuse_existing(result: MigrationResult, name: str, tag: str, current_tags: list[str]) -> None:
    if tag in current_tags:
        result.status, result.reason = SKIPPED, "already migrated from this content"
    elif any(t.startswith(HASH_TAG_PREFIX) for t in current_tags):
        result.reason = (f"scenario {name!r} was migrated from different content (the file changed since, or "
                         "another file has the same name); use --overwrite to replace it")
    else:
        result.reason = f"a scenario named {name!r} already exists and was not migrated; use --overwrite to replace it"


def _with_first_problem(summary: str, problems: list) -> str:
    return f"{summary}; first: {problems[0]}" if problems else summary


def _counts(registry: Registry, document: ScenarioDocument) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key, number in document.counts.items():
        codec = registry.resolve(key)
        entity = codec.mapping.entity if codec is not None else key
        counts[entity] = counts.get(entity, 0) + number
    return counts
