"""The generated readers (one function a declared resource, :mod:`healthsim_state.fhir.generated`)
read what the general readers (one closure an element) read: the same entities,
the same leftovers and ``_fhir`` records, the same resource left behind, the
same error. Over every file of tests/data/fhir, the sample scenario and the
Synthea-shaped resources exported, and resources of every built-in declared type
drawn by hypothesis, as exported and with an element of theirs changed to an
unexpected shape."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthsim_state import StateManager
from healthsim_state.fhir.generated import general_reader
from healthsim_state.fhir.importer import index_inputs, input_files, read_resources, resolve_references
from healthsim_state.fhir.mapper import FhirMapper
from healthsim_state.fhir.paths import (_constants_test, _copy, _everywhere, _everywhere_function, _find_slice,
                                        _peek, _peeker)
from healthsim_state.mapping import fhir_section as d
from healthsim_state.mapping.loader import load_mapping_dirs
from healthsim_state.values import MISSING

import strategies as S
from test_fhir_mapping import (DECLARED, FOREIGN_PATIENT, PROPERTY, RAW, SAMPLE, SYNTHEA_LIKE, ResourceRefs,
                               TargetRefs, _canonical, export_all)

DATA = Path(__file__).parent / "data" / "fhir"
FILES = sorted(p.name for p in DATA.iterdir())


@contextmanager
def general_readers(mapper: FhirMapper):
    """Every plan of ``mapper`` reading by its general readers while inside."""
    saved = []
    for entity_type in mapper.declared_types():
        plan = mapper.plan(entity_type)
        for compiled in [*plan.resources, *plan.child_plans]:
            saved.append((compiled, compiled.read_all))
            compiled.read_all = general_reader(compiled.readers)
    try:
        yield
    finally:
        for compiled, read_all in saved:
            compiled.read_all = read_all


def outcome(mapper: FhirMapper, resource: dict, refs, in_place: bool):
    """What mapping a copy of ``resource`` gives: (entities, the copy after it), or the error."""
    copy = _copy(resource)
    try:
        made = mapper.map_resource(copy, refs=refs, in_place=in_place)
    except Exception as error:  # noqa: BLE001 (compared, type and message)
        return ("error", type(error).__name__, str(error))
    return json.dumps(made, sort_keys=True, default=repr), json.dumps(copy, sort_keys=True, default=repr)


def assert_same_reading(mapper: FhirMapper, resources: list[dict], refs) -> int:
    """Both ways give the same for every resource (read from a copy and in
    place); the number of resources a declaration read."""
    read = 0
    for resource in resources:
        for in_place in (False, True):
            generated = outcome(mapper, resource, refs, in_place)
            with general_readers(mapper):
                general = outcome(mapper, resource, refs, in_place)
            assert generated == general, resource
        read += generated[0] != "error" and generated[0] != "null"
    return read


@pytest.fixture(scope="module")
def mapper():
    with StateManager(":memory:") as manager:
        yield FhirMapper.from_registry(manager.registry)


@pytest.mark.parametrize("name", FILES)
def test_the_fhir_test_files_read_the_same_both_ways(mapper, name):
    refs, inputs = index_inputs(read_resources(input_files([DATA / name])))
    resolve_references(refs, inputs)
    read = assert_same_reading(mapper, [item.resource for item in inputs], refs)
    assert inputs and (read > 0 or name == "practitioners-batch.json")  # Practitioners: no declaration reads them


def test_the_sample_and_foreign_resources_read_the_same_both_ways():
    with StateManager(":memory:") as sm:
        scenario_id = sm.save_scenario("sample", json.loads(SAMPLE.read_text("utf-8")))
        entities = sm.load_scenario("sample")["entities"]
        mapper = FhirMapper.from_registry(sm.registry)
        resources = export_all(mapper, entities, scenario_id) + SYNTHEA_LIKE + [FOREIGN_PATIENT]
        kinds = {r["resourceType"] for r in resources}
        assert {"Patient", "Encounter", "Observation", "Claim", "Condition"} <= kinds
        assert assert_same_reading(mapper, resources, ResourceRefs(resources)) == len(resources)


def test_a_generated_reader_is_one_function_with_the_elements_inline(mapper):
    compiled = mapper.plan("vital_sign").by_slot["temperature"]
    source = compiled.read_all.source
    assert source.startswith("def read_all(R, E, context):")
    assert source.count("_slice(") == 2  # category[0] and code.coding[0]: each found once, not once an element
    assert "context.drops.append" in source


def every_resource(mapper: FhirMapper) -> list[dict]:
    """The resources of the test files, the sample's and the Synthea-shaped ones, as they come."""
    refs, inputs = index_inputs(read_resources(input_files([DATA / name for name in FILES])))
    resolve_references(refs, inputs)
    with StateManager(":memory:") as sm:
        scenario_id = sm.save_scenario("sample", json.loads(SAMPLE.read_text("utf-8")))
        made = export_all(mapper, sm.load_scenario("sample")["entities"], scenario_id)
    return [item.resource for item in inputs] + made + SYNTHEA_LIKE


def _lists(node):
    if isinstance(node, list):
        yield node
    for value in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        yield from _lists(value)


