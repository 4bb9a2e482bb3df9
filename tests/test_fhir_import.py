"""import-fhir: Bundles, NDJSON and directories into one scenario, nothing lost,
and bad input refused with the file, the resource and the element."""

from __future__ import annotations

import json
from datetime import date, datetime
import shutil
from pathlib import Path

import pytest

from healthsim_state import StateManager
from healthsim_state.errors import FhirInputError
from healthsim_state.fhir.importer import index_inputs, input_files, read_resources, resolve_references
from healthsim_state.fhir.primitives import UNFIT
from healthsim_state.mcp_server import ScenarioTools
from clirun import run

DATA = Path(__file__).parent / "data" / "fhir"
BUNDLE = DATA / "synthea-like-bundle.json"
PRACTITIONERS = DATA / "practitioners-batch.json"
PATIENT_ID = "7c3f2a10-6d1b-4c2e-9a55-0b8e1f4d2a01"


def run_cli(*args):
    return run([str(arg) for arg in args])


@pytest.fixture
def sm(db_path):
    with StateManager(db_path) as manager:
        yield manager


def resolved(*paths):
    refs, inputs = index_inputs(read_resources(input_files(paths)))
    resolve_references(refs, inputs)
    return {item.local: item.resource for item in inputs}


def kept(sm, name):
    return {(e["resource_type"], e["resource_id"]): e
            for e in sm.load_scenario(name, entity_types=["fhir_resource"])["entities"]["fhir_resource"]}


# --- references ---------------------------------------------------------------------------

def test_urn_uuid_references_become_type_and_id():
    resources = resolved(BUNDLE)
    encounter = resources["Encounter/2b9d0e44-81c7-4f3a-b6d2-5e0c7a9f1b02"]
    assert encounter["subject"]["reference"] == f"Patient/{PATIENT_ID}"
    report = resources["DiagnosticReport/0d3f6b9e-5a28-4c71-a4f0-8b2e5d9a3c07"]
    assert report["result"][0]["reference"] == "Observation/9a6c4f21-3b8e-4d7a-8c15-7f2e0b6d9c04"


def test_conditional_references_to_resources_not_in_the_input_are_kept_as_they_came():
    encounter = resolved(BUNDLE)["Encounter/2b9d0e44-81c7-4f3a-b6d2-5e0c7a9f1b02"]
    assert encounter["participant"][0]["individual"]["reference"] == \
        "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999977711"
    assert encounter["location"][0]["location"]["reference"].startswith("Location?identifier=")


def test_conditional_references_resolve_when_the_target_is_in_the_input():
    encounter = resolved(BUNDLE, PRACTITIONERS)["Encounter/2b9d0e44-81c7-4f3a-b6d2-5e0c7a9f1b02"]
    assert encounter["participant"][0]["individual"]["reference"] == \
        "Practitioner/b2c3d4e5-0000-4000-8000-000000000077"
    assert encounter["serviceProvider"]["reference"] == "Organization/a1b2c3d4-0000-4000-8000-000000000042"
    assert encounter["location"][0]["location"]["reference"].startswith("Location?identifier=")  # still absent


def test_absolute_urls_resolve_by_their_type_and_id():
    resources = resolved(DATA / "bulk", DATA / "searchset.json")
    assert resources["Condition/bulk-c2"]["subject"]["reference"] == "Patient/bulk-p2"
    assert resources["AllergyIntolerance/ss-a1"]["patient"]["reference"] == "Patient/ss-p1"


