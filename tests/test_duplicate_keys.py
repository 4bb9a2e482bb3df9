"""Duplicate keys are found in any chunk, on either way an entity is
flattened, and named with the first position of the key and the later one,
in position order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthsim_state import StateManager, ValidationError
from healthsim_state.engine import batch, columns

_names = itertools.count()


@pytest.fixture(scope="module")
def store():
    with StateManager(":memory:") as sm:
        yield sm


def _expected(ids: list[str]) -> list[str]:
    first: dict[str, int] = {}
    out = []
    for position, key in enumerate(ids):
        if first.setdefault(key, position) != position:
            out.append(f"duplicate key (patient_id={key!r}): positions {first[key]} and {position} have the same key")
    return out


@settings(max_examples=settings.default.max_examples * 4,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ids=st.lists(st.sampled_from([f"p{i}" for i in range(25)]), min_size=1, max_size=60),
       odd=st.sets(st.integers(0, 59)), chunk=st.integers(1, 25), min_group=st.sampled_from([1, 4, 32]))
def test_duplicates_are_named_in_position_order_whatever_the_chunks(store, monkeypatch, ids, odd, chunk, min_group):
    monkeypatch.setattr(batch, "CHUNK", chunk)
    monkeypatch.setattr(columns, "MIN_GROUP", min_group)
    # a rare shape (an unmapped key) sends an entity the generic way when its group is small
    patients = [{"patient_id": key, **({"x": position} if position in odd else {})}
                for position, key in enumerate(ids)]
    name = f"s{next(_names)}"
    expected = _expected(ids)
    if not expected:
        store.save_scenario(name, {"patient": patients})
        assert [p["patient_id"] for p in store.load_scenario(name)["entities"]["patient"]] == ids
        return
    with pytest.raises(ValidationError) as raised:
        store.save_scenario(name, {"patient": patients})
    assert [p.message for p in raised.value.problems] == expected
    assert not store.scenario_exists(name)
