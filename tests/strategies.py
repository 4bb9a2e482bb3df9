"""Hypothesis strategies derived from the mapping files.

Nothing here is written per entity type: everything is read from the raw YAML
(``oracle.load_mapping_dirs``). For every field of a mapping an entity strategy
draws a *plan* (how the field shows up in this entity) together with its value:

    absent     the path and every alias missing (default, if any, fills in)
    null       an explicit null at the path (not for keys or required fields)
    value      a valid value of the field's type at the path
    alias      the value (or a null) under one alias, path absent; later aliases
               may carry junk, which stays unmapped
    both       a value at the path and junk under aliases (kept unmapped)
    illfit     for ``strict: false`` fields: a value that does not fit the type
    blocked    a non-object (text, number, null, list of objects) at a prefix of
               a nested path; aliases may be present and must stay where they are

then adds unmapped data: unknown keys at the top level and inside every mapped
object (``name.nickname``, ``address.geo``, ``contact.fax``), empty objects at
mapped prefixes, explicit nulls, lists of objects, unicode, big ints, and date /
datetime / Decimal / UUID objects. Key values are drawn first, unique within a
list as typed column values.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass
from functools import lru_cache

from hypothesis import assume
from hypothesis import strategies as st

import oracle
from oracle import fits_raw

# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------

REALISTIC_TEXT = [
    "John", "Smith", "O'Brien", "José", "Zoë", "Müller", "李小龙", "Nguyễn",
    "123 Main St", "Apt #4", "Springfield", "IL", "62701", "US", "en",
    "M", "F", "unknown", "I", "O", "E", "OBS", "finished", "in-progress",
    "E11.9", "99213", "J45.909", "4548-4", "mg/dL", "positive", "<5.0",
    "1970-03", "2024-01-15", "2024-01-15T10:30Z", "null", "None", "true", "0",
    "", " ", "  padded  ", "line1\nline2", "tab\tsep", "quote\"d", "back\\slash",
    "emoji 🩺💊", "RTL שלום", "\u200b", "a.b", "{\"json\": 1}", "'; DROP TABLE patients; --",
]
AWKWARD_CHARS = st.characters(blacklist_categories=("Cs",))  # everything UTF-8 can carry
TEXT = st.one_of(
    st.sampled_from(REALISTIC_TEXT),
    st.text(AWKWARD_CHARS, max_size=12),
)

REALISTIC_KEYS = [
    "nickname", "geo", "notes", "extra", "meta", "insurance", "medical_history",
    "emergency_contact", "conditions", "tags", "identifiers", "fax", "use",
    "period", "coding", "extension", "resourceType", "id", "Name", "NAME",
    "name.given", "address.city", "a.b", "x", "_", "$ref", "@type", "",
    " ", "ключ", "名前", "🔑", "key with spaces", "semi;colon", "quo'te", "0", "-1",
]
UNKNOWN_KEYS = st.one_of(st.sampled_from(REALISTIC_KEYS), st.text(AWKWARD_CHARS, max_size=8))

# --------------------------------------------------------------------------
# Objects the engine renders
# --------------------------------------------------------------------------

TIMEZONES = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
DATE_OBJECTS = st.dates()
# An offset moves the UTC instant by up to a day: local times within a day of
# year 1 or year 9999 could fall outside what a UTC instant may be (such input
# is refused, by decision: tests/test_roundtrip_properties.py has those cases).
# Valid values keep a day's margin; naive ones may use the whole range.
_SAFE_MIN, _SAFE_MAX = dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30, 23, 59, 59, 999999)
DATETIME_OBJECTS = st.one_of(
    st.datetimes(),
    st.datetimes(min_value=_SAFE_MIN, max_value=_SAFE_MAX, timezones=TIMEZONES),
)
UUID_OBJECTS = st.uuids()


def _finite_decimal(d: decimal.Decimal) -> bool:
    try:
        oracle.render(d)
        return True
    except oracle.Unsupported:
        return False


DECIMAL_OBJECTS = st.one_of(
    st.builds(
        lambda n, e: decimal.Decimal(n).scaleb(e),
        st.integers(-(10**20), 10**20),
        st.integers(-12, 12),
    ),
    st.sampled_from([decimal.Decimal(s) for s in ["0", "-0", "-0.0", "1.500", "5E+1", "1E-7", "12.34", "0.1"]]),
    # numbers no float holds: kept with every digit (issue 11, item 4)
    st.sampled_from([decimal.Decimal(s) for s in ["12345678901234567890.123456789", "0.10000000000000001",
                                                  "1E+400", "-1E-400", "1.2345678901234567890E+30"]]),
).filter(_finite_decimal)

# --------------------------------------------------------------------------
# JSON-ish values (unmapped data, json fields, junk under aliases)
# --------------------------------------------------------------------------

BIG_INTS = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**40), 2**53 + 1])
INTS = st.one_of(st.integers(), st.integers(-(2**70), 2**70), BIG_INTS)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@lru_cache(maxsize=None)  # one strategy object each: hypothesis validates a new one on every use
def json_leaves(objects: bool = True):
    leaves = [st.none(), st.booleans(), INTS, FLOATS, TEXT]
    if objects:
        leaves += [DATE_OBJECTS, DATETIME_OBJECTS, UUID_OBJECTS, DECIMAL_OBJECTS]
    return st.one_of(*leaves)


@lru_cache(maxsize=None)
def json_values(objects: bool = True, max_leaves: int = 8):
    return st.recursive(
        json_leaves(objects),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(UNKNOWN_KEYS, children, max_size=3),
            st.lists(st.dictionaries(UNKNOWN_KEYS, children, max_size=3), min_size=1, max_size=2),
        ),
        max_leaves=max_leaves,
    )


# --------------------------------------------------------------------------
# Values of the mapping types
# --------------------------------------------------------------------------


def _pad4(y: int) -> str:
    return f"{y:04d}"


@st.composite
def date_strings(draw):
    d = draw(DATE_OBJECTS)
    form = draw(st.sampled_from(["iso", "iso", "iso", "basic", "week", "weekday", "weekdayc"]))
    if form == "iso":
        s = d.isoformat()
    elif form == "basic":
        s = _pad4(d.year) + f"{d.month:02d}{d.day:02d}"
    else:
        y, w, wd = d.isocalendar()
        if form == "week":  # YYYY-Www means the Monday
            s = f"{_pad4(y)}-W{w:02d}"
        elif form == "weekday":
            s = f"{_pad4(y)}-W{w:02d}-{wd}"
        else:
            s = f"{_pad4(y)}W{w:02d}{wd}"
    assert oracle.fits("date", s), s
    return s


@st.composite
def timestamp_strings(draw):
    tz = draw(st.sampled_from(["", "", "Z", "+hh:mm", "-hh:mm", "+hhmm", "+hh"]))
    t = draw(st.datetimes() if tz in ("", "Z") else st.datetimes(min_value=_SAFE_MIN, max_value=_SAFE_MAX))
    datepart = draw(st.sampled_from(["iso", "iso", "iso", "basic"]))
    ds = t.date().isoformat() if datepart == "iso" else _pad4(t.year) + f"{t.month:02d}{t.day:02d}"
    form = draw(st.sampled_from(["dateonly", "h", "hm", "hms", "hms", "ms3", "us6", "basic"]))
    if form == "dateonly":
        return ds
    sep = draw(st.sampled_from(["T", "T", " "]))
    if form == "h":
        ts = f"{t.hour:02d}"
    elif form == "hm":
        ts = f"{t.hour:02d}:{t.minute:02d}"
    elif form == "hms":
        ts = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    elif form == "ms3":
        ts = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}"
    elif form == "us6":
        ts = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
    else:
        ts = f"{t.hour:02d}{t.minute:02d}{t.second:02d}"
    if tz and tz != "Z":
        hh, mm = draw(st.integers(0, 23)), draw(st.integers(0, 59))
        sign = tz[0]
        tz = {"+hh:mm": f"{sign}{hh:02d}:{mm:02d}", "-hh:mm": f"{sign}{hh:02d}:{mm:02d}",
              "+hhmm": f"{sign}{hh:02d}{mm:02d}", "+hh": f"{sign}{hh:02d}"}[tz]
    s = ds + sep + ts + tz
    assert oracle.fits("timestamp", s), s
    return s


def _decimal_strategies(p: int, s: int):
    max_int = 10 ** (p - s) - 1
    scaled = st.builds(
        lambda n, k: decimal.Decimal(n).scaleb(-k),
        st.integers(-(10**p - 1), 10**p - 1),
        st.integers(0, s),
    )
    return st.one_of(
        st.integers(-max_int, max_int),
        st.sampled_from([0, max_int, -max_int]),
        scaled.map(lambda d: float(d)),
        scaled,  # Decimal objects
        st.sampled_from([0.1, 0.5, -0.0, 1e-2, 0.01, float(max_int)]),
    ).filter(lambda v: fits_raw(f"decimal({p},{s})", v))


@lru_cache(maxsize=None)
def valid_values(type_: str):
    """Values that fit the type, as a caller may give them (objects included
    only where the brief lists them as valid input)."""
    t = type_.replace(" ", "").lower()
    if t == "varchar":
        return st.one_of(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID_OBJECTS)
    if t == "integer":
        return st.one_of(
            st.integers(*oracle.INT32),
            st.sampled_from([0, -1, 1, 92, oracle.INT32[0], oracle.INT32[1]]),
        )
    if t == "bigint":
        return st.one_of(
            st.integers(*oracle.INT64),
            st.sampled_from([0, oracle.INT64[0], oracle.INT64[1], 2**53 + 1]),
        )
    if t == "double":
        return st.one_of(FLOATS, st.integers(-(2**53), 2**53), st.sampled_from([1, 1.0, 2.1, -0.0, 98.6, 5e-324]))
    if t == "boolean":
        return st.booleans()
    if t == "date":
        return st.one_of(date_strings(), DATE_OBJECTS)
    if t == "timestamp":
        return st.one_of(timestamp_strings(), DATETIME_OBJECTS)
    if t == "json":
        return json_values(objects=False)
    ps = oracle.decimal_ps(t)
    if ps:
        return _decimal_strategies(*ps)
    raise AssertionError(type_)


@lru_cache(maxsize=None)
def invalid_values(type_: str):
    """Values that clearly do not fit the type, whatever the order of rendering
    and checking (no date / Decimal / UUID objects: those are open points)."""
    t = type_.replace(" ", "").lower()
    common = [
        st.dictionaries(UNKNOWN_KEYS, json_values(objects=False, max_leaves=3), min_size=1, max_size=2),
        st.just({"value": 92, "unit": "bpm"}),
        st.lists(st.integers(), min_size=1, max_size=2),
    ]
    if t == "varchar":
        extra = [st.integers(), FLOATS, st.booleans()]
    elif t in ("integer", "bigint"):
        lo, hi = oracle.INT32 if t == "integer" else oracle.INT64
        extra = [
            st.booleans(),
            st.sampled_from(["92", "ninety", "", "1.5"]),
            FLOATS.filter(lambda f: f != int(f)),
            st.one_of(st.integers(min_value=hi + 1), st.integers(max_value=lo - 1)),
        ]
    elif t == "double":
        extra = [st.booleans(), st.sampled_from(["98.6", "NaN", "", "1e3", "high"])]
    elif t == "boolean":
        extra = [st.sampled_from([0, 1, "true", "false", "yes", "", 1.0])]
    elif t == "date":
        extra = [st.sampled_from(["1970-03", "1970", "2024-02-30", "01/15/2024", "2024-01-15T10:30",
                                  "2024-1-5", "", "today", " 2024-01-15", "2024-001"]),
                 st.integers(), st.booleans()]
    elif t == "timestamp":
        extra = [st.sampled_from(["2024-02-30T10:00", "yesterday", "", "10:30", "2024-01-15T25:00",
                                  "2024-01-15T10:30+24:00", "1970-03"]),
                 st.integers(), st.booleans()]
    elif oracle.decimal_ps(t):
        p, s = oracle.decimal_ps(t)
        extra = [
            st.booleans(),
            st.sampled_from(["12.50", "$5"]),
            st.integers(min_value=10 ** (p - s)),
            st.integers(max_value=-(10 ** (p - s))),
            st.integers(1, 9).map(lambda d: float(f"1.{'0' * s}{d}")),
        ]
    else:
        return st.nothing()  # json: everything fits
    return st.one_of(*common, *extra).filter(lambda v: v is not None and not fits_raw(t, v))


@lru_cache(maxsize=None)
def illfit_values(type_: str):
    """What real files put into non-strict fields."""
    t = type_.replace(" ", "").lower()
    shaped = [
        st.builds(lambda v, u: {"value": v, "unit": u}, st.one_of(st.integers(0, 300), FLOATS), TEXT),
        st.fixed_dictionaries({"name": TEXT, "npi": TEXT, "address": st.dictionaries(UNKNOWN_KEYS, TEXT, max_size=2)}),
    ]
    if t == "date":  # FHIR onsetDateTime: a date-time, as string or object
        shaped += [timestamp_strings(), DATETIME_OBJECTS]
    return st.one_of(invalid_values(t), *shaped).filter(lambda v: not fits_raw(t, v))


# --------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------


@dataclass
class Spec:
    mapping: dict
    fields: list
    key_fields: list
    full_paths: set      # every path and alias (tuples)
    prefixes: set        # every prefix of a path or alias, full ones included
    objects: list        # proper prefixes that are nobody's full path/alias: mapped objects


def spec_of(mapping: dict) -> Spec:
    fs = oracle.fields_of(mapping)
    by_col = {f.column: f for f in fs}
    keys = [by_col[c] for c in oracle.key_columns(mapping)]
    full = {f.path for f in fs} | {a for f in fs for a in f.aliases}
    prefixes = {p[:i] for p in full for i in range(1, len(p) + 1)}
    objects = sorted({p[:i] for p in full for i in range(1, len(p))} - full)
    return Spec(mapping, fs, keys, full, prefixes, objects)


def _put_if_free(e: dict, path, value) -> bool:
    """write value at path unless the walk meets a non-object or the leaf exists"""
    cur = e
    for k in path[:-1]:
        if k not in cur:
            cur[k] = {}
        cur = cur[k]
        if not isinstance(cur, dict):
            return False
    if path[-1] in cur:
        return False
    cur[path[-1]] = value
    return True


def _plans(f: oracle.Field, spec: Spec) -> list[str]:
    if f.is_key or f.explicit_required:
        plans = ["value", "value", "both"]
        if f.aliases:
            plans += ["alias", "alias"]
        if not f.required:  # a key with a default may be absent
            plans += ["absent"]
    else:
        plans = ["absent", "null", "value", "value", "value"]
        if f.aliases:
            plans += ["alias", "alias", "both"]
        if not f.strict:
            plans += ["illfit", "illfit"]
        if len(f.path) > 1:
            plans += ["blocked"]
    return plans


def _bad_plans(f: oracle.Field) -> list[str]:
    """plans that make the entity invalid (valid=False only)"""
    bad = ["invalid"] if f.strict and f.type != "json" else []
    if f.required:
        bad += ["absent"]
    if not f.null_ok:
        bad += ["null"]
    return bad


def _blockable_prefixes(f: oracle.Field, spec: Spec) -> list:
    """prefixes of f.path that no required or key field runs through"""
    protected = [g.path for g in spec.fields if g.required or g.is_key or g.explicit_required]
    return [
        f.path[:i]
        for i in range(1, len(f.path))
        if not any(p[:i] == f.path[:i] for p in protected)
    ]


BLOCKERS = st.one_of(
    TEXT,
    st.none(),
    st.integers(),
    st.lists(st.dictionaries(UNKNOWN_KEYS, TEXT, max_size=2), max_size=2),  # FHIR: name: [{...}]
)


@st.composite
def entity(draw, spec: Spec, key_values: tuple, valid: bool = True):
    """One entity of the mapping; key_values gives the key fields' values."""
    key_of = {f.column: v for f, v in zip(spec.key_fields, key_values)}
    plans = {f.column: draw(st.sampled_from(_plans(f, spec))) for f in spec.fields}
    if not valid:  # at most two fields made wrong, so that the other checks still get reached
        n_bad = draw(st.sampled_from([0, 0, 1, 1, 2]))
        can_be_bad = [f for f in spec.fields if _bad_plans(f)]
        can_be_bad += [f for f in can_be_bad if f.is_key or f.required] * 3  # keys more often
        for f in draw(st.lists(st.sampled_from(can_be_bad), max_size=n_bad, unique_by=lambda f: f.column)):
            plans[f.column] = draw(st.sampled_from(_bad_plans(f)))
    e: dict = {}

    # 1. blockers first, so that nothing else has created the object yet
    for f in spec.fields:
        if plans[f.column] != "blocked":
            continue
        options = _blockable_prefixes(f, spec)
        if not options:
            plans[f.column] = "absent"
            continue
        _put_if_free(e, draw(st.sampled_from(options)), draw(BLOCKERS))

    # 2. the fields, in a random order (dict order must not matter)
    order = draw(st.permutations(spec.fields))
    order.sort(key=lambda f: not f.required)  # required ones first: they must land
    for f in order:
        plan = plans[f.column]
        if plan == "invalid":
            value = draw(invalid_values(f.type))
            plan = "illfit"  # placed like an ill-fitting value: at the path or an alias
        elif f.column in key_of:
            value = key_of[f.column]
        elif plan == "illfit":
            value = draw(illfit_values(f.type))
        else:
            value = draw(valid_values(f.type))
        if plan == "null" and not f.null_ok:
            plan = "null-at-alias" if (f.aliases and draw(st.booleans())) else plan
        if plan == "null-at-alias":
            _put_if_free(e, draw(st.sampled_from(f.aliases)), None)
        elif plan == "value" or (plan == "illfit" and not (f.aliases and draw(st.booleans()))):
            _put_if_free(e, f.path, value)
        elif plan == "null":
            _put_if_free(e, f.path, None)
        elif plan in ("alias", "illfit"):
            i = draw(st.integers(0, len(f.aliases) - 1))
            if plan == "alias" and f.null_ok and draw(st.integers(0, 4)) == 0:
                value = None  # a present alias counts even when null
            _put_if_free(e, f.aliases[i], value)
            for a in f.aliases[i + 1:]:
                if draw(st.booleans()):
                    _put_if_free(e, a, draw(json_values(max_leaves=3)))
        elif plan == "both":
            _put_if_free(e, f.path, value)
            chosen = draw(st.lists(st.sampled_from(f.aliases), min_size=1, unique=True)) if f.aliases else []
            for a in chosen:
                _put_if_free(e, a, draw(json_values(max_leaves=3)))
        elif plan == "blocked":
            for a in f.aliases:
                if draw(st.booleans()):
                    _put_if_free(e, a, draw(json_values(max_leaves=3)))

    # 3. unmapped data: empty / extended mapped objects, unknown keys at any depth
    for obj in spec.objects:
        if draw(st.integers(0, 5)) == 0:
            _put_if_free(e, obj, {})
    for loc in [()] + spec.objects:
        target = oracle.lookup(e, loc) if loc else e
        if not isinstance(target, dict) or draw(st.integers(0, 2)) == 0:
            continue
        extra = draw(st.dictionaries(UNKNOWN_KEYS, json_values(), max_size=3))
        for k, v in extra.items():
            if loc + (k,) not in spec.prefixes and k not in target:
                target[k] = v

    if valid:
        try:
            oracle.expect(spec.mapping, [e])
        except oracle.Invalid:
            assume(False)
    return e


