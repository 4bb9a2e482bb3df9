"""A deterministic generator of realistic HealthSim scenarios (stdlib only).

``scenario(patients, seed)`` returns ``{entity_type: [entity, ...]}`` with about
80 entities per patient across all 14 types: per patient 5 encounters, 3
diagnoses, 2 procedures, 4 medications, 10 lab results, 8 vital signs and a
clinical note; a member with 6 claims of 3 lines each and 6 prescriptions; a
trial subject with 14 visits. Entities carry unmapped data as real files do
(nested objects, lists of objects) and mix canonical paths with aliases.
Same arguments, same data, on every machine.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

PER_PATIENT = 80
GIVEN = ["Maria", "James", "Aiko", "Omar", "Lena", "Chen", "Priya", "Diego", "Fatima", "Noah", "Zara", "Ivan"]
FAMILY = ["Gonzalez", "Smith", "Tanaka", "Haddad", "Novak", "Wang", "Patel", "Silva", "Okafor", "Brown"]
CITIES = [("San Antonio", "TX", "782"), ("Boston", "MA", "021"), ("Denver", "CO", "802"), ("Seattle", "WA", "981")]
ICD10 = [("E11.9", "Type 2 diabetes mellitus"), ("I10", "Essential hypertension"), ("J45.909", "Asthma"),
         ("E78.5", "Hyperlipidemia"), ("N18.3", "Chronic kidney disease, stage 3"), ("F32.9", "Depression")]
LOINC = [("4548-4", "Hemoglobin A1c", "%", "4.0-5.6"), ("2345-7", "Glucose", "mg/dL", "70-99"),
         ("2160-0", "Creatinine", "mg/dL", "0.6-1.2"), ("718-7", "Hemoglobin", "g/dL", "12-16")]
DRUGS = [("860975", "Metformin 500 MG Oral Tablet"), ("197361", "Amlodipine 5 MG Oral Tablet"),
         ("617314", "Atorvastatin 10 MG Oral Tablet"), ("310965", "Ibuprofen 200 MG Oral Tablet")]
CPT = ["99213", "99214", "80053", "83036", "93000", "36415"]


def scenario(patients: int, seed: int = 42) -> dict[str, list[dict[str, Any]]]:
    """A scenario of ``patients`` patients (about 80 entities each)."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in (
        "patient", "encounter", "diagnosis", "procedure", "medication", "lab_result", "vital_sign",
        "clinical_note", "member", "claim", "claim_line", "prescription", "subject", "trial_visit")}
    start = dt.datetime(2023, 1, 1, 8, 0)
    for p in range(patients):
        _one_patient(rng, out, p, start)
    return out


# The clinical types' keys, which no other entity refers to: left out by a
# generator that lets the store make them (their mappings say ``default: uuid4``).
GENERATED_KEYS = {"diagnosis": "diagnosis_id", "procedure": "procedure_id", "medication": "medication_id",
                  "lab_result": "lab_result_id", "vital_sign": "vital_sign_id", "clinical_note": "note_id"}


def keyless_scenario(patients: int, seed: int = 42) -> dict[str, list[dict[str, Any]]]:
    """:func:`scenario` with the clinical types' keys left out (about 60% of
    the entities): the store makes them from each entity's content."""
    out = scenario(patients, seed)
    for kind, key in GENERATED_KEYS.items():
        for item in out[kind]:
            del item[key]
    return out


def entity_count(data: dict[str, list]) -> int:
    return sum(len(items) for items in data.values())


