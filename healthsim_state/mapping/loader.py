"""Read mapping files: YAML, the JSON Schema, then the checks a schema cannot make.

Every problem of every file is collected and reported together, each naming
the file, the entity, the key and what to do. Nothing loads unless everything
is valid: a malformed file never half-loads.

A document that passed the JSON Schema once is remembered by its digest
(:mod:`.validation_cache`), so an unchanged file is not validated again and
``jsonschema`` (and PyYAML) are imported only when needed.

Where mappings come from, in order (a later file with the same ``entity``
replaces an earlier one): the built-in directory shipped in the package, the
directories of ``$HEALTHSIM_MAPPINGS`` (separated by ``os.pathsep``), then the
``mapping_dirs`` a caller passes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..caches import MAPPING_DIRECTORIES
from ..column_types import TYPE_NAMES, column_type
from ..errors import MappingError, Problem
from ..values import MISSING, NotJSON, to_json
from . import parsed_cache, validation_cache
from .model import UUID4, Field, Mapping
from .problems import explain, key_of, problem
from .yaml_files import yaml_parser

if TYPE_CHECKING:
    import jsonschema

ENV_MAPPINGS = "HEALTHSIM_MAPPINGS"
RESERVED_COLUMNS = frozenset({"scenario_id", "_position", "_residual"})
RESERVED_TABLES = frozenset({"scenarios", "scenario_tags", "scenario_versions"})
RESERVED_TABLE_PREFIX = "_healthsim"

FORMAT = 1  # the mapping document's format version (``format:``, optional in files)
# PostgreSQL keeps 63 bytes of a name; a type's table of every version adds VERSIONS_SUFFIX.
MAX_IDENTIFIER = 63
VERSIONS_SUFFIX = "__versions"
_FHIR_KEY = re.compile(r"^fhir:(\s*(#.*)?)?$")  # a block key; "fhir: [...]" on one line is left to YAML


@lru_cache(maxsize=1)
def _schema_validator() -> jsonschema.protocols.Validator:
    import jsonschema  # slow to import: only when a document is not in the cache

    schema = json.loads(validation_cache.schema_bytes())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_problems(source: str | Path, entity: str | None, document: Any) -> list[Problem]:
    """What the JSON Schema says of ``document``, skipped for a document that
    passed before (see :mod:`.validation_cache`)."""
    key = validation_cache.digest(document)
    if key in validation_cache.VALIDATED:
        return []
    errors = sorted(_schema_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        validation_cache.VALIDATED.add(key)
    return [problem(source, entity, key_of(error, document), explain(error)) for error in errors]


@lru_cache(maxsize=1)
def builtin_mapping_dir() -> Path:
    """The built-in mappings: inside the installed package, or the repo's
    top-level ``mappings/`` when running from a source checkout. Found once
    a process (the package does not move; every manager asks)."""
    packaged = Path(__file__).resolve().parents[1] / "mappings"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "mappings"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"built-in mappings not found in {packaged} or {checkout}; reinstall healthsim-state"
    )


def mapping_dirs_from_env() -> list[Path]:
    value = os.environ.get(ENV_MAPPINGS, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def mapping_search_path(extra_dirs: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Built-ins, then ``$HEALTHSIM_MAPPINGS``, then ``extra_dirs``."""
    return [builtin_mapping_dir(), *mapping_dirs_from_env(), *(Path(d) for d in extra_dirs or ())]


def load_mappings(extra_dirs: Iterable[str | os.PathLike] | None = None) -> dict[str, Mapping]:
    """All mappings in force (see :func:`mapping_search_path`).
    Returns ``{entity: Mapping}`` in a stable order."""
    return load_mapping_dirs(mapping_search_path(extra_dirs))


