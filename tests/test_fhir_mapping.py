"""The FHIR mapper: the mappings' ``fhir:`` sections, both directions.

Round trips (entity -> resources -> entity) on the sample scenario and on
generated entities, must-fail declarations with their messages, imports of
hand-written resources that keep every element, and stable ids and bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from healthsim_state import StateManager
from healthsim_state.column_types import HeldText
from healthsim_state.errors import FhirInputError, FhirMappingError, MappingError
from healthsim_state.fhir.ids import resource_id
from healthsim_state.fhir.mapper import RESERVED_KEY, FhirMapper
from healthsim_state.mapping.loader import builtin_mapping_dir, load_mapping_dirs

import clirun
import oracle
import strategies as S
from fhir_schema import fhir_schema, fhir_validator  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample-scenario.json"


# --- the references a test resolves: the whole scenario is the index ---------------------------

class ScenarioRefs:
    """ExportRefs over one scenario's entities (fhir-io builds the real index)."""

    def __init__(self, mapper: FhirMapper, entities: dict[str, list[dict]], scenario_id: str):
        self.index: dict[tuple, str] = {}
        self.entities: dict[tuple, dict] = {}
        self.mapper, self.scenario_id = mapper, scenario_id
        for entity_type, items in entities.items():
            if entity_type not in mapper.declared_types() or entity_type in mapper.folded_types():
                continue
            kind = mapper.primary_resource_type(entity_type)
            for entity in items:
                rid = mapper.resource_id(entity_type, entity, scenario_id)
                for path in mapper.lookup_fields(entity_type):
                    value = _get(entity, path)
                    if value is not None:
                        self.index.setdefault((entity_type, path, _hashable(value)), f"{kind}/{rid}")
                        self.entities.setdefault((entity_type, path, _hashable(value)), entity)

    def reference(self, entity_type: str, field: str, value):
        return self.index.get((entity_type, field, _hashable(value)))

    def slot_reference(self, entity_type: str, field: str, value, slot: str):
        entity = self.entities.get((entity_type, field, _hashable(value)))
        return None if entity is None else self.mapper.slot_reference(entity_type, entity, self.scenario_id, slot)


class ResourceRefs:
    """ImportRefs over a list of resources."""

    def __init__(self, resources: list[dict]):
        self.by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}

    def target(self, reference: str):
        return self.by_ref.get(reference)


class NoRefs:
    def reference(self, entity_type, field, value):
        return None

    def target(self, reference):
        return None


def _get(entity: dict, dotted: str):
    node = entity
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _hashable(value):
    return json.dumps(value, sort_keys=True)


def export_all(mapper: FhirMapper, entities: dict[str, list[dict]], scenario_id: str) -> list[dict]:
    refs = ScenarioRefs(mapper, entities, scenario_id)
    folded = mapper.folded_types()
    out = []
    for entity_type in mapper.declared_types():
        if entity_type in folded:
            continue
        children_of = [(child, link) for child, (parent, link) in folded.items() if parent == entity_type]
        key_columns = mapper.plan(entity_type).mapping.primary_key
        for entity in entities.get(entity_type, []):
            key = tuple(entity.get(c) for c in key_columns)
            children = {child: [c for c in entities.get(child, []) if tuple(c.get(k) for k in link) == key]
                        for child, link in children_of}
            out += mapper.to_resources(entity_type, entity, scenario_id=scenario_id, refs=refs, children=children)
    return out


def import_all(mapper: FhirMapper, resources: list[dict]) -> dict[str, list[dict]]:
    """Resources -> entities, partial entities with equal keys merged (as the import shell does)."""
    refs = ResourceRefs(resources)
    merged: dict[str, dict[tuple, dict]] = {}
    for resource in resources:
        for entity_type, entity in mapper.from_resource(resource, refs=refs):
            mapping = mapper.mapping(entity_type)
            key = tuple(json.dumps(_get(entity, mapping.field(c).dotted)) for c in mapping.primary_key)
            _deep_merge(merged.setdefault(entity_type, {}).setdefault(key, {}), entity)
    return {t: list(items.values()) for t, items in merged.items()}


