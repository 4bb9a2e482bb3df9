"""The semantics of the mapping format, one round trip a line:
``load(save(given)) == expected`` (the canonical form), plus what SQL sees."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import duckdb
import pytest

from healthsim_state.interop import run_query
from healthsim_state import StateManager

THING = """\
entity: thing
table: things
primary_key: id
fields:
  - {column: id, path: id, type: varchar}
  - {column: given, path: name.given, type: varchar, aliases: [given_name, name.first, first]}
  - {column: phone, path: telecom.phone, type: varchar, aliases: [contact.phone]}
  - {column: kind, path: meta.kind, type: varchar, default: basic}
  - {column: deep, path: a.b.c, type: integer, aliases: [x.y.z]}
  - {column: at, path: at, type: timestamp}
  - {column: day, path: day, type: date}
  - {column: temp, path: temp, type: double}
  - {column: pulse, path: pulse, type: integer, strict: false}
  - {column: money, path: money, type: "decimal(12,2)"}
  - {column: doc, path: doc, type: json}
  - {column: big, path: big, type: bigint}
  - {column: flag, path: flag, type: boolean}
"""

DEFAULT = {"meta": {"kind": "basic"}}


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    root = tmp_path_factory.mktemp("canonical")
    (root / "maps").mkdir()
    (root / "maps" / "thing.yaml").write_text(THING)
    with StateManager(root / "db.duckdb", mapping_dirs=[root / "maps"]) as manager:
        yield manager


_names = iter(range(1_000_000))


def roundtrip(sm: StateManager, entity: dict, kind: str = "thing") -> dict:
    name = f"s{next(_names)}"
    sm.save_scenario(name, {kind: [entity]})
    (loaded,) = sm.load_scenario(name)["entities"][kind]
    return loaded


def with_default(entity: dict) -> dict:
    return {**DEFAULT, **entity}


CASES = [
    # aliases: the first one present moves to the path
    ({"id": "1", "first": "A"}, {"id": "1", "name": {"given": "A"}}),
    ({"id": "1", "given_name": "A", "first": "B"}, {"id": "1", "name": {"given": "A"}, "first": "B"}),
    # an alias present while the path is present stays as unmapped data; null counts as present
    ({"id": "1", "name": {"given": "A"}, "first": "B"}, {"id": "1", "name": {"given": "A"}, "first": "B"}),
    ({"id": "1", "name": {"given": None}, "first": "B"}, {"id": "1", "name": {"given": None}, "first": "B"}),
    # an object emptied by the move is removed; one with more in it is kept
    ({"id": "1", "contact": {"phone": "5"}}, {"id": "1", "telecom": {"phone": "5"}}),
    ({"id": "1", "contact": {"phone": "5", "fax": "6"}}, {"id": "1", "telecom": {"phone": "5"}, "contact": {"fax": "6"}}),
    ({"id": "1", "x": {"y": {"z": 3}}}, {"id": "1", "a": {"b": {"c": 3}}}),
    ({"id": "1", "name": {"first": "A"}}, {"id": "1", "name": {"given": "A"}}),
    # a path that runs into a non-object is blocked: no alias, no default, value as given
    ({"id": "1", "name": "John Smith", "first": "J"}, {"id": "1", "name": "John Smith", "first": "J"}),
    ({"id": "1", "meta": "manual"}, {"id": "1", "meta": "manual"}),
    ({"id": "1", "a": {"b": 7}}, {"id": "1", "a": {"b": 7}}),
    ({"id": "1", "a": {"b": None}}, {"id": "1", "a": {"b": None}}),
    # defaults fill absent fields only
    ({"id": "1", "meta": {"kind": None}}, {"id": "1", "meta": {"kind": None}}),
    ({"id": "1", "meta": {"kind": "fancy", "v": 2}}, {"id": "1", "meta": {"kind": "fancy", "v": 2}}),
    # unmapped data at any depth is kept: empty objects, nulls, lists of objects, dotted keys
    ({"id": "1", "name": {}}, {"id": "1", "name": {}}),
    ({"id": "1", "name": {"given": "A", "nickname": "Al"}}, {"id": "1", "name": {"given": "A", "nickname": "Al"}}),
    ({"id": "1", "hist": [{"code": "E11", "at": None}, []], "k.j": {"": 2**80}},
     {"id": "1", "hist": [{"code": "E11", "at": None}, []], "k.j": {"": 2**80}}),
    # exact values: strings stay as given, an int stays an int, a float the same float
    ({"id": "1", "at": "2024-01-15T10:30Z"}, {"id": "1", "at": "2024-01-15T10:30Z"}),
    ({"id": "1", "at": "2024-01-15"}, {"id": "1", "at": "2024-01-15"}),
    ({"id": "1", "day": "20240115"}, {"id": "1", "day": "20240115"}),
    ({"id": "1", "temp": 98}, {"id": "1", "temp": 98}),
    ({"id": "1", "temp": -0.0}, {"id": "1", "temp": -0.0}),
    ({"id": "1", "money": 0.1, "big": -2**63}, {"id": "1", "money": 0.1, "big": -2**63}),
    ({"id": "1", "money": 100}, {"id": "1", "money": 100}),
    ({"id": "1", "money": -0.0}, {"id": "1", "money": -0.0}),
    ({"id": "1", "money": Decimal("-0.00")}, {"id": "1", "money": -0.0}),
    ({"id": "1", "flag": False, "doc": [1, "two", {"3": None}]}, {"id": "1", "flag": False, "doc": [1, "two", {"3": None}]}),
    ({"id": "1", "doc": "just text"}, {"id": "1", "doc": "just text"}),
    # objects are rendered as JSON values
    ({"id": "1", "day": dt.date(2024, 1, 15), "at": dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.timezone.utc)},
     {"id": "1", "day": "2024-01-15", "at": "2024-01-15T10:30:00+00:00"}),
    ({"id": uuid.UUID(int=1), "money": Decimal("12.50"), "doc": {"when": dt.date(2020, 2, 29)}},
     {"id": "00000000-0000-0000-0000-000000000001", "money": 12.5, "doc": {"when": "2020-02-29"}}),
    ({"id": "1", "extra": {"n": Decimal("3")}}, {"id": "1", "extra": {"n": 3}}),
    # a non-strict field keeps what does not fit
    ({"id": "1", "pulse": {"value": 92, "unit": "bpm"}}, {"id": "1", "pulse": {"value": 92, "unit": "bpm"}}),
    ({"id": "1", "pulse": 92.5}, {"id": "1", "pulse": 92.5}),
]


@pytest.mark.parametrize("given, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_roundtrip_is_canonical(things, given, expected):
    assert_identical(roundtrip(things, given), with_default(expected) if "meta" not in expected else expected)


def assert_identical(got, expected):
    """Equal, and of the same JSON types all the way down (1 is not 1.0 here)."""
    assert got == expected
    assert _typed(got) == _typed(expected)


def _typed(value):
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


def test_the_input_entity_is_never_changed(things):
    given = {"id": "1", "contact": {"phone": "5"}, "name": {"first": "A"}, "x": {"y": {"z": 1}}}
    copy = {"id": "1", "contact": {"phone": "5"}, "name": {"first": "A"}, "x": {"y": {"z": 1}}}
    roundtrip(things, given)
    assert given == copy


def test_typed_columns_hold_the_values(things):
    sid = things.save_scenario("columns", {"thing": [{
        "id": "1", "first": "A", "at": "2024-01-15T10:30:00+02:00", "day": "2024-01-15", "temp": 98,
        "pulse": {"value": 92}, "money": 0.1, "doc": {"k": [1]}, "x": {"y": {"z": 3}}}]})
    (row,) = run_query(things.db_path, "SELECT given, \"at\", day, temp, pulse, money, doc->>'$.k[0]', deep, kind "
                                       "FROM things WHERE scenario_id = ?", [sid]).rows
    assert row == ("A", dt.datetime(2024, 1, 15, 8, 30), dt.date(2024, 1, 15), 98.0, None, Decimal("0.10"),
                   "1", 3, "basic")


def test_residual_is_null_when_the_columns_say_everything(things):
    sid = things.save_scenario("plain", {"thing": [{"id": "1", "name": {"given": "A"}, "temp": 1.5}]})
    assert run_query(things.db_path, "SELECT _residual FROM things WHERE scenario_id = ?", [sid]).rows == [(None,)]


# --- the built-in types -------------------------------------------------------------

def test_builtin_patient_with_real_world_aliases(things):
    given = {"id": "p1", "first_name": "Maria", "name": {"family_name": "Lopez"}, "dob": "1970-01-02",
             "address": {"street_address": "1 Main", "postal_code": "78209"}, "contact": {"phone": "555"},
             "insurance": {"primary": {"payer_id": "60054"}}}
    assert roundtrip(things, given, "patient") == {
        "patient_id": "p1", "name": {"given": "Maria", "family": "Lopez"}, "birthDate": "1970-01-02",
        "address": {"line1": "1 Main", "postalCode": "78209"}, "telecom": {"phone": "555"},
        "insurance": {"primary": {"payer_id": "60054"}},
        "_provenance": {"source_type": "generated", "source_system": "patientsim"}}


def test_builtin_vital_sign_keeps_measurements_in_any_shape(things):
    given = {"vital_sign_id": "v1", "heart_rate": {"value": 92, "unit": "bpm"}, "temperature": 98.6,
             "blood_pressure": {"systolic": 168, "diastolic": 95, "unit": "mmHg"}}
    loaded = roundtrip(things, given, "vital_sign")
    assert {k: loaded[k] for k in given} == given


def test_a_missing_uuid4_key_is_generated_from_the_entity_and_kept(things):
    loaded = roundtrip(things, {"name": {"given": "A"}}, "patient")
    assert uuid.UUID(loaded["patient_id"]).version == 5  # made from the content: see test_generated_keys
    assert roundtrip(things, {"name": {"given": "A"}}, "patient")["patient_id"] == loaded["patient_id"]
    assert roundtrip(things, {"name": {"given": "B"}}, "patient")["patient_id"] != loaded["patient_id"]