def key_tuples(spec: Spec):
    # a key is stored in its column, and no column holds NUL (see oracle._holds_nul)
    return st.tuples(*(valid_values(f.type).filter(lambda v, t=f.type: not oracle._holds_nul(t, v))
                       for f in spec.key_fields))


def typed_key_tuple(spec: Spec, values: tuple):
    return tuple(oracle.typed_key(f.type, v) for f, v in zip(spec.key_fields, values))


@st.composite
def equivalent_value(draw, type_: str, value):
    """Another spelling of the same typed value (1 / 1.0, "2024-01-15" / 20240115 /
    date(2024, 1, 15), a UUID / its string)."""
    t = type_.replace(" ", "").lower()
    v = oracle.render(value)
    options = [value]
    if t == "double":
        f = float(v)
        options.append(f)
        if f.is_integer() and abs(f) <= 2**53:
            options.append(int(f))
    elif t == "date":
        d = dt.date.fromisoformat(v)
        y, w, wd = d.isocalendar()
        options += [d, d.isoformat(), _pad4(d.year) + f"{d.month:02d}{d.day:02d}", f"{_pad4(y)}-W{w:02d}-{wd}"]
    elif t == "varchar":
        options.append(v)
        try:
            options.append(uuid.UUID(v)) if oracle.is_uuid_string(v) else None
        except ValueError:
            pass
    elif t in ("integer", "bigint"):
        options.append(v)
    out = draw(st.sampled_from(options))
    assert oracle.typed_key(t, out) == oracle.typed_key(t, value)
    return out