def _deep_merge(into: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def mapped_values(mapper: FhirMapper, entity_type: str, entity: dict) -> dict:
    """The typed values of every column the declarations map (what a round trip keeps)."""
    mapping = mapper.mapping(entity_type)
    out = {}
    for column in mapper.mapped_columns(entity_type):
        field = mapping.field(column)
        value = _get(entity, field.dotted)
        if value is None:
            continue
        try:
            out[column] = field.type.convert(value)[0]
        except (ValueError, HeldText):  # kept as given by a non-strict field, or text no column holds
            out[column] = value
    return out


# --- the sample scenario ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample():
    with StateManager(":memory:") as sm:
        scenario_id = sm.save_scenario("sample", json.loads(SAMPLE.read_text("utf-8")))
        loaded = sm.load_scenario("sample")
        yield FhirMapper.from_registry(sm.registry), loaded["entities"], scenario_id


def test_the_declared_types_and_the_folded_ones(sample):
    mapper, _, _ = sample
    assert {"patient", "encounter", "diagnosis", "lab_result"} <= set(mapper.declared_types())
    assert mapper.lookup_fields("patient") == ("patient_id", "mrn")


def test_the_sample_round_trips_through_fhir(sample):
    mapper, entities, scenario_id = sample
    resources = export_all(mapper, entities, scenario_id)
    back = import_all(mapper, resources)
    checked = 0
    for entity_type in (*mapper.declared_types(), *mapper.folded_types()):
        originals = entities.get(entity_type, [])
        keys = mapper.mapping(entity_type).primary_key
        by_key = {tuple(json.dumps(e.get(k)) for k in keys): e for e in back.get(entity_type, [])}
        assert len(by_key) == len(originals), entity_type
        for original in originals:
            again = by_key[tuple(json.dumps(original.get(k)) for k in keys)]
            assert mapped_values(mapper, entity_type, again) == mapped_values(mapper, entity_type, original)
            checked += 1
    assert checked >= 20


def test_every_resource_made_from_the_sample_is_valid_r4(sample, fhir_validator):
    mapper, entities, scenario_id = sample
    resources = export_all(mapper, entities, scenario_id)
    assert len({r["resourceType"] for r in resources}) >= 9
    problems = {f"{r['resourceType']}/{r['id']}": fhir_validator.errors(r) for r in resources}
    assert {ref: found for ref, found in problems.items() if found} == {}


def test_the_validator_names_the_element_that_is_wrong(fhir_validator):
    with pytest.raises(FhirInputError) as caught:
        fhir_validator.validate({"resourceType": "Patient", "id": "p1", "birthDate": "1988-13-45"})
    assert "Patient/p1" in str(caught.value) and caught.value.element == "birthDate"


def test_an_export_is_the_same_bytes_every_time_and_ids_are_stable(sample):
    mapper, entities, scenario_id = sample
    first = json.dumps(export_all(mapper, entities, scenario_id))
    assert first == json.dumps(export_all(mapper, entities, scenario_id))
    patient = entities["patient"][0]
    assert mapper.resource_id("patient", patient, scenario_id) == resource_id(
        scenario_id, "patient", (patient["patient_id"],), "patient")
    assert mapper.resource_id("patient", patient, "another") != mapper.resource_id("patient", patient, scenario_id)


@pytest.mark.parametrize("key", [("P-1",), ("é",), ('a"b',), (7,), ("C-1", 2), ("",)])
def test_ids_are_uuid5_of_scenario_type_key_and_slot(key):
    import uuid

    from healthsim_state.fhir import ids

    name = f"s1\x1fpatient\x1f{json.dumps(list(key), separators=(',', ':'), ensure_ascii=False)}\x1fpatient"
    assert resource_id("s1", "patient", key, "patient") == str(uuid.uuid5(ids.NAMESPACE, name))


def test_references_resolve_to_the_resources_of_the_scenario(sample):
    mapper, entities, scenario_id = sample
    resources = export_all(mapper, entities, scenario_id)
    ids = {f"{r['resourceType']}/{r['id']}" for r in resources}
    condition = next(r for r in resources if r["resourceType"] == "Condition")
    assert condition["subject"]["reference"] in ids
    assert condition["encounter"]["reference"] in ids
    assert set(condition["subject"]) == {"reference"}  # resolved: no logical identifier besides


def test_an_unresolved_reference_keeps_the_lookup_value_as_an_identifier(sample):
    mapper, entities, scenario_id = sample
    lab = {"lab_result_id": "L1", "patient_mrn": "MRN-X", "loinc_code": "2345-7"}
    (made,) = mapper.to_resources("lab_result", lab, scenario_id=scenario_id, refs=NoRefs())
    assert made["subject"] == {"identifier": {"system": "urn:healthsim:patient:mrn", "value": "MRN-X"}}
    ((entity_type, back),) = mapper.from_resource(made, refs=NoRefs())
    assert (entity_type, back["patient_mrn"], back["lab_result_id"]) == ("lab_result", "MRN-X", "L1")


ONE_PATIENT = {"patient": [{"patient_id": "P1", "mrn": "MRN-1", "gender": "F"}]}
LAB_NAMING = [{"lab_result_id": "L-mrn", "patient_mrn": "MRN-1", "loinc_code": "2345-7"},
              {"lab_result_id": "L-id", "patient_id": "P1", "loinc_code": "2345-7"},
              {"lab_result_id": "L-both", "patient_id": "P1", "patient_mrn": "MRN-1", "loinc_code": "2345-7"}]


@pytest.mark.parametrize("lab", LAB_NAMING, ids=[lab["lab_result_id"] for lab in LAB_NAMING])
def test_a_reference_gives_back_only_the_lookup_columns_the_entity_named_its_target_by(sample, lab):
    mapper, _, _ = sample
    resources = export_all(mapper, {**ONE_PATIENT, "lab_result": [lab]}, "s")
    (observation,) = [r for r in resources if r["resourceType"] == "Observation"]
    assert observation["subject"]["reference"].startswith("Patient/")  # resolved, whichever column named it
    (back,) = import_all(mapper, json.loads(json.dumps(resources)))["lab_result"]
    assert {k: v for k, v in back.items() if k != RESERVED_KEY} == lab


def test_only_an_unusual_naming_of_the_target_is_marked_in_the_reference(sample, fhir_validator):
    mapper, _, _ = sample
    resources = export_all(mapper, {**ONE_PATIENT, "lab_result": LAB_NAMING}, "s")
    assert {r["id"]: fhir_validator.errors(r) for r in resources} == {r["id"]: [] for r in resources}
    subjects = {r["identifier"][0]["value"]: r["subject"] for r in resources if r["resourceType"] == "Observation"}
    assert "extension" not in subjects["L-both"]  # our entities name their patient both ways: the usual, unmarked
    assert [e["valueString"] for e in subjects["L-id"]["extension"]] == ["patient_id"]
    assert [e["valueString"] for e in subjects["L-mrn"]["extension"]] == ["patient_mrn"]


def test_a_foreign_reference_fills_the_first_lookup_column_only(sample):
    mapper, _, _ = sample
    (patient,) = mapper.to_resources("patient", ONE_PATIENT["patient"][0], scenario_id="s", refs=NoRefs())
    lab = dict(LAB_OBSERVATION, subject={"reference": f"Patient/{patient['id']}"})  # no identifier of ours
    ((_, back),) = mapper.from_resource(lab, refs=ResourceRefs([patient, lab]))
    assert back["patient_id"] == "P1" and "patient_mrn" not in back
    (again,) = mapper.to_resources("lab_result", json.loads(json.dumps(back)), scenario_id="s",
                                   refs=ScenarioRefs(mapper, ONE_PATIENT, "s"))
    assert again == lab  # no mark added on the way out: it reads back the same


def test_value_maps_run_both_ways_and_keep_the_original_spelling(sample):
    mapper, _, scenario_id = sample
    for given, code in [("M", "male"), ("F", "female"), ("female", "female"), ("U", "unknown")]:
        (made,) = mapper.to_resources("patient", {"patient_id": "P", "gender": given}, scenario_id="s", refs=NoRefs())
        assert made["gender"] == code
        ((_, back),) = mapper.from_resource(made, refs=NoRefs())
        assert back["gender"] == given
    (made,) = mapper.to_resources("patient", {"patient_id": "P", "gender": "robot"}, scenario_id="s", refs=NoRefs())
    assert "gender" not in made  # no code fits: not written rather than written wrong


def test_timestamps_become_fhir_date_times_with_an_offset(sample):
    mapper, _, _ = sample
    (made,) = mapper.to_resources("encounter", {"encounter_id": "E", "period": {"start": "2024-01-15T10:30",
                                                                                 "end": "2024-01-15T11:00:00+02:00"}},
                                  scenario_id="s", refs=NoRefs())
    assert made["period"] == {"start": "2024-01-15T10:30:00Z", "end": "2024-01-15T11:00:00+02:00"}


# --- imports keep what they do not map --------------------------------------------------------

FOREIGN_PATIENT = {
    "resourceType": "Patient", "id": "syn-1",
    "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"},
    "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                   "extension": [{"url": "text", "valueString": "White"}]}],
    "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "syn-1"},
                   {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                         "display": "Medical Record Number"}]},
                    "system": "http://hospital.smarthealthit.org", "value": "syn-1"}],
    "name": [{"use": "official", "family": "Doe", "given": ["Ann", "B"], "prefix": ["Ms."]}],
    "telecom": [{"system": "phone", "value": "555-1234", "use": "home"}],
    "gender": "female", "birthDate": "1980-02-29",
    "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02101", "country": "US",
                 "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation"}]}],
    "maritalStatus": {"text": "M"},
}