def _find_slice_peeking(items: list, match: tuple, index: int) -> Any:
    """What ``paths._slice_finder``'s generated function finds, by a peek a
    constant an item: the readable form the generated one is held to."""
    pairs = tuple((_peeker(steps), value) for steps, value in match)
    for item in items:
        if not isinstance(item, dict):
            continue
        equal = False  # one constant equal at least, and none that differs
        for peek, value in pairs:
            found = peek(item)
            if found is MISSING:
                continue
            if found != value:
                break
            equal = True
        else:
            if equal:
                return item
    if index < len(items) and isinstance(items[index], dict) and \
            all(peek(items[index]) is MISSING for peek, _ in pairs):
        return items[index]
    return MISSING


def test_the_generated_path_functions_find_what_the_general_ones_find(mapper):
    """A slice's finder, the candidates' index walk and match test, generated,
    against the general code, on every list and resource of the test data."""
    resources = every_resource(mapper)
    matches, declarations = set(), []
    for entity_type in mapper.declared_types():
        plan = mapper.plan(entity_type)
        for compiled in plan.resources:
            declarations.append([compiled.constants[path] for path in compiled.decl.match])
            for element in d._walk(compiled.decl.elements):
                matches.update(step.match for step in element.steps if step.match)
    lists = [items for resource in resources for items in _lists(resource)]
    compared = 0
    for match in matches:
        for items in lists:
            for index in range(3):
                assert _find_slice(items, match, index) is _find_slice_peeking(items, match, index)
                compared += _find_slice_peeking(items, match, index) is not MISSING
    assert compared > 0 and len(matches) > 5
    held = 0
    for pairs in declarations:
        if not pairs:
            continue
        test = _constants_test(tuple(pairs))
        keys = tuple((step.key, step.index is not None) for step in pairs[-1][0])
        everywhere = _everywhere_function(keys)
        for resource in resources:
            holds = all(_peek(resource, steps) == value for steps, value in pairs)
            assert test(resource) is holds
            held += holds
            assert everywhere(resource) == _everywhere(resource, keys)
    assert held > 0


def test_an_import_mapper_shares_the_compiled_plans_and_not_the_lookup_cache(mapper):
    other = mapper.fresh()
    assert other.plan("vital_sign") is mapper.plan("vital_sign")  # generated once a registry
    assert other.reading is not mapper.reading and other.reading._lookup_cache is not mapper.reading._lookup_cache


# A field read from inside a coding that the coding reader (between the two
# fields) replaces by what it leaves: the second field must look in that, not in
# the coding as the first field found it (no built-in mapping reads so).
GADGET = """\
entity: gadget
table: gadgets
primary_key: gadget_id
fields:
  - {column: gadget_id, path: gadget_id, type: varchar}
  - {column: shown, path: shown, type: varchar}
  - {column: kind, path: kind, type: varchar}
  - {column: picked, path: picked, type: boolean}
fhir:
  - resource: Device
    elements:
      - {path: "type.coding[0].display", field: shown}
      - path: type
        coding: {system: "urn:kinds", code: kind}
      - {path: "type.coding[0].userSelected", field: picked}
"""


def test_a_node_a_reader_replaced_is_looked_for_again(tmp_path):
    (tmp_path / "gadget.yaml").write_text(GADGET, "utf-8")
    mapper = FhirMapper(load_mapping_dirs([tmp_path]))
    device = {"resourceType": "Device", "id": "g1", "identifier": [{"system": "urn:healthsim:gadget", "value": "G1"}],
              "type": {"coding": [{"system": "urn:kinds", "code": "k", "display": "D", "userSelected": True,
                                   "version": "2"}]}}
    assert assert_same_reading(mapper, [device], ResourceRefs([device])) == 1
    ((_, gadget),) = mapper.map_resource(_copy(device), refs=ResourceRefs([device]))
    assert {k: gadget[k] for k in ("gadget_id", "shown", "kind", "picked")} == \
        {"gadget_id": "G1", "shown": "D", "kind": "k", "picked": True}
    assert gadget["_fhir"]["device"]["extra"] == {"type": {"coding": [{"version": "2"}]}}


# Odd shapes: an element of an exported resource replaced by a value of another kind.
ODD = st.sampled_from([None, "", "text", 0, 1.5, True, [], {}, [None], [{}], {"extension": []}])


def _paths(node, path=()):
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, path + (key,))


def _changed(resource: dict, path: tuple, value) -> dict:
    changed = _copy(resource)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


@pytest.mark.parametrize("entity_type", DECLARED)
@PROPERTY
@given(data=st.data())
def test_generated_resources_read_the_same_both_ways(memory_sm, entity_type, data):
    mapper = FhirMapper.from_registry(memory_sm.registry)
    entities = data.draw(S.entity_lists(RAW[entity_type], min_size=1, max_size=3), label=entity_type)
    scenario_id, loaded = _canonical(memory_sm, {entity_type: entities})
    refs = TargetRefs(mapper, scenario_id)
    resources = []
    for entity in loaded[entity_type]:
        refs.current, refs.current_type = entity, entity_type
        resources += mapper.to_resources(entity_type, entity, scenario_id=scenario_id, refs=refs)
    resources = json.loads(json.dumps(resources))  # as a file holds them
    imports = ResourceRefs(resources)
    imports.by_ref.update(refs.resources)
    assert_same_reading(mapper, resources, imports)
    odd = []
    for resource in resources:
        paths = [p for p in _paths(resource) if p and p[0] not in ("resourceType", "id")]
        if paths:
            path = data.draw(st.sampled_from(paths), label="changed")
            odd.append(_changed(resource, path, data.draw(ODD, label="to")))
    assert_same_reading(mapper, odd, imports)
