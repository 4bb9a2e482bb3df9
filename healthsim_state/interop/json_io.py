"""Scenario documents in JSON: every shape we import, and the one we export.

Import accepts (:func:`parse_document` tells them apart):

``export``
    ours: ``{"format": "healthsim-scenario", "version": 1, "name", "description",
    "tags", "created_at", "updated_at", "entities": {...}}``;
``predecessor``
    the earlier tools' export: ``{name, description, tags, created_at, entities}``
    with no format or version (also what ``load_scenario`` returns);
``workspace``
    the old workspace files: ``metadata`` (name, description, tags) and
    ``entities`` whose items wrap each entity as ``{entity_id, entity_type, data,
    provenance}``; an item becomes ``{**data, "_provenance": provenance}``;
``entities``
    bare entity lists, ``{"patients": [...], "encounters": [...]}``, optionally
    beside ``name``, ``description`` and ``tags``;
``history``
    ours with every kept version (``export --history``)::

        {"format": "healthsim-scenario-history", "version": 1,
         "name", "description", "tags", "created_at", "updated_at",
         "versions": [{"version": 1, "operation": "save", "at": "<ISO time>",
                       "description", "tags", "entity_count", "entity_counts",
                       "metadata", "changes"}, ...],          # oldest first
         "entities": {"patients": [{"since": 1, "until": 3, "position": 0,
                                    "entity": {...}}, ...], ...}}

    each entity once, with the versions that hold it: ``since`` up to (not
    including) ``until`` (null: still current), at ``position`` in its
    type's list. Version 2 of a scenario is every entity with ``since <= 2``
    and ``until`` null or above 2, in position order. Importing it makes
    the scenario with every version as it was (see
    :meth:`StateManager.save_history`); ``entity_count`` and
    ``entity_counts`` are there to read, and are counted again on import.

Everywhere: an entity type may be singular or plural, a single object where a
list is expected is a one-item list, and ``null`` is an empty list. The
entities then go to :meth:`StateManager.save_scenario` unchanged, which
validates them all (so a bad file changes nothing).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import Problem, ScenarioNotFoundError, StoreNotFoundError, ValidationError
from ..history import HeldEntity, ScenarioHistory
from ..manager import StateManager
from ..values import dump_exact, exact_number, json_bytes, render_object
from .errors import DocumentError
from .files import default_target, write_atomic

FORMAT = "healthsim-scenario"
VERSION = 1
HISTORY_FORMAT = "healthsim-scenario-history"
HISTORY_VERSION = 1
_VERSION_KEYS = ("version", "operation", "at", "description", "tags", "entity_count", "entity_counts", "metadata",
                 "changes")
_HELD_KEYS = frozenset({"since", "until", "position", "entity"})
STDIN = "-"

# Keys beside bare entity lists that are the scenario's own data, not entity types.
_META_KEYS = ("name", "description", "tags", "created_at", "updated_at", "scenario_id", "entity_count",
              "entity_counts")
_WORKSPACE_ITEM_KEYS = frozenset({"entity_id", "entity_type", "data", "provenance"})


@dataclass
class ScenarioDocument:
    """What a file says: the scenario's name (None if it does not say),
    description, tags, ``entities`` ready for ``save_scenario``, which
    ``shape`` it had, its ``created_at`` (ISO text, or None), and ``extra``:
    everything else it says about the scenario (a workspace file's
    ``workspace_id``, ``product`` and ``provenance_summary``, an export's
    ``updated_at``, ...), kept in the metadata of the version a save makes."""

    name: str | None
    description: str | None
    tags: list[str]
    entities: dict[str, list]
    shape: str
    source: str = "<document>"
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    history: ScenarioHistory | None = None  # a history document's versions and entities

    @property
    def counts(self) -> dict[str, int]:
        """Entities per type (of the newest version, for a history)."""
        if self.history is not None:
            counts = {key: sum(1 for item in held if item.until is None)
                      for key, held in self.history.entities.items()}
            return {key: count for key, count in counts.items() if count}
        return {key: len(items) for key, items in self.entities.items() if isinstance(items, list) and items}

    def metadata(self, key: str = "imported_from", **more: Any) -> dict[str, Any]:
        """The version metadata a save of this document records:
        ``{key: {"file", "shape", **more, **extra}}``."""
        return {key: {"file": self.source, "shape": self.shape, **more, **self.extra}}


@dataclass
class ImportResult:
    source: str
    name: str
    scenario_id: str
    counts: dict[str, int] = field(default_factory=dict)
    shape: str = ""
    replaced: bool = False
    unchanged: bool = False  # it replaced a scenario that held the same already: nothing was written


# --- reading -----------------------------------------------------------------------

def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes (``-`` is standard input)."""
    if str(path) == STDIN:
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's dict, unless a key is given twice (JSON parsers keep the
    last, silently: the earlier value would vanish)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _DuplicateKey()
    return found


