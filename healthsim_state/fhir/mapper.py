"""The FHIR mapper: entities to R4 resources and back, as the ``fhir:`` sections say.

A generic interpreter of the declarations
(:mod:`healthsim_state.mapping.fhir_section`): nothing here knows a patient
from a claim. Each entity type's declarations are compiled once, when first
used, into a plan of small closures (one per element, each knowing its path,
its field and its conversion), so a call runs no interpretation, only the
closures (the pattern of :mod:`healthsim_state.engine.compile`, without
generated source: the plans are short).

Two directions, one declaration:

- ``to_resources(entity)``: each declared resource whose ``when`` columns hold a
  value, with ``resourceType``, a stable ``id`` (:mod:`.ids`), ``meta.profile``,
  the entity's key in ``identifier[0]`` (system ``urn:healthsim:<type>``), then
  the elements in declared order. Same entity, same bytes.
- ``from_resource(resource)``: the declaration that reads it (by resource type,
  ``match`` constants, ``own`` identifiers) takes each element it knows out of
  a copy of the resource; what is left (extensions, extra identifiers, ``text``,
  codings of other systems, references to resources not in the input) is kept
  in the entity under ``_fhir`` (:data:`RESERVED_KEY`), with the resource's id:
  ``{"_fhir": {"<slot>": {"id": ..., "extra": {...}}}}``. An export merges it
  back, so an imported resource comes out again with every element under its id.

List positions: an element taken out of a list leaves ``None`` in the kept copy
(a placeholder), so an export puts the regenerated item back at its place.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import re
import threading
from typing import Any, Callable, Iterable, Protocol

from ..column_types import HeldText, Unfit
from ..errors import FhirInputError, FhirMappingError
from ..mapping.model import Field, Mapping
from ..values import MISSING
from ..mapping import fhir_section as d
from .ids import resource_id as _resource_id

RESERVED_KEY = d.RESERVED_KEY
UCUM = "http://unitsofmeasure.org"
ORIGINAL_VALUE = "https://healthsim.dev/fhir/StructureDefinition/original-value"
# Values of mapped columns that their element cannot hold (a non-strict field's
# {"value": 92, "unit": "bpm"}, a gender no code fits): kept as JSON in one
# extension, so they come back on import and no value is lost on the way.
UNFIT = "https://healthsim.dev/fhir/StructureDefinition/unfit-values"
JSON_TEXT = "https://healthsim.dev/fhir/StructureDefinition/json-text"  # see _identifier
_LOOKUP_CACHE_LIMIT = 200_000


class ExportRefs(Protocol):
    def reference(self, entity_type: str, field: str, value: Any) -> str | None: ...


class ImportRefs(Protocol):
    def target(self, reference: str) -> dict | None: ...


# --- paths in resources ---------------------------------------------------------------------

def _put(node: dict, steps: tuple[d.Step, ...], value: Any) -> None:
    """Write ``value`` at ``steps`` below ``node``, making objects and lists on the way
    (a list too short for an index is padded with None: see :func:`_compact`)."""
    last = len(steps) - 1
    for position, step in enumerate(steps):
        if step.index is None:
            if position == last:
                node[step.key] = value
                return
            node = node.setdefault(step.key, {})
            continue
        items = node.setdefault(step.key, [])
        if len(items) < step.index:
            holed = getattr(_PADDING, "holed", None)
            if holed is not None:
                holed.append(items)  # a hole: the list is compacted once the resource is made
        while len(items) <= step.index:
            items.append(None)
        if position == last:
            items[step.index] = value
            return
        if items[step.index] is None:
            items[step.index] = {}
        node = items[step.index]


_PADDING = threading.local()  # the lists a _put left a hole in (per thread: exports may run in threads)


def _putter(steps: tuple[d.Step, ...]) -> Callable[[dict, Any], None]:
    """``_put`` for one path, generated once as straight-line code (no loop
    over steps: most of an export's time is spent writing elements)."""
    lines = ["def put(node, value):"]
    last = len(steps) - 1
    for position, step in enumerate(steps):
        key = repr(step.key)
        if step.index is None:
            lines.append(f"    node[{key}] = value" if position == last else
                         f"    node = node.setdefault({key}, {{}})")
            continue
        i = step.index
        lines += [f"    items = node.setdefault({key}, [])",
                  f"    if len(items) <= {i}:",
                  f"        if len(items) < {i}:",
                  "            _PADDING.holed.append(items)",
                  f"        items.extend([None] * ({i + 1} - len(items)))"]
        if position == last:
            lines.append(f"    items[{i}] = value")
        else:
            lines += [f"    node = items[{i}]",
                      "    if node is None:",
                      f"        node = items[{i}] = {{}}"]
    namespace: dict[str, Any] = {"_PADDING": _PADDING}
    exec(compile("\n".join(lines), f"<fhir put {'.'.join(s.key for s in steps)}>", "exec"), namespace)
    return namespace["put"]


def _parent(node: Any, steps: tuple[d.Step, ...]) -> Any:
    """The container holding the last step's value (a dict, or a list for an
    indexed last step), or MISSING. A path compiled with the declarations runs
    its generated function (see :func:`_compile_parent`)."""
    entry = _PARENTS.get(id(steps))
    if entry is not None and entry[0] is steps:
        return entry[1](node)
    return _parent_generic(node, steps)


_PARENTS: dict[int, tuple[tuple, Callable[[Any], Any]]] = {}  # id(steps) -> (steps, function); steps kept alive


def _compile_parent(steps: tuple[d.Step, ...]) -> None:
    """Generate :func:`_parent` for one path of the declarations (and the
    relative paths of its slices): straight-line code, no loop over steps."""
    if id(steps) in _PARENTS and _PARENTS[id(steps)][0] is steps:
        return
    namespace: dict[str, Any] = {"MISSING": MISSING, "_slice": _slice}
    lines = ["def parent(node):"]
    for position, step in enumerate(steps[:-1]):
        lines += ["    if not isinstance(node, dict):", "        return MISSING",
                  f"    node = node.get({step.key!r}, MISSING)"]
        if step.index is not None:
            lines += ["    if not isinstance(node, list):", "        return MISSING"]
            if step.match:
                namespace[f"M{position}"] = step.match
                for relative, _ in step.match:
                    _compile_parent(relative)
                lines.append(f"    node = _slice(node, M{position}, {step.index})")
            else:
                lines += [f"    if len(node) <= {step.index}:", "        return MISSING",
                          f"    node = node[{step.index}]"]
    last = steps[-1]
    lines += ["    if not isinstance(node, dict):", "        return MISSING"]
    if last.index is None:
        lines.append("    return node")
    else:
        lines += [f"    items = node.get({last.key!r})",
                  f"    return items if isinstance(items, list) and len(items) > {last.index} else MISSING"]
    exec(compile("\n".join(lines), f"<fhir parent {'.'.join(s.key for s in steps)}>", "exec"), namespace)
    _PARENTS[id(steps)] = (steps, namespace["parent"])


def _parent_generic(node: Any, steps: tuple[d.Step, ...]) -> Any:
    for step in steps[:-1]:
        if not isinstance(node, dict):
            return MISSING
        node = node.get(step.key, MISSING)
        if step.index is not None:
            if not isinstance(node, list):
                return MISSING
            node = _slice(node, step.match, step.index) if step.match else (
                node[step.index] if len(node) > step.index else MISSING)
    if not isinstance(node, dict):
        return MISSING
    last = steps[-1]
    if last.index is None:
        return node
    items = node.get(last.key)
    return items if isinstance(items, list) and len(items) > last.index else MISSING


def _room_at(node: dict, steps: tuple[d.Step, ...]) -> bool:
    """Whether every item before the last step's index is there already."""
    holder = _parent(node, steps[:-1] + (d.Step(steps[-1].key, 0),))
    return holder is not MISSING and len(holder) >= steps[-1].index and None not in holder[:steps[-1].index]


def _slice(items: list, match: tuple, index: int) -> Any:
    """The first item whose constants at ``match``'s paths are equal where
    present (one at least: a constant may be written only ``with`` a column);
    else the item at ``index`` if it holds none of them; else MISSING.
    Remembered while one resource is read (see :func:`_reading`): every element
    of a slice looks for the same item."""
    memo = getattr(_SLICES, "memo", None)
    if memo is None:
        return _find_slice(items, match, index)
    key = (id(items), id(match), index)
    found = memo.get(key, _NOT_FOUND)
    if found is _NOT_FOUND:
        found = memo[key] = _find_slice(items, match, index)
    return found


_SLICES = threading.local()
_HASHABLE = (str, int, float, bool)  # JSON leaves an index of constants can hold
_MATCH_PEEKERS: dict[int, tuple[tuple, list]] = {}  # id(match) -> (match, its peekers)
_NOT_FOUND = object()


class _reading:
    """While a resource is read, slices found are remembered (the lists do not
    change until the constants are dropped, after every element was read)."""

    def __enter__(self):
        self.outer = getattr(_SLICES, "memo", None)
        _SLICES.memo = {}

    def __exit__(self, *exc):
        _SLICES.memo = self.outer


def _find_slice(items: list, match: tuple, index: int) -> Any:
    pairs = _MATCH_PEEKERS.get(id(match))
    if pairs is None or pairs[0] is not match:
        pairs = _MATCH_PEEKERS[id(match)] = (match, tuple((_peeker(steps), value) for steps, value in match))
    pairs = pairs[1]
    for item in items:
        if not isinstance(item, dict):
            continue
        equal = False  # one constant equal at least, and none that differs
        for peek, value in pairs:
            found = peek(item)
            if found is MISSING:
                continue
            if found != value:
                break
            equal = True
        else:
            if equal:
                return item
    if index < len(items) and isinstance(items[index], dict) and \
            all(peek(items[index]) is MISSING for peek, _ in pairs):
        return items[index]
    return MISSING


def _peeker(steps: tuple[d.Step, ...]) -> Callable[[Any], Any]:
    """:func:`_peek` for one path, bound once to its generated parent function
    (a reader calls it for every resource: no lookup of the path each time)."""
    entry = _PEEKERS.get(id(steps))
    if entry is not None and entry[0] is steps:
        return entry[1]
    _compile_parent(steps)
    parent = _PARENTS[id(steps)][1]
    last = steps[-1]
    key, index = last.key, last.index
    if index is None:
        def peek(node: Any) -> Any:
            holder = parent(node)
            return MISSING if holder is MISSING else holder.get(key, MISSING)
    else:
        def peek(node: Any) -> Any:
            holder = parent(node)
            if holder is MISSING:
                return MISSING
            value = holder[index]
            return MISSING if value is None else value
    _PEEKERS[id(steps)] = (steps, peek)
    return peek


_PEEKERS: dict[int, tuple[tuple, Callable[[Any], Any]]] = {}  # id(steps) -> (steps, peek); steps kept alive


def _peek(node: Any, steps: tuple[d.Step, ...]) -> Any:
    holder = _parent(node, steps)
    if holder is MISSING:
        return MISSING
    last = steps[-1]
    if last.index is None:
        return holder.get(last.key, MISSING)
    value = holder[last.index]
    return MISSING if value is None else value


def _everywhere(node: Any, keys: tuple[tuple[str, bool], ...]) -> list:
    """Every value at a path, each list step taken at every position: what
    :func:`_peek` finds there (by index or by slice) is always among them."""
    found = [node]
    for key, listed in keys:
        found = [item.get(key, MISSING) for item in found if isinstance(item, dict)]
        if listed:
            found = [item for items in found if isinstance(items, list) for item in items]
    return found


def _drop(node: Any, steps: tuple[d.Step, ...]) -> None:
    holder = _parent(node, steps)
    if holder is MISSING:
        return
    last = steps[-1]
    if last.index is None:
        holder.pop(last.key, None)
    else:
        holder[last.index] = None  # a placeholder: later items keep their positions


def _prune(node: Any) -> Any:
    """``node`` without empty objects, and without lists that hold only placeholders.
    (Leaves are not passed to a call of their own: most of a resource is leaves;
    JSON data holds plain dicts and lists, so their classes are compared, not
    ``isinstance``d: this runs over every node of every imported resource.)"""
    cls = node.__class__
    if cls is dict:
        out = {}
        for key, value in node.items():
            kind = value.__class__
            if kind is dict or kind is list:
                value = _prune(value)
                if value is MISSING:
                    continue
            out[key] = value
        return out if out else MISSING
    if cls is list:
        items = []
        kept = False
        for item in node:
            kind = item.__class__
            if kind is dict or kind is list:
                item = _prune(item)
                if item is MISSING:
                    item = None
            if item is not None:
                kept = True
            items.append(item)
        return items if kept else MISSING
    if isinstance(node, (dict, list)):  # a subclass (not from JSON): as plain data
        return _prune(dict(node) if isinstance(node, dict) else list(node))
    return node


def _compact(node: Any) -> Any:
    """Drop list holes an export left (an item after an absent one moves up)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                node[key] = _compact(value)
        return node
    if isinstance(node, list):
        return [_compact(item) for item in node if item is not None]
    return node


def _merge(made: Any, kept: Any) -> Any:
    """An export's resource with the elements an import kept put back. Kept
    values win at a leaf (the declaration did not read them, so they are the
    original's); a kept list's placeholders take the made items in order."""
    if isinstance(made, dict) and isinstance(kept, dict):
        out = dict(made)
        for key, value in kept.items():
            out[key] = _merge(made[key], value) if key in made else _fill(value)
        return out
    if isinstance(made, list) and isinstance(kept, list):
        if any(item is None for item in kept):
            fresh = iter(item for item in made if item is not None)
            out = [next(fresh, None) if item is None else item for item in kept]
            out.extend(fresh)
            return [item for item in out if item is not None]
        out = [_merge(made[i], kept[i]) if i < len(made) and made[i] is not None else kept[i]
               for i in range(len(kept))]
        return out + [item for item in made[len(kept):] if item is not None]
    return kept


def _fill(kept: Any) -> Any:
    """A kept value with nothing made for it: placeholders whose item is gone drop out."""
    if isinstance(kept, list):
        return [_fill(item) for item in kept if item is not None]
    if isinstance(kept, dict):
        return {key: _fill(value) for key, value in kept.items()}
    return kept


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (leaves are shared: they are immutable).
    Classes compared, not ``isinstance``d (see :func:`_prune`)."""
    cls = value.__class__
    if cls is dict:
        out = {}
        for key, item in value.items():
            kind = item.__class__
            out[key] = _copy(item) if kind is dict or kind is list else item
        return out
    if cls is list:
        return [_copy(item) if item.__class__ is dict or item.__class__ is list else item for item in value]
    if isinstance(value, (dict, list)):  # a subclass (not from JSON): copied as plain data
        return _copy(dict(value) if isinstance(value, dict) else list(value))
    return value


# --- paths in entities ----------------------------------------------------------------------


def _field_reader(mapping, column: str | None):
    """The field a declaration names by ``column`` and the getter of its
    value from an entity; ``(None, None)`` when the declaration names none."""
    if not column:
        return None, None
    field = mapping.field(column)
    return field, _getter(field.path)


def _getter(path: tuple[str, ...]) -> Callable[[dict], Any]:
    if len(path) == 1:
        key = path[0]
        return lambda entity: entity.get(key)
    if len(path) == 2:
        first, second = path

        def get2(entity: dict) -> Any:
            inner = entity.get(first)
            return inner.get(second) if isinstance(inner, dict) else None
        return get2

    def get(entity: dict) -> Any:
        node: Any = entity
        for key in path:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node
    return get


def _set(entity: dict, path: tuple[str, ...], value: Any) -> None:
    node = entity
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


# --- values: column -> FHIR primitive ---------------------------------------------------------

_FHIR_STRING = re.compile(r"^[ \r\n\t\S]+$")  # the R4 schema's patterns
_FHIR_CODE = re.compile(r"^(?=[ \r\n\t\S]+$)[^\s]+(\s[^\s]+)*$")  # a code is a string too
_FHIR_URI = re.compile(r"^\S+$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")
_DATE = re.compile(r"^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$")
_INSTANT = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                      r"(\.[0-9]+)?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$")
_DATE_TIME = _INSTANT
_NAIVE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                    r"(\.[0-9]+)?$")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