def _one_patient(rng: random.Random, out: dict[str, list], p: int, start: dt.datetime) -> None:
    pid, mrn = f"PAT-{p:08d}", f"MRN{p:08d}"
    city, state, zip3 = rng.choice(CITIES)
    born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25_000))
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    out["patient"].append({
        "patient_id": pid, "mrn": mrn, "name": {"given": given, "family": family},
        "birthDate": born.isoformat(), "gender": rng.choice(["female", "male"]),
        "address": {"line1": f"{rng.randrange(1, 9999)} Oak St", "city": city, "state": state,
                    "postalCode": f"{zip3}{rng.randrange(100):02d}"},
        "telecom": {"phone": f"555-{rng.randrange(10**7):07d}"},
        "insurance": {"primary": {"payer_id": "60054", "member_id": f"MEM{p:08d}"}},
        "emergency_contact": {"name": f"{rng.choice(GIVEN)} {family}", "relationship": "spouse"},
        "_provenance": {"source_type": "generated", "source_system": "patientsim", "seed": p},
    })
    visit_times = sorted(start + dt.timedelta(minutes=rng.randrange(700_000)) for _ in range(5))
    for e, when in enumerate(visit_times):
        eid = f"ENC-{p:08d}-{e}"
        out["encounter"].append({
            "encounter_id": eid, "patient_id": pid, "patient_mrn": mrn, "class": rng.choice("IOE"),
            "status": "finished", "period": {"start": when.isoformat(), "end": (when + dt.timedelta(hours=2)).isoformat()},
            "facility": {"name": f"{city} General", "npi": f"1{rng.randrange(10**9):09d}"} if e % 2 else f"{city} Clinic",
            "chief_complaint": "follow-up", "attending_physician": f"Dr. {rng.choice(FAMILY)}",
        })
        _clinical(rng, out, p, e, pid, mrn, eid, when)
    _claims(rng, out, p, pid, visit_times)
    _trial(rng, out, p, pid, born, given, family)


def _clinical(rng, out, p, e, pid, mrn, eid, when) -> None:
    link = {"patient_id": pid, "patient_mrn": mrn, "encounter_id": eid}
    if e < 3:
        code, text = rng.choice(ICD10)
        out["diagnosis"].append({"diagnosis_id": f"DX-{p}-{e}", **link, "code": code, "description": text,
                                 "type": "final", "diagnosed_date": when.date().isoformat(), "status": "active"})
    if e < 2:
        out["procedure"].append({"procedure_id": f"PR-{p}-{e}", **link, "code": rng.choice(CPT), "code_system": "CPT",
                                 "performed_time": when.isoformat(), "charge": round(rng.uniform(50, 900), 2)})
    if e < 4:
        rx, name = rng.choice(DRUGS)
        out["medication"].append({"medication_id": f"MED-{p}-{e}", **link, "name": name, "rxnorm_code": rx,
                                  "dose": "1 tablet", "route": "oral", "frequency": "BID",
                                  "start_time": when.isoformat(), "status": "active"})
    for k in range(2):
        loinc, test, unit, ref = rng.choice(LOINC)
        value = round(rng.uniform(3, 200), 1)
        out["lab_result"].append({"lab_result_id": f"LAB-{p}-{e}-{k}", **link, "test_name": test, "loinc_code": loinc,
                                  "value": str(value), "numeric_value": value, "unit": unit, "reference_range": ref,
                                  "abnormal_flag": rng.choice("NHL"), "collected_time": when.isoformat(),
                                  "specimen": {"type": "blood", "container": "lavender top"}})
    if e < 4:
        for k in range(2):
            vitals = {"vital_sign_id": f"VS-{p}-{e}-{k}", **link, "observation_time": when.isoformat(),
                      "temperature": round(rng.uniform(36.1, 38.5), 1), "heart_rate": rng.randrange(55, 120),
                      "blood_pressure": {"systolic": rng.randrange(100, 180), "diastolic": rng.randrange(60, 110)},
                      "spo2": rng.randrange(90, 100), "weight_kg": round(rng.uniform(45, 130), 1)}
            if k:  # real files also hold measurements as objects
                vitals["heart_rate"] = {"value": vitals["heart_rate"], "unit": "bpm"}
            out["vital_sign"].append(vitals)
    if e == 0:
        out["clinical_note"].append({"note_id": f"NOTE-{p}", **link, "note_type": "progress", "note_time": when.isoformat(),
                                     "author": "Dr. Who", "content": "Patient seen for follow-up. " * 8})