# Numbers no float holds come back as Decimals (every digit kept, 1e400 included);
# a key given twice in one object is refused.
_decoder = json.JSONDecoder(parse_float=exact_number, object_pairs_hook=_unique_object)


def load_json_bytes(data: bytes, source: str) -> Any:
    """Parse JSON text; a syntax error names ``source``, the line and the
    column, and so does a key given twice in one object. A number with a
    fraction or an exponent that no float holds exactly is a ``Decimal``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(source, f"not UTF-8 text (byte {error.start})") from None
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as error:
        raise DocumentError(source, f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                            line=error.lineno, column=error.colno) from None
    except _DuplicateKey:
        raise _duplicate_error(text, source) from None
    except RecursionError:
        raise DocumentError(source, "not usable JSON: nested too deeply") from None


# Strings and the structural characters of JSON text: enough to know, for each
# key, the object it belongs to and where it is (numbers and literals are skipped).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def _duplicate_error(text: str, source: str) -> DocumentError:
    """The error for a document whose parse met a key given twice: each such
    key with its path, line and column. Only a refused document pays for
    this second pass."""
    problems: list[Problem] = []
    first: tuple[str, str, int, int] | None = None
    # per open container: [keys seen (None in a list), its path, current key or index, expecting a key]
    stack: list[list[Any]] = []
    for match in _TOKENS.finditer(text):
        token = match.group()
        frame = stack[-1] if stack else None
        if token in ("{", "["):
            path = () if frame is None else (*frame[1], _part(frame))
            stack.append([{} if token == "{" else None, path, None if token == "{" else 0, token == "{"])
        elif token in ("}", "]"):
            stack.pop()
        elif token == ",":
            if frame[0] is None:
                frame[2] += 1
            else:
                frame[3] = True
        elif token != ":" and frame is not None and frame[3]:  # a key
            key = json.loads(token)
            frame[2], frame[3] = key, False
            if key not in frame[0]:
                frame[0][key] = match.start()
                continue
            line, column = _line_column(text, match.start())
            first_line, first_column = _line_column(text, frame[0][key])
            lines = (f"lines {first_line} and {line}" if first_line != line
                     else f"line {line} (columns {first_column} and {column})")
            first = first or (key, lines, line, column)
            problems.append(Problem(f"key {key!r} given twice in one object, at {lines}",
                                    path=_dotted((*frame[1], key))))
    if first is None:  # the parser saw what this pass cannot: say so plainly
        return DocumentError(source, "not a usable JSON document: a key is given twice in one object")
    more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
    return DocumentError(source, f"not a usable JSON document: a key is given twice in one object, and only one "
                                 f"of its values would be kept: {first[0]!r} at {first[1]}{more}",
                         line=first[2], column=first[3], problems=problems)


def _part(frame: list[Any]) -> str:
    return f"[{frame[2]}]" if frame[0] is None else frame[2]


def _dotted(parts: tuple[str, ...]) -> str:
    out = ""
    for part in parts:
        out += part if part.startswith("[") else (f".{part}" if out else part)
    return out


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def read_document(path: str | os.PathLike) -> ScenarioDocument:
    """Read and recognise one scenario file (``-``: standard input)."""
    source = "<stdin>" if str(path) == STDIN else str(path)
    return parse_document(load_json_bytes(read_bytes(path), source), source)


def parse_document(doc: Any, source: str = "<document>") -> ScenarioDocument:
    """Recognise the shape of a parsed document and normalise it. Raises
    :class:`DocumentError` naming ``source`` and every problem found."""
    if not isinstance(doc, dict):
        raise DocumentError(source, f"expected a JSON object (a scenario document or entity lists), "
                                    f"got {_json_type(doc)}")
    problems: list[Problem] = []
    if doc.get("format") == HISTORY_FORMAT:
        return _parse_history(doc, source)
    if "format" in doc:
        shape, meta, raw = "export", doc, doc.get("entities")
        _check_format(doc, source)
        if "entities" not in doc:
            problems.append(Problem("missing: a healthsim-scenario document needs entities", path="entities"))
    elif isinstance(doc.get("metadata"), dict) and "entities" in doc:
        shape, meta, raw = "workspace", doc["metadata"], doc["entities"]
    elif "entities" in doc:
        shape, meta, raw = "predecessor", doc, doc["entities"]
    else:
        shape, meta = "entities", doc
        raw = {key: value for key, value in doc.items() if key not in _META_KEYS}
    prefix = "metadata." if shape == "workspace" else ""
    name = _optional_string(meta, "name", prefix, problems)
    description = _optional_string(meta, "description", prefix, problems)
    tags = _tags(meta.get("tags"), prefix, problems)
    created_at = _optional_time(meta, "created_at", prefix, problems)
    entities = _entity_lists(raw, problems, unwrap=shape == "workspace")
    if problems:
        raise DocumentError(source, f"not a scenario document ({_shape_label(shape)}): "
                                    f"{len(problems)} problem{'s' if len(problems) != 1 else ''}",
                            problems=problems)
    return ScenarioDocument(name, description, tags, entities, shape, source, created_at, _extra(doc, shape))


# What a document says about its scenario that a save takes as arguments
# (the rest is kept as metadata), and what is derived from the entities.
_USED_KEYS = frozenset({"format", "version", "name", "description", "tags", "created_at", "entities", "metadata"})
_DERIVED_KEYS = frozenset({"entity_count", "entity_counts"})


def _extra(doc: dict, shape: str) -> dict[str, Any]:
    """The document's other facts about the scenario: its keys (and, in a
    workspace file, its ``metadata``'s keys) that are neither entities nor
    arguments of a save."""
    if shape == "entities":
        return {key: doc[key] for key in _META_KEYS if key in doc and key not in _USED_KEYS | _DERIVED_KEYS}
    extra = {key: value for key, value in doc.items() if key not in _USED_KEYS | _DERIVED_KEYS}
    if shape == "workspace":
        extra.update({key: value for key, value in doc["metadata"].items() if key not in _USED_KEYS})
    elif "metadata" in doc:
        extra["metadata"] = doc["metadata"]
    return extra


def _optional_time(meta: dict, key: str, prefix: str, problems: list[Problem]) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            _dt.datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    problems.append(Problem(f"expected an ISO date-time (YYYY-MM-DDTHH:MM[:SS][offset]), got {_preview(value)}",
                            path=prefix + key, value=value))
    return None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_format(doc: dict, source: str, fmt: str = FORMAT, readable: int = VERSION) -> None:
    if doc["format"] != fmt:
        raise DocumentError(source, f"unknown format {doc['format']!r}; expected {FORMAT!r} or {HISTORY_FORMAT!r}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DocumentError(source, f"{fmt} document without a valid version (got {version!r})")
    if version > readable:
        raise DocumentError(source, f"{fmt} version {version} was written by a newer healthsim-state; "
                                    f"this one reads version {readable}: upgrade healthsim-state")


def _parse_history(doc: dict, source: str) -> ScenarioDocument:
    """A history document (see the module's docstring): its structure is
    checked here, its versions and entities by the save."""
    _check_format(doc, source, HISTORY_FORMAT, HISTORY_VERSION)
    problems: list[Problem] = []
    name = _optional_string(doc, "name", "", problems)
    description = _optional_string(doc, "description", "", problems)
    tags = _tags(doc.get("tags"), "", problems)
    created_at = _optional_time(doc, "created_at", "", problems)
    updated_at = _optional_time(doc, "updated_at", "", problems)
    versions = doc.get("versions")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, dict) for v in versions):
        problems.append(Problem("expected a non-empty list of version objects", path="versions"))
        versions = []
    entities: dict[str, list[HeldEntity]] = {}
    raw = doc.get("entities")
    if not isinstance(raw, dict):
        problems.append(Problem(f"expected an object of entity type to list, got {_json_type(raw)}",
                                path="entities"))
        raw = {}
    for key, items in raw.items():
        if not isinstance(items, list):
            problems.append(Problem(f"expected a list, got {_json_type(items)}", path=f"entities.{key}"))
            continue
        entities[key] = held = []
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and item.keys() == _HELD_KEYS and isinstance(item["entity"], dict)):
                problems.append(Problem("expected {since, until, position, entity} with entity an object",
                                        path=f"entities.{key}[{index}]"))
                continue
            held.append(HeldEntity(item["since"], item["until"], item["position"], item["entity"]))
    if problems:
        raise DocumentError(source, f"not a scenario history document: {len(problems)} "
                                    f"problem{'s' if len(problems) != 1 else ''}", problems=problems)
    history = ScenarioHistory(name, description, tags, created_at, updated_at,
                              [dict(version) for version in versions], entities)
    return ScenarioDocument(name, description, tags, {}, "history", source, created_at, history=history)


def _shape_label(shape: str) -> str:
    return {"export": "healthsim-scenario export", "predecessor": "scenario export", "history": "history export",
            "workspace": "workspace file", "entities": "entity lists"}[shape]


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number", dict: "an object"}.get(type(value), type(value).__name__)


def _optional_string(meta: dict, key: str, prefix: str, problems: list[Problem]) -> str | None:
    value = meta.get(key)
    if value is None or isinstance(value, str):
        return value or None
    problems.append(Problem(f"expected a string, got {_json_type(value)}", path=prefix + key, value=value))
    return None


def _tags(value: Any, prefix: str, problems: list[Problem]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return list(value)
    problems.append(Problem("expected a list of strings", path=prefix + "tags", value=value))
    return []


def _entity_lists(raw: Any, problems: list[Problem], *, unwrap: bool) -> dict[str, list]:
    """``{type: list}`` from the document's entities; single objects become
    one-item lists, null an empty list, workspace items their entity."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem(f"expected an object of entity type to list, got {_json_type(raw)}",
                                path="entities"))
        return {}
    result: dict[str, list] = {}
    for key, items in raw.items():
        if items is None:
            items = []
        elif isinstance(items, dict):
            items = [items]
        if unwrap and isinstance(items, list):
            items = [_unwrap(item, key, index, problems) for index, item in enumerate(items)]
        result[key] = items  # anything else: save_scenario names the problem
    return result


