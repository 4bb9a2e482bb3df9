"""A load rebuilds a type's rows in one call (``Codec.rebuild_rows``), its
JSON texts read a column at a time (``parse_json_many``): the same entities as
the one-row ``rebuild``, and the same values or errors as ``parse_json``."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
import strategies as S
from healthsim_state.values import dump_column_json, dump_residual_json, parse_json, parse_json_many, to_json

RAW = oracle.load_mapping_dirs([Path(__file__).resolve().parents[1] / "mappings"])
QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
TEXTS = st.lists(S.json_values().map(to_json).map(dump_residual_json)
                 | S.json_values(objects=False).map(dump_column_json), max_size=12)


def _outcome(read, texts):
    try:
        return "read", read(texts)
    except ValueError as error:
        return "refused", type(error), str(error)


@settings(suppress_health_check=QUIET)
@given(texts=TEXTS)
def test_many_texts_read_as_each_alone(texts):
    got = parse_json_many(texts)
    assert got == [parse_json(t) for t in texts]
    assert [json.dumps(v, default=repr) for v in got] == [json.dumps(parse_json(t), default=repr) for t in texts]


def test_exact_numbers_keep_their_digits_anywhere_in_the_list():
    exact = dump_residual_json(to_json({"n": Decimal("0.10000000000000001")}))
    assert exact.startswith(" ")
    for texts in ([exact, "{}"], ["{}", exact], ["[1]", exact, "2"]):
        assert parse_json_many(texts) == [parse_json(t) for t in texts]
        assert repr(parse_json_many(texts)[texts.index(exact)]["n"]) == "Decimal('0.10000000000000001')"


@pytest.mark.parametrize("texts", [
    ['{"a":1}', '{"b":\n2}'],          # a raw newline: not our text, but one value: read alone
    ["1,2", "3"],                      # two values in one text
    ['{"a":1', "2}"],                  # a value split over two texts
    ["1", ""],                         # no value
    ["[1]", "2 x"],                    # something after the value
    ["true", '"open'],                 # an unfinished string
])
def test_texts_not_ours_are_read_one_by_one_with_their_own_errors(texts):
    one_by_one = _outcome(lambda ts: [parse_json(t) for t in ts], texts)
    assert _outcome(parse_json_many, texts) == one_by_one


def test_no_texts():
    assert parse_json_many([]) == []


# --- the whole rows, through the database ------------------------------------------------------

_names = itertools.count()


@settings(max_examples=max(5, settings.default.max_examples // 4), suppress_health_check=QUIET)
@given(entities=S.scenario_entities({t: RAW[t] for t in ("claim_line", "lab_result", "patient", "encounter")},
                                    max_size=5))
def test_rows_rebuild_as_one_row_at_a_time(memory_sm, entities):
    name = f"s{next(_names)}"
    scenario_id = memory_sm.save_scenario(name, entities)

    def both(scenarios):
        out = {}
        for entity, codec in scenarios.registry.codecs.items():
            rows = scenarios.rows(codec, scenario_id).fetch()
            out[entity] = (codec.rebuild_rows(rows), [codec.rebuild(row) for row in rows])
        return out

    for entity, (many, one_by_one) in memory_sm._store.read(both).items():
        assert many == one_by_one, entity


def test_a_json_column_the_residual_overrides_still_takes_its_value(memory_sm):
    """A json value holding a number no float holds: the column has the digits
    and the residual the value, which wins; the next row must get its own."""
    lines = [{"claim_id": "C1", "line_number": 1, "procedure_modifiers": [Decimal("0.10000000000000001")]},
             {"claim_id": "C1", "line_number": 2, "procedure_modifiers": ["25"]},
             {"claim_id": "C1", "line_number": 3, "procedure_modifiers": {"a": [1, {"b": None}]}}]
    memory_sm.save_scenario("overridden", {"claim_lines": lines})
    got = memory_sm.load_scenario("overridden")["entities"]["claim_line"]
    assert [line["procedure_modifiers"] for line in got] == [[Decimal("0.10000000000000001")], ["25"],
                                                            {"a": [1, {"b": None}]}]
