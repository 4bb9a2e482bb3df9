"""The import's walks made cheaper (fhirfast3): the indexing walk that shares
strings and finds references at once, and the pruning that passes over lists
of placeholders without a call an item: each equal to the walk it replaces."""

from __future__ import annotations

import json

from healthsim_state.fhir.paths import _copy, _prune, _prune_owned
from healthsim_state.fhir.references import references_in, shared_references
from healthsim_state.values import MISSING

CLAIM = {"resourceType": "Claim", "id": "c-1", "status": "active",
         "patient": {"reference": "Patient/p-1", "display": "active"},
         "item": [{"encounter": [{"reference": "Encounter/e-1"}], "note": ["active"],
                   "detail": [{"reference": "Claim/c-2", "x": [{"reference": "Claim/c-3"}]}]}]}


def test_the_indexing_walk_finds_what_the_export_walk_finds_in_its_order():
    text = json.dumps(CLAIM)
    one, other = json.loads(text), json.loads(text)
    listed = shared_references(one, {})
    walked = list(references_in(other))
    assert [(where, holder["reference"]) for where, holder in listed] == \
        [(where, holder["reference"]) for where, holder in walked]
    assert sorted(holder["reference"] for _, holder in listed) == ["Claim/c-2", "Claim/c-3", "Encounter/e-1", "Patient/p-1"]
    assert one == other == CLAIM


def test_the_indexing_walk_shares_equal_strings_across_resources():
    text = json.dumps(CLAIM)
    first, second = json.loads(text), json.loads(text)
    strings: dict[str, str] = {}
    shared_references(first, strings)
    shared_references(second, strings)
    assert first["status"] is second["status"] is first["patient"]["display"] is second["item"][0]["note"][0]


def test_lists_of_false_values_are_kept_and_lists_of_emptied_nodes_pruned():
    tree = {"zeros": [0], "falses": [False, None], "floats": [0.0, {}], "texts": [""], "mixed": [None, {}, []],
            "nested": [[None, {}], [0]], "deep": {"a": [{}, None], "b": [[], [""]]}, "gone": [None, [], {}],
            "kept": [None, {"c": [None]}, {"d": 1}]}
    expected = _prune(tree)
    owned = _copy(tree)
    assert _prune_owned(owned) == expected == owned
    assert expected == {"zeros": [0], "falses": [False, None], "floats": [0.0, None], "texts": [""],
                        "nested": [None, [0]], "deep": {"b": [None, [""]]}, "kept": [None, None, {"d": 1}]}
    assert _prune_owned({"a": [None, {}, []], "b": [[{}], None]}) is MISSING