@st.composite
def entity_lists(draw, mapping: dict, min_size: int = 0, max_size: int = 4, valid: bool = True):
    """A list of entities of one type with keys unique as typed column values
    (valid=True); with valid=False, fields may be missing, null or ill-fitting
    and a key may come again in another spelling."""
    spec = spec_of(mapping)
    keys = draw(
        st.lists(key_tuples(spec), min_size=min_size, max_size=max_size,
                 unique_by=lambda kv: typed_key_tuple(spec, kv))
    )
    if not valid and keys and draw(st.booleans()):
        again = draw(st.sampled_from(keys))
        twin = tuple(draw(equivalent_value(f.type, v)) for f, v in zip(spec.key_fields, again))
        keys.insert(draw(st.integers(0, len(keys))), twin)
    return [draw(entity(spec, kv, valid=valid)) for kv in keys]


@st.composite
def scenario_entities(draw, mappings: dict[str, dict], types=None, max_size: int = 3):
    """entities argument of save_scenario: some types, each under its singular
    or plural name."""
    names = sorted(types or mappings)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    out = {}
    for t in chosen:
        m = mappings[t]
        key = draw(st.sampled_from([t, oracle.plural_of(m)]))
        out[key] = draw(entity_lists(m, max_size=max_size))
    return out


