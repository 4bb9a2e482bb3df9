"""FHIR primitives: a column's value as the R4 type its element holds, the
checks an import runs on what it reads, and the identifiers that carry keys.

The patterns are the R4 JSON Schema's; :data:`TO_FHIR` converts out,
:data:`VALID` checks in, :func:`_fits` says whether a value read fits its column.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
from typing import Any, Callable

from ..column_types import HeldText, Unfit
from ..mapping import fhir_section as d
from ..mapping.model import Field, Mapping
from ..values import MISSING
from .paths import _NOT_FOUND, _getter

UCUM = "http://unitsofmeasure.org"
ORIGINAL_VALUE = "https://healthsim.dev/fhir/StructureDefinition/original-value"
# Values of mapped columns that their element cannot hold (a non-strict field's
# {"value": 92, "unit": "bpm"}, a gender no code fits): kept as JSON in one
# extension, so they come back on import and no value is lost on the way.
UNFIT = "https://healthsim.dev/fhir/StructureDefinition/unfit-values"
JSON_TEXT = "https://healthsim.dev/fhir/StructureDefinition/json-text"  # see _identifier
# The lookup columns an entity named a reference's target by (patient_id,
# patient_mrn, or both), when they are not what an import fills without a sign:
# every column the target holds, in a resource with our entity identifier (ours:
# the usual entity names its patient both ways); else (a foreign resource, as
# Synthea's) the first the declaration lists.
REFERENCE_FIELDS = "https://healthsim.dev/fhir/StructureDefinition/reference-fields"

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


# json.dumps(v, separators=(",", ":")) made once: dumps makes an encoder a call when given separators.
_JSON_TEXT = json.JSONEncoder(separators=(",", ":")).encode

TO_FHIR: dict[str, Callable[[Any], Any]] = {
    "string": _as_string, "code": _matching(_FHIR_CODE), "uri": _matching(_FHIR_URI), "id": _matching(_FHIR_ID),
    "markdown": _as_string,
    "integer": _as_integer, "positiveInt": lambda v: v if (v := _as_integer(v)) is not None and v > 0 else None,
    "unsignedInt": lambda v: v if (v := _as_integer(v)) is not None and v >= 0 else None,
    "decimal": _as_decimal, "boolean": lambda v: v if isinstance(v, bool) else None,
    "date": _as_date, "dateTime": _date_time, "instant": lambda v: _date_time(v, instant=True),
    "base64Binary": _as_base64,
    # Any JSON value (a json column's list) as the text of a FHIR string.
    "json": _JSON_TEXT,
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
            if value and value.isprintable() or _FHIR_STRING.match(value):  # printable: no expression needed
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
    if extensions.__class__ is not list and len(fields) == 1 and fields[0].type.family == "varchar":
        value = _fits(fields[0], text)  # the usual key: one text, as it is (what the general way below does)
        return None if value is MISSING else (value,)
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



def _lookup_system(entity_type: str, column: str, key: tuple[str, ...]) -> str:
    """The identifier system a reference writes a lookup value under: the
    entity's own for its (single) key column, else ``urn:healthsim:<type>:<column>``."""
    if key == (column,):
        return d.ENTITY_SYSTEM + entity_type
    return f"{d.ENTITY_SYSTEM}{entity_type}:{column}"


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


def _primitive_of(element: d.Element, field: Field) -> str:
    """The FHIR type a field element writes: declared (``as:``), said by its
    path's name, or the column type's."""
    return element.primitive or _primitive_of_path(element.steps) or d.PRIMITIVE_OF_TYPE[field.type.family]


TIMES_KEY = "times"  # in a resource's _fhir record: element path -> a date-time read into a date column
ABSENT_KEY = "absent"  # in a resource's _fhir record: element paths that came as a data-absent marker
# In a resource's _fhir record: element path -> the parts of its Quantity (unit,
# system, code) or Coding (display) that the resource came without. The export
# leaves them out, so a foreign element goes back as it came; our own entities
# (no record) get the declaration's full form.
WITHOUT_KEY = "without"
QUANTITY_PARTS = ("unit", "system", "code")