def test_a_foreign_resource_comes_back_with_every_element_under_its_id(sample):
    mapper, _, _ = sample
    ((entity_type, entity),) = mapper.from_resource(FOREIGN_PATIENT, refs=NoRefs())
    assert entity_type == "patient"
    assert (entity["patient_id"], entity["name"]["family"], entity["name"]["given"], entity["gender"]) == (
        "syn-1", "Doe", "Ann", "female")
    assert entity[RESERVED_KEY]["patient"]["id"] == "syn-1"
    saved = json.loads(json.dumps(entity))  # what the store keeps is JSON
    (again,) = mapper.to_resources("patient", saved, scenario_id="any", refs=NoRefs())
    assert again == FOREIGN_PATIENT


def test_an_import_does_not_change_the_resource_it_reads(sample):
    mapper, _, _ = sample
    before = json.dumps(FOREIGN_PATIENT)
    mapper.from_resource(FOREIGN_PATIENT, refs=NoRefs())
    assert json.dumps(FOREIGN_PATIENT) == before


@pytest.mark.parametrize("element, value", [("birthDate", "1988-13-45"), ("birthDate", "1988-02-30"),
                                            ("deceasedBoolean", "yes"), ("gender", 1)])
def test_an_invalid_element_names_the_resource_its_id_and_the_element(sample, element, value):
    mapper, _, _ = sample
    with pytest.raises(FhirInputError) as caught:
        mapper.from_resource({"resourceType": "Patient", "id": "p-9", element: value}, refs=NoRefs())
    assert "Patient/p-9" in str(caught.value) and caught.value.element == element


