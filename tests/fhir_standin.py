"""A tiny stand-in for FhirMapper (patient, lab_result, claim with folded
claim_lines), for the tests of what the io layer does around any mapper
(folding children, the spool, since-version of a changed child): they must
not depend on how rich the built-in declarations are."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

NS = uuid.UUID("00000000-0000-5000-8000-000000000001")


def _id(scenario_id, entity_type, key):
    return str(uuid.uuid5(NS, f"{scenario_id}/{entity_type}/{key}"))


class StandInMapper:
    TYPES = {"patient": "Patient", "lab_result": "Observation", "claim": "Claim"}

    def declared_types(self):
        return ("claim", "claim_line", "lab_result", "patient")

    def folded_types(self):
        return {"claim_line": ("claim", ("claim_id",))}

    def lookup_fields(self, entity_type):
        return {"patient": ("patient_id", "mrn")}.get(entity_type, ())

    def mapping(self, entity_type):  # no fhir: section to read references from: nothing is looked up
        return SimpleNamespace(fhir=None)

    def plan(self, entity_type):  # one resource per type: no secondary slots
        return SimpleNamespace(resources=[SimpleNamespace(slot=entity_type, resource_type=self.TYPES[entity_type],
                                                          whens=[])])

    def primary_resource_type(self, entity_type):
        return self.TYPES[entity_type]

    def resource_id(self, entity_type, entity, scenario_id):
        key = {"patient": "patient_id", "lab_result": "lab_result_id", "claim": "claim_id"}[entity_type]
        return entity.get("_fhir", {}).get("id") or _id(scenario_id, entity_type, entity[key])

    def to_resources(self, entity_type, entity, *, scenario_id, refs, children=None):
        rid = self.resource_id(entity_type, entity, scenario_id)
        if entity_type == "patient":
            return [{"resourceType": "Patient", "id": rid,
                     "identifier": [{"system": "urn:healthsim:patient", "value": entity["patient_id"]}],
                     **({"birthDate": entity["birthDate"]} if entity.get("birthDate") else {})}]
        if entity_type == "lab_result":
            subject = refs.reference("patient", "patient_id", entity.get("patient_id")) or \
                refs.reference("patient", "mrn", entity.get("patient_mrn"))
            out = {"resourceType": "Observation", "id": rid, "status": "final",
                   "identifier": [{"system": "urn:healthsim:lab_result", "value": entity["lab_result_id"]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": entity.get("loinc_code")}]}}
            if subject:
                out["subject"] = {"reference": subject}
            return [out]
        items = [{"sequence": line["line_number"]} for line in (children or {}).get("claim_line", [])]
        out = {"resourceType": "Claim", "id": rid,
               "identifier": [{"system": "urn:healthsim:claim", "value": entity["claim_id"]}], "item": items}
        subject = refs.reference("patient", "patient_id", entity.get("patient_id"))
        if subject:
            out["patient"] = {"reference": subject}
        return [out]

    def entity_types_of(self, resource):
        kind = resource["resourceType"]
        return {"Patient": ("patient",), "Observation": ("lab_result",), "Claim": ("claim", "claim_line")}.get(kind)

    def from_resource(self, resource, *, refs):
        kind, rid = resource["resourceType"], resource["id"]
        key = next((i["value"] for i in resource.get("identifier", []) if i.get("system", "").startswith(
            "urn:healthsim:")), rid)
        if kind == "Patient":
            return [("patient", {"patient_id": key, "birthDate": resource.get("birthDate"), "_fhir": {"id": rid}})]
        subject = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        target = refs.target(subject) if subject else None
        patient = None
        if target is not None:
            patient = next((i["value"] for i in target.get("identifier", [])
                            if i.get("system") == "urn:healthsim:patient"), target["id"])
        if kind == "Observation":
            code = resource["code"]["coding"][0]["code"]
            return [("lab_result", {"lab_result_id": key, "loinc_code": code, "patient_id": patient,
                                    "_fhir": {"id": rid}})]
        lines = [("claim_line", {"claim_id": key, "line_number": item["sequence"]}) for item in resource["item"]]
        return [("claim", {"claim_id": key, "patient_id": patient, "claim_type": "professional",
                           "_fhir": {"id": rid}})] + lines