def _claims(rng, out, p, pid, visit_times) -> None:
    member_id = f"MEM{p:08d}"
    out["member"].append({"member_id": member_id, "patient_id": pid, "subscriber_id": member_id,
                          "relationship_code": "18", "group_id": f"GRP{p % 50:04d}", "plan_code": "PPO-GOLD",
                          "coverage_start": "2023-01-01", "payer_name": "Aetna",
                          "benefits": {"deductible": 1500, "oop_max": 6000}})
    for c in range(6):
        claim_id = f"CLM-{p:08d}-{c}"
        day = visit_times[c % len(visit_times)].date().isoformat()
        charges = [round(rng.uniform(20, 400), 2) for _ in range(3)]
        total = round(sum(charges), 2)
        out["claim"].append({"claim_id": claim_id, "claim_type": "PROFESSIONAL", "member_id": member_id,
                             "patient_id": pid, "provider_npi": "1234567893", "service_date": day,
                             "principal_diagnosis": rng.choice(ICD10)[0], "other_diagnoses": ["I10", "E78.5"],
                             "total_charge": total, "total_allowed": round(total * 0.8, 2),
                             "total_paid": round(total * 0.7, 2), "status": "paid",
                             "adjudication": [{"code": "CO-45", "amount": round(total * 0.2, 2)}]})
        for line, charge in enumerate(charges, start=1):
            out["claim_line"].append({"claim_id": claim_id, "line_number": line, "procedure_code": rng.choice(CPT),
                                      "service_date": day, "units": 1.0, "charge_amount": charge,
                                      "allowed_amount": round(charge * 0.8, 2), "paid_amount": round(charge * 0.7, 2),
                                      "diagnosis_pointers": [1]})
    for r in range(6):
        rx, name = rng.choice(DRUGS)
        out["prescription"].append({"prescription_number": f"RX-{p:08d}-{r}", "patient_id": pid,
                                    "member_id": member_id, "ndc": f"00093{rng.randrange(10**6):06d}",
                                    "drug_name": name, "quantity": 60.0, "days_supply": 30, "refills_authorized": 3,
                                    "written_date": "2023-06-01", "status": "filled",
                                    "pharmacy": {"ncpdp": "1234567", "name": "Corner Drug"}})


def _trial(rng, out, p, pid, born, given, family) -> None:
    usubjid = f"STUDY01-{p % 20:03d}-{p:06d}"
    out["subject"].append({"usubjid": usubjid, "subject_id": f"{p:06d}", "study_id": "STUDY01",
                           "site_id": f"{p % 20:03d}", "patient_id": pid, "birthDate": born.isoformat(),
                           "name": {"given": given, "family": family}, "treatment_arm": rng.choice(["A", "B"]),
                           "status": "enrolled", "screening_date": "2023-02-01"})
    for v in range(14):
        out["trial_visit"].append({"usubjid": usubjid, "visit_num": float(v + 1), "visit_name": f"Week {v * 2}",
                                   "visit_date": (dt.date(2023, 3, 1) + dt.timedelta(days=14 * v)).isoformat(),
                                   "study_day": 14 * v + 1, "visit_status": "completed"})


# --- data shaped as earlier HealthSim versions wrote it -----------------------------------

OFFSETS = ["", "", "-05:00", "-06:00", "+00:00", "Z", "+01:00"]


