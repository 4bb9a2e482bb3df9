"""An NDJSON line's references found in its text (no walk of the parsed
resource unless one is to be rewritten or checked for a cycle): the text finds
every reference the walk finds, or says it cannot, and an import resolves
what the walk's resolving resolves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healthsim_state.fhir import importer
from healthsim_state.fhir.importer import (
    index_inputs,
    input_files,
    read_resources,
    read_with_text,
    resolve_references,
)
from healthsim_state.fhir.references import reference_texts, references_in

DATA = Path(__file__).parent / "data" / "fhir"

TRICKY = [
    '{"resourceType": "Observation", "id": "o", "subject": {"reference" : "Patient/p"}}',
    '{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p"},"note":[{"text":"reference"}]}',
    '{"resourceType":"Observation","id":"o","subject":{"reference":"Patient\\/p"}}',
    '{"resourceType":"Observation","id":"o","subject":{"refer\\u0065nce":"Patient/p"}}',
    '{"resourceType":"Observation","id":"o","subject":{"reference":7},"focus":[{"reference":"Group/g"}]}',
    '{"resourceType":"Observation","id":"o","note":[{"text":"say \\"reference\\": \\"Patient/x\\""}]}',
    '{"resourceType":"Observation","id":"o","reference":"Patient/top","subject":{"display":"no reference"}}',
]


def walked(resource: dict) -> list[str]:
    return [holder["reference"] for _, holder in references_in(resource)]


@pytest.mark.parametrize("line", TRICKY + [line for name in ("vitals-out-of-order.ndjson", "choice-forms.ndjson")
                                           for line in (DATA / name).read_text().splitlines() if line.strip()])
def test_the_text_finds_every_reference_the_walk_finds_or_says_it_cannot(line):
    texts = reference_texts(line)
    if texts is not None:
        found = list(texts)
        for text in walked(json.loads(line)):  # each one the walk finds, found in the text (maybe more)
            found.remove(text)


def test_texts_the_scan_refuses_and_finds():
    assert reference_texts(TRICKY[0]) == ["Patient/p"]
    assert reference_texts(TRICKY[1]) is None  # "reference" as a value: not sure, walked
    assert reference_texts(TRICKY[2]) is None  # an escape in the text
    assert reference_texts(TRICKY[3]) is None  # a key spelt with an escape
    assert reference_texts(TRICKY[4]) is None  # a reference that is no text
    assert reference_texts(TRICKY[6]) == ["Patient/top"]  # more than the walk finds: never less


def resolved(items):
    refs, inputs = index_inputs(items)
    resolve_references(refs, inputs)
    return [(item.local, item.resource) for item in inputs]


def test_resolving_from_the_texts_equals_resolving_from_the_walk(tmp_path):
    lines = [{"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "42"}]},
             {"resourceType": "Organization", "id": "o1"},
             {"resourceType": "Organization", "id": "o2", "partOf": {"reference": "Organization/o1"}},
             {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient?identifier=urn:mrn|42"}},
             {"resourceType": "Encounter", "id": "e2", "subject": {"reference": "https://x.org/fhir/Patient/p1"},
              "partOf": {"reference": "Encounter/e1"}},
             {"resourceType": "Observation", "id": "v1", "subject": {"reference": "Patient/p1"},
              "encounter": {"reference": "Encounter/e2"}, "performer": [{"reference": "Practitioner/gone"}]}]
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    files = input_files([path, DATA / "vitals-out-of-order.ndjson", DATA / "bulk"])
    _, inputs = index_inputs(read_with_text(files))
    assert all(item.texts is not None and item.holders is None for item in inputs)  # no line walked yet
    from_texts, from_walks = resolved(read_with_text(files)), resolved(read_resources(files))
    assert from_texts == from_walks
    made = dict(from_texts)
    assert made["Encounter/e1"]["subject"] == {"reference": "Patient/p1"}  # rewritten: the walk was made
    assert made["Encounter/e2"]["subject"] == {"reference": "Patient/p1"}
    assert made["Observation/v1"]["performer"] == [{"reference": "Practitioner/gone"}]  # not in the input: as it came


def test_a_cycle_is_found_from_the_texts_too(tmp_path):
    lines = [{"resourceType": "Location", "id": f"l{i}", "partOf": {"reference": f"Location/l{(i + 1) % 2}"}}
             for i in range(2)]
    path = tmp_path / "Location.ndjson"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(ValueError, match="reference cycle through partOf"):
        resolved(read_with_text(input_files([path])))


def test_a_check_remembers_the_texts_it_passed_only(monkeypatch):
    monkeypatch.setattr(importer, "_PASSED_LIMIT", 2)
    calls = []

    def test(value):
        calls.append(value)
        return isinstance(value, str) and value.startswith("ok")
    assert importer._passes(test, "ok-1") and importer._passes(test, "ok-1")
    assert not importer._passes(test, "bad") and not importer._passes(test, "bad")
    assert not importer._passes(test, 5) and not importer._passes(test, ["ok"])
    assert calls == ["ok-1", "bad", "bad", 5, ["ok"]]
    assert importer._passes(test, "ok-2") and importer._passes(test, "ok-3")  # the limit: forgotten, kept small
    assert len(importer._PASSED[test]) <= 2
