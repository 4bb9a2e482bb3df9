"""The import's reading in place (no deep copy of each resource), its release
of what it has read, and its sharing of equal strings: what is made is what
reading a copy makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healthsim_state import StateManager
from healthsim_state.fhir.importer import (
    index_inputs,
    input_files,
    read_resources,
    resolve_references,
)
from healthsim_state.fhir.mapper import FhirMapper
from healthsim_state.fhir.paths import _copy, _prune, _prune_owned
from healthsim_state.fhir.references import (
    ImportRefs,
    references_in,
    shared_references,
)
from healthsim_state.values import MISSING

DATA = Path(__file__).parent / "data" / "fhir"
INPUTS = ["synthea-like-bundle.json", "synthea-claims-bundle.json", "vitals-out-of-order.ndjson"]


@pytest.fixture
def mapper(db_path):
    with StateManager(db_path) as manager:
        yield FhirMapper.from_registry(manager.registry)


def resolved(name):
    refs, inputs = index_inputs(read_resources(input_files([DATA / name])))
    resolve_references(refs, inputs)
    return refs, inputs


@pytest.mark.parametrize("name", INPUTS)
def test_reading_in_place_makes_what_reading_a_copy_makes(mapper, name):
    refs, inputs = resolved(name)
    before = {item.local: _copy(item.resource) for item in inputs}
    from_copies = [mapper.map_resource(item.resource, refs=refs) for item in inputs]
    assert {item.local: item.resource for item in inputs} == before  # reading a copy leaves the input as it came
    refs, inputs = resolved(name)
    in_place = [mapper.map_resource(item.resource, refs=refs, in_place=True) for item in inputs]
    assert in_place == from_copies
    mapped = [item for item, made in zip(inputs, in_place) if made is not None]
    for item in mapped:
        kind = item.local.partition("/")[0]
        if mapper.read_in_place(kind):
            assert item.resource != before[item.local]  # read from itself: what was read is gone
        else:
            assert item.resource == before[item.local]  # a reference's lookup may read it: read from a copy
    assert any(mapper.read_in_place(item.local.partition("/")[0]) for item in mapped)
    assert not mapper.read_in_place("Patient") and not mapper.read_in_place("Encounter")


def test_a_released_resource_still_resolves_by_its_type_and_id():
    refs = ImportRefs()
    local = refs.add({"resourceType": "Observation", "id": "o-1", "status": "final"}, "urn:uuid:o-1")
    refs.release(local)
    assert refs.canonical("urn:uuid:o-1") == local == refs.canonical(local)
    assert refs.target(local) == {"resourceType": "Observation", "id": "o-1"}


def test_pruning_in_place_equals_pruning_into_a_new_tree():
    tree = {"a": {}, "b": [None, {}, {"c": []}], "d": [1, None, {"e": {"f": None}, "g": "x"}],
            "h": {"i": {"j": {}}}, "k": "kept", "l": [[None], [2]], "m": None}
    expected = _prune(tree)
    owned = _copy(tree)
    assert _prune_owned(owned) == expected == {"d": [1, None, {"e": {"f": None}, "g": "x"}],
                                               "k": "kept", "l": [None, [2]], "m": None}
    assert owned == expected  # the tree itself was pruned
    assert _prune_owned({"a": [None, {}], "b": {}}) is MISSING


def test_the_resolve_walk_shares_equal_strings_and_finds_every_reference():
    text = json.dumps({"resourceType": "Claim", "id": "c-1", "status": "active",
                       "patient": {"reference": "Patient/p-1", "display": "active"},
                       "item": [{"encounter": [{"reference": "Encounter/e-1"}], "note": ["active"]}]})
    first, second = json.loads(text), json.loads(text)
    assert first["status"] is not second["status"]
    found = list(references_in(_copy(first)))
    strings: dict[str, str] = {}
    shared = shared_references(first, strings) + shared_references(second, strings)
    assert [(where, holder["reference"]) for where, holder in shared[:len(found)]] == \
        [(where, holder["reference"]) for where, holder in found] == \
        [("patient", "Patient/p-1"), ("item", "Encounter/e-1")]
    assert first["status"] is second["status"] is first["patient"]["display"] is second["item"][0]["note"][0]
    assert first == second == json.loads(text)