# --------------------------------------------------------------------------
# A user-added mapping (written to a temp dir by the tests)
# --------------------------------------------------------------------------

USER_MAPPING_YAML = """\
# A user-added type exercising every column type, a composite date + double key,
# 3-level paths, aliases into and out of nested objects, awkward keys, a
# non-strict field and literal defaults of several types.
entity: device_reading
plural: device_readings
table: device_readings
description: A reading of a bedside device (test type).
primary_key: [reading_date, channel]
fields:
  - column: reading_date
    path: reading_date
    type: date
    aliases: [date, readingDate]
  - column: channel
    path: channel
    type: double
    aliases: [channel_no, "ch #"]
  - column: label
    path: label
    type: varchar
    required: true
    aliases: ["display name", info.label]
  - column: reading_uuid
    path: reading_uuid
    type: varchar
    default: uuid4
  - column: amount
    path: billing.amount
    type: decimal(10,3)
    aliases: [amount, charge.amount]
  - column: taken_at
    path: meta.times.taken
    type: timestamp
    aliases: [taken_at, times.taken, legacy.meta.times.taken_at]
  - column: count
    path: meta.count
    type: integer
    aliases: [cnt]
    default: 7
  - column: total
    path: total
    type: bigint
    aliases: [meta.total]
  - column: ratio
    path: meta.measure.ratio
    type: double
    strict: false
    aliases: [ratio, measure.ratio]
  - column: flagged
    path: flags.flagged
    type: boolean
    default: false
  - column: payload
    path: payload
    type: json
    aliases: [data, raw.payload]
  - column: note
    path: "notes.ünïcode key"
    type: varchar
    aliases: ["notes.$weird/key", "note:text"]
    default: "n/a"
  - column: abc
    path: a.b.c
    type: integer
    aliases: [abc, a.bc]
"""