def _unwrap(item: Any, key: str, index: int, problems: list[Problem]) -> Any:
    if not (isinstance(item, dict) and isinstance(item.get("data"), dict) and item.keys() <= _WORKSPACE_ITEM_KEYS):
        problems.append(Problem("expected a workspace item {entity_id, entity_type, data, provenance} "
                                "with data an object", path=f"entities.{key}[{index}]"))
        return item
    entity = dict(item["data"])
    if item.get("provenance") is not None:
        entity["_provenance"] = item["provenance"]
    return entity


# --- importing -----------------------------------------------------------------------

def scenario_name(document: ScenarioDocument, path: str | os.PathLike | None, name: str | None = None) -> str:
    """``name`` if given, else the document's, else the file name without its suffix."""
    if name:
        return name
    if document.name:
        return document.name
    if path is not None and str(path) != STDIN:
        file_name = Path(path).name
        return file_name[:-5] if file_name.lower().endswith(".json") and len(file_name) > 5 else file_name
    raise DocumentError(document.source, "the document has no scenario name; pass one (--name)")


def save_document(manager: StateManager, document: ScenarioDocument, name: str, *,
                  description: str | None = None, tags: Iterable[str] | None = None,
                  overwrite: bool = False, metadata: dict[str, Any] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Save a read document as scenario ``name`` in one transaction.
    ``description`` and ``tags`` replace the document's when given. A new
    scenario keeps the document's ``created_at``; the version records where
    it came from (``metadata``, by default :meth:`ScenarioDocument.metadata`).
    ``progress(done, total)`` follows the entities written."""
    if document.history is not None:
        replaced = overwrite and manager.scenario_exists(name)
        return _save_history(manager, document, name, description, tags, overwrite, replaced)
    before = newest_version(manager, name) if overwrite else None
    try:
        scenario_id = manager.save_scenario(
            name, document.entities,
            description=description if description is not None else document.description,
            tags=list(tags) if tags is not None else document.tags,
            overwrite=overwrite, created_at=document.created_at,
            metadata=metadata if metadata is not None else document.metadata(), progress=progress)
    except ValidationError as error:
        summary = str(error).splitlines()[0]
        raise DocumentError(document.source, summary, problems=error.problems) from None
    unchanged = before is not None and newest_version(manager, scenario_id) == before
    return ImportResult(document.source, name, scenario_id, document.counts, document.shape, before is not None,
                        unchanged)


def newest_version(manager: StateManager, name_or_id: str) -> int | None:
    """The scenario's newest version number, None when there is no such
    scenario (or no store yet). Compared before and after a write, it tells
    whether the write wrote anything."""
    try:
        return manager.scenario_info(name_or_id)["version"]
    except (ScenarioNotFoundError, StoreNotFoundError):
        return None


def _save_history(manager: StateManager, document: ScenarioDocument, name: str, description: str | None,
                  tags: Iterable[str] | None, overwrite: bool, replaced: bool) -> ImportResult:
    """A history document as scenario ``name``, every version as it was."""
    if description is not None or tags is not None:
        raise DocumentError(document.source, "a history document keeps its versions' descriptions and tags; "
                                             "save it without a new description or tags")
    try:
        scenario_id = manager.save_history(document.history, name=name, overwrite=overwrite)
    except ValidationError as error:
        summary = str(error).splitlines()[0]
        raise DocumentError(document.source, summary, problems=error.problems) from None
    return ImportResult(document.source, name, scenario_id, document.counts, document.shape, replaced)


def import_file(manager: StateManager, path: str | os.PathLike, *, name: str | None = None,
                description: str | None = None, tags: Iterable[str] | None = None,
                overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Read one file of any accepted shape and save it as one scenario."""
    document = read_document(path)
    return save_document(manager, document, scenario_name(document, path, name), description=description,
                         tags=tags, overwrite=overwrite, progress=progress)


# --- exporting -----------------------------------------------------------------------

def export_document(manager: StateManager, name_or_id: str, *, version: int | None = None,
                    history: bool = False) -> dict[str, Any]:
    """The scenario (newest version, or ``version``) as our versioned export
    document (non-empty entity types only, under their plural names, every
    field kept); with ``history``, every kept version as a history document
    (see the module's docstring)."""
    if history:
        if version is not None:
            raise ValidationError([Problem("a history export holds every version; ask for one version or for the "
                                           "history, not both", path="version")], summary="nothing exported")
        return export_history(manager, name_or_id)
    scenario = manager.load_scenario(name_or_id, version=version)
    codecs = manager.registry.codecs
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": scenario["name"],
        "description": scenario["description"],
        "tags": scenario["tags"],
        "created_at": scenario["created_at"].isoformat(),
        "updated_at": scenario["updated_at"].isoformat(),
        "entities": {codecs[entity].mapping.plural if entity in codecs else entity: items
                     for entity, items in scenario["entities"].items() if items},
    }


