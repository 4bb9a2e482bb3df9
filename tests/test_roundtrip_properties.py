"""Round-trip properties: load(save(entities)) == canonical(entities).

The entities are drawn from strategies derived from the mapping files (the
built-in ones, plus a user-added type written to a temp dir that exercises every
column type); the expected value comes from tests/oracle.py, an independent,
naive reading of the mapping-format reference. One StateManager serves the
module's fixed-mapping tests (DuckDB in memory: the bulk of the examples, fast);
a few dozen examples go through a DuckDB file and a PostgreSQL server; the
random-mapping tests need one store per mapping.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import itertools
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import oracle
import strategies as S
from healthsim_state import StateManager, ValidationError

REPO = Path(__file__).resolve().parents[1]
BUILTIN_DIR = REPO / "mappings"
USER_TYPE = "device_reading"
BUILTIN_TYPES = sorted(oracle.load_mapping_dirs([BUILTIN_DIR]))
ALL_TYPES = BUILTIN_TYPES + [USER_TYPE]

# the module-scoped manager is shared by every example; the autouse fixture of
# conftest only isolates $HOME, which these tests do not touch
PROPERTY = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


class Env:
    """the shared manager, the raw mappings the oracle reads, fresh names"""

    def __init__(self, sm: StateManager, mappings: dict, names: itertools.count):
        self.sm, self.mappings, self.names = sm, mappings, names

    def __repr__(self) -> str:
        return f"Env({sorted(self.mappings)})"

    def fresh_name(self) -> str:
        return f"prop-{next(self.names)}"

    def singular(self, key: str) -> str:
        for t, m in self.mappings.items():
            if key in (t, oracle.plural_of(m)):
                return t
        raise KeyError(key)


def _env(root: Path, target: str):
    user_dir = root / "user_mappings"
    user_dir.mkdir()
    (user_dir / f"{USER_TYPE}.yaml").write_text(S.USER_MAPPING_YAML, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(root))
        mp.delenv("HEALTHSIM_DB", raising=False)
        mp.delenv("HEALTHSIM_MAPPINGS", raising=False)
        with StateManager(target, mapping_dirs=[user_dir]) as sm:
            yield Env(sm, oracle.load_mapping_dirs([BUILTIN_DIR, user_dir]), itertools.count())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The properties' store: DuckDB in memory. Every example goes through the
    real engine and database (types, SQL, read forms) without a file to open
    and close per operation; ``store_env`` runs a few dozen examples through
    a file and a server."""
    root = tmp_path_factory.mktemp("roundtrip")
    yield from _env(root, ":memory:")


_databases = itertools.count()


def new_target(request, kind: str, root: Path) -> str:
    """A new, empty store of ``kind``: a DuckDB file under ``root``, or a fresh
    database on the test server (dropped when the test ends)."""
    if kind == "duckdb":
        return str(root / f"db{next(_databases)}.duckdb")
    cluster = request.getfixturevalue("pg_cluster")
    name = f"roundtrip_{os.getpid()}_{next(_databases)}"
    request.addfinalizer(lambda: cluster.drop_database(name))
    return cluster.create_database(name)


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def store_env(request, tmp_path_factory):
    """A store on each backend, for the examples that go through the database
    on both (a few dozen each: the properties' bulk runs on DuckDB)."""
    root = tmp_path_factory.mktemp("roundtrip_store")
    yield from _env(root, new_target(request, request.param, root))


def _expected(env: Env, entities: dict) -> dict:
    out = {t: [] for t in env.mappings}
    for key, ents in entities.items():
        out[env.singular(key)] = oracle.expect(env.mappings[env.singular(key)], ents)
    return out


def assert_round_trip(env: Env, entities: dict) -> None:
    expected = _expected(env, entities)
    given_copy = copy.deepcopy(entities)
    name = env.fresh_name()
    env.sm.save_scenario(name, entities)
    assert entities == given_copy, "save_scenario changed its input"
    loaded = env.sm.load_scenario(name)["entities"]
    assert set(loaded) == set(env.sm.entity_types) == set(env.mappings)
    for t, exp in expected.items():
        problem = oracle.diff(exp, loaded[t], f"entities.{t}")
        assert problem is None, problem
        # uuid4 defaults: fresh ones (distinct from each other)
        fresh = [oracle.lookup(got, p) for e, got in zip(exp, loaded[t]) for p in oracle.placeholders(e)]
        assert len(set(fresh)) == len(fresh), f"uuid4 defaults repeat: {fresh}"