# --------------------------------------------------------------------------
# Random mappings: the declarations drawn together with the values
# --------------------------------------------------------------------------

IDENTIFIERS = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
    # words a naive engine would splice into SQL unquoted
    st.sampled_from(["select", "order", "group", "from", "where", "table", "values",
                     "user", "default", "check", "primary", "key", "end", "union", "json"]),
)
PATH_KEYS = st.one_of(
    st.sampled_from(REALISTIC_KEYS + ["given", "family", "value", "code", "system", "display"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="."), min_size=1, max_size=8),
).filter(lambda k: "." not in k and k != "" and _survives_yaml(k))
def _survives_yaml(text: str) -> bool:
    """PyYAML itself folds some line breaks (NEL, U+2028) and BOMs; a key it
    cannot carry says nothing about the engine"""
    import yaml

    return yaml.safe_load(yaml.safe_dump({"k": text}, allow_unicode=True))["k"] == text


SCALAR_TYPES = ["varchar", "integer", "bigint", "double", "boolean", "date", "timestamp", "json"]
KEY_TYPES = ["varchar", "integer", "bigint", "double", "date", "decimal"]


@st.composite
def column_types(draw, for_key: bool = False):
    t = draw(st.sampled_from(KEY_TYPES if for_key else SCALAR_TYPES + ["decimal"]))
    if t == "decimal":
        p = draw(st.integers(1, 38))
        s = draw(st.integers(0, p))
        return f"decimal({p},{s})"
    return t