def export_history(manager: StateManager, name_or_id: str) -> dict[str, Any]:
    """The scenario with every kept version, as a history document."""
    with manager.snapshot(name_or_id) as snapshot:
        history = snapshot.history()
        codecs = snapshot.registry.codecs
    return {
        "format": HISTORY_FORMAT,
        "version": HISTORY_VERSION,
        "name": history.name,
        "description": history.description,
        "tags": history.tags,
        "created_at": history.created_at.isoformat(),
        "updated_at": history.updated_at.isoformat(),
        "versions": [{key: version[key].isoformat() if key == "at" else version[key] for key in _VERSION_KEYS}
                     for version in history.versions],
        "entities": {codecs[entity].mapping.plural: [{"since": item.since, "until": item.until,
                                                      "position": item.position, "entity": item.entity}
                                                     for item in held]
                     for entity, held in history.entities.items()},
    }


def dumps(document: Any) -> str:
    """JSON text of a document: UTF-8, indented, strictly JSON (no NaN); a
    number no float holds (a ``Decimal``) written with every digit."""
    return dump_exact(document, ensure_ascii=False, indent=2, allow_nan=False, default=_default) + "\n"


def _default(value: Any) -> Any:
    return render_object(value)


def export_json(manager: StateManager, name_or_id: str, path: str | os.PathLike | None = None, *,
                force: bool = False, directory: str | os.PathLike = ".", version: int | None = None,
                history: bool = False) -> Path:
    """Write the export document (with ``history``, the history document) to
    ``path`` atomically, never replacing a file without ``force``. With no
    ``path``, or a ``path`` that is a directory, the file is ``<scenario name
    made safe>.json`` in that directory."""
    document = export_document(manager, name_or_id, version=version, history=history)
    target = json_target(document["name"], path, directory)
    return write_atomic(target, json_bytes(dumps(document)), force=force)


def json_target(name: str, path: str | os.PathLike | None, directory: str | os.PathLike = ".") -> Path:
    if path is None:
        return default_target(directory, name, ".json")
    if Path(path).is_dir():
        return default_target(path, name, ".json")
    return Path(path)