def test_a_resource_no_mapping_declares_is_an_input_error(sample):
    mapper, _, _ = sample
    immunization = {"resourceType": "Immunization", "id": "i1"}
    assert mapper.entity_types_of(immunization) is None
    with pytest.raises(FhirInputError, match="Immunization/i1"):
        mapper.from_resource(immunization, refs=NoRefs())


LAB_OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final",
                   "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                             "code": "laboratory"}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}}
SURVEY_OBSERVATION = dict(LAB_OBSERVATION, category=[{"coding": [{"code": "survey"}]}])


def test_a_laboratory_observation_is_a_lab_result_and_others_are_not(sample):
    mapper, _, _ = sample
    lab, survey = LAB_OBSERVATION, SURVEY_OBSERVATION
    assert mapper.entity_types_of(lab) == ("lab_result",)
    assert mapper.entity_types_of(survey) is None


def test_map_resource_maps_as_from_resource_does_and_says_none_for_an_undeclared_one(sample):
    mapper, _, _ = sample
    lab, survey = LAB_OBSERVATION, SURVEY_OBSERVATION
    assert mapper.map_resource(survey, refs=NoRefs()) is None
    made = mapper.map_resource(lab, refs=NoRefs())
    assert made == mapper.from_resource(lab, refs=NoRefs())
    assert [entity_type for entity_type, _ in made] == ["lab_result"]


# --- declarations that must fail, with their messages -----------------------------------------

WIDGET = """\
entity: widget
table: widgets
primary_key: widget_id
fields:
  - {column: widget_id, path: widget_id, type: varchar}
  - {column: label, path: label, type: varchar}
  - {column: made, path: made, type: timestamp}
fhir:
"""

MUST_FAIL = [
    ("unknown-column", "  - resource: Device\n    elements:\n      - {path: \"note[0].text\", field: lable}\n",
     ["fhir[0] (Device device).elements[0].field", "'lable' is not a column of entity widget", "label"]),
    ("unknown-type", "  - resource: Device\n    elements:\n      - path: patient\n        reference: {type: patien, "
     "fields: {label: patient_id}}\n", ["reference.type", "entity type 'patien' has no mapping", "patient"]),
    ("system-name", "  - resource: Device\n    elements:\n      - path: type\n        coding: {system: LOINC, "
     "code: label}\n", ["coding.system", "'LOINC' is not a code system URI", "http://loinc.org"]),
    ("bound-codes", "  - resource: Patient\n    elements:\n      - path: gender\n        field: label\n"
     "        values: {M: man}\n", ["values.M", "'man' is not a code Patient.gender allows", "female"]),
    ("reserved-identifier", "  - resource: Device\n    elements:\n      - {path: \"identifier[0].value\", field: label}\n",
     ["identifier[0] holds the entity's key"]),
    ("slots", "  - resource: Device\n    elements: [{path: \"note[0].text\", field: label}]\n"
              "  - resource: Device\n    elements: [{path: \"note[0].text\", field: label}]\n",
     ["fhir[1] (Device device).slot", "give each resource of an entity its own slot"]),
    ("match", "  - resource: Device\n    match: [status]\n    elements: [{path: status, field: label}]\n",
     ["match[0]", "'status' is not the path of a constant"]),
    ("date-of-timestamp", "  - resource: Device\n    elements: [{path: manufactureDate, field: made, as: date}]\n",
     ["elements[0].as", "use as: dateTime"]),
    ("also-on-a-constant", "  - resource: Device\n    elements: [{path: status, value: active, also: [statusCode]}]\n",
     ["elements[0].also", "also (other forms of the value) goes with field:"]),
    ("also-with-a-value-map", "  - resource: Device\n    elements: [{path: status, field: label, values: {A: active},"
     " also: [note]}]\n", ["elements[0].also", "also does not go with values"]),
    ("also-naming-an-element", "  - resource: Device\n    elements:\n      - {path: manufactureDate, field: made,"
     " also: [expirationDate]}\n      - {path: expirationDate, field: made}\n",
     ["elements[0].also[0]", "'expirationDate' is the path of an element of this resource", "fhir[0] (Device device).elements[1]"]),
    ("also-instant-of-text", "  - resource: Device\n    elements: [{path: lotNumber, field: label, also: [lotInstant]}]\n",
     ["elements[0].also[0]", "'lotInstant' holds a FHIR instant", "type varchar"]),
    ("also-not-a-list", "  - resource: Device\n    elements: [{path: manufactureDate, field: made, also: lotInstant}]\n",
     ["fhir[0].elements[0].also", "expected a list"]),
]


@pytest.mark.parametrize("case, section, expected", MUST_FAIL, ids=[c[0] for c in MUST_FAIL])
def test_a_bad_fhir_section_names_file_key_and_fix(tmp_path, case, section, expected):
    (tmp_path / "widget.yaml").write_text(WIDGET + section, "utf-8")
    with pytest.raises(FhirMappingError) as caught:
        load_mapping_dirs([builtin_mapping_dir(), tmp_path])  # checked with the files, not when FHIR is used
    message = str(caught.value)
    assert "widget.yaml (entity widget)" in message
    for part in expected:
        assert part in message, (part, message)


