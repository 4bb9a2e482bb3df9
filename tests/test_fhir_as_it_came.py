"""A foreign resource exported again gives back its Quantities and Codings as
they came: no ``system``, ``code``, ``unit`` or ``display`` added from the
declaration (it adds them to our own entities' resources only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healthsim_state import StateManager
from healthsim_state.fhir.primitives import UCUM

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def observation(rid: str, category: str, code: dict, value: dict) -> dict:
    """By hand, from R4's Observation: a laboratory or vital-signs result."""
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}], "code": code,
            "subject": {"reference": "Patient/not-in-the-input"}, "effectiveDateTime": "2024-01-01T10:00:00Z",
            "valueQuantity": value}


GLUCOSE = {"coding": [{"system": LOINC, "code": "2345-7"}], "text": "Glucose"}  # a coding without display
HEART_RATE = {"coding": [{"system": LOINC, "code": "8867-4"}]}
FOREIGN = [
    observation("lab-unit-only", "laboratory", GLUCOSE, {"value": 95, "unit": "mg/dL"}),
    observation("lab-code-only", "laboratory", GLUCOSE, {"value": 96, "system": UCUM, "code": "mg/dL"}),
    observation("lab-no-code", "laboratory", GLUCOSE, {"value": 97, "unit": "mg/dL", "system": UCUM}),
    observation("lab-other-system", "laboratory", GLUCOSE,
                {"value": 98, "unit": "mg/dL", "system": "http://example.org/units"}),
    observation("hr-unit-only", "vital-signs", HEART_RATE, {"value": 70, "unit": "/min"}),
    observation("hr-value-only", "vital-signs", HEART_RATE, {"value": 71}),
]


@pytest.fixture
def sm(db_path):
    with StateManager(db_path) as manager:
        yield manager


def ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def exported(directory: Path) -> dict[str, dict]:
    return {f"{r['resourceType']}/{r['id']}": r for path in directory.glob("*.ndjson")
            for r in map(json.loads, path.read_text().splitlines())}


def test_foreign_quantities_and_codings_go_out_as_they_came(sm, tmp_path):
    sm.import_fhir([ndjson(tmp_path / "in.ndjson", FOREIGN)], "in")
    labs = {e["lab_result_id"]: (e["numeric_value"], e.get("unit"), e.get("test_name"))
            for e in sm.load_scenario("in", entity_types=["lab_result"])["entities"]["lab_result"]}
    assert labs["lab-unit-only"] == (95, "mg/dL", "Glucose") and labs["lab-code-only"] == (96, "mg/dL", "Glucose")
    sm.export_fhir("in", tmp_path / "out")
    went_out = exported(tmp_path / "out")
    for resource in FOREIGN:
        assert went_out[f"Observation/{resource['id']}"] == resource, resource["id"]
    sm.export_fhir("in", tmp_path / "again")
    assert (tmp_path / "again" / "Observation.ndjson").read_bytes() == (tmp_path / "out" / "Observation.ndjson").read_bytes()