def _date_time(value: Any, instant: bool = False) -> str | None:
    """A FHIR dateTime (or instant): seconds and an offset whenever there is a
    time; a time without an offset is UTC, as the store reads it."""
    if not isinstance(value, str):
        return None
    if (_INSTANT if instant else _DATE_TIME).match(value):
        return value if value[8:10] <= "28" or _valid_date(value[:10]) else None  # FHIR's already: no parsing
    if _NAIVE.match(value):
        return value + "Z" if value[8:10] <= "28" or _valid_date(value[:10]) else None  # no offset: UTC
    if _DATE.match(value) and not instant:
        return _as_date(value)
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    offset = moment.utcoffset()
    if offset is not None and (abs(offset) > _dt.timedelta(hours=14) or offset.seconds % 60 or offset.microseconds):
        moment = moment.astimezone(_dt.timezone.utc)  # FHIR takes offsets to -14:00 / +14:00, in minutes
    text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _matching(pattern: re.Pattern) -> Callable[[Any], str | None]:
    return lambda value: value if isinstance(value, str) and pattern.match(value) else None


def _as_string(value: Any) -> str | None:
    # Printable text (the usual) is a FHIR string: no regular expression needed.
    if isinstance(value, str) and value and (value.isprintable() or _FHIR_STRING.match(value)):
        return value
    return None