def test_the_schema_rejects_an_unknown_element_key_with_the_allowed_ones(tmp_path):
    (tmp_path / "widget.yaml").write_text(WIDGET + "  - resource: Device\n    elements:\n"
                                          "      - {path: status, feild: label}\n", "utf-8")
    with pytest.raises(FhirMappingError) as caught:
        load_mapping_dirs([builtin_mapping_dir(), tmp_path])
    message = str(caught.value)
    assert "widget.yaml (entity widget): fhir[0].elements[0]" in message
    assert "unknown key 'feild' (did you mean 'field'?)" in message


def test_a_fhir_section_the_yaml_parser_reads_with_the_file_is_checked_at_load(tmp_path):
    # Quoted, the key is not split off: the JSON Schema checks it with the file.
    (tmp_path / "widget.yaml").write_text(WIDGET.replace("fhir:\n", '"fhir":\n') + "  - resource: Device\n"
                                          "    elements:\n      - {path: status, feild: label}\n", "utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping_dirs([builtin_mapping_dir(), tmp_path])
    assert "fhir[0].elements[0]" in str(caught.value)


def test_the_cli_says_a_bad_fhir_section_when_the_mappings_load(tmp_path):
    # Any command, not only a FHIR one: the section is checked with the files.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "widget.yaml").write_text(WIDGET + MUST_FAIL[0][1], "utf-8")
    result = clirun.run(["list", "--db", tmp_path / "s.duckdb"],
                        env=clirun.env_for(tmp_path, HEALTHSIM_MAPPINGS=str(tmp_path / "maps")))
    assert result.returncode != 0
    assert "widget.yaml (entity widget): fhir[0] (Device device).elements[0].field" in result.stderr
    assert "'lable' is not a column of entity widget" in result.stderr and "label" in result.stderr
    assert not (tmp_path / "s.duckdb").exists()


GOOD_WIDGET = WIDGET + "  - resource: Device\n    elements: [{path: \"note[0].text\", field: label}]\n"
# Loads one mapping set (the built-ins and argv[1]); says whether the fhir: sections were parsed, and the error.
LOAD = """\
import json, sys
from healthsim_state import MappingError
from healthsim_state.mapping.loader import builtin_mapping_dir, load_mapping_dirs
try:
    load_mapping_dirs([builtin_mapping_dir(), sys.argv[1]])
    error = None
except MappingError as caught:
    error = str(caught)
print(json.dumps({"parsed": "healthsim_state.mapping.fhir_section" in sys.modules, "error": error}))
"""


def load_in_fresh_process(directory: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", LOAD, str(directory)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_set_of_sections_that_passed_is_not_parsed_again_until_a_file_changes(tmp_path):
    (tmp_path / "widget.yaml").write_text(GOOD_WIDGET, "utf-8")
    assert load_in_fresh_process(tmp_path) == {"parsed": True, "error": None}
    assert load_in_fresh_process(tmp_path) == {"parsed": False, "error": None}  # the set's digest was remembered
    # The section is unchanged, the column it names is gone: the digest covers the columns too.
    (tmp_path / "widget.yaml").write_text(GOOD_WIDGET.replace("  - {column: label, path: label, type: varchar}\n", ""),
                                          "utf-8")
    again = load_in_fresh_process(tmp_path)
    assert again["parsed"] and "fhir[0] (Device device).elements[0].field: 'label' is not a column" in again["error"]


def test_a_user_file_replacing_a_builtin_type_breaks_the_builtin_sections_only_for_fhir(tmp_path):
    (tmp_path / "patient.yaml").write_text("entity: patient\ntable: my_patients\nprimary_key: pid\n"
                                           "fields:\n  - {column: pid, path: pid, type: varchar}\n", "utf-8")
    mappings = load_mapping_dirs([builtin_mapping_dir(), tmp_path])  # every other command still works
    with pytest.raises(FhirMappingError) as caught:
        FhirMapper(mappings)
    assert "lab_result.yaml (entity lab_result)" in str(caught.value)
    assert "entity type 'patient' has no fhir: section" in str(caught.value)


def test_the_fhir_block_is_split_off_and_the_rest_of_the_file_kept():
    from healthsim_state.mapping.loader import split_fhir_section

    text = "entity: a\nfhir:  # comment\n- resource: X\n  elements: []\n\n# note\n  - more\ntable: t\n"
    head, block = split_fhir_section(text)
    assert head == "entity: a\ntable: t\n"
    assert block == "fhir:  # comment\n- resource: X\n  elements: []\n\n# note\n  - more\n"
    assert split_fhir_section("entity: a\nfhir: []\n") == ("entity: a\nfhir: []\n", None)


def test_the_builtin_declarations_are_valid_and_compile():
    mapper = FhirMapper(load_mapping_dirs([builtin_mapping_dir()]))
    for entity_type in mapper.declared_types():
        assert mapper.plan(entity_type).resources


def test_fhir_declarations_are_not_recorded_by_the_store(sample):
    mapper, _, _ = sample
    described = mapper.mapping("patient").describe()
    assert "fhir" not in described and mapper.mapping("patient").fhir is not None


# --- generated entities: round trip and schema, every declared type ------------------------------

RAW = oracle.load_mapping_dirs([REPO / "mappings"])
# No shrink phase: these entities are large and shrinking one took over 5 minutes; a
# failure prints the example as drawn (each draw is labelled by its type).
PROPERTY = settings(max_examples=10, phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                             HealthCheck.too_slow, HealthCheck.data_too_large])


class TargetRefs:
    """Both kinds of refs for generated entities: each referencing entity's
    targets are made on the fly from its lookup values (a patient with that
    patient_id and mrn, ...), exported, and kept for the import to resolve."""

    def __init__(self, mapper: FhirMapper, scenario_id: str):
        self.mapper, self.scenario_id = mapper, scenario_id
        self.current: dict = {}
        self.current_type = ""
        self.resources: dict[str, dict] = {}

    def reference(self, entity_type: str, field: str, value):
        made = self._made(entity_type, field, value)
        return None if made is None else f"{made[2][0]['resourceType']}/{made[2][0]['id']}"

    def slot_reference(self, entity_type: str, field: str, value, slot: str):
        made = self._made(entity_type, field, value)
        return None if made is None else self.mapper.slot_reference(entity_type, made[0], made[1], slot)

    def _made(self, entity_type: str, field: str, value):
        """The target of the current entity, made as resources of their own
        (ids unique to the referring entity: two entities may name one key with
        other lookup values, and each must get its own back)."""
        target = self._target_of(entity_type)
        if target is None or _get(target, field) != value:
            return None
        scenario_id = f"{self.scenario_id}#{id(self.current)}"
        made = self.mapper.to_resources(entity_type, target, scenario_id=scenario_id, refs=NoRefs())
        for resource in made:
            self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource
        return target, scenario_id, made

    def _target_of(self, entity_type: str):
        mapping = self.mapper.mapping(entity_type)
        for target_type, pairs in self.mapper.references(self.current_type):
            if target_type != entity_type:
                continue
            target: dict = {}
            for own, theirs in pairs:
                value = _get(self.current, self.mapper.mapping(self.current_type).field(own).dotted)
                if value is not None:
                    target[mapping.field(theirs).dotted] = value
            for column in mapping.primary_key:
                path = mapping.field(column).dotted
                if path not in target:
                    target[path] = "K-" + json.dumps(target, sort_keys=True)
            return target
        return None

    def target(self, reference: str):
        return self.resources.get(reference)


def _canonical(memory_sm, entities: dict[str, list[dict]]) -> tuple[str, dict[str, list[dict]]]:
    name = f"fhir-{abs(hash(json.dumps(entities, sort_keys=True, default=str)))}"
    scenario_id = memory_sm.save_scenario(name, entities, overwrite=True)
    return scenario_id, memory_sm.load_scenario(name)["entities"]


def _check_round_trip(mapper, entity_type, entities, children, scenario_id, validator):
    refs = TargetRefs(mapper, scenario_id)
    made = []
    for entity in entities:
        refs.current, refs.current_type = entity, entity_type
        kids = {child: [c for c in children.get(child, []) if all(_get(c, mapper.mapping(child).field(k).dotted)
                                                                  == entity.get(p) for k, p in zip(link, mapper.mapping(entity_type).primary_key))]
                for child, (parent, link) in mapper.folded_types().items() if parent == entity_type}
        made += mapper.to_resources(entity_type, entity, scenario_id=scenario_id, refs=refs, children=kids)
    for resource in made:
        assert validator.errors(resource) == [], resource
    imports = ResourceRefs(made)
    imports.by_ref.update(refs.resources)
    back: dict[str, dict] = {}
    for resource in made:
        for kind, entity in mapper.from_resource(resource, refs=imports):
            mapping = mapper.mapping(kind)
            key = (kind, *(json.dumps(_get(entity, mapping.field(c).dotted)) for c in mapping.primary_key))
            _deep_merge(back.setdefault(key, {}), entity)
    originals = [(entity_type, e) for e in entities] + [(k, c) for k, cs in children.items() for c in cs
                                                          if any(v is not None for v in c.values())]
    reference_columns = {own for _, pairs in mapper.references(entity_type) for own, _ in pairs}
    for kind, original in originals:
        mapping = mapper.mapping(kind)
        key = (kind, *(json.dumps(_get(original, mapping.field(c).dotted)) for c in mapping.primary_key))
        if kind != entity_type and key not in back:
            continue  # a child whose parent is not in this example
        again = mapped_values(mapper, kind, back[key])
        expected = mapped_values(mapper, kind, original)
        # An import fills every lookup column of a resolved reference from its target.
        assert {c: v for c, v in again.items() if c in expected} == expected
        assert set(again) - set(expected) <= reference_columns


DECLARED = [t for t in sorted(RAW) if "fhir" in RAW[t]]


@pytest.mark.parametrize("entity_type", DECLARED)
@PROPERTY
@given(data=st.data())
def test_generated_entities_round_trip_and_validate(memory_sm, fhir_validator, entity_type, data):
    mapper = FhirMapper.from_registry(memory_sm.registry)
    entities = data.draw(S.entity_lists(RAW[entity_type], min_size=1, max_size=3), label=entity_type)
    given_entities = {entity_type: entities}
    for child, (parent, link) in mapper.folded_types().items():
        if parent == entity_type:
            lines = data.draw(S.entity_lists(RAW[child], max_size=3), label=child)
            keys = [[_get(e, mapper.mapping(parent).field(c).dotted) for c in mapper.mapping(parent).primary_key]
                    for e in entities]
            keys = [k for k in keys if None not in k]  # a key made on save is not known here
            lines = lines if keys else []
            linked, seen = [], set()
            for index, line in enumerate(lines):
                for column, value in zip(link, keys[index % len(keys)]):
                    line[mapper.mapping(child).field(column).dotted] = value
                own = json.dumps([_get(line, mapper.mapping(child).field(c).dotted)
                                  for c in mapper.mapping(child).primary_key], default=str)
                if own not in seen:
                    seen.add(own)
                    linked.append(line)
            given_entities[child] = linked
    scenario_id, loaded = _canonical(memory_sm, given_entities)
    children = {k: v for k, v in loaded.items() if k != entity_type}
    _check_round_trip(mapper, entity_type, loaded[entity_type], children, scenario_id, fhir_validator)


def test_neither_import_nor_loading_mappings_imports_the_fhir_package(tmp_path):
    import subprocess
    import sys

    code = ("import sys, healthsim_state; from healthsim_state.mapping.loader import load_mappings; load_mappings(); "
            "print(sorted(n for n in sys.modules if n.startswith('healthsim_state.fhir') or n == 'jsonschema'))")
    env = {"PYTHONPATH": str(REPO), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)  # fills the cache of validated files
    again = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert again.stdout.strip() == "[]"


def test_the_sample_exported_imported_and_exported_again_gives_the_same_resources(sample):
    mapper, entities, scenario_id = sample
    first = export_all(mapper, entities, scenario_id)
    back = json.loads(json.dumps(import_all(mapper, first)))  # as the store keeps them
    again = export_all(mapper, back, "another scenario id: imported entities keep their resources' ids")
    assert {(r["resourceType"], r["id"]) for r in again} == {(r["resourceType"], r["id"]) for r in first}
    by_id = {r["id"]: r for r in again}
    assert [r for r in first if by_id[r["id"]] != r] == []


# Resources as Synthea writes them (hand-written from the R4 specification and
# Synthea's shapes): no healthsim identifiers, other code systems, references
# to resources not in the input. Each becomes an entity and comes back whole.
SYNTHEA_LIKE = [
    {"resourceType": "Observation", "id": "obs-hr-1", "status": "final",
     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                               "code": "vital-signs", "display": "vital-signs"}]}],
     "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
     "subject": {"reference": "urn:uuid:7c2a0b7e-0001"}, "encounter": {"reference": "urn:uuid:9e1d-enc"},
     "effectiveDateTime": "2015-09-03T10:45:40-04:00", "issued": "2015-09-03T10:45:40.123-04:00",
     "valueQuantity": {"value": 71.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
    {"resourceType": "Observation", "id": "obs-temp-1", "status": "final",
     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                               "code": "vital-signs"}]}],
     "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
     "effectiveDateTime": "2015-09-03T10:45:40-04:00",
     "valueQuantity": {"value": 37.1, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}},
    {"resourceType": "Condition", "id": "cond-1",
     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
     "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                        "code": "confirmed"}]},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}],
              "text": "Diabetes"},
     "subject": {"reference": "urn:uuid:7c2a0b7e-0001"}, "onsetDateTime": "2001-05-11T04:22:10-04:00",
     "recordedDate": "2001-05-11T04:22:10-04:00"},
    {"resourceType": "Encounter", "id": "enc-1", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}], "text": "Check up"}],
     "subject": {"reference": "urn:uuid:7c2a0b7e-0001", "display": "Mr. Ann Doe"},
     "participant": [{"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999910",
                                     "display": "Dr. Who"}}],
     "period": {"start": "2015-09-03T10:45:40-04:00", "end": "2015-09-03T11:00:40-04:00"},
     "serviceProvider": {"reference": "Organization?identifier=https://github.com/synthetichealth/synthea|abc"}},
    {"resourceType": "MedicationRequest", "id": "mr-1", "status": "stopped", "intent": "order",
     "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                               "code": "310798", "display": "HCTZ 25 MG Oral Tablet"}]},
     "subject": {"reference": "urn:uuid:7c2a0b7e-0001"}, "authoredOn": "2011-06-03T04:22:10-04:00",
     "requester": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999910", "display": "Dr. Who"}},
]


