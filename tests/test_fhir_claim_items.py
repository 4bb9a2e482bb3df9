"""A Claim's items become claim_lines keyed by (claim_id, line_number): an
error in an item names that item (``item[2].servicedDate``), and two items of
one ``sequence`` (which would merge into one claim_line, losing one) are
refused, the second named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from healthsim_state import StateManager
from healthsim_state.errors import FhirInputError

CLAIMS = Path(__file__).parent / "data" / "fhir" / "synthea-claims-bundle.json"


@pytest.fixture
def sm(db_path):
    with StateManager(db_path) as manager:
        yield manager


def with_items(tmp_path: Path, *sequences) -> tuple[Path, dict]:
    """The hand-written claims Bundle, its first Claim of several items given
    items of these sequences (None: no sequence), copies of its first item."""
    bundle = json.loads(CLAIMS.read_text())
    claim = next(e["resource"] for e in bundle["entry"]
                 if e["resource"]["resourceType"] == "Claim" and len(e["resource"].get("item", ())) > 1)
    first = claim["item"][0]
    claim["item"] = []
    for sequence in sequences:
        item = copy.deepcopy(first)
        item.pop("sequence")
        if sequence is not None:
            item["sequence"] = sequence
        claim["item"].append(item)
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(bundle))
    return path, claim


def refused(sm, path) -> FhirInputError:
    with pytest.raises(FhirInputError) as caught:
        sm.import_fhir([path], "bad")
    assert not sm.scenario_exists("bad")
    assert "claims.json entry[" in str(caught.value)  # the file and the Bundle entry
    return caught.value


def test_two_items_of_one_sequence_are_refused_naming_the_second(sm, tmp_path):
    path, claim = with_items(tmp_path, 1, 2, 2)
    error = refused(sm, path)
    assert (error.resource_type, error.resource_id, error.element) == ("Claim", claim["id"], "item[2].sequence")
    assert "item[1] has it" in str(error) and "claim_line" in str(error)


def test_an_item_without_sequence_after_two_of_one_sequence_is_not_named_for_another(sm, tmp_path):
    # Before: the two merged into one claim_line, so the third item was the claim's
    # second line and the error named item[1], which has a sequence.
    path, _ = with_items(tmp_path, 1, 1, None)
    error = refused(sm, path)
    assert error.element == "item[1].sequence" and "1 again (item[0] has it)" in str(error)  # the repeated one
    assert "required field is missing" not in str(error)  # what was said of item[1] before, which has its sequence


def test_an_item_without_sequence_is_named_by_its_own_index(sm, tmp_path):
    path, _ = with_items(tmp_path, 1, 2, None)
    error = refused(sm, path)
    assert error.element == "item[2].sequence" and "required field is missing" in str(error)


def test_an_invalid_value_in_an_item_names_the_item(sm, tmp_path):
    path, _ = with_items(tmp_path, 1, 2, 3)
    claim_text = path.read_text().replace('"sequence": 3', '"sequence": 3, "servicedDate": "2020-13-45"')
    path.write_text(claim_text)
    error = refused(sm, path)
    assert error.element == "item[2].servicedDate" and "'2020-13-45' is not a valid FHIR date" in str(error)


def test_items_of_their_own_sequences_all_become_lines(sm, tmp_path):
    path, claim = with_items(tmp_path, 3, 1, 2)
    sm.import_fhir([path], "good")
    lines = sm.load_scenario("good", entity_types=["claim_line"])["entities"]["claim_line"]
    assert sorted(line["line_number"] for line in lines if line["claim_id"] == claim["id"]) == [1, 2, 3]