def test_a_display_and_a_text_that_differ_both_go_out_as_they_came(sm, tmp_path):
    # test_name is written to code.coding[0].display and to code.text: the first read
    # fills the column, the other, when it differs, is kept as it came (was: overwritten)
    lab = observation("lab-two-names", "laboratory",
                      {"coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose [Mass/volume] in Serum"}],
                       "text": "Glucose"}, {"value": 95, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"})
    sm.import_fhir([ndjson(tmp_path / "in.ndjson", [lab])], "in")
    (entity,) = sm.load_scenario("in", entity_types=["lab_result"])["entities"]["lab_result"]
    assert entity["test_name"] == "Glucose [Mass/volume] in Serum"
    sm.export_fhir("in", tmp_path / "out")
    assert exported(tmp_path / "out")["Observation/lab-two-names"] == lab


def test_exported_again_and_imported_again_they_stay_as_they_came(sm, tmp_path):
    sm.import_fhir([ndjson(tmp_path / "in.ndjson", FOREIGN)], "in")
    sm.export_fhir("in", tmp_path / "out")
    sm.import_fhir([tmp_path / "out"], "again")
    sm.export_fhir("again", tmp_path / "out2")
    assert exported(tmp_path / "out2") == exported(tmp_path / "out")


def test_a_unit_set_after_an_import_of_a_quantity_without_one_goes_out(sm, tmp_path):
    # The quantity came without unit or code; a unit set since must not be lost on export.
    sm.import_fhir([ndjson(tmp_path / "in.ndjson", [observation("lab-bare", "laboratory", GLUCOSE, {"value": 5})])],
                   "in")
    (lab,) = sm.load_scenario("in", entity_types=["lab_result"])["entities"]["lab_result"]
    assert lab.get("unit") is None
    sm.add_entities("in", {"lab_results": [dict(lab, unit="mmol/L")]})
    sm.export_fhir("in", tmp_path / "out")
    assert exported(tmp_path / "out")["Observation/lab-bare"]["valueQuantity"] == {
        "value": 5, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}


def test_our_own_entities_get_the_full_declared_form(sm, tmp_path):
    sm.save_scenario("ours", {"lab_results": [{"lab_result_id": "L1", "loinc_code": "2345-7", "test_name": "Glucose",
                                               "numeric_value": 95, "unit": "mg/dL"}],
                              "vital_signs": [{"vital_sign_id": "V1", "observation_time": "2024-01-01T10:00:00Z",
                                               "heart_rate": 70}]})
    sm.export_fhir("ours", tmp_path / "out")
    observations = [r for r in exported(tmp_path / "out").values() if r["resourceType"] == "Observation"]
    lab = next(r for r in observations if r["category"][0]["coding"][0]["code"] == "laboratory")
    assert lab["code"]["coding"] == [{"system": LOINC, "code": "2345-7", "display": "Glucose"}]
    assert lab["valueQuantity"] == {"value": 95, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    (rate,) = [r for r in observations if r["code"]["coding"][0]["code"] == "8867-4"]
    assert rate["valueQuantity"] == {"value": 70, "unit": "/min", "system": UCUM, "code": "/min"}


# --- a kept date-time after its column changed and changed back ------------------------------

TIMED = {"resourceType": "Condition", "id": "cond-timed", "code": {"text": "Sprain of ankle"},
         "onsetDateTime": "2019-03-04T22:20:00-05:00"}


def test_a_date_set_back_to_its_imported_day_goes_out_as_it_came(sm, tmp_path):
    """Decided, not a defect: the kept text refines the column while the column
    holds its day. An edit to another day goes out as that date; set back to the
    imported day, the entity is what was imported and goes out as it came (the
    export sees values, not their history; a time of that day is all the input said)."""
    sm.import_fhir([ndjson(tmp_path / "in.ndjson", [TIMED])], "timed")
    (entity,) = sm.load_scenario("timed", entity_types=["diagnosis"])["entities"]["diagnosis"]
    sm.add_entities("timed", {"diagnoses": [dict(entity, diagnosed_date="2019-03-05")]})
    sm.export_fhir("timed", tmp_path / "moved")
    assert exported(tmp_path / "moved")["Condition/cond-timed"]["onsetDateTime"] == "2019-03-05"
    sm.add_entities("timed", {"diagnoses": [dict(entity, diagnosed_date="2019-03-04")]})
    sm.export_fhir("timed", tmp_path / "back")
    assert exported(tmp_path / "back")["Condition/cond-timed"] == TIMED
    # an edit that drops the record (the entity given without _fhir) is ours: the date goes out
    sm.add_entities("timed", {"diagnoses": [{k: v for k, v in entity.items() if k != "_fhir"}]})
    sm.export_fhir("timed", tmp_path / "ours")
    assert [r["onsetDateTime"] for r in exported(tmp_path / "ours").values()] == ["2019-03-04"]