def fingerprint(dirs: Iterable[Path]) -> tuple:
    """What the mappings in ``dirs`` depend on: each file's path, size and
    modification time. Equal fingerprints mean the same mappings, so callers
    may reuse what they compiled from them."""
    parts = []
    for directory in dirs:
        try:  # every manager asks: one stat a file and one for the directory, no Path objects
            entries = _mapping_paths(str(directory))
            stats = [os.stat(path) for path in entries]
            parts.append((str(directory),
                          tuple((path, st.st_size, st.st_mtime_ns) for path, st in zip(entries, stats))))
        except OSError:
            parts.append((str(directory), None))
    return tuple(parts)


def _mapping_paths(directory: str) -> list[str]:
    """The paths of the mapping files in ``directory``, sorted; listed again
    only when the directory changed. Its modification time moves with every
    file added, removed or renamed in it (Python's own import system finds
    new modules so), and one stat costs a fifth of a listing's calls. A
    directory changed in the last :data:`_RACY` seconds is listed every
    time, as git treats a racily clean file: its clock ticks coarsely, and
    a second change within one tick would leave the time as it was."""
    status = os.stat(directory)
    state = (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns)
    listed = MAPPING_DIRECTORIES.get(directory)
    if listed is not None and listed[0] == state:
        return listed[1]
    with os.scandir(directory) as found:  # after the stat: a change meanwhile is seen next time
        paths = sorted(entry.path for entry in found if parsed_cache.is_mapping_name(entry.name) and entry.is_file())
    if time.time_ns() - max(status.st_mtime_ns, status.st_ctime_ns) > _RACY * 1e9:
        MAPPING_DIRECTORIES.put(directory, (state, paths))
    return paths


_RACY = 2.0  # seconds


def load_mapping_dirs(dirs: Iterable[Path]) -> dict[str, Mapping]:
    """The mappings of ``dirs`` (a later file with the same ``entity`` wins),
    every file checked; raises :class:`MappingError` naming every problem.
    A set that loaded before from the same bytes is taken from
    :mod:`.parsed_cache` (a set that failed is never kept there)."""
    dirs = [Path(directory) for directory in dirs]
    key = parsed_cache.key_of(dirs, builtin_mapping_dir())
    cached = parsed_cache.load(dirs, key)
    if cached is not None:
        return cached
    problems: list[Problem] = []
    chosen: dict[str, Mapping] = {}
    for directory in dirs:
        found = _load_directory(directory, problems)
        chosen.update(found)
    _check_across(chosen, problems)
    if problems:
        raise MappingError(problems)
    _check_fhir_sections(chosen)
    loaded = dict(sorted(chosen.items()))
    if key is not None and parsed_cache.key_of(dirs, builtin_mapping_dir()) == key:  # no file changed while read
        parsed_cache.store(dirs, key, loaded)
    return loaded


def _check_fhir_sections(mappings: dict[str, Mapping]) -> None:
    """Check the ``fhir:`` sections with the files: the JSON Schema, then the
    checks across files (a column or entity type named exists, ...); raise
    :class:`~healthsim_state.errors.FhirMappingError` naming file, key and fix.

    A built-in section is checked here only while every type it names is the
    built-in one: a user's file that replaces ``patient`` (another key, no
    ``fhir:``) leaves the others' references to it unusable, which is said
    when FHIR is used (``FhirMapper``), not by every command. A set that
    passed is remembered by its digest (:func:`.validation_cache.set_digest`):
    an unchanged set is neither parsed nor checked again (a warm start pays
    for one hash)."""
    if all(mapping.fhir is None for mapping in mappings.values()):
        return
    key = validation_cache.set_digest(mappings)
    if key in validation_cache.VALIDATED:
        return
    from ..errors import FhirMappingError
    from . import fhir_section as declarations  # only on a miss: parsing the sections is not free

    problems: list[Problem] = []
    declared = {}
    for entity, mapping in mappings.items():
        found = declarations.declarations_of(mapping, problems)
        if found is not None:
            declared[entity] = found
    if problems:
        raise FhirMappingError(problems)
    builtin = builtin_mapping_dir()
    replaced = any(Path(m.source).parent != builtin for m in mappings.values())
    users = [e for e, decls in declared.items() if Path(decls.source).parent != builtin]
    declarations.check(mappings, declared, only=users if replaced else None)  # raises with every problem
    validation_cache.VALIDATED.add(key)


