"""Remember the mapping set a search path loaded, so that a process whose
mapping files did not change neither imports PyYAML nor parses and checks
the files again (what every command otherwise pays before it starts).

An entry is the loaded set, as JSON, under a key: a digest of the package
version, the JSON Schema's bytes, the source of the modules that read mapping
files (so a code change is a miss even under the same version), each
directory's path and each mapping file's name and bytes. Only a set that loaded
without a problem is stored, so a file that fails is read, and fails, on every
run. A hit returns the set only when its key is the one the files on disk give
now, and its mappings only when their SHA-256 (in the entry's first line) is
theirs; a missing, unreadable, torn, corrupt or foreign file, or one written by
another version, is a miss, and a miss only means loading the files again.

The entries live next to :mod:`.validation_cache`'s digests, one file a
search path (at most :data:`MAX_FILES`, the oldest dropped), each written
whole through a temporary file and a rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..column_types import column_type
from ..values import MISSING
from . import validation_cache
from .model import Field, Mapping

FORMAT = 1  # the entry's format; a file of another format is a miss
DIRECTORY = "mapping-sets"
MAX_FILES = 16  # one a search path in use: a few for a user, more for a test run
# The modules whose code decides what a set of files loads to (relative to this package).
READERS = ("loader.py", "model.py", "fhir_section.py", "yaml_files.py", "validation_cache.py", "parsed_cache.py",
           "../column_types.py", "../values.py")
# What an entry writes of each object: a new attribute in the model is a miss until written here.
_MAPPING_ATTRIBUTES = ("entity", "plural", "table", "primary_key", "fields", "description", "source", "fhir")
_FIELD_ATTRIBUTES = ("column", "path", "type", "aliases", "default", "required", "strict", "description")
_SCALARS = (str, int, float, bool)


class _NotStorable(Exception):
    """A loaded set holds something an entry cannot write exactly: it is not stored."""


def key_of(dirs: Iterable[Path], builtin: Path) -> str | None:
    """The key of what ``dirs`` hold now, or None when a directory or a file
    cannot be read (the loader then reports it, and nothing is cached).
    ``builtin`` is the built-in directory, which the checks across files
    treat apart even when ``dirs`` leave it out."""
    hasher = hashlib.sha256(f"healthsim-state mapping set {FORMAT} {validation_cache._version()}\0".encode())
    hasher.update(validation_cache._schema_digest())
    hasher.update(b"\0\4" + str(builtin).encode("utf-8", "surrogatepass"))
    try:
        here = Path(__file__).parent
        for name in READERS:
            hasher.update(b"\0\1" + (here / name).read_bytes())
        for directory in dirs:
            hasher.update(b"\0\2" + str(directory).encode("utf-8", "surrogatepass"))
            for path in mapping_files(directory):
                hasher.update(b"\0\3" + path.name.encode("utf-8", "surrogatepass") + b"\0" + path.read_bytes())
    except OSError:
        return None
    return hasher.hexdigest()


def mapping_files(directory: Path) -> list[Path]:
    """The mapping files of ``directory``, in the order they are loaded."""
    return sorted(p for p in Path(directory).iterdir() if is_mapping_name(p.name) and p.is_file())


def is_mapping_name(name: str) -> bool:
    """Whether a file name's suffix, as :attr:`Path.suffix` reads it (a last
    dot that does not start the name), is ``.yaml`` or ``.yml``: the one
    rule of what a mapping file is, for loading and for the fingerprint
    alike (the fingerprint lists with ``os.scandir``, no Path objects)."""
    return name.endswith((".yaml", ".yml")) and name.rfind(".") > 0


def entry_path(dirs: Iterable[Path]) -> Path:
    """The entry of a search path: one file for each list of directories."""
    name = hashlib.sha256("\0".join(str(d) for d in dirs).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return validation_cache.cache_path().parent / DIRECTORY / f"{name}.entry"


def load(dirs: list[Path], key: str | None) -> dict[str, Mapping] | None:
    """The set stored for ``dirs`` under ``key``, or None (a miss). An entry
    is a header line (format, key, the SHA-256 of the rest) and the mappings
    as JSON: a byte changed anywhere is a miss."""
    if key is None:
        return None
    try:
        header, _, body = entry_path(dirs).read_bytes().partition(b"\n")
        head = json.loads(header)
        if head["format"] != FORMAT or head["key"] != key or head["sha256"] != hashlib.sha256(body).hexdigest():
            return None
        return {mapping.entity: mapping for mapping in map(_mapping_from, json.loads(body))}
    except Exception:  # noqa: BLE001 - whatever a damaged or foreign file holds is a miss
        return None


def store(dirs: list[Path], key: str | None, mappings: dict[str, Mapping]) -> None:
    """Keep ``mappings`` (a set that loaded without a problem) for ``dirs``
    under ``key``. A set the entry cannot write exactly is not kept."""
    if key is None:
        return
    try:
        written = [_written(mapping) for mapping in mappings.values()]
        body = json.dumps(written, allow_nan=False).encode("utf-8")
        if [_written(_mapping_from(item)) for item in json.loads(body)] != written:
            return  # read back, it would not be the same set
    except (_NotStorable, TypeError, ValueError):
        return
    header = json.dumps({"format": FORMAT, "key": key, "sha256": hashlib.sha256(body).hexdigest()})
    _write_atomic(entry_path(dirs), header.encode("ascii") + b"\n" + body)


# --- one mapping, written and read --------------------------------------------------------

def _written(mapping: Mapping) -> list:
    if tuple(f.name for f in dataclasses.fields(Mapping)) != _MAPPING_ATTRIBUTES or \
            tuple(f.name for f in dataclasses.fields(Field)) != _FIELD_ATTRIBUTES:
        raise _NotStorable("the model has attributes this entry does not write")
    return [_text(mapping.entity), _text(mapping.plural), _text(mapping.table), _texts(mapping.primary_key),
            [_written_field(field) for field in _tuple(mapping.fields)], _text_or_none(mapping.description),
            _text(mapping.source), _text_or_none(mapping.fhir)]


def _written_field(field: Field) -> list:
    if field.default is MISSING:
        default: list = []
    elif type(field.default) in _SCALARS:
        default = [field.default]
    else:
        raise _NotStorable(f"default {field.default!r}")
    if type(field.required) is not bool or type(field.strict) is not bool:
        raise _NotStorable("required and strict are booleans")
    return [_text(field.column), _texts(field.path), _text(field.type.name),
            [_texts(alias) for alias in _tuple(field.aliases)], default, field.required, field.strict,
            _text_or_none(field.description)]


def _mapping_from(item: list) -> Mapping:
    entity, plural, table, primary_key, fields, description, source, fhir = item
    return Mapping(entity=entity, plural=plural, table=table, primary_key=tuple(primary_key),
                   fields=tuple(map(_field_from, fields)), description=description, source=source, fhir=fhir)


def _field_from(item: list) -> Field:
    column, path, type_name, aliases, default, required, strict, description = item
    return Field(column=column, path=tuple(path), type=column_type(type_name),
                 aliases=tuple(tuple(alias) for alias in aliases), default=default[0] if default else MISSING,
                 required=required, strict=strict, description=description)


def _text(value: Any) -> str:
    if type(value) is not str:
        raise _NotStorable(f"{value!r} is not a string")
    return value


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _tuple(value: Any) -> tuple:
    if type(value) is not tuple:
        raise _NotStorable(f"{value!r} is not a tuple")
    return value


def _texts(value: Any) -> list[str]:
    return [_text(item) for item in _tuple(value)]


# --- the file ------------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` (readers see the old file or the new one,
    never a part), then drop the oldest entries past :data:`MAX_FILES`.
    A cache that cannot be written only means loading the files next time."""
    import tempfile  # only when storing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        _prune(path.parent)
    except OSError:
        pass


def _prune(directory: Path) -> None:
    entries = sorted(directory.glob("*.entry"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:-MAX_FILES]:
        old.unlink(missing_ok=True)