# --------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("entity_type", ALL_TYPES)
@PROPERTY
@given(data=st.data())
def test_round_trip_one_type(env, entity_type, data):
    mapping = env.mappings[entity_type]
    key = data.draw(st.sampled_from([entity_type, oracle.plural_of(mapping)]), label="input key")
    ents = data.draw(S.entity_lists(mapping, max_size=4), label="entities")
    assert_round_trip(env, {key: ents})


@PROPERTY
@given(data=st.data())
def test_round_trip_whole_scenario(env, data):
    entities = data.draw(S.scenario_entities(env.mappings, max_size=2), label="entities")
    assert_round_trip(env, entities)


# --------------------------------------------------------------------------
# Invalid input: nothing written, every problem placed
# --------------------------------------------------------------------------


def _problem_places(exc: ValidationError):
    return [(p.entity_type, p.position, p.path) for p in exc.problems]


def check_problems(entity_type: str, oracle_problems, exc: ValidationError) -> None:
    """Every problem the oracle finds is reported at (type, position, path), and
    every reported problem is one the oracle knows of."""
    got = _problem_places(exc)
    note(f"reported: {got}")
    for op in oracle_problems:
        if op.path is not None:
            assert (entity_type, op.position, op.path) in got, (op, got)
        else:  # duplicate key / unsupported value: some problem at that entity
            assert any(t == entity_type and pos == op.position for t, pos, _ in got), (op, got)
    known = {(op.position, op.path) for op in oracle_problems}
    positions = {op.position for op in oracle_problems if op.path is None}
    for t, pos, path in got:
        assert t == entity_type, (t, pos, path)
        assert (pos, path) in known or pos in positions, f"unexpected problem {(t, pos, path)}; oracle: {oracle_problems}"


def assert_nothing_written(env: Env, name: str, before) -> None:
    if before is None:
        with pytest.raises(LookupError):
            env.sm.load_scenario(name)
    else:
        after = env.sm.load_scenario(name)
        assert after["entities"] == before["entities"]
        assert after["scenario_id"] == before["scenario_id"]


def _maybe_existing(env: Env, data) -> tuple[str, object]:
    """a fresh name, or the name of a saved scenario the failed save must leave alone"""
    name = env.fresh_name()
    if data.draw(st.booleans(), label="overwrite an existing scenario"):
        env.sm.save_scenario(name, {"patients": [{"name": {"given": "Keep"}}]})
        return name, env.sm.load_scenario(name)
    return name, None


_RAW = {**oracle.load_mapping_dirs([BUILTIN_DIR]), USER_TYPE: yaml.safe_load(S.USER_MAPPING_YAML)}
STRICT_TYPES = [t for t in ALL_TYPES if any(f.strict and f.type != "json" for f in oracle.fields_of(_RAW[t]))]


@PROPERTY
@given(data=st.data())
def test_misfit_in_strict_field_is_rejected(env, data):
    entity_type = data.draw(st.sampled_from(STRICT_TYPES), label="type")
    mapping = env.mappings[entity_type]
    ents = data.draw(S.entity_lists(mapping, min_size=1, max_size=3), label="valid entities")
    pos = data.draw(st.integers(0, len(ents) - 1), label="position")
    target = ents[pos]
    # a strict field whose path can take a value in this entity (not blocked)
    candidates = [f for f in oracle.fields_of(mapping)
                  if f.strict and f.type != "json" and oracle.lookup(target, f.path) is not oracle.BLOCKED]
    assume(candidates)
    f = data.draw(st.sampled_from(candidates), label="field")
    bad = data.draw(S.invalid_values(f.type), label="ill-fitting value")
    oracle.put(target, f.path, bad)
    with pytest.raises(oracle.Invalid) as expected:
        oracle.expect(mapping, ents)
    key = data.draw(st.sampled_from([entity_type, oracle.plural_of(mapping)]), label="input key")
    name, before = _maybe_existing(env, data)
    with pytest.raises(ValidationError) as raised:
        env.sm.save_scenario(name, {key: ents}, overwrite=True)
    check_problems(entity_type, expected.value.problems, raised.value)
    mine = [p for p in raised.value.problems if p.position == pos and p.path == f.dotted]
    assert mine, _problem_places(raised.value)
    assert any(p.value == bad or p.value == oracle.render(bad) for p in mine), [p.value for p in mine]
    assert_nothing_written(env, name, before)