def _load_directory(directory: Path, problems: list[Problem]) -> dict[str, Mapping]:
    if not directory.is_dir():
        problems.append(Problem(f"mapping directory {str(directory)!r} does not exist or is not a directory; "
                                "fix the path, or remove it from the list"))
        return {}
    found: dict[str, Mapping] = {}
    for path in parsed_cache.mapping_files(directory):
        mapping = load_mapping_file(path, problems)
        if mapping is None:
            continue
        if mapping.entity in found:
            problems.append(problem(path, mapping.entity, "entity",
                                     f"entity {mapping.entity!r} is also defined in {found[mapping.entity].source}; "
                                     "keep one file per entity type in a directory"))
            continue
        found[mapping.entity] = mapping
    return found


def load_mapping_file(path: Path, problems: list[Problem]) -> Mapping | None:
    """Parse and check one file; append its problems and return None if any."""
    before = len(problems)
    yaml, loader = yaml_parser()
    try:
        head, fhir_text = split_fhir_section(path.read_text("utf-8"))
        document = yaml.load(head, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problems.append(problem(path, None, where, f"not valid YAML ({getattr(error, 'problem', error)}); fix the syntax"))
        return None
    except (OSError, UnicodeDecodeError) as error:
        problems.append(problem(path, None, "file", f"cannot be read ({error})"))
        return None
    if not isinstance(document, dict):
        problems.append(problem(path, None, "document",
                                 "a mapping file must be a YAML mapping with keys entity, table, primary_key, fields"))
        return None
    entity = document.get("entity") if isinstance(document.get("entity"), str) else None
    problems.extend(_schema_problems(path, entity, document))
    if len(problems) > before:
        return None
    mapping = _build(str(path), document, problems)
    if mapping is not None and fhir_text is not None and mapping.fhir is None:
        mapping = dataclasses.replace(mapping, fhir=fhir_text)
    return mapping if len(problems) == before else None


def split_fhir_section(text: str) -> tuple[str, str | None]:
    """The file's text without its top-level ``fhir:`` block, and that block
    (None: none written so). The block is parsed and checked once the whole set
    is loaded (:func:`_check_fhir_sections`), and not at all when the set passed
    before: it is the larger part of a built-in file, and loading mappings
    (every command) need not parse it each time.
    A ``fhir`` key written another way (quoted, in flow style) stays in the text
    and is read with the rest."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _FHIR_KEY.match(line)), None)
    if start is None:
        return text, None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#-"):
        end += 1
    if end < len(lines) and lines[end].startswith(("---", "...")):
        return text, None  # several documents: leave it to the YAML parser
    block = "".join(lines[start:end])
    return "".join(lines[:start] + lines[end:]), block


def mapping_from_document(document: Any, source: str) -> Mapping:
    """The :class:`Mapping` a document describes (a parsed mapping file, or
    :meth:`Mapping.describe` output as the store records it), checked as a
    file is; raises :class:`MappingError`. The one reader of the format."""
    problems: list[Problem] = []
    if not isinstance(document, dict):
        raise MappingError([problem(source, None, "document", "a mapping must be an object with keys entity, "
                                                               "table, primary_key, fields")])
    entity = document.get("entity") if isinstance(document.get("entity"), str) else None
    version = document.get("format", FORMAT)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
        raise MappingError([problem(source, entity, "format", f"mapping format {version} was written by a newer "
                                     f"healthsim-state (this one reads format {FORMAT}); upgrade healthsim-state")])
    problems.extend(_schema_problems(source, entity, document))
    mapping = None if problems else _build(source, document, problems)
    if problems or mapping is None:
        raise MappingError(problems)
    return mapping


def _build(path: str, doc: dict[str, Any], problems: list[Problem]) -> Mapping | None:
    entity = doc["entity"]
    fields = []
    for index, raw in enumerate(doc["fields"]):
        key = f"fields[{index}] ({raw['column']})"
        try:
            ctype = column_type(raw["type"])
        except ValueError as reason:
            problems.append(problem(path, entity, f"{key}.type", f"{reason}; use one of {TYPE_NAMES}"))
            continue
        default = _check_default(path, entity, key, raw, ctype, problems)
        fields.append(Field(
            column=raw["column"],
            path=tuple(raw["path"].split(".")),
            type=ctype,
            aliases=tuple(tuple(a.split(".")) for a in raw.get("aliases", ())),
            default=default,
            # A key column without a default is required (the format says so).
            required=raw.get("required", False) or (
                default is MISSING and raw["column"] in _key_columns(doc)),
            strict=raw.get("strict", True),
            description=raw.get("description"),
        ))
    primary_key = _key_columns(doc)
    mapping = Mapping(
        entity=entity,
        plural=doc.get("plural", entity + "s"),
        table=doc["table"],
        primary_key=primary_key,
        fields=tuple(fields),
        description=doc.get("description"),
        source=path,
        # Kept as JSON text, parsed by healthsim_state.fhir only when FHIR is used:
        # loading mappings stays as fast as without it.
        fhir=json.dumps(doc["fhir"], separators=(",", ":"), ensure_ascii=False) if "fhir" in doc else None,
    )
    _check_names(path, mapping, problems)
    _check_keys(path, mapping, doc, problems)
    _check_paths(path, mapping, problems)
    return mapping


def _key_columns(doc: dict[str, Any]) -> tuple[str, ...]:
    key = doc["primary_key"]
    return (key,) if isinstance(key, str) else tuple(key)


def _check_default(path, entity, key, raw, ctype, problems) -> Any:
    if "default" not in raw:
        return MISSING
    default = raw["default"]
    if default == UUID4:
        if ctype.name != "varchar":
            problems.append(problem(path, entity, f"{key}.default",
                                     f"default uuid4 makes a string, but the field's type is {ctype.name}; "
                                     "use type varchar or another default"))
        return UUID4
    if default is None:
        problems.append(problem(path, entity, f"{key}.default",
                                 "default null does nothing; remove the default key"))
        return MISSING
    try:
        ctype.convert(default)
        return to_json(default)
    except (ValueError, NotJSON) as reason:
        problems.append(problem(path, entity, f"{key}.default",
                                 f"default {default!r} does not fit type {ctype.name} ({reason}); "
                                 "change the default or the type"))
        return MISSING


def _check_names(path: str, mapping: Mapping, problems: list[Problem]) -> None:
    entity = mapping.entity
    if (mapping.table in RESERVED_TABLES or mapping.table.startswith(RESERVED_TABLE_PREFIX)
            or mapping.table.endswith(VERSIONS_SUFFIX)):
        problems.append(problem(path, entity, "table",
                                 f"table name {mapping.table!r} is reserved by the store (scenarios, scenario_tags, "
                                 f"scenario_versions, names starting with {RESERVED_TABLE_PREFIX} or ending in "
                                 f"{VERSIONS_SUFFIX}); choose another"))
    longest = MAX_IDENTIFIER - len(VERSIONS_SUFFIX)
    if len(mapping.table.encode()) > longest:
        problems.append(problem(path, entity, "table",
                                 f"table name {mapping.table!r} is longer than {longest} characters (PostgreSQL "
                                 f"keeps {MAX_IDENTIFIER}, and the store adds {VERSIONS_SUFFIX!r}); shorten it"))
    seen: dict[str, int] = {}
    for index, field in enumerate(mapping.fields):
        key = f"fields[{index}] ({field.column}).column"
        if field.column in RESERVED_COLUMNS:
            problems.append(problem(path, entity, key,
                                     f"column name {field.column!r} is reserved by the store "
                                     f"({', '.join(sorted(RESERVED_COLUMNS))}); choose another"))
        if len(field.column.encode()) > MAX_IDENTIFIER:
            problems.append(problem(path, entity, key,
                                     f"column name {field.column!r} is longer than {MAX_IDENTIFIER} characters "
                                     "(PostgreSQL's limit); shorten it"))
        if field.column in seen:
            problems.append(problem(path, entity, key,
                                     f"column {field.column!r} is already used by fields[{seen[field.column]}]; "
                                     "give each field its own column"))
        seen.setdefault(field.column, index)


def _check_keys(path: str, mapping: Mapping, doc: dict[str, Any], problems: list[Problem]) -> None:
    columns = {f.column: f for f in mapping.fields}
    for column in mapping.primary_key:
        field = columns.get(column)
        if field is None:
            problems.append(problem(path, mapping.entity, "primary_key",
                                     f"key column {column!r} is not a field; add a field with column {column!r} "
                                     f"or use one of: {', '.join(columns)}"))
            continue
        if not field.strict:
            problems.append(problem(path, mapping.entity, "primary_key",
                                     f"key column {column!r} is declared strict: false; a key is always strict, "
                                     "remove strict: false"))
        if field.type.name == "json":
            problems.append(problem(path, mapping.entity, "primary_key",
                                     f"key column {column!r} has type json; a key must be a scalar type"))
    for index, raw in enumerate(doc["fields"]):
        if raw.get("required") and "default" in raw:
            problems.append(problem(path, mapping.entity, f"fields[{index}] ({raw['column']}).required",
                                     "a field with a default is never missing; drop required or the default"))


def _check_paths(path: str, mapping: Mapping, problems: list[Problem]) -> None:
    """Paths and aliases must be distinct, and none may lie inside another
    (a value at ``a`` and one at ``a.b`` cannot both be fields). Each path is
    looked up by its prefixes, not compared with every other (that was
    quadratic: most of the time a process spent checking the 14 built-ins)."""
    owners: dict[tuple[str, ...], str] = {}  # in the order met: overlaps are reported in that order
    below: dict[tuple[str, ...], list[tuple[str, ...]]] = {}  # prefix -> the owned paths inside it
    for index, field in enumerate(mapping.fields):
        for kind, keys in [("path", field.path)] + [(f"aliases[{i}]", a) for i, a in enumerate(field.aliases)]:
            where = f"fields[{index}] ({field.column}).{kind}"
            dotted = ".".join(keys)
            if keys in owners:
                problems.append(problem(path, mapping.entity, where,
                                         f"{dotted!r} is already the {owners[keys]}; each path and alias may "
                                         "appear once in a mapping"))
                continue
            prefixes = [keys[:depth] for depth in range(1, len(keys))]
            overlapping = {other for other in prefixes if other in owners} | set(below.get(keys, ()))
            for other in sorted(overlapping, key=list(owners).index) if overlapping else ():
                problems.append(problem(path, mapping.entity, where,
                                         f"{dotted!r} overlaps the {owners[other]} ({'.'.join(other)!r}): one lies "
                                         "inside the other; rename one of them"))
            owners[keys] = f"{'path' if kind == 'path' else 'alias'} of column {field.column}"
            for prefix in prefixes:
                below.setdefault(prefix, []).append(keys)


def check_mapping_set(mappings: dict[str, Mapping]) -> list[Problem]:
    """What makes these mappings unusable together (a shared table or input key)."""
    problems: list[Problem] = []
    _check_across(mappings, problems)
    return problems


def _check_across(mappings: dict[str, Mapping], problems: list[Problem]) -> None:
    """Names must not collide between entity types: tables, and input keys."""
    tables: dict[str, Mapping] = {}
    input_keys: dict[str, Mapping] = {}
    for mapping in mappings.values():
        other = tables.setdefault(mapping.table, mapping)
        if other is not mapping:
            problems.append(problem(mapping.source, mapping.entity, "table",
                                     f"table {mapping.table!r} is also used by entity {other.entity!r} "
                                     f"({other.source}); choose another table name"))
        for name in {mapping.entity, mapping.plural}:
            other = input_keys.setdefault(name, mapping)
            if other is not mapping:
                problems.append(problem(mapping.source, mapping.entity, "plural",
                                         f"{name!r} already names entity {other.entity!r} ({other.source}); "
                                         "choose another entity or plural"))
