"""A deliberately naive, independent oracle for the mapping semantics.

Written straight from docs "mapping-format.md" (and the decisions recorded in the
test brief), reading the raw YAML dicts, never the package's model objects. It is
slow and simple on purpose: one walk per field per entity, plain dicts, no
compilation. The property tests compare the package against it.

    expected = expect(mapping, entities)   # list of canonical entities, or raises Invalid
    same(expected, loaded)                 # strict equality, uuid4 placeholders match any uuid

Decisions on points the format leaves open (from the brief):
- a blocked path gets no alias and no default; the value stays as given;
- NaN / +-Infinity are rejected anywhere in an entity, mapped or not;
- objects are rendered first: date -> isoformat, datetime -> isoformat,
  UUID -> str; dict keys must be str; tuples, sets, bytes and any other object
  are rejected;
- a Decimal d (item 4 of issue 11: a number no float holds keeps every digit):
  json.loads(str(d)) when that is an int, or a float equal in value to d;
  otherwise d itself, which a load gives back as an equal Decimal with the same
  digits (str(d)); a NaN or infinite Decimal is rejected;
- a date or datetime subclass holding no date (pandas.NaT) is rejected;
- a value is checked against its field's type as given, with the kinds the brief
  lists (a UUID object fits varchar, a date object fits date but not varchar or
  timestamp, a Decimal fits decimal(P,S) only); generated data avoids the kinds
  the brief does not list (see the report), so this choice does not drive tests;
- an object left empty by an alias move is removed, and so is every ancestor
  that this leaves empty (the oracle's reading of "an object that held an
  aliased value": for a two-level alias the question does not arise).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

# --------------------------------------------------------------------------
# Reading mapping files (raw dicts)
# --------------------------------------------------------------------------


def load_mapping_dirs(dirs) -> dict[str, dict]:
    """entity name -> raw mapping dict; a later directory replaces an earlier
    directory's file with the same ``entity`` (user dirs override built-ins)."""
    out: dict[str, dict] = {}
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if not name.endswith((".yaml", ".yml")):
                continue
            with open(os.path.join(d, name), encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
            out[raw["entity"]] = raw
    return out


def split_path(p: str) -> tuple[str, ...]:
    return tuple(p.split("."))


def plural_of(mapping: dict) -> str:
    return mapping.get("plural") or mapping["entity"] + "s"


def key_columns(mapping: dict) -> list[str]:
    pk = mapping["primary_key"]
    return [pk] if isinstance(pk, str) else list(pk)


@dataclass
class Field:
    column: str
    path: tuple[str, ...]
    type: str
    aliases: list[tuple[str, ...]]
    has_default: bool
    default: Any
    required: bool  # a missing value is an error (required: true, or key w/o default)
    explicit_required: bool
    strict: bool  # key fields are always strict
    is_key: bool

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def null_ok(self) -> bool:
        return not (self.is_key or self.explicit_required)


def fields_of(mapping: dict) -> list[Field]:
    keys = set(key_columns(mapping))
    out = []
    for f in mapping["fields"]:
        is_key = f["column"] in keys
        has_default = "default" in f
        explicit_required = bool(f.get("required", False))
        out.append(
            Field(
                column=f["column"],
                path=split_path(f["path"]),
                type=str(f["type"]).replace(" ", "").lower(),
                aliases=[split_path(a) for a in (f.get("aliases") or [])],
                has_default=has_default,
                default=f.get("default"),
                required=explicit_required or (is_key and not has_default),
                explicit_required=explicit_required,
                strict=is_key or bool(f.get("strict", True)),
                is_key=is_key,
            )
        )
    return out


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


class Unsupported(ValueError):
    """A value the engine must reject wherever it appears."""


def render(value: Any) -> Any:
    """canonical rendering of one value (recursively)."""
    if value is None or value is UUID4 or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unsupported(f"non-finite float {value!r}")
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise Unsupported(f"non-str key {k!r}")
            out[k] = render(v)
        return out
    if isinstance(value, list):
        return [render(v) for v in value]
    if isinstance(value, _dt.date):  # a datetime too
        if not isinstance(value.year, int):
            raise Unsupported(f"a {type(value).__name__} that holds no date")
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise Unsupported(f"non-finite Decimal {value!r}")
        out = json.loads(str(value))
        if isinstance(out, int):
            return out
        if math.isfinite(out) and decimal.Decimal(repr(out)) == value:
            return out
        return decimal.Decimal(str(value))  # no float holds it: kept as given
    raise Unsupported(f"unsupported object {type(value).__name__}")


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------

_DECIMAL_RE = re.compile(r"^decimal\((\d+),(\d+)\)$")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def decimal_ps(type_: str) -> tuple[int, int] | None:
    m = _DECIMAL_RE.match(type_)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number_digits(v) -> decimal.Decimal:
    # "a float's digits are those of its shortest repr"
    return decimal.Decimal(repr(v)) if isinstance(v, float) else decimal.Decimal(v)


def fits_decimal(p: int, s: int, v) -> bool:
    if not (_is_int(v) or isinstance(v, decimal.Decimal) or (isinstance(v, float) and math.isfinite(v))):
        return False
    d = _number_digits(v)
    if d == 0:
        return True
    # exact arithmetic on the digit tuple: no decimal context (28 digits) involved
    sign, digits, exp = d.as_tuple()
    while exp < 0 and digits and digits[-1] == 0:  # trailing zeros of the fraction lose nothing
        digits, exp = digits[:-1], exp + 1
    frac_digits = max(0, -exp)
    if frac_digits > s:
        return False
    int_part = abs(int(d))  # exact (truncates toward 0)
    int_digits = len(str(int_part)) if int_part else 0
    return int_digits <= p - s


def _parses(fn, s) -> bool:
    try:
        fn(s)
        return True
    except (ValueError, TypeError):
        return False


def _instant_in_range(moment: _dt.datetime) -> bool:
    """Decision: the stored instant is UTC, so an aware time whose UTC instant
    falls outside years 1-9999 (which Python cannot hold) does not fit."""
    if moment.utcoffset() is None:
        return True
    try:
        moment.astimezone(_dt.timezone.utc)
        return True
    except OverflowError:
        return False


def fits(type_: str, value: Any) -> bool:
    """Does a non-null value, as the caller gives it, fit the type? The kinds are
    the brief's decisions: varchar str or UUID; integer / bigint int (not bool) in
    range; double int or finite float (not bool); decimal(P,S) int, finite float
    or Decimal that fits without losing a digit; boolean bool; date a full ISO
    date string or a date (not a datetime); timestamp an ISO date-time string or
    a datetime; json anything renderable."""
    t = type_.replace(" ", "").lower()
    if t == "json":
        try:
            render(value)
            return True
        except Unsupported:
            return False
    if t == "varchar":
        return isinstance(value, (str, uuid.UUID))
    if t == "integer":
        return _is_int(value) and INT32[0] <= value <= INT32[1]
    if t == "bigint":
        return _is_int(value) and INT64[0] <= value <= INT64[1]
    if t == "double":
        if _is_int(value):
            try:
                return math.isfinite(float(value))
            except OverflowError:
                return False
        return isinstance(value, float) and math.isfinite(value)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "date":
        if isinstance(value, _dt.datetime):
            return False
        return isinstance(value, _dt.date) or (isinstance(value, str) and _parses(_dt.date.fromisoformat, value))
    if t == "timestamp":
        if isinstance(value, str) and _parses(_dt.datetime.fromisoformat, value):
            value = _dt.datetime.fromisoformat(value)
        return isinstance(value, _dt.datetime) and _instant_in_range(value)
    ps = decimal_ps(t)
    if ps:
        if isinstance(value, decimal.Decimal):  # its own digits (the entity gets render(value))
            return value.is_finite() and fits_decimal(ps[0], ps[1], value)
        return fits_decimal(ps[0], ps[1], value)
    raise AssertionError(f"unknown type {type_!r}")


def fits_raw(type_: str, value: Any) -> bool:
    """fits(), False for values that cannot be rendered at all."""
    try:
        render(value)
    except Unsupported:
        return False
    return fits(type_, value)


def typed_key(type_: str, value: Any):
    """The value as its typed column would compare it (for key uniqueness)."""
    v = render(value)
    t = type_.replace(" ", "").lower()
    if t == "double":
        return float(v)
    if t == "date":
        return _dt.date.fromisoformat(v)
    if t == "timestamp":
        ts = _dt.datetime.fromisoformat(v)
        if ts.tzinfo is not None:
            ts = ts.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return ts
    if decimal_ps(t):
        return _number_digits(v)
    if t == "json":
        return json.dumps(v, sort_keys=True)
    return v


# --------------------------------------------------------------------------
# Paths in plain dicts
# --------------------------------------------------------------------------

MISSING = type("MISSING", (), {"__repr__": lambda s: "MISSING"})()
BLOCKED = type("BLOCKED", (), {"__repr__": lambda s: "BLOCKED"})()


def lookup(obj: dict, path: tuple[str, ...]):
    """value at path, MISSING when a key is absent, BLOCKED when the walk runs
    into a non-object (null, scalar or list) before the last key."""
    cur = obj
    for k in path:
        if not isinstance(cur, dict):
            return BLOCKED
        if k not in cur:
            return MISSING
        cur = cur[k]
    return cur


def put(obj: dict, path: tuple[str, ...], value) -> None:
    cur = obj
    for k in path[:-1]:
        if k not in cur:
            cur[k] = {}
        cur = cur[k]
        assert isinstance(cur, dict), "put() through a non-object"
    cur[path[-1]] = value


def remove(obj: dict, path: tuple[str, ...]) -> None:
    """delete the leaf, then every object on the way that this leaves empty."""
    chain = [obj]
    for k in path[:-1]:
        chain.append(chain[-1][k])
    del chain[-1][path[-1]]
    for depth in range(len(path) - 1, 0, -1):
        if chain[depth] == {}:
            del chain[depth - 1][path[depth - 1]]
        else:
            break


# --------------------------------------------------------------------------
# canonical() and validation
# --------------------------------------------------------------------------


class _Uuid4Placeholder:
    """stands for "a fresh uuid string" in an expected entity"""

    def __repr__(self):
        return "<uuid4>"


UUID4 = _Uuid4Placeholder()


@dataclass
class OracleProblem:
    position: int
    path: str | None
    message: str
    value: Any = None


@dataclass
class Invalid(Exception):
    problems: list[OracleProblem] = field(default_factory=list)

    def __str__(self):
        return "; ".join(f"[{p.position}] {p.path}: {p.message}" for p in self.problems)


def canonical_one(mapping: dict, entity: Any, position: int = 0):
    """(canonical entity, problems) for one entity."""
    problems: list[OracleProblem] = []
    if not isinstance(entity, dict):
        return None, [OracleProblem(position, None, "not an object", entity)]
    try:
        render(entity)
    except Unsupported as exc:
        return None, [OracleProblem(position, None, str(exc))]
    e = _copy(entity)  # dicts and lists copied, leaves as given (checked raw)

    for f in fields_of(mapping):
        v = lookup(e, f.path)
        if v is MISSING:
            for a in f.aliases:
                av = lookup(e, a)
                if av is MISSING or av is BLOCKED:
                    continue
                remove(e, a)
                put(e, f.path, av)
                v = av
                break
        if v is BLOCKED or v is MISSING:
            if v is MISSING and f.has_default:
                if f.default == "uuid4":
                    put(e, f.path, UUID4)
                else:
                    put(e, f.path, render(f.default))
            elif f.required:
                problems.append(OracleProblem(position, f.dotted, "missing required field"))
            continue
        if v is None:
            if not f.null_ok:
                problems.append(OracleProblem(position, f.dotted, "null in a key or required field"))
            continue
        if not fits(f.type, v) and f.strict:
            problems.append(OracleProblem(position, f.dotted, f"does not fit {f.type}", v))
        elif f.is_key and _holds_nul(f.type, v):
            # Decision: text with NUL is kept in the residual, never in a column
            # (PostgreSQL text cannot hold it); a key must be in its column.
            problems.append(OracleProblem(position, f.dotted, "a key cannot hold a NUL character", v))
    return render(e), problems


def _holds_nul(type_: str, value: Any) -> bool:
    return type_.replace(" ", "").lower() == "varchar" and "\x00" in render(value)


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def expect(mapping: dict, entities: list) -> list:
    """canonical(e) for every entity, or raise Invalid with every problem."""
    out, problems = [], []
    seen: dict = {}
    keyf = [f for f in fields_of(mapping) if f.is_key]
    by_col = {f.column: f for f in keyf}
    keyf = [by_col[c] for c in key_columns(mapping)]
    for i, ent in enumerate(entities):
        e, probs = canonical_one(mapping, ent, i)
        problems += probs
        out.append(e)
        if probs or e is None:
            continue
        vals = [lookup(e, f.path) for f in keyf]
        if any(v is UUID4 for v in vals):
            continue  # a fresh uuid never collides
        k = tuple(typed_key(f.type, v) for f, v in zip(keyf, vals))
        if k in seen:
            problems.append(OracleProblem(i, None, f"duplicate key of entity {seen[k]}"))
        else:
            seen[k] = i
    if problems:
        raise Invalid(problems)
    return out


def canonical(mapping: dict, entity: Any):
    """canonical(e) of one valid entity (raises Invalid otherwise)."""
    return expect(mapping, [entity])[0]


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_uuid_string(s) -> bool:
    return isinstance(s, str) and bool(_UUID_RE.match(s))


def diff(expected, got, where: str = "$") -> str | None:
    """None when equal; otherwise where and how they differ. Strict about types
    (1 vs 1.0 vs True differ, -0.0 vs 0.0 differ); UUID4 matches any uuid string."""
    if expected is UUID4:
        return None if is_uuid_string(got) else f"{where}: expected a uuid string, got {got!r}"
    if type(expected) is not type(got):
        return f"{where}: expected {expected!r} ({type(expected).__name__}), got {got!r} ({type(got).__name__})"
    if isinstance(expected, dict):
        if set(expected) != set(got):
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            return f"{where}: keys differ; missing {missing!r}, unexpected {extra!r}"
        for k in expected:
            d = diff(expected[k], got[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(expected, list):
        if len(expected) != len(got):
            return f"{where}: list length {len(expected)} != {len(got)}"
        for i, (a, b) in enumerate(zip(expected, got)):
            d = diff(a, b, f"{where}[{i}]")
            if d:
                return d
        return None
    if isinstance(expected, float):
        return None if repr(expected) == repr(got) else f"{where}: expected {expected!r}, got {got!r}"
    if isinstance(expected, decimal.Decimal):  # every digit: Decimal("1.0") is not Decimal("1.00")
        return None if str(expected) == str(got) else f"{where}: expected {expected!r}, got {got!r}"
    return None if expected == got else f"{where}: expected {expected!r}, got {got!r}"


def same(expected, got) -> bool:
    return diff(expected, got) is None


def placeholders(obj, where=()):
    """key paths (tuples) of the UUID4 placeholders in an expected entity"""
    if obj is UUID4:
        yield where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from placeholders(v, where + (k,))