def _as_integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_decimal(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return None


def _as_date(value: Any) -> str | None:
    """A FHIR date: YYYY, YYYY-MM or YYYY-MM-DD; another ISO spelling of a day
    (``2024-W03-1``, which the store reads as a date) as YYYY-MM-DD."""
    if not isinstance(value, str):
        return None
    if _DATE.match(value) and len(value) < 10:
        return value  # a year, or a year and month
    try:
        return _dt.date.fromisoformat(value).isoformat()  # a real day only: not 2024-02-30
    except ValueError:
        return None


def _as_base64(value: Any) -> str | None:
    return base64.b64encode(value.encode("utf-8")).decode("ascii") if isinstance(value, str) else None


TO_FHIR: dict[str, Callable[[Any], Any]] = {
    "string": _as_string, "code": _matching(_FHIR_CODE), "uri": _matching(_FHIR_URI), "id": _matching(_FHIR_ID),
    "markdown": _as_string,
    "integer": _as_integer, "positiveInt": lambda v: v if (v := _as_integer(v)) is not None and v > 0 else None,
    "unsignedInt": lambda v: v if (v := _as_integer(v)) is not None and v >= 0 else None,
    "decimal": _as_decimal, "boolean": lambda v: v if isinstance(v, bool) else None,
    "date": _as_date, "dateTime": _date_time, "instant": lambda v: _date_time(v, instant=True),
    "base64Binary": _as_base64,
    # Any JSON value (a json column's list) as the text of a FHIR string.
    "json": lambda v: json.dumps(v, separators=(",", ":")),
}


def _from_base64(value: Any) -> Any:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8") if isinstance(value, str) else MISSING
    except (ValueError, UnicodeDecodeError):
        return MISSING


_PRIMITIVE_OF_KEY = {"code": "code", "status": "code", "use": "code", "gender": "code", "intent": "code",
                     "system": "uri", "url": "uri"}


def _primitive_of_path(steps: tuple[d.Step, ...]) -> str | None:
    """The FHIR type an element's name says (``valueCode``, ``status``), or None."""
    key = steps[-1].key
    if key.startswith("value") and len(key) > 5:
        suffix = key[5].lower() + key[6:]
        if suffix in TO_FHIR:
            return suffix
    return _PRIMITIVE_OF_KEY.get(key)


def _valid_date(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE.match(value):
        return False
    if len(value) == 10:
        try:
            _dt.date.fromisoformat(value)  # "SHALL be valid dates": no 1988-02-30
        except ValueError:
            return False
    return True


def _valid_date_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if _INSTANT.match(value):
        try:
            _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value[17:19] == "60"  # a leap second: valid FHIR, not a Python time
        return True
    return _valid_date(value)


# What an input value must be for its element's FHIR type (an import checks what it reads).
VALID: dict[str, Callable[[Any], bool]] = {
    "date": _valid_date, "dateTime": _valid_date_time,
    "instant": lambda v: isinstance(v, str) and bool(_INSTANT.match(v)) and _valid_date_time(v),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "positiveInt": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "unsignedInt": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "decimal": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str), "code": lambda v: isinstance(v, str), "markdown": lambda v: isinstance(v, str),
    "uri": lambda v: isinstance(v, str), "id": lambda v: isinstance(v, str), "base64Binary": lambda v: isinstance(v, str),
}


_FAST_TESTS: dict[str | None, Callable[[Any], bool] | None] = {}  # ColumnType.fast_test -> its function


def _fast_test(source: str | None) -> Callable[[Any], bool] | None:
    """A column type's ``fast_test`` expression (over ``v``; written in
    :mod:`healthsim_state.column_types`, never taken from a mapping) as a function."""
    found = None
    if source is not None:
        namespace: dict[str, Any] = {}
        exec(compile(f"def test(v):\n    return {source}", "<fhir fast test>", "exec"), namespace)
        found = namespace["test"]
    _FAST_TESTS[source] = found
    return found


def _from_json(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else MISSING
    except ValueError:
        return MISSING


def _fits(field: Field, value: Any) -> Any:
    """``value`` as the field should hold it, or MISSING when it does not fit
    (a non-strict field takes anything)."""
    column_type = field.type
    test = _FAST_TESTS.get(column_type.fast_test, _NOT_FOUND)
    if test is _NOT_FOUND:
        test = _fast_test(column_type.fast_test)
    if test is not None and test(value):  # the common case: its own column value, no convert call
        return value
    family = column_type.family
    if family in ("integer", "bigint") and isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        field.type.convert(value)
    except HeldText:
        return value  # text no column holds (a NUL): the store keeps it as given
    except (Unfit, ValueError, TypeError):
        return value if not field.strict else MISSING
    return value


def _identifier(system: str, values: tuple) -> dict:
    """An identifier holding a key (or one lookup value): a string as it is
    when FHIR can hold it; a number, or a string FHIR cannot hold (empty,
    unusual whitespace), as JSON text, the string marked by an extension;
    a composite key as a JSON list."""
    if len(values) == 1:
        value = values[0]
        if isinstance(value, str):
            if _FHIR_STRING.match(value):
                return {"system": system, "value": value}
            return {"system": system, "value": json.dumps(value), "extension": [{"url": JSON_TEXT, "valueBoolean": True}]}
        return {"system": system, "value": json.dumps(value)}
    return {"system": system, "value": json.dumps(list(values), separators=(",", ":"))}


def _identifier_values(identifier: dict, fields: tuple[Field, ...] | list[Field]) -> tuple | None:
    """The values :func:`_identifier` wrote, typed as ``fields``; None when they do not fit."""
    text = identifier.get("value")
    if not isinstance(text, str):
        return None
    extensions = identifier.get("extension")
    encoded = isinstance(extensions, list) and {"url": JSON_TEXT, "valueBoolean": True} in extensions
    try:
        if len(fields) != 1:
            raw = json.loads(text)
            if not isinstance(raw, list) or len(raw) != len(fields):
                return None
        elif encoded:
            raw = [json.loads(text)]
        elif fields[0].type.family != "varchar":
            try:
                raw = [json.loads(text)]
            except ValueError:
                raw = [text]
        else:
            raw = [text]
    except ValueError:
        return None
    out = []
    for field, value in zip(fields, raw):
        value = _fits(field, value)
        if value is MISSING:
            return None
        out.append(value)
    return tuple(out)


def _identifier_rest(identifier: dict) -> dict | None:
    """What is left of an identifier once its system and value were read."""
    rest = {k: v for k, v in identifier.items() if k not in ("system", "value")}
    extensions = rest.get("extension")
    if isinstance(extensions, list):
        kept = [e for e in extensions if e != {"url": JSON_TEXT, "valueBoolean": True}]
        if kept:
            rest["extension"] = kept
        else:
            rest.pop("extension")
    return rest or None


def _absent(code: str) -> dict:
    return {"extension": [{"url": d.DATA_ABSENT_REASON, "valueCode": code}]}


class _Export:
    """What one to_resources call shares with its element writers."""

    __slots__ = ("refs", "scenario_id", "children", "kept", "key", "unfit", "record", "ids")

    def __init__(self, refs, scenario_id, children, kept, key):
        self.refs, self.scenario_id, self.children, self.kept, self.key = refs, scenario_id, children, kept, key
        self.unfit: dict[str, Any] = {}  # dotted path -> a value its element cannot hold (see UNFIT)
        self.record: dict | None = None  # what an import kept of the resource being made
        self.ids: dict[str, str] = {}  # slot -> id, made once a call (hasMember names them again)

    def id_of(self, plan: "_Plan", entity: dict, slot: str) -> str:
        found = self.ids.get(slot)
        if found is None:
            found = self.ids[slot] = plan.slot_id(entity, slot, self.scenario_id, self.key)
        return found


class _Import:
    __slots__ = ("refs", "entity", "children", "drops", "resource", "omitted")

    def __init__(self, refs, entity, resource):
        self.refs, self.entity, self.children, self.drops, self.omitted = refs, entity, [], [], []
        self.resource = resource  # the input, for messages

    def invalid(self, element: d.Element, value: Any, primitive: str) -> FhirInputError:
        return FhirInputError(f"{value!r} is not a valid FHIR {primitive}", resource_type=self.resource.get("resourceType"),
                              resource_id=self.resource.get("id"), element=element.path)

    def drop_constants(self) -> None:
        for holder, last in self.drops:
            if last.index is None:
                holder.pop(last.key, None)
            else:
                holder[last.index] = None
        self.drops.clear()


Writer = Callable[[dict, dict, _Export], None]
Reader = Callable[[dict, dict, _Import], None]


class _Resource:
    """One declared resource of an entity type, compiled."""

    def __init__(self, decl: d.ResourceDeclaration, writers: list[Writer], readers: list[Reader],
                 whens: list[Callable], field_paths: dict[str, tuple[d.Step, ...]]):
        self.decl, self.writers, self.readers, self.whens = decl, writers, readers, whens
        self.slot, self.resource_type = decl.slot, decl.resource
        self.field_paths = field_paths  # column -> the path it is written at (lookups on import)
        self.constants = {e.path: (e.steps, e.value) for e in decl.elements if e.kind == "value"}
        self.paths = [e.path for e in decl.elements]
        self.write_all: Writer = lambda entity, made, context: [w(entity, made, context) for w in writers]


class _Plan:
    """An entity type's compiled declarations."""

    def __init__(self, mapper: "FhirMapper", mapping: Mapping, decls: d.Declarations):
        self.mapping, self.mapper = mapping, mapper
        self.entity_type = mapping.entity
        self.system = d.ENTITY_SYSTEM + mapping.entity
        self.key_fields = mapping.key_fields
        self.key_getters = [_getter(f.path) for f in self.key_fields]
        self.fields = {f.column: f for f in mapping.fields}
        self.resources = [self._compile(decl) for decl in decls.resources]
        self.by_slot = {r.slot: r for r in self.resources}

    def _compile(self, decl: d.ResourceDeclaration) -> _Resource:
        writers, readers = [], []
        field_paths: dict[str, tuple[d.Step, ...]] = {}
        for element in decl.elements:
            writer, reader = self.mapper._element(element, self.mapping, self, decl, decl.elements)
            writers.append(writer)
            readers.append((element.kind == "value", reader))
            if element.kind == "field":
                field_paths[element.field] = element.steps
        whens = [_getter(self.fields[c].path) for c in decl.when]
        compiled = _Resource(decl, writers, _constants_last(readers), whens, field_paths)
        compiled.write_all = _generated_writer(decl, writers, self.mapping)
        return compiled

    def key_of(self, entity: dict) -> tuple:
        return tuple(get(entity) for get in self.key_getters)

    def slot_id(self, entity: dict, slot: str, scenario_id: str, key: tuple | None = None) -> str:
        kept = entity.get(RESERVED_KEY)
        if isinstance(kept, dict):
            record = kept.get(slot)
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                return record["id"]
        return _resource_id(scenario_id, self.entity_type, key if key is not None else self.key_of(entity), slot)


class FhirMapper:
    """Entities to FHIR R4 resources and back, for every type with a ``fhir:`` section."""

    def __init__(self, mappings: dict[str, Mapping]):
        self._mappings = dict(mappings)
        self._declared: dict[str, d.Declarations] = {}
        problems: list = []
        for entity, mapping in self._mappings.items():
            decls = d.declarations_of(mapping, problems)
            if decls is not None:
                self._declared[entity] = decls
        if problems:
            raise FhirMappingError(problems)
        d.check(self._mappings, self._declared)
        self._folded = d.folded(self._declared)
        self._plans: dict[str, _Plan] = {}
        self._by_resource: dict[str, list[tuple[str, d.ResourceDeclaration]]] = {}
        for entity, decls in self._declared.items():
            for decl in decls.resources:
                self._by_resource.setdefault(decl.resource, []).append((entity, decl))
        self._options: dict[str, tuple[list, tuple, frozenset]] = {}  # see _options_of
        self._lookups: dict[str, dict[str, Any]] = {}  # entity type -> target column -> reader
        self._lookup_cache: dict[tuple, dict] = {}

    @classmethod
    def from_registry(cls, registry) -> "FhirMapper":
        """The mapper of a :class:`~healthsim_state.engine.registry.Registry` (``sm.registry``),
        made once per registry."""
        found = getattr(registry, "_fhir_mapper", None)
        if found is None:
            found = cls({entity: codec.mapping for entity, codec in registry.codecs.items()})
            registry._fhir_mapper = found
        return found

    # --- what is declared ------------------------------------------------------------------

    def declared_types(self) -> tuple[str, ...]:
        return tuple(e for e in self._mappings if e in self._declared)

    def folded_types(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return dict(self._folded)

    def lookup_fields(self, entity_type: str) -> tuple[str, ...]:
        """The canonical paths of ``entity_type`` that references of other types name."""
        mapping = self._mappings[entity_type]
        columns: list[str] = list(mapping.primary_key)
        for decls in self._declared.values():
            for decl in decls.resources:
                for element in d._walk(decl.elements):
                    r = element.reference
                    if r is not None and r.target == entity_type:
                        columns += [theirs for _, theirs in r.fields if theirs not in columns]
        return tuple(mapping.field(c).dotted for c in columns)

    def references(self, entity_type: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """The other entity types ``entity_type`` (or its folded children) refers to,
        each with its (own column, target column) pairs, in declared order."""
        found = []
        for decl in self._declared.get(entity_type, d.Declarations(entity_type, "", ())).resources:
            for element in d._walk(decl.elements):
                r = element.reference
                if r is not None and r.target is not None and (r.target, r.fields) not in found:
                    found.append((r.target, r.fields))
        return tuple(found)

    def mapping(self, entity_type: str) -> Mapping:
        return self._mappings[entity_type]

    def mapped_columns(self, entity_type: str) -> tuple[str, ...]:
        """The columns of ``entity_type`` its declarations (or its parent's, for a
        folded type) write and read: its key, and every column an element names."""
        mapping = self._mappings[entity_type]
        columns = list(mapping.primary_key)
        parent = self._folded.get(entity_type)
        if parent is not None:
            sources = [e.children.elements for decl in self._declared[parent[0]].resources
                       for e in d._walk(decl.elements) if e.kind == "children" and e.children.entity_type == entity_type]
        else:
            sources = [decl.elements for decl in self._declared[entity_type].resources]
        for elements in sources:
            for element in elements:
                columns += [c for c in _columns_of(element) if c not in columns]
        return tuple(columns)

    def plan(self, entity_type: str) -> _Plan:
        found = self._plans.get(entity_type)
        if found is None:
            decls = self._declared.get(entity_type)
            if decls is None:
                raise KeyError(f"entity type {entity_type!r} has no fhir: section; declared: "
                               f"{', '.join(self.declared_types())}")
            found = self._plans[entity_type] = _Plan(self, self._mappings[entity_type], decls)
        return found

    def resource_id(self, entity_type: str, entity: dict, scenario_id: str) -> str:
        plan = self.plan(entity_type)
        return plan.slot_id(entity, plan.resources[0].slot, scenario_id)

    def slot_reference(self, entity_type: str, entity: dict, scenario_id: str, slot: str) -> str:
        """``"<Type>/<id>"`` of one of the entity's resources (``slot``): what an
        ExportRefs' optional ``slot_reference(entity_type, field, value, slot)``
        returns for the entity it finds (a claim's ``insurance.coverage`` -> the
        member's Coverage). Without that method the mapper derives the id from
        the scenario and the key, which misses the ids an imported entity keeps."""
        plan = self.plan(entity_type)
        return f"{plan.by_slot[slot].resource_type}/{plan.slot_id(entity, slot, scenario_id)}"

    def primary_resource_type(self, entity_type: str) -> str:
        return self.plan(entity_type).resources[0].resource_type

    # --- out --------------------------------------------------------------------------------

    def to_resources(self, entity_type: str, entity: dict, *, scenario_id: str, refs: ExportRefs,
                     children: dict[str, list[dict]] | None = None) -> list[dict]:
        plan = self.plan(entity_type)
        key = plan.key_of(entity)
        kept = entity.get(RESERVED_KEY)
        kept = kept if isinstance(kept, dict) else None
        context = _Export(refs, scenario_id, children or {}, kept, key)
        out = []
        for resource in plan.resources:
            if not (kept and resource.slot in kept):
                # An entity that came from FHIR gets back what came, and the measured
                # values edited in since; not a panel it never had.
                if kept and not resource.whens:
                    continue
                if resource.whens and all(get(entity) is None for get in resource.whens):
                    continue
            made = self._make(plan, resource, entity, context)
            out.append(made)
        return out

    def _make(self, plan: _Plan, resource: _Resource, entity: dict, context: _Export) -> dict:
        record = context.kept.get(resource.slot) if context.kept else None
        record = record if isinstance(record, dict) else None
        made: dict[str, Any] = {"resourceType": resource.resource_type,
                                "id": context.id_of(plan, entity, resource.slot)}
        if resource.decl.profile and not (record and record.get("profile") is False):
            made["meta"] = {"profile": [resource.decl.profile]}
        if not (record and record.get("keyed_by_id")):
            made["identifier"] = [_identifier(plan.system, context.key)]
        context.unfit = {}
        context.record = record
        holed = _PADDING.holed = []
        omit = record.get("omit") if record else None
        if omit:
            for write, path in zip(resource.writers, resource.paths):
                if path not in omit:
                    write(entity, made, context)
        else:
            resource.write_all(entity, made, context)
        if context.unfit:
            _keep_unfit(made, context.unfit)
        if record and isinstance(record.get("extra"), dict):
            made = _merge(made, record["extra"])  # positions still as declared: kept items go back to theirs
            if holed:
                made = _compact(made)
        else:
            for items in holed:
                items[:] = [item for item in items if item is not None]
        return made

    # --- compiling elements -------------------------------------------------------------------

    def _element(self, element: d.Element, mapping: Mapping, plan: _Plan,
                 decl: d.ResourceDeclaration, siblings: tuple[d.Element, ...] = ()) -> tuple[Writer, Reader]:
        _compile_parent(element.steps)
        make = getattr(self, f"_{element.kind}_element")
        return make(element, mapping, plan, decl, siblings)  # siblings: for with:/without: (see _condition)

    def _field_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        field = mapping.field(element.field)
        get, steps, path, dotted = _getter(field.path), element.steps, field.path, field.dotted
        loose = not field.strict  # a non-strict field may hold what its type does not: keep that as given
        dense = bool(steps[-1].index)  # a later item of a list of primitives (line[1], given[1])
        strict_twin = dataclasses.replace(field, strict=True)
        primitive = element.primitive or _primitive_of_path(element.steps) or d.PRIMITIVE_OF_TYPE[field.type.family]
        valid = VALID.get(primitive)
        convert = TO_FHIR.get(primitive, lambda v: v)
        if primitive == "dateTime" and field.type.family == "date":  # a day stays a day: it must read back as one
            convert = lambda v: _as_date(v) or _date_time(v)  # noqa: E731
        forward = dict(element.values)
        backward = _backward(element.values)
        last = steps[-1]
        original_steps = steps[:-1] + (d.Step("_" + last.key, None),) if last.index is None else None
        if original_steps is not None:
            _compile_parent(original_steps)

        wanted = _condition(element, mapping, siblings)

        def write(entity: dict, node: dict, context: _Export) -> None:
            value = get(entity)
            if value is None or (wanted is not None and not wanted(entity)):
                return
            if forward:
                mapped = forward.get(value) if isinstance(value, str) else None
                if mapped is None:
                    if not isinstance(value, str) or value not in backward:
                        context.unfit[dotted] = value
                        return
                    mapped = value
                if backward[mapped] != value and original_steps is not None:
                    _put(node, original_steps, {"extension": [{"url": ORIGINAL_VALUE, "valueString": value}]})
                value = mapped
            else:
                converted = convert(value)
                if converted is None:
                    context.unfit[dotted] = value
                    return
                if loose and converted != value and _fits(strict_twin, value) is MISSING:
                    context.unfit[dotted] = value  # written as FHIR can, kept as given
                value = converted
            if dense and not _room_at(node, steps):
                context.unfit[dotted] = get(entity)  # given[1] without given[0] would read back as given[0]
                return
            put(node, value)

        _compile_parent(steps)
        parent = _PARENTS[id(steps)][1]
        key, index = last.key, last.index

        def read(resource: dict, entity: dict, context: _Import) -> None:
            holder = parent(resource)  # what peek(resource) looks in: found once for the drop too
            if holder is MISSING:
                return
            if index is None:
                value = holder.get(key, MISSING)
            else:
                value = holder[index]
                if value is None:
                    return
            if value is MISSING:
                return
            if valid is not None and not valid(value):
                raise context.invalid(element, value, primitive)
            if backward:
                original = _original_value(resource, original_steps)
                if original is not MISSING and forward.get(original) == value:
                    _drop(resource, original_steps)
                    value = original
                elif value in backward:
                    value = backward[value]
            if primitive == "base64Binary":
                value = _from_base64(value)
            elif primitive == "json":
                value = _from_json(value)
            value = _fits(field, value) if value is not MISSING else MISSING
            if value is MISSING:
                return  # left in the resource: kept as it came
            if index is None:  # _drop(resource, steps), its holder known
                holder.pop(key, None)
            else:
                holder[index] = None  # a placeholder: later items keep their positions
            _set(entity, path, value)
        return write, read

    def _value_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        steps, constant = element.steps, element.value
        wanted = _condition(element, mapping, siblings)

        def write(entity: dict, node: dict, context: _Export) -> None:
            if wanted is None or wanted(entity):
                put(node, constant)

        _compile_parent(steps)
        parent = _PARENTS[id(steps)][1]
        last = steps[-1]
        key, index = last.key, last.index

        def read(resource: dict, entity: dict, context: _Import) -> None:
            holder = parent(resource)  # what peek(resource) looks in: found once for the drop too
            if holder is MISSING:
                found = MISSING
            elif index is None:
                found = holder.get(key, MISSING)
            else:
                found = holder[index]
                found = MISSING if found is None else found
            if found == constant:
                # Dropped once every constant was read: constants find their slice.
                context.drops.append((holder, last))
            elif found is MISSING:
                context.omitted.append(element.path)  # it came without it: it goes out without it
        return write, read

    def _coding_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        peek = _peeker(element.steps)
        c = element.coding
        steps, absent = element.steps, element.absent
        code_field, get_code = _field_reader(mapping, c.code)
        display_field, get_display = _field_reader(mapping, c.display)
        system_field, get_system = _field_reader(mapping, c.system_field)
        systems = dict(c.systems)
        system_names = {url: name for name, url in reversed(c.systems)}
        forward = dict(c.values)
        backward = _backward(c.values)
        # A path ending in coding[i] names one Coding of a concept (several systems
        # side by side); any other path names the CodeableConcept.
        def keep_companions(entity: dict, context: _Export) -> None:
            """No coding is written: its display and system columns go to the unfit extension."""
            for companion in (display_field, system_field):
                if companion is not None:
                    value = _getter(companion.path)(entity)
                    if value is not None:
                        context.unfit[companion.dotted] = value

        # ``as: Coding``: the element is a Coding itself (Encounter.class).
        bare = element.primitive == "Coding"
        single = bare or (steps[-1].key == "coding" and steps[-1].index is not None)
        list_steps = steps[:-1] + (d.Step("coding", None),) if single else steps + (d.Step("coding", None),)
        peek_list = _peeker(list_steps)

        def write(entity: dict, node: dict, context: _Export) -> None:
            code = get_code(entity)
            if not isinstance(code, str) or not code:
                if code is not None:
                    context.unfit[code_field.dotted] = code
                keep_companions(entity, context)
                if absent and context.record is None:  # an imported entity lacked it as it came
                    put(node, _absent(absent))
                return
            coding: dict[str, Any] = {}
            system = c.system if get_system is None else systems.get(get_system(entity))
            if system:
                coding["system"] = system
            else:  # a code of a system the map does not know: written without one, kept as given
                context.unfit[code_field.dotted] = get_code(entity)
                keep_companions(entity, context)
            code = forward.get(code, code)
            if not _FHIR_CODE.match(code):
                context.unfit[code_field.dotted] = get_code(entity)
                keep_companions(entity, context)
                if absent and context.record is None:  # an imported entity lacked it as it came
                    put(node, _absent(absent))
                return
            coding["code"] = code
            if get_display is not None:
                display = get_display(entity)
                if isinstance(display, str) and _FHIR_STRING.match(display):
                    coding["display"] = display
                elif display is not None:
                    context.unfit[display_field.dotted] = display
            put(node, coding if single else {"coding": [coding]})

        def read(resource: dict, entity: dict, context: _Import) -> None:
            if absent and (bare or not single) and peek(resource) == _absent(absent):
                _drop(resource, steps)
                return
            if bare:
                found = peek(resource)
                codings = [found] if isinstance(found, dict) else None
            else:
                codings = peek_list(resource)
            if not isinstance(codings, list):
                return
            for index, coding in enumerate(codings):
                if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                    continue
                system = coding.get("system")
                if get_system is None and system != c.system:
                    continue
                if get_system is not None and system not in system_names:
                    continue
                code = backward.get(coding["code"], coding["code"])
                if _fits(code_field, code) is MISSING:
                    continue
                _set(entity, code_field.path, code)
                taken = ["system", "code"]
                if system_field is not None:
                    _set(entity, system_field.path, system_names[system])
                if display_field is not None and isinstance(coding.get("display"), str):
                    _set(entity, display_field.path, coding["display"])
                    taken.append("display")
                rest = {k: v for k, v in coding.items() if k not in taken}
                if bare:
                    if rest:
                        _put(resource, steps, rest)
                    else:
                        _drop(resource, steps)
                else:
                    codings[index] = rest or None
                return
        return write, read

    def _quantity_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        peek = _peeker(element.steps)
        q = element.quantity
        steps, absent = element.steps, element.absent
        value_field, get_value = _field_reader(mapping, q.value)
        unit_field, get_unit = _field_reader(mapping, q.unit_field)
        convert = _as_decimal  # Quantity.value is a decimal whatever the column (as: integer only reads back)

        def write(entity: dict, node: dict, context: _Export) -> None:
            given = get_value(entity)
            value = given
            if isinstance(value, dict):  # {"value": 92, "unit": "bpm"}, as PatientSim writes some vitals
                value = value.get("value")
            value = convert(value) if value is not None else None
            if given is not None and (value is None or value.__class__ is not given.__class__ or value != given):
                context.unfit[value_field.dotted] = given
            unit = q.unit if get_unit is None else get_unit(entity)
            if value is None:
                if get_unit is not None and unit is not None:
                    context.unfit[unit_field.dotted] = unit
                if absent and context.record is None:  # an imported entity lacked it as it came
                    put(node, _absent(absent))
                return
            quantity: dict[str, Any] = {"value": value}
            if isinstance(unit, str) and _FHIR_CODE.match(unit):
                quantity.update(unit=unit, system=UCUM, code=unit)
            elif get_unit is not None and unit is not None:
                context.unfit[unit_field.dotted] = unit
            put(node, quantity)

        def read(resource: dict, entity: dict, context: _Import) -> None:
            quantity = peek(resource)
            if not isinstance(quantity, dict):
                return
            if absent and quantity == _absent(absent):
                _drop(resource, steps)
                return
            value = quantity.get("value")
            if value is None or _fits(value_field, value) is MISSING:
                return
            unit = quantity.get("unit", quantity.get("code"))
            if get_unit is None and q.unit is not None and unit is not None and unit != q.unit:
                return  # another unit than the column's: kept as it came, not misread
            value = _fits(value_field, value)
            _set(entity, value_field.path, value)
            quantity.pop("value")
            if unit_field is not None and isinstance(unit, str):
                _set(entity, unit_field.path, unit)
            if unit is not None and quantity.get("code", unit) == unit and quantity.get("system", UCUM) == UCUM \
                    and quantity.get("unit", unit) == unit:
                for k in ("unit", "system", "code"):
                    quantity.pop(k, None)
        return write, read

    def _reference_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        peek = _peeker(element.steps)
        r = element.reference
        steps, absent = element.steps, element.absent
        if r.target is None:
            return self._slot_reference(element, plan)
        target_mapping = self._mappings[r.target]
        target_key = target_mapping.primary_key
        pairs = [(mapping.field(own), target_mapping.field(theirs)) for own, theirs in r.fields]
        getters = [(_getter(own.path), theirs) for own, theirs in pairs]
        own_paths = {theirs.column: own.path for own, theirs in pairs}
        systems = {self._lookup_system(r.target, theirs.column, target_key): own for own, theirs in pairs}
        target_slot = r.slot
        mapper = self

        def write(entity: dict, node: dict, context: _Export) -> None:
            first = None
            found = None
            for get, theirs in getters:
                value = get(entity)
                if value is None:
                    continue
                if isinstance(value, str) and not _FHIR_STRING.match(value):
                    # No resource holds it (FHIR strings cannot), so no target gives it back.
                    context.unfit[".".join(own_paths[theirs.column])] = value
                if first is None:
                    first = (theirs, value)
                if not found:
                    found = context.refs.reference(r.target, theirs.dotted, value)
                    if found and target_slot is not None:
                        found = mapper._slot_reference_of(context, r.target, theirs, value, found, target_slot)
            if first is None:
                if absent and context.record is None:  # an imported entity lacked it as it came
                    put(node, _absent(absent))
                return
            if found:
                put(node, {"reference": found})
                return
            # Not in the export: a logical reference, which still says what it meant.
            theirs, value = first
            put(node, {"identifier": _identifier(mapper._lookup_system(r.target, theirs.column, target_key), (value,))})

        def read(resource: dict, entity: dict, context: _Import) -> None:
            ref = peek(resource)
            if not isinstance(ref, dict):
                return
            if absent and ref == _absent(absent):
                _drop(resource, steps)
                return
            text = ref.get("reference")
            target = context.refs.target(text) if isinstance(text, str) else None
            taken = False
            if target is not None:
                values = mapper._lookup(r.target, target)
                if values is not None:
                    for own, theirs in pairs:
                        value = values.get(theirs.column)
                        if value is not None and _fits(own, value) is not MISSING:
                            _set(entity, own.path, value)
                            taken = True
                    if taken:
                        ref.pop("reference")
            identifier = ref.get("identifier")
            if isinstance(identifier, dict) and identifier.get("system") in systems:
                own = systems[identifier["system"]]
                values = _identifier_values(identifier, (own,))
                if values is not None:
                    if _getter(own.path)(entity) is None:
                        _set(entity, own.path, values[0])
                    ref.pop("identifier")
        return write, read

    def _slot_reference(self, element, plan):
        put = _putter(element.steps)
        peek = _peeker(element.steps)
        slot = element.reference.slot

        def write(entity: dict, node: dict, context: _Export) -> None:
            target = plan.by_slot[slot]
            if target.whens and all(get(entity) is None for get in target.whens):
                return  # that resource is not made for this entity
            put(node, {"reference": f"{target.resource_type}/{context.id_of(plan, entity, slot)}"})

        def read(resource: dict, entity: dict, context: _Import) -> None:
            ref = peek(resource)
            wanted = plan.by_slot[slot].resource_type + "/"
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and ref["reference"].startswith(wanted):
                ref.pop("reference")
        return write, read

    def _children_element(self, element, mapping, plan, decl, siblings=()):
        put = _putter(element.steps)
        peek = _peeker(element.steps)
        c = element.children
        child_mapping = self._mappings[c.entity_type]
        child_plan = _ChildPlan(self, child_mapping, c, plan, decl)
        child_type, slot = c.entity_type, decl.slot

        def write(entity: dict, node: dict, context: _Export) -> None:
            kids = context.children.get(child_type)
            if not kids:
                return
            items = [child_plan.item(kid, context, slot) for kid in kids]
            put(node, items)

        def read(resource: dict, entity: dict, context: _Import) -> None:
            items = peek(resource)
            if not isinstance(items, list):
                return
            key = plan.key_of(entity)
            if any(v is None for v in key):
                return
            for index, item in enumerate(items):
                if isinstance(item, dict):
                    context.children.append((child_type, child_plan.entity(item, key, context, slot)))
                    items[index] = None
        return write, read

    # --- references: systems, slots, lookups ------------------------------------------------------

    @staticmethod
    def _lookup_system(entity_type: str, column: str, key: tuple[str, ...]) -> str:
        """The identifier system a reference writes a lookup value under: the
        entity's own for its (single) key column, else ``urn:healthsim:<type>:<column>``."""
        if key == (column,):
            return d.ENTITY_SYSTEM + entity_type
        return f"{d.ENTITY_SYSTEM}{entity_type}:{column}"

    def _slot_reference_of(self, context: _Export, entity_type: str, theirs: Field, value: Any, primary: str,
                           slot: str) -> str | None:
        """A reference to another resource (``slot``) of the entity ``primary`` points at."""
        exact = getattr(context.refs, "slot_reference", None)
        if exact is not None:
            return exact(entity_type, theirs.dotted, value, slot)
        target = self.plan(entity_type)
        if target.by_slot[slot] is target.resources[0]:
            return primary
        if tuple(target.mapping.primary_key) != (theirs.column,):
            return None
        return f"{target.by_slot[slot].resource_type}/{_resource_id(context.scenario_id, entity_type, (value,), slot)}"

    def _lookup(self, entity_type: str, resource: dict) -> dict | None:
        """The values of ``entity_type``'s lookup columns that a resource (a
        reference's target) holds, cached by resource type and id."""
        cache_key = (entity_type, resource.get("resourceType"), resource.get("id"))
        found = self._lookup_cache.get(cache_key)
        if found is not None:
            return found
        picked = self._declaration_for(resource, (entity_type,))
        if picked is None:
            return None
        plan, compiled = picked
        values: dict[str, Any] = {}
        key = self._key_from(plan, resource)
        if key is not None:
            values.update(zip(plan.mapping.primary_key, key))
        for column, steps in compiled.field_paths.items():
            value = _peek(resource, steps)
            if value is not MISSING and column not in values:
                values[column] = value
        if len(self._lookup_cache) >= _LOOKUP_CACHE_LIMIT:
            self._lookup_cache.clear()
        self._lookup_cache[cache_key] = values
        return values

    # --- in ---------------------------------------------------------------------------------

    def entity_types_of(self, resource: dict) -> tuple[str, ...] | None:
        """The entity type(s) a resource becomes (None: no declaration reads it)."""
        picked = self._candidates(resource)
        return tuple(dict.fromkeys(plan.entity_type for plan, _ in picked)) or None

    def _candidates(self, resource: dict) -> list[tuple[_Plan, _Resource]]:
        resource_type = resource.get("resourceType")
        compiled_options = self._options.get(resource_type)
        if compiled_options is None:
            compiled_options = self._options_of(resource_type)
        options, index, always = compiled_options
        if not options:
            return []
        # A quick no first: a declaration whose last match constant is nowhere at
        # its path (ignoring list positions) is passed over (the other vital signs'
        # LOINC codes) without looking for its slice.
        chosen = always
        if index:
            chosen = set(always)
            for keys, by_constant in index:
                for value in _everywhere(resource, keys):
                    if isinstance(value, _HASHABLE):
                        chosen.update(by_constant.get(value, ()))
        systems = _identifier_systems(resource)
        found, own = [], []
        for position, (plan, compiled, matches) in enumerate(options):
            if position not in chosen:
                continue
            carries = plan.system in systems
            if compiled.decl.own and not carries:
                continue
            for steps, constant in matches:
                if _peek(resource, steps) != constant:
                    break
            else:
                (own if carries else found).append((plan, compiled))
        return own or found

    def _options_of(self, resource_type: Any) -> tuple[list, tuple, frozenset]:
        """The compiled declarations of a resource type, each with its match
        constants (steps, value); an index of their last match constants (the
        keys of each path for :func:`_everywhere`, constant -> positions); the
        positions of the declarations not in the index. Made once a type."""
        options = []
        by_path: dict[str, tuple[tuple, dict]] = {}
        always = set()
        for entity, decl in self._by_resource.get(resource_type, ()) if isinstance(resource_type, str) else ():
            plan = self.plan(entity)
            compiled = plan.by_slot[decl.slot]
            position = len(options)
            options.append((plan, compiled, tuple(compiled.constants[path] for path in decl.match)))
            last = decl.match[-1] if decl.match else None
            constant = compiled.constants[last][1] if last is not None else None
            if last is None or not isinstance(constant, _HASHABLE):
                always.add(position)
                continue
            keys = tuple((step.key, step.index is not None) for step in compiled.constants[last][0])
            by_path.setdefault(last, (keys, {}))[1].setdefault(constant, set()).add(position)
        found = (options, tuple(by_path.values()), frozenset(always))
        if isinstance(resource_type, str):
            self._options[resource_type] = found
        return found

    def _declaration_for(self, resource: dict, types: Iterable[str]) -> tuple[_Plan, _Resource] | None:
        for plan, compiled in self._candidates(resource):
            if plan.entity_type in types:
                return plan, compiled
        return None

    def _key_from(self, plan: _Plan, resource: dict) -> tuple | None:
        identifiers = resource.get("identifier")
        if isinstance(identifiers, list):
            for identifier in identifiers:
                if isinstance(identifier, dict) and identifier.get("system") == plan.system:
                    return _identifier_values(identifier, plan.key_fields)
        if len(plan.key_fields) == 1 and plan.key_fields[0].type.family == "varchar" \
                and isinstance(resource.get("id"), str):
            return (resource["id"],)
        return None

    def from_resource(self, resource: dict, *, refs: ImportRefs) -> list[tuple[str, dict]]:
        """One resource as entities (its type's, and folded children's), each in
        canonical shape with what the declaration does not read under ``_fhir``."""
        with _reading():
            return self._from_resource(resource, refs)

    def map_resource(self, resource: dict, *, refs: ImportRefs) -> list[tuple[str, dict]] | None:
        """:meth:`from_resource`, or None when no declaration reads the resource:
        the importer's one call that both chooses the declaration and maps (the
        choice made once a resource, not once for :meth:`entity_types_of` and
        again here)."""
        candidates = self._candidates(resource)
        if not candidates:
            return None
        with _reading():
            return self._from_resource(resource, refs, candidates)

    def _from_resource(self, resource: dict, refs: ImportRefs,
                       candidates: list[tuple[_Plan, _Resource]] | None = None) -> list[tuple[str, dict]]:
        resource_type, rid = resource.get("resourceType"), resource.get("id")
        if candidates is None:
            candidates = self._candidates(resource)
        if not candidates:
            raise FhirInputError("no mapping declares this resource (see entity_types_of)",
                                 resource_type=resource_type, resource_id=rid)
        plan, compiled = candidates[0]
        copy = _copy(resource)
        entity: dict[str, Any] = {}
        record: dict[str, Any] = {}
        if isinstance(rid, str):
            record["id"] = rid
        keyed_by_id = self._take_key(plan, copy, entity)
        if keyed_by_id is None:
            raise FhirInputError(f"no key: the resource has no identifier of system {plan.system} and its id "
                                 f"cannot be {plan.entity_type}'s key ({', '.join(plan.mapping.primary_key)})",
                                 resource_type=resource_type, resource_id=rid, element="identifier")
        if keyed_by_id:
            record["keyed_by_id"] = True
        context = _Import(refs, entity, resource)
        profile = compiled.decl.profile
        meta = copy.get("meta")
        if profile and isinstance(meta, dict) and isinstance(meta.get("profile"), list) and profile in meta["profile"]:
            meta["profile"] = [p if p != profile else None for p in meta["profile"]]
        elif profile:
            record["profile"] = False  # it came without our profile: it goes out without it
        _SLICES.memo = {}  # the copy's lists: new objects (ids of the original's may be reused)
        for read in compiled.readers:
            read(copy, entity, context)
        _SLICES.memo = None  # dropping constants changes the lists; children read their items anew
        context.drop_constants()
        if context.omitted:
            record["omit"] = sorted(set(context.omitted))
        _restore_unfit(copy, entity)
        copy.pop("resourceType", None)
        copy.pop("id", None)
        extra = _prune(copy)
        if extra is not MISSING:
            record["extra"] = extra
        entity[RESERVED_KEY] = {compiled.slot: record}
        return [(plan.entity_type, entity), *context.children]

    def _take_key(self, plan: _Plan, resource: dict, entity: dict) -> bool | None:
        """Set the entity's key from its identifier (False) or the resource id
        (True); None when neither gives one."""
        identifiers = resource.get("identifier")
        if isinstance(identifiers, list):
            for index, identifier in enumerate(identifiers):
                if isinstance(identifier, dict) and identifier.get("system") == plan.system:
                    key = _identifier_values(identifier, plan.key_fields)
                    if key is not None:
                        for field, value in zip(plan.key_fields, key):
                            _set(entity, field.path, value)
                        identifiers[index] = _identifier_rest(identifier)
                        return False
        key = self._key_from(plan, {"id": resource.get("id")})
        if key is None:
            return None
        _set(entity, plan.key_fields[0].path, key[0])
        return True


class _ChildPlan:
    """The elements of a folded child type (claim_line in Claim.item), compiled."""

    def __init__(self, mapper: FhirMapper, mapping: Mapping, children: d.Children, parent: _Plan,
                 decl: d.ResourceDeclaration):
        self.mapping = mapping
        self.link = [mapping.field(c) for c in children.link]
        pairs = [mapper._element(e, mapping, parent, decl, children.elements) for e in children.elements]
        self.writers = [w for w, _ in pairs]
        self.readers = _constants_last([(e.kind == "value", r) for e, (_, r) in zip(children.elements, pairs)])

    def item(self, kid: dict, context: _Export, slot: str) -> dict:
        item: dict[str, Any] = {}
        parents, context.unfit = context.unfit, {}
        for write in self.writers:
            write(kid, item, context)
        if context.unfit:
            _keep_unfit(item, context.unfit)
        context.unfit = parents
        kept = kid.get(RESERVED_KEY)
        record = kept.get(slot) if isinstance(kept, dict) else None
        if isinstance(record, dict) and isinstance(record.get("extra"), dict):
            item = _merge(item, record["extra"])
        return item

    def entity(self, item: dict, parent_key: tuple, context: _Import, slot: str) -> dict:
        kid: dict[str, Any] = {}
        for field, value in zip(self.link, parent_key):
            _set(kid, field.path, value)
        parents, context.drops = context.drops, []  # the parent's constants are dropped after all its elements
        for read in self.readers:
            read(item, kid, context)
        context.drop_constants()
        context.drops = parents
        _restore_unfit(item, kid)
        extra = _prune(item)
        if extra is not MISSING:
            kid[RESERVED_KEY] = {slot: {"extra": extra}}
        return kid


def _keep_unfit(node: dict, unfit: dict[str, Any]) -> None:
    text = json.dumps(unfit, sort_keys=True, separators=(",", ":"))  # ASCII: any string is a FHIR string
    node.setdefault("extension", []).append({"url": UNFIT, "valueString": text})


def _restore_unfit(node: dict, entity: dict) -> None:
    """Put back the values :func:`_keep_unfit` kept (they win over what the
    elements read: the element held a stand-in, the extension the original)."""
    extensions = node.get("extension")
    if not isinstance(extensions, list):
        return
    for index, extension in enumerate(extensions):
        if isinstance(extension, dict) and extension.get("url") == UNFIT and isinstance(extension.get("valueString"), str):
            try:
                values = json.loads(extension["valueString"])
            except ValueError:
                return
            if not isinstance(values, dict):
                return
            for dotted, value in values.items():
                _set(entity, tuple(dotted.split(".")), value)
            extensions[index] = None
            return


def _columns_of(element: d.Element) -> list[str]:
    if element.kind == "field":
        return [element.field]
    if element.kind == "coding":
        c = element.coding
        return [x for x in (c.code, c.display, c.system_field) if x]
    if element.kind == "quantity":
        return [x for x in (element.quantity.value, element.quantity.unit_field) if x]
    if element.kind == "reference":
        return [own for own, _ in element.reference.fields]
    return []


def _backward(values: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """A value map read backwards: a code to the first value that maps to it,
    or to itself when the map keeps it (``female: female``)."""
    backward: dict[str, str] = {}
    for source, target in values:
        backward.setdefault(target, source)
    for source, target in values:
        if source == target:
            backward[target] = target
    return backward


def _condition(element: d.Element, mapping: Mapping, siblings: tuple[d.Element, ...]) -> Callable[[dict], bool] | None:
    """The test of an element's ``with``/``without`` column, or None. ``with: c``
    holds when the element that writes ``c`` beside it writes a value (so a
    slice's constants never stand without its value)."""
    if element.with_field:
        value_of = _fhir_value_of(element.with_field, mapping, siblings)
        return lambda entity: value_of(entity) is not None
    if element.without_field:
        absent = _getter(mapping.field(element.without_field).path)
        return lambda entity: absent(entity) is None
    return None


def _fhir_value_of(column: str, mapping: Mapping, siblings: tuple[d.Element, ...]) -> Callable[[dict], Any]:
    """What the sibling element naming ``column`` writes for an entity (None: nothing)."""
    field = mapping.field(column)
    get = _getter(field.path)
    for element in siblings:
        if element.kind == "field" and element.field == column and not element.with_field:
            primitive = element.primitive or _primitive_of_path(element.steps) or d.PRIMITIVE_OF_TYPE[field.type.family]
            convert = TO_FHIR.get(primitive, lambda v: v)
            forward = dict(element.values)
            if forward:
                backward = _backward(element.values)
                return lambda entity: (v if isinstance(v := get(entity), str) and (v in forward or v in backward)
                                       else None)
            return lambda entity: convert(v) if (v := get(entity)) is not None else None
        if element.kind == "coding" and element.coding.code == column:
            return lambda entity: v if isinstance(v := get(entity), str) and _FHIR_CODE.match(v) else None
        if element.kind == "quantity" and element.quantity.value == column:
            return lambda entity: v if isinstance(v := get(entity), (int, float)) and not isinstance(v, bool) else None
    return lambda entity: (v := get(entity)) is not None and not isinstance(v, (dict, list)) or None


def _generated_writer(decl: d.ResourceDeclaration, writers: list[Writer], mapping: Mapping) -> Writer:
    """Every element's writer of one resource as one generated function: the
    plain elements (a strict field without a value map or condition, a constant
    without a condition) written inline, the others through their closures. The
    same output as calling the closures in order, without a call per element."""
    lines = ["def write_all(entity, made, context):", "    unfit = context.unfit"]
    namespace: dict[str, Any] = {"MISSING": MISSING}
    for i, (element, writer) in enumerate(zip(decl.elements, writers)):
        plain_field = (element.kind == "field" and not element.values and element.with_field is None
                       and element.without_field is None and mapping.field(element.field).strict
                       and not element.steps[-1].index)
        plain_constant = element.kind == "value" and element.with_field is None and element.without_field is None
        if plain_constant:
            namespace[f"K{i}"] = element.value
            lines.append(_inline_put(element.steps, f"K{i}", i, namespace, "    "))
        elif element.kind == "value" and element.without_field is None:
            # A slice's constants share one test of their column (made once a call).
            test = f"with_{element.with_field}"
            if test not in namespace:
                namespace[test] = _fhir_value_of(element.with_field, mapping, decl.elements)
                lines.append(f"    {test}_ = {test}(entity) is not None")
            namespace[f"K{i}"] = element.value
            lines += [f"    if {test}_:", _inline_put(element.steps, f"K{i}", i, namespace, "        ")]
        elif plain_field:
            field = mapping.field(element.field)
            primitive = element.primitive or _primitive_of_path(element.steps) or d.PRIMITIVE_OF_TYPE[field.type.family]
            convert = TO_FHIR.get(primitive, lambda v: v)
            if primitive == "dateTime" and field.type.family == "date":
                convert = lambda v: _as_date(v) or _date_time(v)  # noqa: E731
            namespace[f"C{i}"] = convert
            lines += _inline_get(field.path, "v", "    ")
            lines += ["    if v is not None:",
                      f"        c = C{i}(v)",
                      "        if c is None:",
                      f"            unfit[{field.dotted!r}] = v",
                      "        else:",
                      _inline_put(element.steps, "c", i, namespace, "            ")]
        else:
            namespace[f"W{i}"] = writer
            lines.append(f"    W{i}(entity, made, context)")
    source = "\n".join(lines)
    exec(compile(source, f"<fhir write {mapping.entity} {decl.slot}>", "exec"), namespace)
    return namespace["write_all"]


def _inline_get(path: tuple[str, ...], name: str, indent: str) -> list[str]:
    lines = [f"{indent}{name} = entity.get({path[0]!r})"]
    for key in path[1:]:
        lines.append(f"{indent}{name} = {name}.get({key!r}) if isinstance({name}, dict) else None")
    return lines


def _inline_put(steps: tuple[d.Step, ...], value: str, i: int, namespace: dict, indent: str) -> str:
    if len(steps) == 1 and steps[0].index is None:
        return f"{indent}made[{steps[0].key!r}] = {value}"
    namespace[f"P{i}"] = _putter(steps)
    return f"{indent}P{i}(made, {value})"


def _constants_last(readers: list[tuple[bool, Reader]]) -> list[Reader]:
    """Readers with the constants' last: a slice is found by its constants, so
    they are taken out only once every field of the slice was read."""
    return [reader for _, reader in sorted(readers, key=lambda pair: pair[0])]


def _identifier_systems(resource: dict) -> set:
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return set()
    return {i.get("system") for i in identifiers if isinstance(i, dict)}


def _original_value(resource: dict, steps) -> Any:
    if steps is None:
        return MISSING
    holder = _peek(resource, steps)
    if not isinstance(holder, dict):
        return MISSING
    for extension in holder.get("extension", ()):
        if isinstance(extension, dict) and extension.get("url") == ORIGINAL_VALUE:
            return extension.get("valueString", MISSING)
    return MISSING