@pytest.mark.parametrize("entity_type", ALL_TYPES)
@PROPERTY
@given(data=st.data())
def test_validity_agrees_with_oracle(env, entity_type, data):
    """Possibly invalid lists (missing / null keys and required fields, ill-fitting
    values in strict fields, a key given twice in two spellings): the package
    accepts exactly what the oracle accepts, and places every problem."""
    mapping = env.mappings[entity_type]
    ents = data.draw(S.entity_lists(mapping, max_size=4, valid=False), label="entities")
    name, before = _maybe_existing(env, data)
    try:
        expected = oracle.expect(mapping, ents)
    except oracle.Invalid as inv:
        with pytest.raises(ValidationError) as raised:
            env.sm.save_scenario(name, {entity_type: ents}, overwrite=True)
        check_problems(entity_type, inv.problems, raised.value)
        assert_nothing_written(env, name, before)
        return
    env.sm.save_scenario(name, {entity_type: ents}, overwrite=True)
    loaded = env.sm.load_scenario(name)["entities"][entity_type]
    problem = oracle.diff(expected, loaded, f"entities.{entity_type}")
    assert problem is None, problem


UNSUPPORTED = st.sampled_from([
    float("nan"), float("inf"), float("-inf"), decimal.Decimal("NaN"), decimal.Decimal("Infinity"),
    (1, 2), {1, 2}, b"bytes", object(), frozenset(), dt.time(10, 30), dt.timedelta(days=1),
])


@PROPERTY
@given(data=st.data())
def test_unsupported_values_are_rejected(env, data):
    """NaN / Infinity, tuples, sets, bytes, other objects, non-str keys: rejected
    wherever they are (mapped, unmapped, inside a json value)."""
    entity_type = data.draw(st.sampled_from(ALL_TYPES), label="type")
    mapping = env.mappings[entity_type]
    ents = data.draw(S.entity_lists(mapping, min_size=1, max_size=3), label="valid entities")
    pos = data.draw(st.integers(0, len(ents) - 1), label="position")
    spec = S.spec_of(mapping)
    where = data.draw(st.sampled_from(["unmapped", "nested unmapped", "field", "non-str key"]), label="where")
    bad = data.draw(UNSUPPORTED, label="value")
    target = ents[pos]
    if where == "unmapped":
        target["zz_unmapped"] = bad
    elif where == "nested unmapped":
        target["zz_unmapped"] = {"list": [{"deep": bad}]}
    elif where == "field":
        f = data.draw(st.sampled_from(spec.fields), label="field")
        assume(oracle.lookup(target, f.path) is not oracle.BLOCKED)
        oracle.put(target, f.path, bad if f.type != "json" else {"x": [bad]})
    else:
        target["zz_unmapped"] = {data.draw(st.sampled_from([1, None, 2.5, ("t",)])): "v"}
    name, before = _maybe_existing(env, data)
    with pytest.raises(ValidationError) as raised:
        env.sm.save_scenario(name, {entity_type: ents}, overwrite=True)
    assert any(p.entity_type == entity_type and p.position == pos for p in raised.value.problems), \
        _problem_places(raised.value)
    assert_nothing_written(env, name, before)


# --------------------------------------------------------------------------
# Edge cases, one line each: what the properties found or must keep finding
# --------------------------------------------------------------------------

_PLUS1 = dt.timezone(dt.timedelta(hours=1))
_DR = {"reading_date": "2024-01-15", "channel": 1.0, "label": "x"}