def _came_without(record: dict | None, path: str) -> Any:
    """The parts the element at ``path`` came without (see WITHOUT_KEY); () for none."""
    without = record.get(WITHOUT_KEY) if record else None
    return without.get(path, ()) if isinstance(without, dict) else ()



def _keeps_time(primitive: str, field: Field) -> bool:
    """Whether an element of this FHIR type may bring a time to this column:
    a dateTime (or instant) element over a date column (``Condition.onsetDateTime``
    into ``diagnosed_date``). The column takes the day; the text as written is
    kept in the entity's ``_fhir`` record (:data:`TIMES_KEY`) and written back."""
    return primitive in ("dateTime", "instant") and field.type.family == "date"


def _day_of(value: Any) -> str | None:
    """The calendar date of a FHIR dateTime with a time, as written: in the
    value's own offset, not UTC (``2019-03-04T22:20:00-05:00`` -> ``2019-03-04``);
    None for a value without a time (a date, a year and month)."""
    if isinstance(value, str) and len(value) > 10 and value[10] == "T":
        return value[:10]
    return None


def _written_time(record: dict | None, path: str, value: Any) -> str | None:
    """The date-time an import kept for the element at ``path`` when the
    column still holds its day (else None: the column was changed since, and
    its date goes out)."""
    times = record.get(TIMES_KEY) if record else None
    text = times.get(path) if isinstance(times, dict) else None
    if isinstance(text, str) and text[:10] == str(value):
        return text
    return None


def _day_taken(record: dict | None, path: str) -> bool:
    """Whether an import takes only the day of a date-time that a date column
    holds as given (its non-strict column NULL), so the export also keeps the
    text in the unfit extension: for an entity of ours (no record), and for one
    whose import took a day at ``path`` already. An entity imported before
    dates were taken (its text as given, no ``times``) goes out as it came."""
    if record is None:
        return True
    times = record.get(TIMES_KEY)
    return isinstance(times, dict) and path in times


def _converter(primitive: str, field: Field) -> Callable[[Any], Any]:
    """The conversion of a field's value to its element's FHIR type."""
    if primitive == "dateTime" and field.type.family == "date":  # a day stays a day: it must read back as one
        return lambda v: _as_date(v) or _date_time(v)
    return TO_FHIR.get(primitive, lambda v: v)


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
    element = _deciding_sibling(column, siblings)
    if element is None:
        return lambda entity: (v := get(entity)) is not None and not isinstance(v, (dict, list)) or None
    if element.kind == "field":
        convert = TO_FHIR.get(_primitive_of(element, field), lambda v: v)
        forward = dict(element.values)
        if forward:
            backward = _backward(element.values)
            return lambda entity: (v if isinstance(v := get(entity), str) and (v in forward or v in backward)
                                   else None)
        return lambda entity: convert(v) if (v := get(entity)) is not None else None
    if element.kind == "coding":
        return lambda entity: v if isinstance(v := get(entity), str) and _FHIR_CODE.match(v) else None
    return lambda entity: v if isinstance(v := get(entity), (int, float)) and not isinstance(v, bool) else None


def _deciding_sibling(column: str, siblings: tuple[d.Element, ...]) -> d.Element | None:
    """The sibling whose writing of ``column`` a with:/without: test follows: the
    first field (not itself conditional), coding or quantity of it (None: none)."""
    for element in siblings:
        if element.kind == "field" and element.field == column and not element.with_field:
            return element
        if element.kind == "coding" and element.coding.code == column:
            return element
        if element.kind == "quantity" and element.quantity.value == column:
            return element
    return None


def _converted_test(column: str, mapping: Mapping, siblings: tuple[d.Element, ...]) -> Callable[[Any], Any] | None:
    """The converter :func:`_fhir_value_of` applies to ``column``'s value when it
    is just that (a field without a value map, of a known primitive): a generated
    writer tests ``v is not None and convert(v) is not None`` inline. None otherwise."""
    element = _deciding_sibling(column, siblings)
    if element is None or element.kind != "field" or element.values:
        return None
    return TO_FHIR.get(_primitive_of(element, mapping.field(column)))