@pytest.mark.parametrize("resource", SYNTHEA_LIKE, ids=[r["id"] for r in SYNTHEA_LIKE])
def test_a_synthea_like_resource_comes_back_whole(sample, fhir_validator, resource):
    mapper, _, _ = sample
    assert fhir_validator.errors(resource) == []
    entities = mapper.from_resource(resource, refs=NoRefs())
    ((entity_type, entity),) = entities
    assert entity[RESERVED_KEY]
    saved = json.loads(json.dumps(entity))
    (again,) = [r for r in mapper.to_resources(entity_type, saved, scenario_id="s", refs=NoRefs())
                if r["id"] == resource["id"]]
    assert again == resource


def test_what_a_synthea_like_resource_maps_is_read(sample):
    mapper, _, _ = sample
    heart, temperature, condition, encounter, medication = (
        dict(mapper.from_resource(r, refs=NoRefs()))  for r in SYNTHEA_LIKE)
    assert heart["vital_sign"]["heart_rate"] == 71.5 and heart["vital_sign"]["observation_time"] == "2015-09-03T10:45:40-04:00"
    assert "temperature" not in temperature["vital_sign"]  # Celsius is not the column's Fahrenheit: kept, not misread
    assert condition["diagnosis"]["status"] == "active" and "code" not in condition["diagnosis"]  # SNOMED, not ICD-10-CM
    assert (encounter["encounter"]["class"], encounter["encounter"]["status"]) == ("O", "finished")
    assert medication["medication"]["rxnorm_code"] == "310798"


