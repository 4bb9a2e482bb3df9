"""export --format fhir-bundle of imported FHIR whose references leave the
export: a Bundle named after a patient holds that Patient, references
between Bundles' copies of shared resources resolve inside each Bundle, and
every reference no entry and no resource of the export answers is reported
(manifest, return value, CLI), kept as it came."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import run

from healthsim_state import StateManager
from healthsim_state.fhir.references import references_in

GONE_ENCOUNTER = "urn:uuid:0b0c0d0e-0000-4000-8000-00000000dead"

# By hand, from R4: two patients, an Encounter each at one Location managed by an
# Organization (resources of no patient), a Condition of a patient not in the input,
# and an Immunization (kept as it came) naming an Encounter by a urn:uuid the input
# does not hold.
INPUT = [
    {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-02"},
    {"resourceType": "Patient", "id": "p2", "birthDate": "1990-03-04"},
    {"resourceType": "Organization", "id": "org1", "name": "General Hospital"},
    {"resourceType": "Location", "id": "loc1", "name": "Ward 3", "managingOrganization": {"reference": "Organization/org1"}},
    {"resourceType": "Encounter", "id": "e1", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "subject": {"reference": "Patient/p1"}, "location": [{"location": {"reference": "Location/loc1"}}],
     "serviceProvider": {"reference": "Organization/org1"}},
    {"resourceType": "Encounter", "id": "e2", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "subject": {"reference": "Patient/p2"}, "location": [{"location": {"reference": "Location/loc1"}}]},
    {"resourceType": "Condition", "id": "c-elsewhere", "subject": {"reference": "Patient/elsewhere"},
     "code": {"text": "Asthma"}},
    {"resourceType": "Immunization", "id": "imm1", "status": "completed",
     "vaccineCode": {"text": "Influenza"}, "patient": {"reference": "Patient/p1"},
     "occurrenceDateTime": "2021-10-01", "encounter": {"reference": GONE_ENCOUNTER},
     "performer": [{"actor": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999977711"}}]},
]


@pytest.fixture
def sm(db_path, tmp_path):
    with StateManager(db_path) as manager:
        source = tmp_path / "in.ndjson"
        source.write_text("".join(json.dumps(r) + "\n" for r in INPUT))
        manager.import_fhir([source], "in")
        yield manager


def bundles(directory: Path) -> dict[str, dict]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {item["url"]: json.loads((directory / item["url"]).read_text()) for item in manifest["output"]}


def held(bundle: dict) -> dict[str, dict]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}


def test_a_bundle_named_after_a_patient_holds_that_patient(sm, tmp_path):
    sm.export_fhir("in", tmp_path / "b", bundles=True)
    written = bundles(tmp_path / "b")
    assert sorted(written) == ["Patient-p1.json", "Patient-p2.json", "shared.json"]
    for url, bundle in written.items():
        if url.startswith("Patient-"):
            assert f"Patient/{url[len('Patient-'):-len('.json')]}" in held(bundle)
    condition = held(written["shared.json"])["Condition/c-elsewhere"]  # its patient is in no Bundle
    assert condition["subject"] == {"reference": "Patient/elsewhere"}  # kept as it came


def test_copies_of_shared_resources_resolve_inside_every_bundle_that_holds_them(sm, tmp_path):
    sm.export_fhir("in", tmp_path / "b", bundles=True)
    for url, bundle in bundles(tmp_path / "b").items():
        full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
        for resource in held(bundle).values():
            for _, holder in references_in(resource):
                text = holder["reference"]
                assert text in full_urls or "?" in text or text in (GONE_ENCOUNTER, "Patient/elsewhere"), (url, text)
    second = held(bundles(tmp_path / "b")["Patient-p2.json"])
    assert {"Location/loc1", "Organization/org1"} <= set(second)  # loc1's own reference brought org1


UNRESOLVED = [
    {"url": "Patient-p1.json", "resource": "Immunization/imm1", "element": "encounter", "reference": GONE_ENCOUNTER},
    {"url": "shared.json", "resource": "Condition/c-elsewhere", "element": "subject", "reference": "Patient/elsewhere"},
]


def test_references_that_name_nothing_exported_are_reported(sm, tmp_path):
    manifest = sm.export_fhir("in", tmp_path / "b", bundles=True)
    assert manifest["extension"]["unresolved"] == UNRESOLVED
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["extension"]["unresolved"] == UNRESOLVED
    immunization = held(bundles(tmp_path / "b")["Patient-p1.json"])["Immunization/imm1"]
    assert immunization["encounter"] == {"reference": GONE_ENCOUNTER}  # reported, not dropped or rewritten
    again = sm.export_fhir("in", tmp_path / "again", bundles=True)
    assert again == manifest and all(
        (tmp_path / "again" / p.name).read_bytes() == p.read_bytes() for p in (tmp_path / "b").iterdir())


def test_the_cli_says_which_references_name_nothing_exported(sm, db_path, tmp_path):
    sm.close()
    result = run(["--db", str(db_path), "export", "in", "--format", "fhir-bundle", "-o", str(tmp_path / "b")])
    assert result.returncode == 0, result.stderr
    assert "2 references name no resource of this export" in result.stderr
    assert f"Patient-p1.json: Immunization/imm1 @ encounter: {GONE_ENCOUNTER}" in result.stderr
    assert "shared.json: Condition/c-elsewhere @ subject: Patient/elsewhere" in result.stderr


def test_a_complete_export_reports_nothing(db_path, tmp_path):
    with StateManager(db_path) as manager:
        source = tmp_path / "in.ndjson"
        source.write_text("".join(json.dumps(r) + "\n" for r in INPUT[:6]))
        manager.import_fhir([source], "whole")
        assert manager.export_fhir("whole", tmp_path / "b", bundles=True)["extension"]["unresolved"] == []


def test_an_export_limited_by_type_keeps_each_patients_bundle_and_reports_nothing_it_left_out(sm, tmp_path):
    # --type encounter: the Patients (and the kept Location, Organization) are resources
    # of the scenario version, loaded before; each patient's encounters stay together
    manifest = sm.export_fhir("in", tmp_path / "b", bundles=True, entity_types=["encounter"])
    written = bundles(tmp_path / "b")
    assert sorted(written) == ["Patient-p1.json", "Patient-p2.json"]
    assert set(held(written["Patient-p2.json"])) == {"Encounter/e2"}
    assert held(written["Patient-p1.json"])["Encounter/e1"]["subject"] == {"reference": "Patient/p1"}
    assert manifest["extension"]["unresolved"] == []


def test_a_partial_export_still_reports_references_that_name_nothing_of_the_scenario(sm, tmp_path):
    kept = sm.export_fhir("in", tmp_path / "kept", bundles=True, entity_types=["fhir_resource"])
    assert manifest_unresolved(kept) == [("Immunization/imm1", "encounter", GONE_ENCOUNTER)]  # not Patient/p1
    # a version later: an Immunization naming a Patient and an Encounter of the scenario, and a Location gone
    sm.add_entities("in", {"fhir_resources": [{
        "resource_type": "Immunization", "resource_id": "imm2", "patient_reference": "Patient/p2",
        "resource": {"resourceType": "Immunization", "id": "imm2", "status": "completed",
                     "vaccineCode": {"text": "Influenza"}, "patient": {"reference": "Patient/p2"},
                     "occurrenceDateTime": "2022-10-01", "encounter": {"reference": "Encounter/e2"},
                     "location": {"reference": "Location/gone"}}}]})
    since = sm.export_fhir("in", tmp_path / "since", bundles=True, since_version=1)
    assert set(held(bundles(tmp_path / "since")["Patient-p2.json"])) == {"Immunization/imm2"}
    assert manifest_unresolved(since) == [("Immunization/imm2", "location", "Location/gone")]


def manifest_unresolved(manifest: dict) -> list[tuple[str, str, str]]:
    return [(item["resource"], item["element"], item["reference"]) for item in manifest["extension"]["unresolved"]]


SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-scenario.json"


def test_a_partial_export_of_a_generated_scenario_reports_nothing(db_path, tmp_path):
    with StateManager(db_path) as manager:
        manager.save_scenario("sample", json.loads(SAMPLE.read_text()))
        whole = manager.export_fhir("sample", tmp_path / "whole", bundles=True)
        manager.add_entities("sample", {"encounters": [{
            "encounterId": "ENC-NEW", "patient_id": "3f6c2a9e-8b1d-4e57-9a0c-5d2e7f41b8a3", "class": "AMB",
            "status": "finished", "period": {"start": "2024-05-01T10:00:00Z"}}]})
        since = manager.export_fhir("sample", tmp_path / "since", bundles=True, since_version=1)
    written = [held(bundle) for bundle in bundles(tmp_path / "since").values()]
    (encounter,) = [resource for resources in written for resource in resources.values()]
    assert encounter["subject"]["reference"].startswith("Patient/")  # in the whole export, not in this one
    assert whole["extension"]["unresolved"] == since["extension"]["unresolved"] == []
    result = run(["--db", str(db_path), "export", "sample", "--format", "fhir-bundle", "--type", "encounter",
                  "-o", str(tmp_path / "encounters")])
    assert result.returncode == 0, result.stderr
    assert "resource of this export" not in result.stderr
    assert json.loads((tmp_path / "encounters" / "manifest.json").read_text())["extension"]["unresolved"] == []


@pytest.mark.parametrize("name", ["in", "sample"])
def test_resource_ids_are_the_ids_of_the_resources_an_entity_makes(sm, name):
    # an imported entity keeps the ids it came with; a generated one's are made from its key
    from healthsim_state.fhir.export import KEPT_TYPE, iter_resources, make_plan
    from healthsim_state.fhir.mapper import FhirMapper
    from healthsim_state.fhir.writers import resource_ids

    sm.save_scenario("sample", json.loads(SAMPLE.read_text()))
    with sm.snapshot(name) as snapshot:
        plan = make_plan(snapshot, FhirMapper.from_registry(snapshot.registry))
        plan.types = [entity_type for entity_type in plan.types if entity_type != KEPT_TYPE]
        rendered = [f"{r['resourceType']}/{r['id']}" for r in iter_resources(snapshot, plan)]
        made = [local for entity_type in plan.types for entity in snapshot.entities(entity_type)
                for local in resource_ids(plan.mapper.plan(entity_type), entity, plan.scenario_id)]
    assert len(made) >= 5 and sorted(made) == sorted(rendered)
