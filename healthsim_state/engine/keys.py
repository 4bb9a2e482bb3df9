"""Generated keys: a function of the entity, not of chance.

A field whose mapping says ``default: uuid4`` and that an entity leaves out
gets a UUID made from that entity: saving the same data again gives every
entity the key it had, so a save that changes nothing writes nothing, two
imports of one file diff as equal, and one changed entity is one entity
removed and one added, not every keyless entity replaced.

The key is a name-based UUID (version 5, SHA-1) in :data:`NAMESPACE` of the
text ``<entity type>/<column>/<occurrence>/<content digest>``: the content
digest is the SHA-1 (hex) of the entity's stored content, every other field's
value (skipping empty ones; dates, timestamps and decimals in their column
form) and its unmapped data, without the generated fields; the occurrence
counts the entities of equal content before it among those of its type that
one call (a save, an overwrite, an addition) generates keys for: 0 for the
first, so two equal entities in one call are two entities. Neither the
scenario nor the time is part of it: the same file saved as two scenarios
gives the same keys (keys are per scenario anyway). Entities that give their
key keep it; keys already stored are never rewritten.

The flatten puts :data:`GENERATED` where such a key goes; :class:`KeyMaker`
replaces it, a chunk at a time, before the keys are checked and stored.
"""

from __future__ import annotations

import hashlib
import uuid
from itertools import compress
from typing import Any

from ..column_types import from_form, to_form
from ..mapping.model import UUID4, Mapping

NAMESPACE = uuid.UUID("5b0d2f4e-8c1a-5d3e-9f6b-6865616c7468")  # fixed for good: keys depend on it
_NAMESPACE_BYTES = NAMESPACE.bytes


class _Generated:
    """The placeholder of a key still to be made from its entity."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "GENERATED"


GENERATED: Any = _Generated()


def generated_fields(mapping: Mapping) -> list[int]:
    """The indexes of the fields whose missing value is a generated key."""
    return [i for i, f in enumerate(mapping.fields) if f.default == UUID4]


def content_key(entity: str, column: str, occurrence: int, digest: str) -> str:
    """``uuid5(NAMESPACE, f"{entity}/{column}/{occurrence}/{digest}")``, as text."""
    return _uuid5_text(hashlib.sha1(_NAMESPACE_BYTES + f"{entity}/{column}/{occurrence}/{digest}".encode()))


_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}  # RFC 4122: the top bits 10


def _uuid5_text(sha1: Any) -> str:
    """The UUID text of a SHA-1 as version 5 makes it (the same as
    ``str(uuid.uuid5(...))``, without making a UUID object: a third of the time)."""
    x = sha1.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


class KeyMaker:
    """Makes one type's generated keys for one call, chunk by chunk (the
    occurrence counts run across the chunks)."""

    def __init__(self, mapping: Mapping):
        self.entity = mapping.entity
        self.fields = mapping.fields
        self.generated = generated_fields(mapping)
        self.columns = [f.column for f in mapping.fields]
        self.prefixes = {i: _NAMESPACE_BYTES + f"{self.entity}/{self.columns[i]}/".encode() for i in self.generated}
        self.names: dict[tuple[bool, ...], str] = {}
        self.seen: dict[int, int] = {}  # content digest (its first 8 bytes) -> entities of it so far

    def fill_rows(self, rows: list[tuple | None]) -> list[tuple | None]:
        """The rows ``(position, col_0, ..., residual)`` (None: an entity with
        problems) with their placeholders replaced by keys."""
        generated, fields = self.generated, self.fields
        out = []
        for row in rows:
            if row is not None and any(row[i + 1] is GENERATED for i in generated):
                values = [v if v is None or v is GENERATED else to_form(f.type, v) for f, v in zip(fields, row[1:-1])]
                keys = self._keys(values, row[-1])
                row = (row[0], *[keys.get(i, v) for i, v in enumerate(row[1:-1])], row[-1])
            out.append(row)
        return out

    def fill_columns(self, columns: list[list], residuals: list[str | None]) -> None:
        """Replace the placeholders of a column-wise batch (in the fields'
        forms) in place."""
        if not any(GENERATED in columns[i] for i in self.generated):
            return
        series = [self._hashed_form(f, column) for f, column in zip(self.fields, columns)]
        first = columns[self.generated[0]]
        for j, (values, residual) in enumerate(zip(zip(*series), residuals)):
            if first[j] is GENERATED or any(columns[i][j] is GENERATED for i in self.generated):
                for i, key in self._keys(values, residual).items():
                    columns[i][j] = key

    @staticmethod
    def _hashed_form(f: Any, column: list) -> list:
        """A column in the form its values are hashed in: the field's form,
        where a timestamp (text or an int in bulk) is always the int."""
        if f.type.form != "instant":
            return column
        return [v if v is None or v is GENERATED or v.__class__ is int else to_form(f.type, from_form(f.type, [v])[0])
                for v in column]

    def _keys(self, values: list | tuple, residual: str | None) -> dict[int, str]:
        """The keys of one entity's placeholders, by field index, from its
        other values (in hashed form) and its residual."""
        present = tuple(map(_is_value, values))
        names = self.names.get(present)
        if names is None:  # the columns that hold a value, as text: one per shape, made once
            names = self.names[present] = repr(tuple(compress(self.columns, present)))
        content = f"{names}{tuple(compress(values, present))!r}{residual!r}"
        digest = hashlib.sha1(content.encode("utf-8", "surrogatepass")).digest()
        counted = int.from_bytes(digest[:8], "big")  # 8 bytes do to count equal entities
        occurrence = self.seen.get(counted, 0)
        self.seen[counted] = occurrence + 1
        tail = f"{occurrence}/{digest.hex()}".encode()
        return {i: _uuid5_text(hashlib.sha1(self.prefixes[i] + tail))
                for i in self.generated if values[i] is GENERATED}


def _is_value(value: Any) -> bool:
    """Whether a column value counts in the content: not empty, not a key to make."""
    return value is not None and value is not GENERATED