def test_a_resource_without_id_takes_the_uuid_of_its_full_url(tmp_path):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:11111111-2222-4333-8444-555555555555", "resource": {"resourceType": "Patient"}},
        {"resource": {"resourceType": "Flag", "status": "active", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-2222-4333-8444-555555555555"}}}]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    resources = resolved(path)
    assert "Patient/11111111-2222-4333-8444-555555555555" in resources
    (flag,) = [r for r in resources.values() if r["resourceType"] == "Flag"]
    assert flag["subject"]["reference"] == "Patient/11111111-2222-4333-8444-555555555555"
    assert resolved(path).keys() == resources.keys()  # the made-up id is the same every time


# --- the whole import ----------------------------------------------------------------------

def test_unmapped_resources_are_kept_whole_with_their_patient(sm):
    report = sm.import_fhir([BUNDLE], "synthea")
    assert report.read["Immunization"] == 1 and report.kept["Immunization"] == 1
    assert report.kept["DiagnosticReport"] == 1 and "Patient" not in report.kept
    held = kept(sm, "synthea")
    immunization = held[("Immunization", "f2a9c7e1-4d5b-4e86-b3c2-9e7d1a4b6f08")]
    assert immunization["patient_reference"] == f"Patient/{PATIENT_ID}"
    original = next(e["resource"] for e in json.loads(BUNDLE.read_text())["entry"]
                    if e["resource"]["resourceType"] == "Immunization")
    assert immunization["resource"]["vaccineCode"] == original["vaccineCode"]
    assert immunization["resource"]["patient"] == {"reference": f"Patient/{PATIENT_ID}"}


def test_kept_resources_are_queryable_with_sql(db_path):
    with StateManager(db_path) as manager:
        manager.import_fhir([BUNDLE], "synthea")
    result = run_cli("sql", "SELECT resource_type, json_extract_string(resource, '$.vaccineCode.coding[0].code') "
                     "AS code FROM fhir_resources WHERE resource_type = 'Immunization'", "--json", "--db", db_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"resource_type": "Immunization", "code": "140"}]


def test_all_paths_become_one_scenario_and_a_repeated_resource_is_read_once(sm, tmp_path):
    folder = tmp_path / "synthea"
    folder.mkdir()
    shutil.copy(BUNDLE, folder / "Adaeze_Okafor.json")
    shutil.copy(PRACTITIONERS, folder / "practitionerInformation.json")
    shutil.copy(PRACTITIONERS, folder / "practitionerInformation2.json")  # the same resources again
    report = sm.import_fhir([folder, DATA / "bulk"], "all")
    assert report.files == 6
    assert report.read["Practitioner"] == 1 and report.read["Patient"] == 3
    assert sm.list_scenarios()[0]["name"] == "all" and len(sm.scenario_history("all")) == 1


def test_a_bulk_directory_reads_the_files_its_manifest_lists(tmp_path):
    folder = tmp_path / "bulk"
    shutil.copytree(DATA / "bulk", folder)
    (folder / "Stray.ndjson").write_text("not json at all\n")  # not in the manifest: not read
    assert sorted(p.name for p in input_files([folder])) == ["Condition.ndjson", "Patient.ndjson",
                                                             "Procedure.ndjson"]


# --- bad input -----------------------------------------------------------------------------

def bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(sm, paths, *fragments):
    with pytest.raises(FhirInputError) as caught:
        sm.import_fhir(paths, "bad")
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert not sm.scenario_exists("bad")
    return caught.value


def test_invalid_json_names_file_and_line(sm, tmp_path):
    path = bad(tmp_path, "Patient.ndjson", '{"resourceType":"Patient","id":"a"}\n{"resourceType": "Patient", "id"\n')
    refused(sm, [path], "Patient.ndjson, line 2", "not valid JSON")


def test_invalid_json_in_a_bundle_names_line_and_column(sm, tmp_path):
    path = bad(tmp_path, "b.json", '{"resourceType": "Bundle",\n "type": "collection",\n "entry": [,]}')
    refused(sm, [path], "b.json", "line 3, column")


def test_an_invalid_birth_date_names_resource_id_and_element(sm, tmp_path):
    path = bad(tmp_path, "p.ndjson", '{"resourceType":"Patient","id":"p-13","birthDate":"1988-13-45"}\n')
    error = refused(sm, [path], "Patient/p-13", "birthDate", "'1988-13-45'")
    assert (error.resource_type, error.resource_id, error.element) == ("Patient", "p-13", "birthDate")


@pytest.mark.parametrize("element, value", [
    ("birthDate", "1988-02-30"), ("effectiveDateTime", "2024-01-01T25:00:00Z"), ("gender", "F"),
    ("status", " final"), ("recordedDate", "yesterday")])
def test_invalid_dates_and_codes_are_refused(sm, tmp_path, element, value):
    path = bad(tmp_path, "r.ndjson", json.dumps({"resourceType": "Observation", "id": "o1", element: value}) + "\n")
    refused(sm, [path], "Observation/o1", element)


def test_a_period_with_an_invalid_start_is_refused(sm, tmp_path):
    path = bad(tmp_path, "e.ndjson", json.dumps({"resourceType": "Encounter", "id": "e1", "status": "finished",
                                                 "period": {"start": "2024-1-1"}}) + "\n")
    refused(sm, [path], "Encounter/e1", "period.start")


def test_an_invalid_id_is_refused(sm, tmp_path):
    path = bad(tmp_path, "p.ndjson", json.dumps({"resourceType": "Patient", "id": "has space"}) + "\n")
    refused(sm, [path], "Patient/has space", "not a FHIR id")


def test_two_different_resources_under_one_id_are_refused(sm, tmp_path):
    one = bad(tmp_path, "one.ndjson", json.dumps({"resourceType": "Patient", "id": "p1", "gender": "male"}) + "\n")
    two = bad(tmp_path, "two.ndjson", json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female"}) + "\n")
    refused(sm, [one, two], "Patient/p1", "two different resources", "one.ndjson")


def test_a_resource_referring_to_itself_is_a_cycle(sm, tmp_path):
    path = bad(tmp_path, "o.ndjson", json.dumps({"resourceType": "Organization", "id": "o1",
                                                 "partOf": {"reference": "Organization/o1"}}) + "\n")
    refused(sm, [path], "reference cycle", "Organization/o1", "partOf")


def test_a_part_of_cycle_is_refused(sm, tmp_path):
    lines = [{"resourceType": "Location", "id": f"l{i}", "partOf": {"reference": f"Location/l{(i + 1) % 3}"}}
             for i in range(3)]
    path = bad(tmp_path, "Location.ndjson", "\n".join(json.dumps(line) for line in lines) + "\n")
    refused(sm, [path], "reference cycle through partOf", "Location/l0 -> Location/l1 -> Location/l2 -> Location/l0")


def test_references_between_types_are_no_cycle(sm, tmp_path):
    lines = [{"resourceType": "Organization", "id": "o1", "endpoint": [{"reference": "Endpoint/x1"}]},
             {"resourceType": "Endpoint", "id": "x1", "status": "active", "managingOrganization":
              {"reference": "Organization/o1"}}]
    path = bad(tmp_path, "ok.ndjson", "\n".join(json.dumps(line) for line in lines) + "\n")
    assert sm.import_fhir([path], "fine").kept == {"Endpoint": 1, "Organization": 1}


def test_a_document_bundle_is_refused(sm, tmp_path):
    path = bad(tmp_path, "doc.json", json.dumps({"resourceType": "Bundle", "type": "document", "entry": []}))
    refused(sm, [path], "doc.json", "'document' is not read", "transaction, batch, collection, searchset")


def test_not_a_resource_is_refused(sm, tmp_path):
    path = bad(tmp_path, "x.ndjson", '{"id": "no type"}\n')
    refused(sm, [path], "x.ndjson, line 1", "not a FHIR resource")


def test_a_missing_path_is_refused(sm, tmp_path):
    refused(sm, [tmp_path / "nowhere.json"], "nowhere.json", "no such file")


def test_a_bad_file_after_good_ones_saves_nothing(sm, tmp_path):
    bad_file = bad(tmp_path, "z.ndjson", '{"resourceType":"Patient","id":"z","birthDate":"1988-13-45"}\n')
    refused(sm, [BUNDLE, DATA / "bulk", bad_file], "Patient/z")


# --- CLI and MCP ---------------------------------------------------------------------------

def test_cli_import_fhir_prints_the_report(db_path):
    result = run_cli("import-fhir", str(BUNDLE), str(PRACTITIONERS), "--name", "synthea", "--db", str(db_path))
    assert result.returncode == 0, result.stderr
    assert "imported 10 resources from 2 files as 'synthea'" in result.stdout
    assert "Immunization\t1\t1" in result.stdout
    assert "entities made:" in result.stdout


def test_cli_import_fhir_json_and_overwrite(db_path):
    first = run_cli("import-fhir", str(DATA / "bulk"), "--name", "b", "--json", "--db", str(db_path))
    report = json.loads(first.stdout)
    assert report["resources_read"] == {"Condition": 2, "Patient": 2, "Procedure": 1} and report["files"] == 3
    again = run_cli("import-fhir", str(DATA / "bulk"), "--name", "b", "--db", str(db_path))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run_cli("import-fhir", str(DATA / "bulk"), "--name", "b", "--overwrite", "--db", str(db_path)).returncode == 0


def test_cli_import_fhir_bad_input_exits_1_with_the_place(db_path, tmp_path):
    path = bad(tmp_path, "p.ndjson", '{"resourceType":"Patient","id":"p-13","birthDate":"1988-13-45"}\n')
    result = run_cli("import-fhir", str(path), "--name", "x", "--db", str(db_path))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Patient/p-13" in result.stderr and "birthDate" in result.stderr
    assert "Traceback" not in result.stderr


def test_mcp_get_fhir_pages_kept_resources(db_path):
    with StateManager(db_path) as manager:
        manager.import_fhir([BUNDLE], "synthea")
    tools = ScenarioTools(db_path)
    page = tools.get_fhir("synthea", resource_types=["Immunization", "DiagnosticReport"], limit=1)
    assert page["count"] == 1 and page["next_offset"] == 1 and not page["complete"]
    rest = tools.get_fhir("synthea", resource_types=["Immunization", "DiagnosticReport"], offset=1)
    assert rest["complete"] and rest["next_offset"] is None
    assert {r["resourceType"] for r in page["resources"] + rest["resources"]} == {"Immunization", "DiagnosticReport"}


# --- nothing lost ----------------------------------------------------------------------------

ALL_INPUTS = [BUNDLE, PRACTITIONERS, DATA / "bulk", DATA / "searchset.json"]


def exported(directory: Path) -> dict[str, dict]:
    out = {}
    for path in directory.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            out[f"{resource['resourceType']}/{resource['id']}"] = resource
    return out


def test_a_fhir_scenario_exported_again_gives_back_every_resource_under_its_id(sm, tmp_path):
    report = sm.import_fhir(ALL_INPUTS, "in")
    sm.export_fhir("in", tmp_path / "out")
    came_in, went_out = resolved(*ALL_INPUTS), exported(tmp_path / "out")
    assert set(went_out) == set(came_in) and len(came_in) == sum(report.read.values())  # no panel added
    for local, resource in came_in.items():
        assert set(resource) <= set(went_out[local]), local  # no element of the input is lost
    for local in ("Immunization/f2a9c7e1-4d5b-4e86-b3c2-9e7d1a4b6f08", "Practitioner/b2c3d4e5-0000-4000-8000-000000000077",
                  "DiagnosticReport/0d3f6b9e-5a28-4c71-a4f0-8b2e5d9a3c07", "AllergyIntolerance/ss-a1"):
        assert went_out[local] == came_in[local]  # kept as they came (references in the export's form)


def in_bundles(directory: Path) -> set[str]:
    return {f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
            for path in directory.glob("*.json") if path.name != "manifest.json"
            for entry in json.loads(path.read_text()).get("entry", [])}


VITALS_PANEL = "85353-1"


def test_imported_vital_signs_go_out_again_without_a_panel_and_ours_with_theirs(sm, tmp_path):
    sm.import_fhir([BUNDLE], "in")
    imported = sm.load_scenario("in")["entities"]
    assert len(imported["vital_sign"]) >= 2  # the Bundle's heart rate and blood pressure Observations
    own = {"vital_sign_id": "VS-OURS", "patient_id": PATIENT_ID, "observation_time": "2024-03-01T08:00:00Z",
           "heart_rate": 64, "blood_pressure": {"systolic": 120, "diastolic": 80}}
    sm.save_scenario("mixed", {**imported, "vital_sign": imported["vital_sign"] + [own]})
    sm.export_fhir("mixed", tmp_path / "out")
    sm.export_fhir("mixed", tmp_path / "bundles", bundles=True)
    went_out = exported(tmp_path / "out")
    panels = [r for r in went_out.values() if r["resourceType"] == "Observation"
              and r["code"]["coding"][0]["code"] == VITALS_PANEL]
    assert set(went_out) - set(resolved(BUNDLE)) == {f"Observation/{r['id']}" for r in panels} | {
        member["reference"] for panel in panels for member in panel["hasMember"]}  # only ours are new
    (panel,) = panels
    assert panel["identifier"][0]["value"] == "VS-OURS" and len(panel["hasMember"]) == 2
    assert in_bundles(tmp_path / "bundles") == set(went_out)


def test_race_and_ethnicity_extensions_and_extra_identifiers_come_back(sm, tmp_path):
    sm.import_fhir([BUNDLE], "in")
    sm.export_fhir("in", tmp_path / "out")
    patient = exported(tmp_path / "out")[f"Patient/{PATIENT_ID}"]
    original = resolved(BUNDLE)[f"Patient/{PATIENT_ID}"]
    assert patient["extension"] == original["extension"]
    assert {i.get("system") for i in original["identifier"]} <= {i.get("system") for i in patient["identifier"]}
    assert patient["text"] == original["text"] and patient["birthDate"] == "1988-03-14"


def test_imported_entities_say_they_were_loaded(sm):
    sm.import_fhir([BUNDLE], "in")
    (patient,) = sm.load_scenario("in", entity_types=["patient"])["entities"]["patient"]
    assert patient["_provenance"]["source_type"] == "loaded"


def test_two_imports_with_the_same_ids_do_not_mix(sm, tmp_path):
    def write(name, key):
        lines = [{"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:healthsim:patient", "value": key}]},
                 {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                  "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]}}]
        return bad(tmp_path, name, "\n".join(json.dumps(line) for line in lines) + "\n")

    sm.import_fhir([write("a.ndjson", "KEY-A")], "a")
    sm.import_fhir([write("b.ndjson", "KEY-B")], "b")
    (diagnosis,) = sm.load_scenario("b", entity_types=["diagnosis"])["entities"]["diagnosis"]
    assert diagnosis["patient_id"] == "KEY-B"


@pytest.mark.parametrize("url, message", [("../outside.ndjson", "points outside"), ("Missing.ndjson", "names no file"),
                                          ("", "without a url")])
def test_a_manifest_url_must_name_a_file_inside_the_directory(sm, tmp_path, url, message):
    folder = tmp_path / "bulk"
    shutil.copytree(DATA / "bulk", folder)
    (tmp_path / "outside.ndjson").write_text('{"resourceType":"Patient","id":"x"}\n')
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["output"].append({"type": "Patient", "url": url, "count": 1})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refused(sm, [folder], "manifest.json", message)


CLAIMS = DATA / "synthea-claims-bundle.json"  # by hand, in the shapes of Synthea's claims and vitals


def test_synthea_shaped_claims_and_vitals_come_back_equal_apart_from_reference_form(sm, tmp_path):
    sm.import_fhir([CLAIMS], "in")
    sm.export_fhir("in", tmp_path / "out")
    came_in, went_out = resolved(CLAIMS), exported(tmp_path / "out")
    assert set(came_in) == set(went_out)
    for local, resource in came_in.items():
        assert went_out[local] == resource, local


def test_a_constant_written_only_with_a_value_stays_when_the_value_did_not_come(sm, tmp_path):
    # Claim.diagnosis[0].sequence is declared only with principal_diagnosis (a code);
    # a claim whose diagnosis is a reference keeps its sequence (R4 requires it).
    sm.import_fhir([CLAIMS], "in")
    (claim,) = [c for c in sm.load_scenario("in", entity_types=["claim"])["entities"]["claim"]
                if c["claim_id"] == "5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a04"]
    assert claim.get("principal_diagnosis") is None
    sm.export_fhir("in", tmp_path / "out")
    diagnosis = exported(tmp_path / "out")["Claim/5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a04"]["diagnosis"]
    assert diagnosis == [{"sequence": 1, "diagnosisReference": {"reference": "Condition/5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a03"}}]


VITALS = DATA / "vitals-out-of-order.ndjson"  # by hand: components in other orders than the declarations'


def test_slices_found_away_from_their_declared_place_go_back_there_with_their_own_elements(sm, tmp_path):
    sm.import_fhir([VITALS], "in")
    sm.export_fhir("in", tmp_path / "out")
    came_in, went_out = resolved(VITALS), exported(tmp_path / "out")
    for local in ("Observation/vit-bp1", "Observation/vit-bp2", "Observation/vit-bp3"):
        assert went_out[local]["component"] == came_in[local]["component"], local
    assert went_out["Observation/vit-lab1"] == came_in["Observation/vit-lab1"]  # its profile twice, as it came


def test_out_of_order_blood_pressures_are_read_into_the_right_fields(sm):
    sm.import_fhir([VITALS], "in")
    vitals = {v["vital_sign_id"]: v["blood_pressure"] for v in sm.load_scenario("in", entity_types=["vital_sign"])
              ["entities"]["vital_sign"]}
    assert vitals["vit-bp1"] == {"systolic": 131, "diastolic": 81}
    assert vitals["vit-bp3"] == {"systolic": 133, "diastolic": 83}


def test_an_edited_value_goes_out_in_its_own_slice_at_the_place_it_came(sm, tmp_path):
    sm.import_fhir([VITALS], "in")
    (vital,) = [v for v in sm.load_scenario("in", entity_types=["vital_sign"])["entities"]["vital_sign"]
                if v["vital_sign_id"] == "vit-bp1"]
    vital["blood_pressure"]["systolic"] = 140
    sm.add_entities("in", {"vital_sign": [vital]})
    sm.export_fhir("in", tmp_path / "out")
    components = exported(tmp_path / "out")["Observation/vit-bp1"]["component"]
    assert [(c["code"]["coding"][0]["code"], c["code"]["coding"][0]["display"], c["valueQuantity"]["value"])
            for c in components] == [("8462-4", "Diastolic BP (own words)", 81), ("8480-6", "Systolic BP (own words)", 140)]


def test_a_field_two_elements_write_goes_out_only_where_it_came(sm, tmp_path):
    # test_name is code.coding[0].display and code.text: a lab that came without text goes out without it
    lab = {"resourceType": "Observation", "id": "lab-no-text", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "laboratory"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": "5778-6", "display": "Color of Urine"}]},
           "effectiveDateTime": "2020-01-01", "valueString": "yellow"}
    sm.import_fhir([bad(tmp_path, "lab.ndjson", json.dumps(lab) + "\n")], "in")
    (entity,) = sm.load_scenario("in", entity_types=["lab_result"])["entities"]["lab_result"]
    assert entity["test_name"] == "Color of Urine" and entity["value"] == "yellow"
    sm.export_fhir("in", tmp_path / "out")
    assert exported(tmp_path / "out")["Observation/lab-no-text"] == lab


def test_a_provenance_of_one_patient_goes_in_that_patients_bundle(sm, tmp_path):
    # Synthea's Provenance names its patient only among its targets
    sm.import_fhir([CLAIMS], "in")
    sm.export_fhir("in", tmp_path / "out", bundles=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == \
        ["Patient-5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a01.json", "manifest.json"]
    bundle = json.loads((tmp_path / "out" / "Patient-5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a01.json").read_text())
    names = {entry["fullUrl"] for entry in bundle["entry"]}
    (provenance,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert provenance["target"] and all(t["reference"] in names for t in provenance["target"])
    row = kept(sm, "in")[("Provenance", "5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a09")]
    assert row["patient_reference"] == "Patient/5e1a7c20-3b4d-4f6e-8a90-c1d2e3f40a01"


# --- values in other element forms (also:) --------------------------------------------------

FORMS = DATA / "choice-forms.ndjson"  # by hand, from R4's effective[x], performed[x] and authoredOn


def by_id(sm, name, entity_type, column):
    """The column's value of each entity, by the id of the resource it came from."""
    entities = sm.load_scenario(name, entity_types=[entity_type])["entities"][entity_type]
    return {next(iter(e["_fhir"].values()))["id"][-2:]: e.get(column) for e in entities}


def moment(value):
    return datetime.fromisoformat(str(value))


def test_values_in_other_element_forms_are_read_into_their_columns(sm):
    sm.import_fhir([FORMS], "forms")
    vitals = by_id(sm, "forms", "vital_sign", "observation_time")
    assert moment(vitals["02"]) == moment("2019-11-05T08:30:00.250+01:00")  # effectiveInstant
    assert moment(vitals["03"]) == moment("2019-11-05T08:35:00+01:00")  # effectivePeriod.start
    assert moment(vitals["04"]) == moment("2019-11-05T08:31:00+01:00")  # effectiveDateTime, as declared
    assert moment(by_id(sm, "forms", "lab_result", "collected_time")["05"]) == moment("2019-11-05T07:00:00-05:00")
    assert moment(by_id(sm, "forms", "procedure", "performed_time")["06"]) == moment("2018-02-14T10:00:00-05:00")
    starts = by_id(sm, "forms", "medication", "start_time")
    assert moment(starts["07"]) == moment("2017-03-01T09:00:00-05:00")  # authoredOn
    assert moment(starts["08"]) == moment("2017-03-01T00:00:00-05:00")  # the declared boundsPeriod.start wins
    records = {e["_fhir"]["medicationrequest"]["id"][-2:]: e["_fhir"]["medicationrequest"]
               for e in sm.load_scenario("forms", entity_types=["medication"])["entities"]["medication"]}
    assert records["07"]["forms"] == {"dosageInstruction[0].timing.repeat.boundsPeriod.start": "authoredOn"}
    assert "forms" not in records["08"] and records["08"]["extra"]["authoredOn"] == "2017-02-27T16:00:00-05:00"


def test_values_in_other_forms_go_out_in_the_form_they_came_and_come_back_equal(sm, tmp_path):
    sm.import_fhir([FORMS], "forms")
    sm.export_fhir("forms", tmp_path / "out")
    came_in, went_out = resolved(FORMS), exported(tmp_path / "out")
    assert set(went_out) == set(came_in)
    for local, resource in came_in.items():
        assert went_out[local] == resource, local  # effectiveInstant stays an instant, a Period keeps its end
    sm.import_fhir([tmp_path / "out"], "again")
    for entity_type, column in (("vital_sign", "observation_time"), ("lab_result", "collected_time"),
                                ("procedure", "performed_time"), ("medication", "start_time")):
        first = by_id(sm, "forms", entity_type, column)
        assert by_id(sm, "again", entity_type, column) == first and None not in first.values(), entity_type
    sm.export_fhir("again", tmp_path / "out2")
    assert exported(tmp_path / "out2") == went_out


def test_our_own_entities_go_out_in_the_declared_form(sm, tmp_path):
    sm.save_scenario("ours", {"vital_signs": [{"vital_sign_id": "v1", "heart_rate": 70,
                                               "observation_time": "2020-01-02T03:04:05Z"}],
                              "procedures": [{"procedure_id": "p1", "code": "99213", "code_system": "CPT",
                                              "performed_time": "2020-01-02T03:04:05Z"}],
                              "medications": [{"medication_id": "m1", "name": "x", "start_time": "2020-01-02T03:04:05Z"}]})
    sm.export_fhir("ours", tmp_path / "out")
    out = list(exported(tmp_path / "out").values())
    times = {(r["resourceType"], k) for r in out for k in r if k.startswith(("effective", "performed", "authored"))}
    assert times == {("Observation", "effectiveDateTime"), ("Procedure", "performedDateTime")}
    (request,) = [r for r in out if r["resourceType"] == "MedicationRequest"]
    assert moment(request["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]["start"]) == \
        moment("2020-01-02T03:04:05Z")


def test_an_invalid_value_in_another_form_names_that_form(sm, tmp_path):
    lines = FORMS.read_text().splitlines()
    broken = bad(tmp_path, "broken.ndjson", "\n".join(line.replace('"2019-11-05T08:30:00.250+01:00"', '"2019-11-05"')
                                                      for line in lines))
    refused(sm, [broken], "broken.ndjson, line 2", "Observation/c401d7a2-1f00-4e7b-9a3e-000000000002 @ effectiveInstant",
            "'2019-11-05' is not a valid FHIR instant")


def test_a_claim_item_without_sequence_is_named_by_its_resource_and_file(sm, tmp_path):
    bundle = json.loads(CLAIMS.read_text())
    claim = next(e["resource"] for e in bundle["entry"]
                 if e["resource"]["resourceType"] == "Claim" and len(e["resource"].get("item", ())) > 1)
    del claim["item"][1]["sequence"]
    broken = bad(tmp_path, "claims.json", json.dumps(bundle))
    refused(sm, [broken], "claims.json entry[", f"Claim/{claim['id']} @ item[1].sequence: required field is missing",
            "claim_line[")


# --- a dateTime with a time read into a date column ------------------------------------------

# By hand, from R4's Condition (onset[x], abatement[x]: dateTime) and Claim (created,
# billablePeriod): times late and early in the day, so the day in UTC is another one.
TIMED_CONDITION = {"resourceType": "Condition", "id": "cond-timed",
                   "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                  "code": "resolved"}]},
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44465007",
                                        "display": "Sprain of ankle"}], "text": "Sprain of ankle"},
                   "onsetDateTime": "2019-03-04T22:20:00-05:00", "abatementDateTime": "2019-03-20T00:30:15.5+01:00"}
DATED_CONDITION = {"resourceType": "Condition", "id": "cond-dated", "code": {"text": "Asthma"},
                   "onsetDateTime": "2012-05-24", "abatementDateTime": "2013-02"}
TIMED_CLAIM = {"resourceType": "Claim", "id": "claim-timed", "status": "active",
               "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
               "use": "claim", "created": "2014-08-16T23:59:59-07:00",
               "billablePeriod": {"start": "2014-08-15T01:00:00+09:00", "end": "2014-08-16T12:00:00Z"},
               "provider": {"reference": "Organization?identifier=http://hl7.org/fhir/sid/us-npi|1234567893"},
               "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                        "code": "normal"}]}}
TIMED = [TIMED_CONDITION, DATED_CONDITION, TIMED_CLAIM]


def dates(sm, name, entity_type, *columns):
    entities = sm.load_scenario(name, entity_types=[entity_type])["entities"][entity_type]
    return {next(iter(e["_fhir"].values()))["id"]: tuple(e.get(c) for c in columns) for e in entities}


def test_a_date_time_fills_a_date_column_with_its_day_as_written(store, tmp_path):
    with StateManager(store.target) as sm:
        sm.import_fhir([bad(tmp_path, "timed.ndjson", "".join(json.dumps(r) + "\n" for r in TIMED))], "timed")
        assert dates(sm, "timed", "diagnosis", "diagnosed_date", "resolved_date") == {
            "cond-timed": ("2019-03-04", "2019-03-20"),  # the offset's own day, not UTC's (03-05, 03-19)
            "cond-dated": ("2012-05-24", "2013-02")}  # a date stays as it was (a month: kept as given)
        assert dates(sm, "timed", "claim", "service_date", "admission_date", "discharge_date") == {
            "claim-timed": ("2014-08-16", "2014-08-15", "2014-08-16")}
        record = sm.load_scenario("timed", entity_types=["diagnosis"])["entities"]["diagnosis"]
    # the typed columns hold the days (a month, kept as given, leaves its column NULL)
    assert sorted(store.sql("SELECT diagnosed_date, resolved_date FROM diagnoses"), key=str) == [
        (date(2012, 5, 24), None), (date(2019, 3, 4), date(2019, 3, 20))]
    assert store.sql("SELECT service_date, admission_date, discharge_date FROM claims") == [
        (date(2014, 8, 16), date(2014, 8, 15), date(2014, 8, 16))]
    kept = {e["_fhir"]["condition"]["id"]: e["_fhir"]["condition"].get("times") for e in record}
    assert kept == {"cond-timed": {"onsetDateTime": "2019-03-04T22:20:00-05:00",
                                   "abatementDateTime": "2019-03-20T00:30:15.5+01:00"},
                    "cond-dated": None}


@pytest.mark.parametrize("bundles", [False, True], ids=["ndjson", "bundles"])
def test_a_date_time_read_into_a_date_column_goes_out_as_written_and_comes_back_equal(sm, tmp_path, bundles):
    source = bad(tmp_path, "timed.ndjson", "".join(json.dumps(r) + "\n" for r in TIMED))
    sm.import_fhir([source], "timed")
    sm.export_fhir("timed", tmp_path / "out", bundles=bundles)
    went_out = {f"{r['resourceType']}/{r['id']}": r for r in all_exported(tmp_path / "out")}
    assert went_out == {f"{r['resourceType']}/{r['id']}": r for r in TIMED}
    sm.import_fhir([tmp_path / "out"], "again")
    for entity_type, columns in (("diagnosis", ("diagnosed_date", "resolved_date", "_fhir")),
                                 ("claim", ("service_date", "admission_date", "discharge_date", "_fhir"))):
        assert dates(sm, "again", entity_type, *columns) == dates(sm, "timed", entity_type, *columns)


def all_exported(directory: Path) -> list[dict]:
    """The resources of an export, NDJSON or Bundles."""
    out = list(exported(directory).values())
    for path in directory.glob("*.json"):
        document = json.loads(path.read_text())
        if document.get("resourceType") == "Bundle":
            out += [entry["resource"] for entry in document["entry"]]
    return out


def test_a_date_column_changed_after_the_import_goes_out_as_its_date(sm, tmp_path):
    sm.import_fhir([bad(tmp_path, "timed.ndjson", json.dumps(TIMED_CONDITION) + "\n")], "timed")
    (entity,) = sm.load_scenario("timed", entity_types=["diagnosis"])["entities"]["diagnosis"]
    sm.add_entities("timed", {"diagnoses": [dict(entity, diagnosed_date="2019-03-05")]})  # replaced by its key
    sm.export_fhir("timed", tmp_path / "out")
    condition = exported(tmp_path / "out")["Condition/cond-timed"]
    assert condition["onsetDateTime"] == "2019-03-05"  # the column's date; the kept time is dropped
    assert condition["abatementDateTime"] == TIMED_CONDITION["abatementDateTime"]  # unchanged: as written
    sm.import_fhir([tmp_path / "out"], "again")
    assert dates(sm, "again", "diagnosis", "diagnosed_date", "resolved_date") == {
        "cond-timed": ("2019-03-05", "2019-03-20")}


def test_our_own_date_columns_go_out_as_dates(sm, tmp_path):
    sm.save_scenario("ours", {"diagnoses": [{"diagnosis_id": "d1", "code": "E11.9", "diagnosed_date": "2021-06-30",
                                             "resolved_date": "2022-01-02"}],
                              "claims": [{"claim_id": "c1", "service_date": "2021-07-01",
                                          "admission_date": "2021-06-30", "discharge_date": "2021-07-02"}]})
    sm.export_fhir("ours", tmp_path / "out")
    out = exported(tmp_path / "out")
    condition = next(r for r in out.values() if r["resourceType"] == "Condition")
    claim = next(r for r in out.values() if r["resourceType"] == "Claim")
    assert (condition["onsetDateTime"], condition["abatementDateTime"]) == ("2021-06-30", "2022-01-02")
    assert (claim["created"], claim["billablePeriod"]) == ("2021-07-01", {"start": "2021-06-30", "end": "2021-07-02"})
    assert "extension" not in condition or all(e["url"] != UNFIT for e in condition["extension"])


def test_our_own_date_time_in_a_non_strict_date_column_comes_back_as_given(sm, tmp_path):
    # The store kept it as given (the column is NULL): an import would take its day, so the
    # export also keeps it in the unfit extension, and entity -> FHIR -> entity gives it back.
    sm.save_scenario("ours", {"diagnoses": [{"diagnosis_id": "d1", "code": "J45.909", "patient_id": "p1",
                                             "diagnosed_date": "2021-06-30T08:00:00+02:00"}]})
    sm.export_fhir("ours", tmp_path / "out")
    (condition,) = [r for r in exported(tmp_path / "out").values() if r["resourceType"] == "Condition"]
    assert condition["onsetDateTime"] == "2021-06-30T08:00:00+02:00"
    assert [e["url"] for e in condition["extension"]].count(UNFIT) == 1
    sm.import_fhir([tmp_path / "out"], "again")
    (entity,) = sm.load_scenario("again", entity_types=["diagnosis"])["entities"]["diagnosis"]
    assert entity["diagnosed_date"] == "2021-06-30T08:00:00+02:00"
    sm.export_fhir("again", tmp_path / "out2")
    assert exported(tmp_path / "out2") == exported(tmp_path / "out")


def test_a_research_subjects_period_start_with_a_time_is_read_not_refused(sm, tmp_path):
    # R4's Period.start is a dateTime: randomization_date (a date) takes its day
    subject = {"resourceType": "ResearchSubject", "id": "rs-timed", "status": "on-study",
               "period": {"start": "2020-11-30T23:15:00-08:00"}, "study": {"reference": "ResearchStudy/study-1"},
               "individual": {"reference": "Patient/not-in-the-input"}}
    sm.import_fhir([bad(tmp_path, "subject.ndjson", json.dumps(subject) + "\n")], "trial")
    assert dates(sm, "trial", "subject", "randomization_date") == {"rs-timed": ("2020-11-30",)}
    sm.export_fhir("trial", tmp_path / "out")
    again = exported(tmp_path / "out")["ResearchSubject/rs-timed"]
    assert again["period"] == subject["period"] and again["study"] == subject["study"]  # (individual: the slot's own)


def test_a_diagnosis_imported_before_days_were_taken_still_goes_out_as_it_came(sm, tmp_path):
    # Such an entity holds the date-time as given (column NULL) and no kept times: no unfit extension
    sm.import_fhir([bad(tmp_path, "timed.ndjson", json.dumps(TIMED_CONDITION) + "\n")], "timed")
    (entity,) = sm.load_scenario("timed", entity_types=["diagnosis"])["entities"]["diagnosis"]
    record = entity["_fhir"]["condition"]
    del record["times"]
    sm.add_entities("timed", {"diagnoses": [dict(entity, diagnosed_date=TIMED_CONDITION["onsetDateTime"],
                                                 resolved_date=TIMED_CONDITION["abatementDateTime"])]})
    sm.export_fhir("timed", tmp_path / "out")
    assert exported(tmp_path / "out")["Condition/cond-timed"] == TIMED_CONDITION


def test_a_data_absent_marker_goes_out_again_where_it_came_and_nowhere_else(sm, tmp_path):
    """Our diagnosis without a code or a patient goes out with data-absent
    markers (R4 requires Condition.code's binding and subject); imported and
    exported again it keeps them (they were dropped once the import record
    existed). A Condition that came without a code still goes out without one."""
    sm.save_scenario("ours", {"diagnoses": [{"diagnosis_id": "d1", "description": "no code, no patient"}]})
    sm.export_fhir("ours", tmp_path / "out")
    first = exported(tmp_path / "out")
    (condition,) = [r for r in first.values() if r["resourceType"] == "Condition"]
    assert "data-absent-reason" in json.dumps(condition["code"]) and "data-absent-reason" in json.dumps(condition["subject"])
    sm.import_fhir([tmp_path / "out"], "again")
    sm.export_fhir("again", tmp_path / "out2")
    assert exported(tmp_path / "out2") == first
    bare = {"resourceType": "Condition", "id": "c-bare", "subject": {"reference": "Patient/elsewhere"}}
    sm.import_fhir([bad(tmp_path, "bare.ndjson", json.dumps(bare) + "\n")], "bare")
    sm.export_fhir("bare", tmp_path / "out3")
    assert "code" not in exported(tmp_path / "out3")["Condition/c-bare"]
