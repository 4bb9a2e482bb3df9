"""What a validated mapping file says, as plain immutable objects."""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Any

from ..column_types import ColumnType
from ..values import MISSING

UUID4 = "uuid4"


@dataclass(frozen=True)
class Field:
    """One mapped field: a typed column, the path it lives at, how to find it."""

    column: str
    path: tuple[str, ...]
    type: ColumnType
    aliases: tuple[tuple[str, ...], ...] = ()
    default: Any = MISSING  # MISSING: none; UUID4: a fresh uuid string; else a literal
    required: bool = False
    strict: bool = True
    description: str | None = None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Mapping:
    """One entity type: its names, table, key and fields (in declared order)."""

    entity: str
    plural: str
    table: str
    primary_key: tuple[str, ...]
    fields: tuple[Field, ...]
    description: str | None = None
    source: str = "<memory>"  # the file it came from, for messages
    # The ``fhir:`` section (None: none): JSON text of the list when the YAML
    # parser read it with the file (it starts with "["), else the file's YAML
    # block (it starts with "fhir:"), parsed and checked only when FHIR is used.
    # How the type is shown as FHIR, not how it is stored: the store does not
    # record it (describe() leaves it out) and a change to it needs no migration.
    fhir: str | None = dataclass_field(default=None, compare=False)

    def field(self, column: str) -> Field:
        for candidate in self.fields:
            if candidate.column == column:
                return candidate
        raise KeyError(column)

    @property
    def key_fields(self) -> tuple[Field, ...]:
        return tuple(self.field(column) for column in self.primary_key)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for the CLI, the MCP server, the store)."""
        return {
            "format": 1,
            "entity": self.entity,
            "plural": self.plural,
            "table": self.table,
            "description": self.description,
            "primary_key": list(self.primary_key),
            "fields": [
                {
                    "column": f.column,
                    "path": f.dotted,
                    "type": f.type.name,
                    "aliases": [".".join(a) for a in f.aliases],
                    "required": f.required,
                    "strict": f.strict,
                    **({} if f.default is MISSING else {"default": f.default}),
                    **({"description": f.description} if f.description else {}),
                }
                for f in self.fields
            ],
        }