EDGE_CASES = [
    # a float comes back as the same float: -0.0 is not 0.0
    ("claim", {"claim_id": "c1", "total_paid": -0.0}),
    ("device_reading", {**_DR, "billing": {"amount": -0.0}}),
    ("lab_result", {"numeric_value": -0.0}),
    # accepted by datetime.fromisoformat, so valid; the UTC instant is in year 0 / 10000
    # other ISO spellings datetime.fromisoformat / date.fromisoformat accept
    ("encounter", {"period": {"start": "2024-W03-1T10:30", "end": "20240115T1030"}}),
    ("encounter", {"period": {"start": "2024-01-15T10:30:00.123456789+05:30:15"}}),
    ("patient", {"birthDate": "2024-W03", "deceasedDate": "2024W031"}),
    ("patient", {"birthDate": dt.date(1, 1, 1), "deceasedDate": "9999-12-31"}),
    # blocked paths: no alias moved, no default, value as given
    ("patient", {"name": "John Smith", "first_name": "John"}),
    ("patient", {"name": None, "given_name": "John"}),
    ("patient", {"name": [{"given": "John"}], "name.given": "literal dotted key"}),
    ("patient", {"_provenance": None}),
    # aliases: a null counts as present; later aliases and path-present aliases stay
    ("patient", {"first_name": None, "given_name": "second alias stays"}),
    ("patient", {"name": {"given": "A", "given_name": "B"}, "contact": {"phone": "1", "fax": "2"}}),
    ("device_reading", {**_DR, "legacy": {"meta": {"times": {"taken_at": "2024-01-15"}}}}),
    ("device_reading", {**_DR, "meta": {"total": 5}, "a": {"bc": 3}}),
    # unmapped data exactly as given
    ("patient", {"": {"": None}, "big": [2**200, -(2**64)], "nul": "a\x00b", "a\x00b": {}}),
    ("device_reading", {**_DR, "payload": [2**200, {"d": dt.date(2024, 1, 1)}, decimal.Decimal("1.50")]}),
    # non-strict fields keep what does not fit
    ("vital_sign", {"heart_rate": {"value": 92, "unit": "bpm"}, "spo2": 2.0, "pain_score": True}),
    ("diagnosis", {"diagnosed_date": "2024-01-15T10:30:00Z", "resolved_date": "1970-03"}),
]


@pytest.mark.parametrize(
    "entity_type, entity", EDGE_CASES,
    ids=[f"{i}-{t}" for i, (t, _) in enumerate(EDGE_CASES)],
)
def test_edge_case_round_trip(store_env, entity_type, entity):
    assert_round_trip(store_env, {entity_type: [entity]})


@settings(PROPERTY, max_examples=30)
@given(data=st.data())
def test_round_trip_through_each_store(store_env, data):
    """Whole scenarios of every type, through DuckDB and through PostgreSQL."""
    entities = data.draw(S.scenario_entities(store_env.mappings, max_size=2), label="entities")
    assert_round_trip(store_env, entities)


# --------------------------------------------------------------------------
# Random mappings: declarations and values drawn together
# --------------------------------------------------------------------------


@pytest.fixture
def scratch(request, tmp_path):
    """Where a fresh store per example goes: ``scratch(kind)`` makes one (its
    mapping directory, and the store). DuckDB's is in memory: a new manager
    on ``:memory:`` is a new, empty database, the same engine and SQL as a
    file's, without creating and syncing a file per example."""
    counter = itertools.count()

    def fresh(kind: str = "duckdb") -> tuple[Path, str]:
        here = tmp_path / f"m{next(counter)}"
        here.mkdir()
        return here, ":memory:" if kind == "duckdb" else new_target(request, kind, here)

    return fresh


@pytest.mark.parametrize("backend, examples", [("duckdb", None), ("postgres", 12)])
def test_round_trip_random_mapping(scratch, backend, examples):
    """A user-written mapping with any paths (any character but a dot), SQL words
    as column names, every type, composite keys, defaults, required and
    non-strict fields: the engine keeps the round trip for it too. (A fresh
    manager and database per example: the mapping differs each time.)"""

    @settings(PROPERTY, **({"max_examples": examples} if examples else {}))
    @given(data=st.data())
    def check(data):
        mapping = data.draw(S.mappings(), label="mapping")
        ents = data.draw(S.entity_lists(mapping, max_size=3), label="entities")
        key = data.draw(st.sampled_from([mapping["entity"], mapping["plural"]]), label="input key")
        assert_fresh_round_trip(scratch, mapping, key, ents, backend)

    check()


