"""The generated writers of the FHIR export (healthsim_state.fhir.writers):
one generated function a resource (and a folded child's item) makes what its
element closures make one after another, and the constant trees it builds
at once are fresh for every resource."""

from __future__ import annotations

import json
import uuid

import pytest

from healthsim_state import StateManager
from healthsim_state.fhir import ids
from healthsim_state.fhir.mapper import FhirMapper
from healthsim_state.fhir.paths import _PADDING
from healthsim_state.fhir.references import NoRefs
from healthsim_state.fhir.writers import _constant_trees, _Export
from healthsim_state.mapping import fhir_section as d
from benchmarks.generate import scenario


@pytest.fixture(scope="module")
def entities():
    """Entities of every built-in type, as an export reads them, and the mapper."""
    with StateManager(":memory:") as manager:
        manager.save_scenario("generated", scenario(2, seed=11))
        mapper = FhirMapper({entity: codec.mapping for entity, codec in manager.registry.codecs.items()})
        with manager.snapshot("generated") as snapshot:
            held = {entity_type: list(snapshot.entities(entity_type)) for entity_type in snapshot.entity_types()}
    return mapper, held


def _written(write, entity: dict) -> tuple[dict, dict]:
    context = _Export(NoRefs(), "s1", {}, None, ("k",))
    context.unfit, context.record = {}, None
    _PADDING.holed = []
    made: dict = {}
    write(entity, made, context)
    return made, context.unfit


def _one_by_one(writers):
    def write(entity, made, context):
        for writer in writers:
            writer(entity, made, context)
    return write


def _shared(a, b) -> bool:
    """Whether two trees hold one dict or list object in common."""
    if isinstance(a, (dict, list)) and a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return any(_shared(a[key], b.get(key)) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return any(_shared(x, y) for x, y in zip(a, b))
    return False


def _edited(entity: dict) -> list[dict]:
    """The entity, and variants a generated writer must tell apart: every
    top-level column emptied in turn, and a value no FHIR element holds."""
    variants = [entity]
    for column in entity:
        variants.append({key: value for key, value in entity.items() if key != column})
        variants.append({**entity, column: "\x00 not a FHIR string"})
    return variants


def test_a_generated_writer_makes_what_its_element_writers_make(entities):
    mapper, held = entities
    checked = 0
    for entity_type, rows in held.items():
        if entity_type not in mapper.declared_types():
            continue
        plan = mapper.plan(entity_type)
        for resource in plan.resources:
            for entity in [variant for row in rows[:2] for variant in _edited(row)]:
                made, unfit = _written(resource.write_all, entity)
                assert (made, unfit) == _written(_one_by_one(resource.writers), entity), (entity_type, resource.slot)
                again, _ = _written(resource.write_all, entity)
                assert again == made and not _shared(made, again)
                checked += 1
    assert checked > 500


def test_a_folded_childs_generated_writer_makes_what_its_element_writers_make(entities):
    mapper, held = entities
    claim = mapper.plan("claim")
    item_plans = {id(w): w for r in claim.resources for w in r.writers}
    assert item_plans
    child_plan = next(cell.cell_contents for w in item_plans.values() for cell in (w.__closure__ or ())
                      if type(cell.cell_contents).__name__ == "_ChildPlan")
    lines = held["claim_line"]
    assert lines
    for line in [variant for row in lines[:3] for variant in _edited(row)]:
        assert _written(child_plan.write_all, line) == _written(_one_by_one(child_plan.writers), line)


def _element(path: str, kind: str = "value", **given) -> d.Element:
    return d.Element(where=path, path=path, steps=d.parse_path(path), kind=kind, **given)


def test_constants_alone_under_a_key_become_one_tree_and_others_do_not():
    elements = (
        _element("status", value="final"),
        _element("category[0].coding[0].system", value="http://example.org/cs"),
        _element("category[0].coding[0].code", value="vital-signs"),
        _element("code.coding[0].code", value="8310-5"),
        _element("code.text", kind="field", field="name"),  # a field writes under code too
        _element("note[1].text", value="a hole before it"),  # note[0] never written: a hole
        _element("meta.tag[0].code", value="t"),  # _make writes meta before the elements
        _element("valueString", value="x", with_field="name"),  # conditional
    )
    trees = _constant_trees(elements)
    assert trees == {1: ("category", "[{'coding': [{'system': 'http://example.org/cs', 'code': 'vital-signs'}]}]"),
                     2: None}
    made = eval(trees[1][1])  # the literal is a plain Python expression of the tree
    assert made == [{"coding": [{"system": "http://example.org/cs", "code": "vital-signs"}]}]


def test_an_id_is_the_uuid5_of_its_prefix_and_slot():
    prefix = ids.id_prefix("s1", "vital_sign", ("VS-1",))
    expected = str(uuid.uuid5(ids.NAMESPACE, "s1\x1fvital_sign\x1f[\"VS-1\"]\x1fheart_rate"))
    assert ids.slot_id(prefix, "heart_rate") == ids.resource_id("s1", "vital_sign", ("VS-1",), "heart_rate") == expected


@pytest.mark.parametrize("key", ["VS-1", "A1\n", "tab\there", 'quote"d', "back\\slash", "é", "\x7f"])
def test_an_id_names_its_key_as_canonical_json_whatever_the_key_holds(key):
    """The shortcut for the usual key writes what json.dumps writes; a key
    ending in a newline once took it (the pattern's ``$`` matches before a
    final newline) and named the key with a raw newline."""
    canonical = json.dumps([key], separators=(",", ":"), ensure_ascii=False)
    expected = str(uuid.uuid5(ids.NAMESPACE, f"s1\x1fpatient\x1f{canonical}\x1fpatient"))
    assert ids.resource_id("s1", "patient", (key,), "patient") == expected