def _yaml_scalar_default(type_: str):
    """a literal default that fits the type and survives YAML"""
    t = type_
    if t in ("varchar", "json"):
        return TEXT.filter(lambda v: v != "uuid4")
    if t == "date":
        return DATE_OBJECTS.map(lambda d: d.isoformat())
    if t == "timestamp":
        return timestamp_strings()
    return valid_values(t).filter(lambda v: isinstance(v, (bool, int, float)))


@st.composite
def mappings(draw, entity: str = "random_thing"):
    """A raw mapping dict, valid per the format: unique columns, paths and aliases;
    no path or alias a prefix of another; key columns at top-level paths."""
    n = draw(st.integers(1, 7))
    columns = draw(st.lists(IDENTIFIERS, min_size=n, max_size=n, unique=True))
    taken: list[tuple] = []

    def free(p: tuple) -> bool:
        return all(q[: len(p)] != p and p[: len(q)] != q for q in taken)

    def new_path(max_depth: int):
        depth = draw(st.integers(1, max_depth))
        # reuse an existing first key sometimes, so that fields share objects
        head = [draw(st.sampled_from([q[0] for q in taken]))] if taken and depth > 1 and draw(st.booleans()) else []
        p = tuple(head + draw(st.lists(PATH_KEYS, min_size=depth - len(head), max_size=depth - len(head))))
        assume(free(p))
        taken.append(p)
        return p

    n_keys = draw(st.integers(1, min(2, n)))
    fields = []
    for i, col in enumerate(columns):
        is_key = i < n_keys
        type_ = draw(column_types(for_key=is_key))
        f = {"column": col, "path": ".".join(new_path(1 if is_key else 3)), "type": type_}
        aliases = [".".join(new_path(3)) for _ in range(draw(st.integers(0, 2)))]
        if aliases:
            f["aliases"] = aliases
        if is_key:
            if type_ == "varchar" and draw(st.booleans()):
                f["default"] = "uuid4"
        else:
            choice = draw(st.sampled_from(["none", "none", "default", "uuid4", "required", "nonstrict"]))
            if choice == "default":
                f["default"] = draw(_yaml_scalar_default(type_))
            elif choice == "uuid4" and type_ == "varchar":
                f["default"] = "uuid4"
            elif choice == "required":
                f["required"] = True
            elif choice == "nonstrict":
                f["strict"] = False
        fields.append(f)
    keys = columns[:n_keys]
    return {
        "entity": entity,
        "plural": entity + "_list",
        "table": draw(IDENTIFIERS.filter(lambda t: t not in ("scenarios",))) + "_rnd",
        "primary_key": keys[0] if len(keys) == 1 and draw(st.booleans()) else keys,
        "fields": draw(st.permutations(fields)),
    }
