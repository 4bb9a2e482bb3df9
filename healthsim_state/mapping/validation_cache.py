"""Remember which mapping documents passed the JSON Schema, so a process does
not import ``jsonschema`` and validate 14 unchanged files (and the store's
copies of them) on every start.

The cache is a file of digests, one a line, in ``$XDG_CACHE_HOME/healthsim-state``
(else ``~/.cache/healthsim-state``). A digest covers the package version, the
schema file's bytes and the document's canonical JSON, so any change to any of
them is a miss and the document is validated again. Only a document that passed
is ever added (or the digest of a set of mappings whose ``fhir:`` sections
passed: :func:`set_digest`). A line that is not a whole digest (a torn write, a corrupt or
foreign file) is ignored; a line is added by one ``O_APPEND`` write, and the file
is only ever rewritten whole through a temporary file and a rename. A cache that
cannot be read or written only means validating again. So a cache can make a
run faster, never make it accept a document the schema rejects.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

FILE_NAME = "mapping-validation-1.txt"  # the number is the file's format
MAX_ENTRIES = 2000  # beyond this the oldest half goes: old versions' digests never match again
SCHEMA_FILE = "mapping.schema.json"
_HEX = frozenset("0123456789abcdef")


def cache_path() -> Path:
    """Where the digests live: ``$XDG_CACHE_HOME`` when set to an absolute path
    (as the XDG spec asks), else ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "healthsim-state" / FILE_NAME


def schema_bytes() -> bytes:
    return (Path(__file__).parent / SCHEMA_FILE).read_bytes()


def digest(document: Any) -> str | None:
    """The document's key, or None when it has no exact canonical JSON (a date
    or tuple from YAML, a non-string key): such a document is always validated."""
    try:
        text = json.dumps(document, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    if json.loads(text) != document:  # the text must stand for exactly this document
        return None
    version = getattr(sys.modules.get("healthsim_state"), "__version__", "")
    hasher = hashlib.sha256(f"healthsim-state {version}\0".encode())
    hasher.update(_schema_digest())
    hasher.update(b"\0" + text.encode("utf-8"))
    return hasher.hexdigest()


def set_digest(mappings: dict) -> str:
    """The key of a set of mappings whose ``fhir:`` sections passed the schema
    and the checks across files (``loader._check_fhir_sections``): what those depend
    on, each mapping's entity, key, columns (type, strictness) and section
    text, under the package version and the schema. Not a document's digest:
    it starts with another tag, so the two never meet."""
    hasher = hashlib.sha256(f"healthsim-state fhir set {_version()}\0".encode())
    hasher.update(_schema_digest())
    for entity, mapping in mappings.items():
        columns = "\0".join(f"{f.column}\1{f.type.name}\1{f.strict:d}" for f in mapping.fields)
        hasher.update(f"\0\2{entity}\0{mapping.primary_key}\0{columns}\0{mapping.fhir}".encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def _version() -> str:
    return getattr(sys.modules.get("healthsim_state"), "__version__", "")


_schema_digest_value: bytes | None = None


def _schema_digest() -> bytes:
    global _schema_digest_value
    if _schema_digest_value is None:
        _schema_digest_value = hashlib.sha256(schema_bytes()).digest()
    return _schema_digest_value


class ValidatedDigests:
    """The digests of the cache file in force, read once per process (again if
    ``$XDG_CACHE_HOME`` changes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._digests: set[str] = set()
        self._loaded_from: Path | None = None
        self._ends_in_newline = True

    def __contains__(self, key: str | None) -> bool:
        return key is not None and key in self._load()

    def add(self, key: str | None) -> None:
        """Record a document that passed the schema (callers add nothing else)."""
        digests = self._load()
        if key is None or key in digests:
            return
        digests.add(key)
        record = ("" if self._ends_in_newline else "\n") + key + "\n"
        try:
            self._file().parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self._file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, record.encode("ascii"))  # one write: appenders do not interleave
            finally:
                os.close(descriptor)
            self._ends_in_newline = True
        except OSError:
            pass  # no cache this time: the next run validates again

    def _file(self) -> Path:
        return self.path if self.path is not None else cache_path()

    def _load(self) -> set[str]:
        path = self._file()
        if self._loaded_from != path:
            self._loaded_from = path
            lines, self._ends_in_newline = _read(path)
            self._digests = {line for line in lines if len(line) == 64 and _HEX.issuperset(line)}
            if len(lines) > MAX_ENTRIES:
                _rewrite(path, [line for line in lines if line in self._digests][-MAX_ENTRIES // 2:])
        return self._digests


def _read(path: Path) -> tuple[list[str], bool]:
    """The lines of ``path`` (none when it is missing or unreadable), and
    whether it ends in a newline (a torn last line must not swallow the next)."""
    try:
        text = path.read_bytes().decode("ascii", errors="replace")
    except OSError:
        return [], True
    return text.splitlines(), text.endswith("\n") or not text


def _rewrite(path: Path, keys: list[str]) -> None:
    """Replace the file by ``keys``, atomically (readers see the old or the new)."""
    import tempfile  # only when compacting

    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="ascii") as out:
                out.write("".join(key + "\n" for key in keys))
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass


VALIDATED = ValidatedDigests()