def legacy_scenario(patients: int, seed: int = 42) -> dict[str, list[dict[str, Any]]]:
    """The same people and events as :func:`scenario` (about 80 entities per
    patient, all 14 types), shaped as earlier HealthSim versions wrote them:
    flat aliases instead of canonical paths (``id``, ``given_name``, ``dob``,
    ``street_address``, ``admission_time``, ...), explicit nulls for what was
    not generated (which the store keeps in the residual), timestamps with and
    without a UTC offset (``Z``, ``-05:00``), and keys no mapping names."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in (
        "patient", "encounter", "diagnosis", "procedure", "medication", "lab_result", "vital_sign",
        "clinical_note", "member", "claim", "claim_line", "prescription", "subject", "trial_visit")}
    start = dt.datetime(2023, 1, 1, 8, 0)
    for p in range(patients):
        _legacy_patient(rng, out, p, start)
    return out


def _stamp(rng: random.Random, moment: dt.datetime) -> str:
    """A timestamp as legacy files hold it: naive, or with an offset."""
    return moment.isoformat() + rng.choice(OFFSETS)


def _maybe(rng: random.Random, value: Any, chance: float = 0.5) -> Any:
    """The value, or an explicit null (legacy files wrote every field)."""
    return value if rng.random() < chance else None


def _legacy_patient(rng: random.Random, out: dict[str, list], p: int, start: dt.datetime) -> None:
    pid, mrn = f"PAT-{p:08d}", f"MRN{p:08d}"
    city, state, zip3 = rng.choice(CITIES)
    born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25_000))
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    out["patient"].append({
        "id": pid, "medical_record_number": mrn, "ssn": None, "given_name": given, "middle_name": _maybe(rng, "J"),
        "family_name": family, "prefix": None, "suffix": None, "dob": born.isoformat(),
        "sex": rng.choice(["F", "M"]), "race": _maybe(rng, "2106-3"), "ethnicity": None, "language": "en",
        "street_address": f"{rng.randrange(1, 9999)} Oak St", "address_line2": None, "city": city,
        "state": state, "zip": f"{zip3}{rng.randrange(100):02d}", "country": "US",
        "phone": f"555-{rng.randrange(10**7):07d}", "email": None, "deceased": False, "death_date": None,
        "created_at": _stamp(rng, start), "source": "patientsim-1.x",
    })
    visit_times = sorted(start + dt.timedelta(minutes=rng.randrange(700_000)) for _ in range(5))
    for e, when in enumerate(visit_times):
        eid = f"ENC-{p:08d}-{e}"
        out["encounter"].append({
            "id": eid, "patient_id": pid, "mrn": mrn, "encounter_class": rng.choice("IOE"), "status": "finished",
            "admission_time": _stamp(rng, when), "discharge_time": _maybe(rng, _stamp(rng, when + dt.timedelta(hours=2))),
            "facility_name": f"{city} General", "department": None, "room": None, "bed": None,
            "reason": "follow-up", "admitting_diagnosis": None, "discharge_disposition": _maybe(rng, "01"),
            "attending_physician": f"Dr. {rng.choice(FAMILY)}", "admitting_physician": None,
        })
        _legacy_clinical(rng, out, p, e, pid, mrn, eid, when)
    _legacy_claims(rng, out, p, pid, visit_times)
    _legacy_trial(rng, out, p, pid, born, given, family)


def _legacy_clinical(rng, out, p, e, pid, mrn, eid, when) -> None:
    link = {"patient_id": pid, "patient_mrn": mrn, "encounter_id": eid}
    if e < 3:
        code, text = rng.choice(ICD10)
        out["diagnosis"].append({"id": f"DX-{p}-{e}", **link, "code": code, "display": text, "type": "final",
                                 "onset_date": when.date().isoformat(), "resolved_date": None, "status": "active"})
    if e < 2:
        out["procedure"].append({"id": f"PR-{p}-{e}", **link, "code": rng.choice(CPT), "code_system": "CPT",
                                 "display": None, "performed_date": _stamp(rng, when), "performer": None,
                                 "performer_npi": None, "body_site": None, "status": "completed",
                                 "charge": round(rng.uniform(50, 900), 2)})
    if e < 4:
        rx, name = rng.choice(DRUGS)
        out["medication"].append({"id": f"MED-{p}-{e}", **link, "drug_name": name, "code": rx, "ndc": None,
                                  "dose": "1 tablet", "route": "oral", "frequency": "BID",
                                  "start_date": _stamp(rng, when), "end_date": None, "status": "active",
                                  "prescriber": None, "indication": None})
    for k in range(2):
        loinc, test, unit, ref = rng.choice(LOINC)
        value = round(rng.uniform(3, 200), 1)
        out["lab_result"].append({"id": f"LAB-{p}-{e}-{k}", **link, "test_name": test, "code": loinc,
                                  "value": str(value), "numeric_value": value, "unit": unit, "reference_range": ref,
                                  "interpretation": rng.choice("NHL"), "collected_time": _stamp(rng, when),
                                  "resulted_time": _maybe(rng, _stamp(rng, when + dt.timedelta(hours=6))),
                                  "performing_lab": None, "ordering_provider": None})
    if e < 4:
        for k in range(2):
            out["vital_sign"].append({"id": f"VS-{p}-{e}-{k}", **link, "observation_time": _stamp(rng, when),
                                      "temperature": round(rng.uniform(36.1, 38.5), 1),
                                      "heart_rate": rng.randrange(55, 120), "respiratory_rate": None,
                                      "systolic_bp": rng.randrange(100, 180), "diastolic_bp": rng.randrange(60, 110),
                                      "spo2": rng.randrange(90, 100), "height_cm": None,
                                      "weight_kg": round(rng.uniform(45, 130), 1), "bmi": None, "pain_score": None})
    if e == 0:
        out["clinical_note"].append({"id": f"NOTE-{p}", **link, "note_type": "progress",
                                     "note_datetime": _stamp(rng, when), "author": "Dr. Who", "title": None,
                                     "text": "Patient seen for follow-up. " * 8})


def _legacy_claims(rng, out, p, pid, visit_times) -> None:
    member_id = f"MEM{p:08d}"
    out["member"].append({"memberId": member_id, "patient_id": pid, "subscriber_id": member_id,
                          "relationship_code": "18", "ssn": None, "given_name": None, "family_name": None,
                          "dob": None, "sex": None, "group_number": f"GRP{p % 50:04d}", "plan_id": "PPO-GOLD",
                          "enrollment_start_date": "2023-01-01", "enrollment_end_date": None, "pcp_npi": None,
                          "payer_id": "60054", "payer_name": "Aetna"})
    for c in range(6):
        claim_id = f"CLM-{p:08d}-{c}"
        day = visit_times[c % len(visit_times)].date().isoformat()
        charges = [round(rng.uniform(20, 400), 2) for _ in range(3)]
        total = round(sum(charges), 2)
        out["claim"].append({"claimId": claim_id, "claim_type": "PROFESSIONAL", "member_id": member_id,
                             "subscriber_id": None, "patient_id": pid, "provider_npi": "1234567893",
                             "facility_npi": None, "service_date": day, "admission_date": None,
                             "discharge_date": None, "place_of_service": "11",
                             "principal_diagnosis": rng.choice(ICD10)[0], "other_diagnoses": ["I10", "E78.5"],
                             "authorization_number": None, "total_charge": total,
                             "total_allowed": round(total * 0.8, 2), "total_paid": round(total * 0.7, 2),
                             "patient_responsibility": _maybe(rng, round(total * 0.1, 2)), "status": "paid"})
        for line, charge in enumerate(charges, start=1):
            out["claim_line"].append({"claim_id": claim_id, "line_number": line, "procedure_code": rng.choice(CPT),
                                      "procedure_modifiers": None, "service_date": day, "units": 1.0,
                                      "charge_amount": charge, "allowed_amount": round(charge * 0.8, 2),
                                      "paid_amount": round(charge * 0.7, 2), "diagnosis_pointers": [1],
                                      "revenue_code": None, "ndc_code": None, "place_of_service": "11"})
    for r in range(6):
        rx, name = rng.choice(DRUGS)
        out["prescription"].append({"rx_number": f"RX-{p:08d}-{r}", "patient_id": pid, "patient_mrn": None,
                                    "rx_member_id": member_id, "drug_ndc": f"00093{rng.randrange(10**6):06d}",
                                    "drug_name": name, "quantity_prescribed": 60.0, "days_supply": 30,
                                    "refills_authorized": 3, "refills_remaining": _maybe(rng, 2),
                                    "prescriber_npi": None, "prescriber_name": None, "prescriber_dea": None,
                                    "written_date": "2023-06-01", "expiration_date": None, "daw_code": None,
                                    "directions": "Take 1 tablet by mouth twice daily", "status": "filled"})


def _legacy_trial(rng, out, p, pid, born, given, family) -> None:
    usubjid = f"STUDY01-{p % 20:03d}-{p:06d}"
    out["subject"].append({"usubjid": usubjid, "subject_id": f"{p:06d}", "study_id": "STUDY01",
                           "site_id": f"{p % 20:03d}", "patient_ref": pid, "ssn": None, "given_name": given,
                           "family_name": family, "middle_name": None, "date_of_birth": born.isoformat(),
                           "sex": None, "race": None, "ethnicity": None, "screening_id": None,
                           "screening_date": "2023-02-01", "consent_date": "2023-02-01",
                           "randomization_date": None, "arm": rng.choice(["A", "B"]), "status": "enrolled"})
    for v in range(14):
        out["trial_visit"].append({"usubjid": usubjid, "visit_num": float(v + 1), "visit_name": f"Week {v * 2}",
                                   "visit_date": (dt.date(2023, 3, 1) + dt.timedelta(days=14 * v)).isoformat(),
                                   "study_day": 14 * v + 1, "visit_status": "completed",
                                   "window_deviation_days": None})


def ndjson_lines(data: dict) -> dict[str, list[str]]:
    """Each type's entities as NDJSON lines (dates and Decimals as text)."""
    return {kind: [json.dumps(item, default=str) for item in items] for kind, items in data.items()}


def write_ndjson(lines: dict[str, list[str]], workdir: Path) -> dict[str, Path]:
    """Each type's lines in a file of its own, for ``read_json``."""
    files = {}
    for kind, part in lines.items():
        files[kind] = workdir / f"{kind}.ndjson"
        files[kind].write_text("".join(line + "\n" for line in part))
    return files
