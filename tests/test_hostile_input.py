"""Hostile input: every input either round-trips exactly or raises one of our
validation errors naming where; never a crash, a database error or a partial write,
on either backend.

What we decided: NaN and Infinity are refused (they are not JSON); so are
strings with lone surrogates where a text column must hold them (mapped
``varchar`` / ``json`` fields, scenario names, tags, descriptions: DuckDB stores
UTF-8), while unmapped data keeps them (escaped in the residual's JSON text);
nesting deeper than 200 levels is refused.

The fuzzers run ``FUZZ_EXAMPLES`` inputs each (six times the hypothesis
profile's example count: 150 under ``ci``, 600 under ``explore``, 12,000 under ``soak``)."""

from __future__ import annotations

import itertools
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
from healthsim_state import ScenarioNotFoundError, StateManager, ValidationError

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = oracle.load_mapping_dirs([REPO / "mappings"])
FUZZ_EXAMPLES = settings.default.max_examples * 6
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

# Every character, lone surrogates and NUL included.
ANY_CHAR = st.characters(codec=None, categories=None, exclude_categories=())
KEYS = st.one_of(st.text(ANY_CHAR, max_size=6), st.sampled_from(
    ["", ".", "a.b", "\x00", "name", "given", "address", "_provenance", "id", "patient_id", "'; DROP TABLE x; --"]))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**90, max_value=2**90),
    st.floats(allow_nan=True, allow_infinity=True), st.text(ANY_CHAR, max_size=12),
    st.sampled_from(["2024-01-15", "2024-01-15T10:30Z", "1970-03", "0001-01-01T00:00:00+01:00", "NaN"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=16)
# Keys the built-in mappings name (so type checks are hit), and anything else.
MAPPED_PATHS = sorted({f.path for m in MAPPINGS.values() for f in oracle.fields_of(m)}
                      | {a for m in MAPPINGS.values() for f in oracle.fields_of(m) for a in f.aliases})


@st.composite
def hostile_entity(draw) -> dict:
    entity = draw(st.dictionaries(KEYS, JSON, max_size=5))
    for path in draw(st.lists(st.sampled_from(MAPPED_PATHS), max_size=4)):
        node = entity
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[path[-1]] = draw(JSON)
    return entity


TYPE_KEYS = sorted(MAPPINGS) + [oracle.plural_of(m) for m in MAPPINGS.values()]
hostile_entities = st.dictionaries(
    st.one_of(st.sampled_from(TYPE_KEYS), st.sampled_from(["patients; DROP TABLE patients", "scenarios", "x'y"]),
              st.text(ANY_CHAR, max_size=5)),
    st.one_of(st.lists(hostile_entity(), max_size=3), JSON), max_size=3)
hostile_names = st.one_of(st.text(ANY_CHAR, min_size=1, max_size=20),
                          st.sampled_from(["a'b", 'a"b', "x; DROP TABLE scenarios;--", "../../etc/passwd",
                                           "line\nbreak", "C:\\temp\\x", "\x00"]))

# The decisions above, as the words our errors use.
ALLOWED_REFUSALS = ("lone surrogate", "nested deeper", "out of the supported range")


def expected_entities(entities: dict) -> dict | None:
    """What a load must return per the independent oracle, or None when the
    oracle says the input is invalid."""
    expected = {}
    try:
        for key, items in entities.items():
            kind = next((t for t, m in MAPPINGS.items() if key in (t, oracle.plural_of(m))), None)
            if kind is None or not isinstance(items, list) or kind in expected:
                return None
            expected[kind] = oracle.expect(MAPPINGS[kind], items)
    except oracle.Invalid:
        return None
    return expected


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def fuzz_db(request):
    """One store a backend for the fuzzers. DuckDB's is in memory: the same
    engine and SQL as a file, without a file's sync at each of the fuzzers'
    hundreds of commits (what only a file has is tested in test_processes)."""
    if request.param == "duckdb":
        target = ":memory:"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        target = cluster.create_database(f"fuzz_{os.getpid()}")
        request.addfinalizer(lambda: cluster.drop_database(f"fuzz_{os.getpid()}"))
    with StateManager(target) as manager:
        yield manager


_names = itertools.count()


def test_fuzz_entities_round_trip_or_are_refused_with_a_place(fuzz_db):
    ran = {"saved": 0, "refused": 0}

    @FUZZ
    @given(entities=hostile_entities)
    def fuzz(entities):
        ran["saved" if save_or_refuse(fuzz_db, entities) else "refused"] += 1

    fuzz()
    # the fuzzer itself ran: hypothesis may stop early, never at nothing
    assert ran["saved"] + ran["refused"] >= FUZZ_EXAMPLES // 2, ran
    assert ran["saved"] and ran["refused"], ran
    print(f"\nfuzzed entity saves: {ran['saved']} saved, {ran['refused']} refused")


def save_or_refuse(fuzz_db, entities) -> bool:
    """Save ``entities``: True if saved and loaded back as the oracle says,
    False if refused with our error naming where (and nothing written)."""
    name = f"fuzz-{next(_names)}"
    expected = expected_entities(entities)
    try:
        fuzz_db.save_scenario(name, entities)
    except ValidationError as error:
        assert error.problems and all(p.message for p in error.problems)
        assert all(p.entity_type or p.path for p in error.problems), "every problem says where"
        if expected is not None:  # the oracle accepts it: only our documented refusals may differ
            assert all(any(word in p.message for word in ALLOWED_REFUSALS) for p in error.problems), str(error)
        assert not fuzz_db.scenario_exists(name)
        return False
    assert expected is not None, f"saved what the oracle refuses: {entities!r}"
    loaded = fuzz_db.load_scenario(name)["entities"]
    for kind, items in expected.items():
        assert oracle.diff(items, loaded[kind], f"$.{kind}") is None
    return True


@FUZZ
@given(name=hostile_names, description=st.none() | st.text(ANY_CHAR, max_size=10),
       tags=st.lists(st.text(ANY_CHAR, max_size=6), max_size=3))
def test_fuzz_names_tags_and_descriptions(fuzz_db, name, description, tags):
    fuzz_db.delete_scenario(name)
    try:
        sid = fuzz_db.save_scenario(name, {"patient": [{"patient_id": "p"}]}, description=description, tags=tags)
    except ValidationError as error:
        assert all(p.path and p.path.split("[")[0] in ("name", "description", "tags") for p in error.problems)
        assert any(word in str(error) for word in ("lone surrogate", "non-empty", "valid Unicode", "NUL character"))
        return
    loaded = fuzz_db.load_scenario(sid)
    assert (loaded["name"], loaded["description"]) == (name, description)
    assert loaded["tags"] == list(dict.fromkeys(tags))


# --- the named cases ------------------------------------------------------------------

def test_ten_megabyte_strings_round_trip(sm):
    big = "x" * 10_000_000 + "é"
    sm.save_scenario("big", {"clinical_note": [{"note_id": "n", "content": big, "extra": {"blob": big}}]})
    (note,) = sm.load_scenario("big")["entities"]["clinical_note"]
    assert note["content"] == big and note["extra"]["blob"] == big


def test_a_thousand_levels_of_nesting_is_refused_naming_where(sm):
    deep: dict = {}
    node = deep
    for _ in range(1000):
        node["d"] = {}
        node = node["d"]
    with pytest.raises(ValidationError, match=r"patient\[0\] @ deep\.d\.d.*nested deeper than 200 levels"):
        sm.save_scenario("deep", {"patient": [{"patient_id": "p", "deep": deep}]})


def test_two_hundred_levels_round_trip(sm):
    deep: object = "bottom"
    for _ in range(95):  # an object and a list a step: 190 levels
        deep = {"d": [deep]}
    sm.save_scenario("deep", {"patient": [{"patient_id": "p", "deep": deep}]})
    assert sm.load_scenario("deep")["entities"]["patient"][0]["deep"] == deep


@pytest.mark.parametrize("value, fragment", [
    (float("nan"), "numeric_value: NaN and Infinity are not JSON numbers"),
    (float("-inf"), "numeric_value: NaN and Infinity are not JSON numbers"),
    (2**64, "study_day: expected an integer in"),
    (10**400, "numeric_value: integer too large for a double"),
])
def test_refused_numbers(sm, value, fragment):
    entities = ({"trial_visit": [{"usubjid": "S", "visit_num": 1, "study_day": value}]} if "study_day" in fragment
                else {"lab_result": [{"lab_result_id": "l", "numeric_value": value}]})
    with pytest.raises(ValidationError, match=fragment):
        sm.save_scenario("n", entities)
    assert sm.list_scenarios() == []


def test_unmapped_oddities_round_trip(sm):
    odd = {"": 1, "a.b": {"c.d": 2}, "\x00k": "v\x00", "big": 2**200, "neg": -2**70, "lone": "\ud800",
           "\udfff": [None, {}, []], "'; DROP TABLE patients; --": True}
    sm.save_scenario("odd", {"patient": [{"patient_id": "p", **odd}]})
    loaded = sm.load_scenario("odd")["entities"]["patient"][0]
    assert {k: loaded[k] for k in odd} == odd


def test_entity_type_keys_that_look_like_sql_are_unknown_types(sm):
    with pytest.raises(ValidationError, match=r"unknown entity type 'patients; DROP TABLE patients'"):
        sm.save_scenario("sql", {"patients; DROP TABLE patients": [{}]})
    assert sm.list_scenarios() == []


def test_a_lone_surrogate_in_a_name_is_refused(sm):
    with pytest.raises(ValidationError, match="lone surrogate"):
        sm.save_scenario("bad \ud800 name", {})
    assert sm.list_scenarios() == []


def test_lookups_by_a_name_no_scenario_can_have_find_nothing(sm):
    name = "bad \ud800 name"
    assert sm.delete_scenario(name) is False and sm.scenario_exists(name) is False
    with pytest.raises(ScenarioNotFoundError):
        sm.load_scenario(name)
    with pytest.raises(ValidationError, match="a scenario id or name is a string, got int"):
        sm.load_scenario(5)
