"""A mapping file's problems in words: where (the file, the entity, the key
as a reader finds it: ``fields[3] (mrn).type``) and what to do about it,
from the JSON Schema's errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..column_types import TYPE_NAMES
from ..errors import Problem

if TYPE_CHECKING:
    import jsonschema  # slow to import: the errors come from the loader, which imports it when it validates

TOP_KEYS = ("format", "entity", "plural", "table", "description", "primary_key", "fields", "fhir")
FIELD_KEYS = ("column", "path", "type", "aliases", "default", "required", "strict", "description")


def problem(path: str | Path, entity: str | None, key: str, message: str) -> Problem:
    label = f"{path}" + (f" (entity {entity})" if entity else "")
    return Problem(message=message, path=f"{label}: {key}")


def key_of(error: jsonschema.ValidationError, doc: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = doc
    for part in error.absolute_path:
        if isinstance(part, int):
            label = f"[{part}]"
            item = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(item, dict) and isinstance(item.get("column"), str):
                label += f" ({item['column']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return "".join(parts) or "document"


def explain(error: jsonschema.ValidationError) -> str:
    import difflib  # only when there is an error to explain

    kind, value = error.validator, error.instance
    where = error.absolute_path[-1] if error.absolute_path else None
    if kind == "additionalProperties":
        properties = error.schema.get("properties", {})
        allowed = FIELD_KEYS if "column" in properties else TOP_KEYS if "entity" in properties else tuple(properties)
        unknown = sorted(set(value) - set(allowed))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"unknown key {', '.join(hints)}; allowed keys are {', '.join(allowed)}"
    if kind == "required":
        return f"{error.message.split(' is ')[0]} is missing; add it"
    if kind == "pattern":
        if where == "type" or "varchar" in error.validator_value:
            return f"unknown type {value!r}; use one of {TYPE_NAMES}"
        if "[^.]" in error.validator_value:
            return f"{value!r} is not a valid path: keys joined by single dots, none empty"
        return (f"{value!r} is not a valid name: use lowercase letters, digits and underscores, "
                "not starting with a digit")
    if kind == "type":
        expected = error.validator_value
        return f"expected {_a(expected)}, got {value!r}" + (
            "; quote it in YAML" if expected == "string" and not isinstance(value, (list, dict)) else "")
    if kind == "oneOf" and where == "primary_key":
        return f"primary_key must be a column name or a non-empty list of column names, got {value!r}"
    if kind == "minItems":
        return f"{where} must not be empty"
    if kind == "uniqueItems":
        return f"{where} lists the same item twice; remove the repeat"
    if kind == "not":
        return f"default must be a single value (a string, number or bool), got {value!r}"
    return error.message


def _a(expected: Any) -> str:
    names = {"string": "a string", "boolean": "true or false", "array": "a list",
             "object": "a mapping", "integer": "an integer"}
    if isinstance(expected, list):
        return " or ".join(names.get(e, e) for e in expected)
    return names.get(expected, expected)