def test_a_folded_childs_date_time_in_a_date_column_is_kept_by_the_child(tmp_path, sample):
    # A user's claim.yaml reading a line's date from Claim.item.servicedPeriod.start (a dateTime)
    claim_yaml = (builtin_mapping_dir() / "claim.yaml").read_text("utf-8")
    changed = claim_yaml.replace("- {path: servicedDate, field: service_date}",
                                 "- {path: servicedPeriod.start, field: service_date, as: dateTime}")
    assert changed != claim_yaml
    (tmp_path / "claim.yaml").write_text(changed, "utf-8")
    mapper = FhirMapper(load_mapping_dirs([builtin_mapping_dir(), tmp_path]))
    claim = {"resourceType": "Claim", "id": "claim-lines", "status": "active", "use": "claim", "created": "2014-08-16",
             "item": [{"sequence": 1, "servicedPeriod": {"start": "2014-08-15T23:30:00-04:00",
                                                         "end": "2014-08-16T01:00:00-04:00"}},
                      {"sequence": 2, "servicedPeriod": {"start": "2014-08-16T00:15:00+02:00"}}]}
    made = mapper.from_resource(claim, refs=NoRefs())
    lines = [json.loads(json.dumps(e)) for t, e in made if t == "claim_line"]  # as the store keeps them
    (parent,) = [json.loads(json.dumps(e)) for t, e in made if t == "claim"]
    assert [line["service_date"] for line in lines] == ["2014-08-15", "2014-08-16"]
    assert [line["_fhir"]["claim"]["times"] for line in lines] == [
        {"servicedPeriod.start": "2014-08-15T23:30:00-04:00"}, {"servicedPeriod.start": "2014-08-16T00:15:00+02:00"}]
    assert "times" not in parent["_fhir"]["claim"]  # each line keeps its own
    (again,) = mapper.to_resources("claim", parent, scenario_id="s", refs=NoRefs(), children={"claim_line": lines})
    assert again["item"] == claim["item"]
    lines[1]["service_date"] = "2014-08-17"  # changed: its date goes out, the other line's time as it came
    (changed_claim,) = mapper.to_resources("claim", parent, scenario_id="s", refs=NoRefs(),
                                           children={"claim_line": lines})
    assert [item["servicedPeriod"]["start"] for item in changed_claim["item"]] == \
        ["2014-08-15T23:30:00-04:00", "2014-08-17"]


