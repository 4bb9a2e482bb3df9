"""export --format fhir / fhir-bundle: Bulk Data files and manifest, stable
bytes, references, --since-version, transaction Bundles; CLI and MCP."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from healthsim_state import StateManager
from healthsim_state.fhir import export as fhir_export, spool
from healthsim_state.fhir.mapper import FhirMapper
from healthsim_state.fhir.references import ExportRefs, references_in
from healthsim_state.interop.errors import OutputExistsError
from healthsim_state.mcp_server import ScenarioTools
from benchmarks.generate import scenario
from clirun import run
from fhir_schema import fhir_schema, fhir_validator  # noqa: F401 (fixtures)
from fhir_standin import StandInMapper

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample-scenario.json"


def run_cli(*args):
    return run([str(arg) for arg in args])


@pytest.fixture
def sm(db_path):
    with StateManager(db_path) as manager:
        manager.save_scenario("sample", json.loads(SAMPLE.read_text()))
        yield manager


def read_ndjson(directory: Path) -> dict[str, list[dict]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    out = {}
    for item in manifest["output"]:
        lines = (directory / item["url"]).read_text().splitlines()
        assert len(lines) == item["count"]
        out[item["type"]] = [json.loads(line) for line in lines]
    return out


def all_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def unresolved(resources: list[dict]) -> list[str]:
    """References naming a Type/id that none of ``resources`` has."""
    held = {f"{r['resourceType']}/{r['id']}" for r in resources}
    return [holder["reference"] for r in resources for _, holder in references_in(r)
            if holder["reference"] not in held and "?" not in holder["reference"]]


# --- Bulk Data layout ---------------------------------------------------------------------

def test_manifest_has_the_bulk_data_shape(sm, tmp_path):
    manifest = sm.export_fhir("sample", tmp_path / "out")
    assert set(manifest) >= {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert manifest["transactionTime"] == sm.scenario_info("sample")["updated_at"].isoformat()
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written == manifest
    for item in manifest["output"]:
        assert item["url"] == f"{item['type']}.ndjson" and (tmp_path / "out" / item["url"]).is_file()
    assert [item["type"] for item in manifest["output"]] == sorted(item["type"] for item in manifest["output"])


def test_ids_are_unique_per_type_and_references_resolve(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "out")
    by_type = read_ndjson(tmp_path / "out")
    for kind, resources in by_type.items():
        ids = Counter(r["id"] for r in resources)
        assert all(r["resourceType"] == kind for r in resources)
        assert max(ids.values()) == 1, (kind, ids.most_common(2))
    everything = [r for resources in by_type.values() for r in resources]
    assert unresolved(everything) == []
    assert any(True for r in everything for _ in references_in(r))  # there were references to check


def test_the_same_version_exports_the_same_bytes(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "one")
    sm.add_entities("sample", {"patients": [{"patient_id": "LATE", "mrn": "M-LATE"}]})
    first_version = sm.scenario_history("sample")[-1]["version"]
    sm.export_fhir("sample", tmp_path / "two", version=first_version)
    assert all_files(tmp_path / "one") == all_files(tmp_path / "two")
    sm.export_fhir("sample", tmp_path / "three")
    assert all_files(tmp_path / "three")["Patient.ndjson"] != all_files(tmp_path / "one")["Patient.ndjson"]


def test_ids_stay_when_the_scenario_changes(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "one")
    sm.add_entities("sample", {"patients": [{"patient_id": "LATE"}]})
    sm.export_fhir("sample", tmp_path / "two")
    before = {r["id"] for r in read_ndjson(tmp_path / "one")["Patient"]}
    after = {r["id"] for r in read_ndjson(tmp_path / "two")["Patient"]}
    assert before < after and len(after - before) == 1


def test_type_limits_the_entity_types(sm, tmp_path):
    manifest = sm.export_fhir("sample", tmp_path / "out", entity_types=["patients"])
    assert [item["type"] for item in manifest["output"]] == ["Patient"]


# The folding of children into a parent is the io layer's (spool, since-version): tested
# with the stand-in mapper, which folds claim_line into Claim.item as a declaration does.

def export_folded(sm, directory, **options):
    return fhir_export.export_fhir(sm, "sample", directory, mapper=StandInMapper(), **options)


def test_a_folded_child_type_brings_its_parent(sm, tmp_path):
    manifest = export_folded(sm, tmp_path / "out", entity_types=["claim_line"])
    assert "Claim" in [item["type"] for item in manifest["output"]]
    (claim,) = read_ndjson(tmp_path / "out")["Claim"]
    assert len(claim["item"]) == 2


def test_folded_children_come_out_the_same_from_the_spool_file(sm, tmp_path, monkeypatch):
    sm.add_entities("sample", {"claims": [{"claim_id": f"C{i}", "patient_id": "PAT-001", "claim_type": "professional"}
                                          for i in range(5)],
                               "claim_lines": [{"claim_id": f"C{i % 5}", "line_number": i} for i in range(1, 31)]})
    export_folded(sm, tmp_path / "memory")
    moved = []
    to_file = spool.ChildSpool._to_file
    monkeypatch.setattr(spool, "IN_MEMORY", 3)  # past 3 children: a temporary SQLite file
    monkeypatch.setattr(spool.ChildSpool, "_to_file", lambda self: moved.append(1) or to_file(self))
    export_folded(sm, tmp_path / "file")
    assert moved == [1]
    assert all_files(tmp_path / "memory") == all_files(tmp_path / "file")
    claims = {c["identifier"][0]["value"]: c for c in read_ndjson(tmp_path / "file")["Claim"]}
    assert len(claims["C1"]["item"]) == 6


def test_an_existing_directory_needs_force_and_must_be_an_export(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--force"):
        sm.export_fhir("sample", tmp_path / "out")
    sm.export_fhir("sample", tmp_path / "out", force=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an empty directory or a healthsim-state FHIR export"):
        sm.export_fhir("sample", other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


# --- since-version -------------------------------------------------------------------------

def test_since_version_writes_what_changed_and_lists_what_went(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "full")
    full = read_ndjson(tmp_path / "full")
    old_patients = {r["identifier"][0]["value"]: r["id"] for r in full["Patient"]}
    gone_key = sorted(old_patients)[0]
    sm.delete_entities("sample", {"patient": [gone_key]})
    sm.add_entities("sample", {"patients": [{"patient_id": "NEW", "mrn": "M-NEW"}]})
    manifest = sm.export_fhir("sample", tmp_path / "since", since_version=1)
    written = read_ndjson(tmp_path / "since")
    assert [r["identifier"][0]["value"] for r in written["Patient"]] == ["NEW"]
    assert set(written) == {"Patient"}
    assert manifest["deleted"] == [{"type": "Bundle", "url": "deleted/Bundle.ndjson", "count": 1}]
    (bundle,) = [json.loads(line) for line in (tmp_path / "since" / "deleted" / "Bundle.ndjson").read_text()
                 .splitlines()]
    assert bundle["type"] == "transaction"
    assert bundle["entry"] == [{"request": {"method": "DELETE", "url": f"Patient/{old_patients[gone_key]}"}}]


def test_since_the_newest_version_writes_nothing(sm, tmp_path):
    version = sm.scenario_info("sample")["version"]
    manifest = sm.export_fhir("sample", tmp_path / "none", since_version=version)
    assert manifest["output"] == [] and manifest["deleted"] == []


def test_a_changed_child_renders_its_parent_again(sm, tmp_path):
    sm.add_entities("sample", {"claim_lines": [{"claim_id": "CLM-2024-000871", "line_number": 3}]})
    manifest = export_folded(sm, tmp_path / "since", since_version=1)
    assert [item["type"] for item in manifest["output"]] == ["Claim"]
    assert len(read_ndjson(tmp_path / "since")["Claim"][0]["item"]) == 3


# --- transaction Bundles -------------------------------------------------------------------

def test_one_transaction_bundle_per_patient_whose_references_resolve_inside(sm, tmp_path):
    manifest = sm.export_fhir("sample", tmp_path / "b", bundles=True)
    bundles = [json.loads((tmp_path / "b" / item["url"]).read_text()) for item in manifest["output"]]
    # one Bundle per person: a member's or a trial subject's Patient links to the patient's
    people = [r for r in sm.iter_fhir("sample", resource_types=["Patient"]) if not r.get("link")]
    assert sorted(item["url"] for item in manifest["output"] if item["url"].startswith("Patient-")) == \
        sorted(f"Patient-{r['id']}.json" for r in people)
    assert len(people) == sm.scenario_info("sample")["entity_counts"]["patient"]
    for bundle in bundles:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
        assert len(full_urls) == len(bundle["entry"])
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
            assert entry["fullUrl"].startswith("urn:uuid:")
            for _, holder in references_in(resource):
                assert holder["reference"] in full_urls or "?" in holder["reference"], holder


def test_bundles_hold_every_resource_of_the_ndjson_export(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "n")
    manifest = sm.export_fhir("sample", tmp_path / "b", bundles=True)
    in_bundles = {(e["resource"]["resourceType"], e["resource"]["id"])
                  for item in manifest["output"]
                  for e in json.loads((tmp_path / "b" / item["url"]).read_text())["entry"]}
    in_ndjson = {(r["resourceType"], r["id"]) for rs in read_ndjson(tmp_path / "n").values() for r in rs}
    assert in_bundles == in_ndjson


def test_full_url_of_an_id_that_is_not_a_uuid_is_a_stable_uuid():
    url = fhir_export.full_url("Patient/bulk-p1")
    assert url.startswith("urn:uuid:") and url == fhir_export.full_url("Patient/bulk-p1")
    assert fhir_export.full_url("Patient/7c3f2a10-6d1b-4c2e-9a55-0b8e1f4d2a01") == \
        "urn:uuid:7c3f2a10-6d1b-4c2e-9a55-0b8e1f4d2a01"


# --- iter_fhir, CLI, MCP -------------------------------------------------------------------

def test_iter_fhir_yields_what_the_export_writes(sm, tmp_path):
    sm.export_fhir("sample", tmp_path / "out")
    written = sorted(json.dumps(r, sort_keys=True) for rs in read_ndjson(tmp_path / "out").values() for r in rs)
    assert sorted(json.dumps(r, sort_keys=True) for r in sm.iter_fhir("sample")) == written
    assert {r["resourceType"] for r in sm.iter_fhir("sample", resource_types=["Patient"])} == {"Patient"}


def test_cli_export_fhir(sm, tmp_path):
    db = sm.label
    sm.close()
    result = run_cli("export", "sample", "--format", "fhir", "-o", tmp_path / "out", "--db", db)
    assert result.returncode == 0, result.stderr
    assert "NDJSON files" in result.stdout and (tmp_path / "out" / "manifest.json").is_file()
    again = run_cli("export", "sample", "--format", "fhir", "-o", tmp_path / "out", "--db", db)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "--force" in again.stderr
    bundles = run_cli("export", "sample", "--format", "fhir-bundle", "-o", tmp_path / "b", "--type", "patient",
                      "--db", db)
    assert bundles.returncode == 0 and "transaction Bundles" in bundles.stdout


def test_cli_fhir_options_need_a_fhir_format(sm, tmp_path):
    db = sm.label
    sm.close()
    result = run_cli("export", "sample", "--since-version", "1", "--db", db)
    assert result.returncode == 2 and "--since-version is for --format fhir" in result.stderr


def test_mcp_get_fhir_shows_one_patient(sm):
    pid = json.loads(SAMPLE.read_text())["patients"][0]["patient_id"]
    db = sm.label
    sm.close()
    tools = ScenarioTools(db)
    page = tools.get_fhir("sample", patient=pid)
    patients = [r for r in page["resources"] if r["resourceType"] == "Patient"]
    assert len(patients) == 1 and page["complete"]
    assert all(fhir_export.patient_of(r) == f"Patient/{patients[0]['id']}" for r in page["resources"])
    assert len(page["resources"]) > 1


# --- round trip -------------------------------------------------------------------------------

def typed(sm, name: str, entity_type: str, columns: list[str]) -> dict[tuple, tuple]:
    """The typed column values (as the store holds them: a timestamp written
    ``...T02:12:00`` or ``...T02:12:00Z`` is one value) of ``columns``, by key."""
    mapping = sm.registry.codecs[entity_type].mapping
    names = [f.column for f in mapping.fields]
    keys = [names.index(column) for column in mapping.primary_key]
    wanted = [names.index(column) for column in columns]
    out = {}
    with sm.snapshot(name) as snap:
        if snap.info["entity_counts"].get(entity_type):
            for batch in snap.typed_rows(entity_type):
                for row in batch:
                    out[tuple(row[i] for i in keys)] = tuple(row[i] for i in wanted)
    return out


def assert_round_trip(sm, name: str, directory: Path) -> int:
    """Export ``name`` to FHIR, import it back, and compare every column the
    declarations map that the entity holds, entity by entity (matched by
    key); the count compared."""
    sm.export_fhir(name, directory)
    sm.import_fhir([directory], f"{name}-back")
    mapper = FhirMapper.from_registry(sm.registry)
    compared = 0
    for entity_type in mapper.declared_types():
        columns = list(mapper.mapped_columns(entity_type))
        before, after = typed(sm, name, entity_type, columns), typed(sm, f"{name}-back", entity_type, columns)
        assert set(before) == set(after), entity_type
        for key, values in before.items():
            # every value the entity had comes back; a reference may fill in more of the target's lookup
            # values (a prescription that named its patient by patient_id gets the patient's mrn too)
            held = {column: value for column, value in zip(columns, values) if value is not None}
            back = {column: value for column, value in zip(columns, after[key]) if column in held}
            assert back == held, (entity_type, key)
        compared += len(before)
    return compared


def declared_count(sm, name: str) -> int:
    mapper = FhirMapper.from_registry(sm.registry)
    counts = sm.scenario_info(name)["entity_counts"]
    return sum(counts.get(entity_type, 0) for entity_type in mapper.declared_types())


def test_round_trip_of_the_sample_scenario(sm, tmp_path):
    assert assert_round_trip(sm, "sample", tmp_path / "out") == declared_count(sm, "sample") >= 8


def test_round_trip_of_a_generated_scenario_of_every_type(sm, tmp_path):
    sm.save_scenario("generated", scenario(3, seed=5))
    assert assert_round_trip(sm, "generated", tmp_path / "out") == declared_count(sm, "generated") >= 50


# --- the R4 schema ----------------------------------------------------------------------------

def test_every_exported_resource_is_valid_r4(sm, tmp_path, fhir_validator):
    sm.save_scenario("generated", scenario(2, seed=9))
    resources = []
    for name in ("sample", "generated"):
        sm.export_fhir(name, tmp_path / name)
        resources += [r for rs in read_ndjson(tmp_path / name).values() for r in rs]
    assert len({r["resourceType"] for r in resources}) >= 8
    problems = [(r["resourceType"], r["id"], fhir_validator.errors(r)) for r in resources]
    assert [p for p in problems if p[2]] == []


def test_bundles_and_kept_resources_are_valid_r4(sm, tmp_path, fhir_validator):
    data = Path(__file__).parent / "data" / "fhir"
    sm.import_fhir([data / "synthea-like-bundle.json", data / "practitioners-batch.json"], "synthea")
    manifest = sm.export_fhir("synthea", tmp_path / "b", bundles=True)
    for item in manifest["output"]:
        bundle = json.loads((tmp_path / "b" / item["url"]).read_text())
        assert fhir_validator.errors({**bundle, "entry": []}) == []
        for entry in bundle["entry"]:
            assert fhir_validator.errors(entry["resource"]) == [], entry["fullUrl"]


def test_cli_export_validate(sm, tmp_path, fhir_schema):
    db = sm.label
    sm.close()
    result = run_cli("export", "sample", "--format", "fhir", "-o", tmp_path / "out", "--validate", "--schema",
                     fhir_schema, "--db", db)
    assert result.returncode == 0, result.stderr
    assert "against the FHIR R4 JSON Schema: all valid" in result.stdout


def test_validate_export_reports_file_line_resource_and_element(sm, tmp_path, fhir_schema):
    sm.export_fhir("sample", tmp_path / "out")
    path = tmp_path / "out" / "Patient.ndjson"
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["birthDate"] = "1988-13-45"
    path.write_text("\n".join([lines[0], json.dumps(broken), *lines[2:]]) + "\n")
    checked, problems = fhir_export.validate_export(tmp_path / "out", fhir_schema)
    assert checked == sum(item["count"] for item in json.loads((tmp_path / "out" / "manifest.json").read_text())
                          ["output"])
    assert len(problems) == 1 and problems[0].startswith(f"Patient.ndjson, line 2: Patient/{broken['id']} @ birthDate")


# --- the benchmark keeps working (no timings asserted: CI machines are noisy) ------------------

def test_fhir_benchmark_reports_every_figure(tmp_path):
    from benchmarks.fhir import measure

    result = measure(400, 1, tmp_path)
    assert result["entities"] == 400 and result["resources"] > 400
    for key in ("json_export_s", "fhir_export_s", "fhir_vs_json_export", "fhir_export_resources_per_s", "import_s",
                "import_resources_per_s", "import_entities_made"):
        assert result[key] > 0, key
    assert isinstance(result["fhir_export_peak_rss_growth_mb"], float)


def test_references_to_a_second_resource_name_the_id_it_was_imported_with(sm, tmp_path):
    sm.save_scenario("generated", scenario(1, seed=3))
    sm.export_fhir("generated", tmp_path / "out")
    coverage_file = tmp_path / "out" / "Coverage.ndjson"
    (coverage,) = [json.loads(line) for line in coverage_file.read_text().splitlines()]
    coverage["id"] = "coverage-as-it-came"
    coverage_file.write_text(json.dumps(coverage) + "\n")
    sm.import_fhir([tmp_path / "out" / "Patient.ndjson", coverage_file], "members")
    member_id = coverage["identifier"][0]["value"]
    with sm.snapshot("members") as snap:
        refs = ExportRefs.build(snap, FhirMapper.from_registry(sm.registry))
    assert refs.slot_reference("member", "member_id", member_id, "coverage") == "Coverage/coverage-as-it-came"
    assert refs.reference("member", "member_id", member_id).startswith("Patient/")
    assert refs.slot_reference("member", "member_id", "nobody", "coverage") is None


def test_since_version_lists_a_type_deleted_whole_and_type_limits_deleted(sm, tmp_path):
    keys = [lab["lab_result_id"] for lab in sm.load_scenario("sample")["entities"]["lab_result"]]
    sm.delete_entities("sample", {"lab_result": keys})
    manifest = sm.export_fhir("sample", tmp_path / "all", since_version=1)
    lines = (tmp_path / "all" / "deleted" / "Bundle.ndjson").read_text().splitlines()
    urls = [entry["request"]["url"] for line in lines for entry in json.loads(line)["entry"]]
    assert len(urls) == len(keys) and all(url.startswith("Observation/") for url in urls)
    assert manifest["output"] == []
    assert sm.export_fhir("sample", tmp_path / "patients", since_version=1, entity_types=["patient"])["deleted"] == []


def test_one_patients_resources_are_those_a_full_export_holds_for_them(sm, monkeypatch):
    sm.save_scenario("generated", scenario(3, seed=4))
    rendered = []
    to_resources = FhirMapper.to_resources
    monkeypatch.setattr(FhirMapper, "to_resources", lambda self, t, e, **kw: rendered.append(t) or to_resources(
        self, t, e, **kw))
    everything = list(sm.iter_fhir("generated"))
    all_rendered, rendered[:] = len(rendered), []
    patient = next(r for r in everything if r["resourceType"] == "Patient"
                   and r["identifier"][0]["system"] == "urn:healthsim:patient")
    owner = f"Patient/{patient['id']}"
    expected = [r for r in everything if fhir_export.patient_of(r) == owner]
    assert len(expected) > 20
    assert list(sm.iter_fhir("generated", patient=patient["identifier"][0]["value"])) == expected
    assert len(rendered) < all_rendered / 2  # the other patients' entities are not rendered
    assert list(sm.iter_fhir("generated", patient=patient["id"])) == expected
    conditions = [r for r in everything if r["resourceType"] in ("Condition", "Claim")]
    assert list(sm.iter_fhir("generated", resource_types=["Condition", "Claim"])) == conditions


def test_a_parent_key_comes_from_the_childs_key_or_not_at_all():
    from types import SimpleNamespace

    def snapshot(key):
        return SimpleNamespace(registry=SimpleNamespace(codecs={"line": SimpleNamespace(
            mapping=SimpleNamespace(primary_key=key))}))

    assert fhir_export._parent_key(snapshot(("claim_id", "line_number")), "line", ("claim_id",), ("C1", "2")) == ("C1",)
    assert fhir_export._parent_key(snapshot(("line_id",)), "line", ("claim_id",), ("L9",)) is None  # all parents again