def assert_fresh_round_trip(scratch, mapping: dict, key: str, ents: list, backend: str = "duckdb") -> None:
    """round trip through a new manager whose only user mapping is `mapping`"""
    import builtins

    expected = oracle.expect(mapping, ents)
    here, target = scratch(backend)
    text = yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False)
    assert yaml.safe_load(text) == mapping
    (here / f"{mapping['entity']}.yaml").write_text(text, encoding="utf-8")
    try:
        with StateManager(target, mapping_dirs=[here]) as sm:
            sm.save_scenario("s", {key: ents})
            loaded = sm.load_scenario("s")["entities"][mapping["entity"]]
    finally:
        injected = hasattr(builtins, "HEALTHSIM_INJECTED")
        if injected:
            del builtins.HEALTHSIM_INJECTED
    assert not injected, "a mapping path was executed as code"
    problem = oracle.diff(expected, loaded, f"entities.{mapping['entity']}")
    assert problem is None, problem


# "A key may contain any character but a dot": paths are data, never code
AWKWARD_PATH_KEYS = ["\x00", "a\nb", "a\rb", "x\n    __import__('builtins').HEALTHSIM_INJECTED = 1  #",
                     'a"b', "a'b", "a\\b", "{x}", "'''", '"""', "#", " ", "\t", "é", "🔑", "select"]


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
@pytest.mark.parametrize("key", AWKWARD_PATH_KEYS, ids=[repr(k) for k in AWKWARD_PATH_KEYS])
def test_awkward_path_key_round_trip(scratch, key, backend):
    mapping = {"entity": "thing", "table": "things", "primary_key": "id",
               "fields": [{"column": "id", "path": "id", "type": "varchar"},
                          {"column": "v", "path": f"o.{key}", "type": "varchar", "aliases": [key]}]}
    ents = [{"id": "1", key: "moved"}, {"id": "2", "o": {key: "at path", "x": 1}, key: "stays"}]
    assert_fresh_round_trip(scratch, mapping, "things", ents, backend)


# decimal(P,S) up to DuckDB's 38 digits: a value that fits is saved and comes back
DECIMAL_CASES = [
    ("decimal(38,0)", 10**37 + 1), ("decimal(38,0)", -(10**38 - 1)), ("decimal(29,0)", 10**28 + 1),
    ("decimal(38,0)", decimal.Decimal(10**37 + 1)), ("decimal(38,38)", 0.1), ("decimal(38,10)", 10**27 + 1),
    ("decimal(18,4)", decimal.Decimal("99999999999999.9999")), ("decimal(1,1)", -0.5), ("decimal(1,0)", 5.0),
    ("decimal(12,2)", -0.0),
]


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
@pytest.mark.parametrize("type_, value", DECIMAL_CASES, ids=[f"{t}={v!r}" for t, v in DECIMAL_CASES])
def test_decimal_round_trip(scratch, type_, value, backend):
    mapping = {"entity": "amount", "table": "amounts", "primary_key": "id",
               "fields": [{"column": "id", "path": "id", "type": "varchar"},
                          {"column": "v", "path": "v", "type": type_}]}
    assert oracle.fits(type_, value)
    assert_fresh_round_trip(scratch, mapping, "amounts", [{"id": "1", "v": value}], backend)


# Decision: the stored instant is UTC; one that falls outside years 1-9999 in UTC
# (which Python's datetime cannot hold) is refused, naming the place.
OUT_OF_RANGE_INSTANTS = [
    ("period.start", "0001-01-01T00:00+01:00"),
    ("period.end", "9999-12-31T23:59-01:00"),
    ("period.start", dt.datetime(1, 1, 1, tzinfo=_PLUS1)),
]


@pytest.mark.parametrize("path, value", OUT_OF_RANGE_INSTANTS)
def test_instants_outside_the_utc_range_are_refused(env, path, value):
    outer, inner = path.split(".")
    name = env.fresh_name()
    with pytest.raises(ValidationError) as caught:
        env.sm.save_scenario(name, {"encounter": [{outer: {inner: value}}]})
    (problem,) = caught.value.problems
    assert (problem.entity_type, problem.position, problem.path) == ("encounter", 0, path)
    assert "out of the supported range in UTC" in problem.message
    assert not env.sm.scenario_exists(name)