def test_a_date_time_in_another_form_into_a_date_column_goes_back_in_that_form(tmp_path, sample):
    # A user's diagnosis.yaml reading the onset also from onsetPeriod.start (a dateTime)
    diagnosis_yaml = (builtin_mapping_dir() / "diagnosis.yaml").read_text("utf-8")
    declared = "{path: onsetDateTime, field: diagnosed_date, as: dateTime"
    changed = diagnosis_yaml.replace(declared + "}", declared + ", also: [onsetPeriod.start]}")
    assert changed != diagnosis_yaml
    (tmp_path / "diagnosis.yaml").write_text(changed, "utf-8")
    mapper = FhirMapper(load_mapping_dirs([builtin_mapping_dir(), tmp_path]))
    condition = {"resourceType": "Condition", "id": "cond-period", "code": {"text": "Fever"},
                 "onsetPeriod": {"start": "2020-02-29T23:00:00-03:00", "end": "2020-03-02T10:00:00-03:00"}}
    ((_, entity),) = mapper.from_resource(condition, refs=NoRefs())
    entity = json.loads(json.dumps(entity))
    record = entity["_fhir"]["condition"]
    assert entity["diagnosed_date"] == "2020-02-29"
    assert record["forms"] == {"onsetDateTime": "onsetPeriod.start"}
    assert record["times"] == {"onsetPeriod.start": "2020-02-29T23:00:00-03:00"}
    (again,) = mapper.to_resources("diagnosis", entity, scenario_id="s", refs=NoRefs())
    assert again == condition
    entity["diagnosed_date"] = "2020-02-28"
    (changed_condition,) = mapper.to_resources("diagnosis", entity, scenario_id="s", refs=NoRefs())
    assert changed_condition["onsetPeriod"] == {"start": "2020-02-28", "end": "2020-03-02T10:00:00-03:00"}
