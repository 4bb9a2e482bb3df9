"""Mapping files: a table of must-fail files with the message each must produce,
a must-pass set, the built-ins, and user directories."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from healthsim_state import MappingError, StateManager, ValidationError
from healthsim_state.column_types import TYPE_NAMES, TYPE_PATTERN
from healthsim_state.mapping import loader as loader_module
from healthsim_state.mapping.loader import builtin_mapping_dir, load_mapping_dirs, load_mappings

GOOD = """\
entity: widget
table: widgets
primary_key: widget_id
fields:
  - column: widget_id
    path: widget_id
    type: varchar
    default: uuid4
  - column: label
    path: info.label
    type: varchar
    aliases: [label]
"""


def write(directory: Path, text: str, name: str = "widget.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), "utf-8")
    return path


def errors_of(directory: Path) -> str:
    with pytest.raises(MappingError) as caught:
        load_mapping_dirs([directory])
    return str(caught.value)


# (id, file text, fragments the message must contain)
MUST_FAIL = [
    ("yaml-syntax", "entity: widget\ntable: [widgets\n", ["widget.yaml", "line", "not valid YAML"]),
    ("not-a-mapping", "- entity: widget\n", ["a mapping file must be a YAML mapping"]),
    ("unknown-top-key", GOOD + "tabel: x\n", ["unknown key 'tabel' (did you mean 'table'?)", "allowed keys"]),
    ("unknown-field-key", GOOD.replace("    default: uuid4", "    default: uuid4\n    colum: x"),
     ["fields[0] (widget_id)", "unknown key 'colum' (did you mean 'column'?)"]),
    ("missing-table", GOOD.replace("table: widgets\n", ""), ["document", "'table' is missing; add it"]),
    ("missing-field-type", GOOD.replace("    type: varchar\n    aliases", "    aliases"),
     ["fields[1] (label)", "'type' is missing"]),
    ("bad-entity-name", GOOD.replace("entity: widget", "entity: Widget"),
     ["entity", "'Widget' is not a valid name", "lowercase"]),
    ("bad-column-name", GOOD.replace("column: label", "column: 2label"),
     ["fields[1] (2label).column", "'2label' is not a valid name"]),
    ("unknown-type", GOOD.replace("type: varchar\n    aliases", "type: string\n    aliases"),
     ["fields[1] (label).type", "unknown type 'string'", "varchar, integer"]),
    ("decimal-scale-above-precision", GOOD.replace("type: varchar\n    aliases", "type: decimal(2,5)\n    aliases"),
     ["fields[1] (label).type", "decimal(2,5) needs"]),
    ("empty-path-segment", GOOD.replace("path: info.label", "path: info..label"),
     ["fields[1] (label).path", "'info..label' is not a valid path"]),
    ("alias-not-string", GOOD.replace("aliases: [label]", "aliases: [on]"),
     ["fields[1] (label).aliases[0]", "expected a string, got True; quote it in YAML"]),
    ("required-not-bool", GOOD.replace("    aliases: [label]", "    aliases: [label]\n    required: maybe"),
     ["fields[1] (label).required", "expected true or false, got 'maybe'"]),
    ("duplicate-column", GOOD + "  - column: label\n    path: other\n    type: varchar\n",
     ["fields[2] (label).column", "column 'label' is already used by fields[1]"]),
    ("duplicate-path", GOOD + "  - column: other\n    path: info.label\n    type: varchar\n",
     ["fields[2] (other).path", "'info.label' is already the path of column label"]),
    ("alias-equals-other-path", GOOD + "  - column: other\n    path: other\n    type: varchar\n    aliases: [widget_id]\n",
     ["fields[2] (other).aliases[0]", "'widget_id' is already the path of column widget_id"]),
    ("path-inside-other-path", GOOD + "  - column: info\n    path: info\n    type: json\n",
     ["fields[2] (info).path", "overlaps the path of column label"]),
    ("key-not-a-field", GOOD.replace("primary_key: widget_id", "primary_key: [widget_id, serial]"),
     ["primary_key", "key column 'serial' is not a field"]),
    ("key-not-strict", GOOD.replace("    default: uuid4", "    default: uuid4\n    strict: false"),
     ["primary_key", "a key is always strict"]),
    ("default-does-not-fit", GOOD + "  - column: size\n    path: size\n    type: integer\n    default: big\n",
     ["fields[2] (size).default", "default 'big' does not fit type integer"]),
    ("uuid4-default-on-integer", GOOD + "  - column: n\n    path: n\n    type: integer\n    default: uuid4\n",
     ["fields[2] (n).default", "default uuid4 makes a string"]),
    ("default-list", GOOD + "  - column: n\n    path: n\n    type: json\n    default: [1, 2]\n",
     ["fields[2] (n).default", "default must be a single value"]),
    ("reserved-column", GOOD + "  - column: scenario_id\n    path: sid\n    type: varchar\n",
     ["column name 'scenario_id' is reserved by the store"]),
    ("reserved-table", GOOD.replace("table: widgets", "table: scenarios"),
     ["table name 'scenarios' is reserved by the store"]),
    ("required-with-default", GOOD + "  - column: n\n    path: n\n    type: integer\n    default: 3\n    required: true\n",
     ["fields[2] (n).required", "a field with a default is never missing"]),
    ("empty-fields", "entity: widget\ntable: widgets\nprimary_key: a\nfields: []\n", ["fields must not be empty"]),
    ("primary-key-number", GOOD.replace("primary_key: widget_id", "primary_key: 7"),
     ["primary_key must be a column name or a non-empty list"]),
]


@pytest.mark.parametrize("case, text, fragments", MUST_FAIL, ids=[c[0] for c in MUST_FAIL])
def test_must_fail_mapping_names_file_key_and_fix(tmp_path, case, text, fragments):
    message = errors_of(write(tmp_path / "maps", text).parent)
    assert "widget.yaml" in message
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in:\n{message}"


def test_must_fail_table_is_large_enough():
    assert len(MUST_FAIL) >= 15


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    text = GOOD.replace("entity: widget", "entity: Widget").replace("type: varchar\n    aliases", "type: text\n    aliases")
    error = pytest.raises(MappingError, load_mapping_dirs, [write(tmp_path, text).parent]).value
    messages = [p.message for p in error.problems]
    assert any("'Widget' is not a valid name" in m for m in messages)
    assert any("unknown type 'text'" in m for m in messages)
    assert isinstance(error, ValidationError) and isinstance(error, ValueError)


def test_a_bad_file_among_good_ones_loads_nothing(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace("widget", "gadget").replace("type: varchar\n    aliases", "type: nope\n    aliases"),
          "gadget.yaml")
    with pytest.raises(MappingError, match="gadget.yaml"):
        StateManager(tmp_path / "db.duckdb", mapping_dirs=[tmp_path])
    assert not (tmp_path / "db.duckdb").exists()  # mappings are checked before the file is touched


def test_same_entity_twice_in_one_directory(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("table: widgets", "table: widgets2"), "b.yaml")
    assert "entity 'widget' is also defined in" in errors_of(tmp_path)


def test_two_types_may_not_share_a_table_or_an_input_key(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("entity: widget", "entity: gizmo"), "b.yaml")
    assert "table 'widgets' is also used by entity" in errors_of(tmp_path)
    write(tmp_path, GOOD.replace("entity: widget", "entity: gizmo\nplural: widget").replace("widgets", "gizmos"),
          "b.yaml")
    assert "'widget' already names entity" in errors_of(tmp_path)


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(MappingError, match="does not exist"):
        load_mapping_dirs([tmp_path / "nowhere"])


# --- must pass ---------------------------------------------------------------------

MUST_PASS = [
    ("minimal", GOOD),
    ("composite-key-all-types", """\
        entity: reading
        plural: readings_list
        table: readings
        description: every type once
        primary_key: [day, slot]
        fields:
          - {column: day, path: day, type: date}
          - {column: slot, path: slot, type: double}
          - {column: amount, path: money.amount, type: "decimal(10,3)", default: 0.5}
          - {column: n, path: n, type: integer, default: 3}
          - {column: big, path: big, type: bigint}
          - {column: ok, path: ok, type: boolean, default: false}
          - {column: at, path: a.b.c, type: timestamp, aliases: [when, x.y.when]}
          - {column: doc, path: doc, type: json}
          - {column: note, path: note, type: varchar, strict: false, required: true}
        """),
    ("date-default-unquoted", GOOD + "  - column: since\n    path: since\n    type: date\n    default: 2024-01-15\n"),
    ("yml-extension", GOOD),
]


@pytest.mark.parametrize("case, text", MUST_PASS, ids=[c[0] for c in MUST_PASS])
def test_must_pass_mapping(tmp_path, case, text):
    write(tmp_path, text, "m.yml" if case == "yml-extension" else "m.yaml")
    (mapping,) = load_mapping_dirs([tmp_path]).values()
    assert mapping.fields and mapping.primary_key


def test_unquoted_date_default_is_kept_as_its_iso_string(tmp_path):
    write(tmp_path, MUST_PASS[2][1])
    mapping = load_mapping_dirs([tmp_path])["widget"]
    assert mapping.field("since").default == "2024-01-15"


# --- built-ins and user directories ----------------------------------------------

BUILTIN_TYPES = {"patient", "encounter", "diagnosis", "procedure", "medication", "lab_result", "vital_sign",
                 "clinical_note", "member", "claim", "claim_line", "prescription", "subject", "trial_visit",
                 "fhir_resource"}


def test_the_fifteen_builtin_mappings_load():
    mappings = load_mapping_dirs([builtin_mapping_dir()])
    assert set(mappings) == BUILTIN_TYPES
    assert mappings["claim_line"].primary_key == ("claim_id", "line_number")
    assert mappings["trial_visit"].primary_key == ("usubjid", "visit_num")
    assert mappings["patient"].field("given_name").path == ("name", "given")
    assert not mappings["vital_sign"].field("heart_rate").strict
    assert mappings["member"].field("member_id").required


def test_user_directory_adds_a_type_and_saves_it(tmp_path):
    write(tmp_path / "maps", GOOD)
    with StateManager(tmp_path / "db.duckdb", mapping_dirs=[tmp_path / "maps"]) as sm:
        assert "widget" in sm.entity_types and "patient" in sm.entity_types
        sm.save_scenario("w", {"widgets": [{"widget_id": "w1", "label": "Big", "colour": "red"}]})
        assert sm.load_scenario("w")["entities"]["widget"] == [
            {"widget_id": "w1", "info": {"label": "Big"}, "colour": "red"}]


def test_user_file_replaces_a_builtin_type(tmp_path):
    write(tmp_path, """\
        entity: patient
        table: my_patients
        primary_key: pid
        fields:
          - {column: pid, path: pid, type: varchar}
        """, "patient.yaml")
    mappings = load_mappings([tmp_path])
    assert mappings["patient"].table == "my_patients"
    assert len(mappings) == 15


def test_environment_variable_adds_directories(tmp_path, monkeypatch):
    write(tmp_path / "one", GOOD)
    write(tmp_path / "two", GOOD.replace("widget", "gadget"), "gadget.yaml")
    monkeypatch.setenv("HEALTHSIM_MAPPINGS", f"{tmp_path / 'one'}{__import__('os').pathsep}{tmp_path / 'two'}")
    with StateManager(tmp_path / "db.duckdb") as sm:
        assert {"widget", "gadget"} <= set(sm.entity_types)


def test_paths_with_line_breaks_and_nul_are_data_not_code(tmp_path):
    hostile = "x\n    1/0  #"  # as code in the generated flatten, this line would raise
    write(tmp_path, f"""\
        entity: widget
        table: widgets
        primary_key: widget_id
        fields:
          - {{column: widget_id, path: widget_id, type: varchar}}
          - {{column: a, path: {json.dumps("o.a" + chr(10) + "b")}, type: varchar}}
          - {{column: b, path: {json.dumps(hostile)}, type: varchar, aliases: [{json.dumps("n" + chr(0) + "ul")}]}}
        """)
    with StateManager(tmp_path / "db.duckdb", mapping_dirs=[tmp_path]) as sm:
        sm.save_scenario("w", {"widget": [{"widget_id": "1", "o": {"a\nb": "v"}, "n\x00ul": "moved"}]})
        assert sm.load_scenario("w")["entities"]["widget"] == [{"widget_id": "1", "o": {"a\nb": "v"}, hostile: "moved"}]


def test_every_overlap_is_reported_in_the_order_the_paths_appear(tmp_path):
    """Overlaps are found by prefix lookups: each pair is still reported, in
    the order the earlier path appears (path before aliases, field by field)."""
    write(tmp_path / "maps", """\
        entity: widget
        table: widgets
        primary_key: widget_id
        fields:
          - {column: widget_id, path: widget_id, type: varchar}
          - {column: size, path: info.size.value, type: varchar}
          - {column: info, path: info, type: json, aliases: [size.value]}
          - {column: unit, path: info.size.value.unit, type: varchar, aliases: [size]}
        """)
    lines = errors_of(tmp_path / "maps").splitlines()[1:]
    assert [line.split("(entity widget): ")[1].split(": one lies")[0] for line in lines] == [
        "fields[2] (info).path: 'info' overlaps the path of column size ('info.size.value')",
        "fields[3] (unit).path: 'info.size.value.unit' overlaps the path of column size ('info.size.value')",
        "fields[3] (unit).path: 'info.size.value.unit' overlaps the path of column info ('info')",
        "fields[3] (unit).aliases[0]: 'size' overlaps the alias of column info ('size.value')",
    ]


def test_the_schemas_type_pattern_is_the_one_the_type_table_derives():
    # The schema file stays whole for editors; the table is where a type is added.
    schema = json.loads((Path(loader_module.__file__).parent / "mapping.schema.json").read_text("utf-8"))
    assert schema["$defs"]["type"]["pattern"] == TYPE_PATTERN


def test_an_unknown_type_lists_every_type_of_the_table(tmp_path):
    write(tmp_path, GOOD.replace("type: varchar\n    aliases", "type: string\n    aliases"))
    message = errors_of(tmp_path)
    assert f"unknown type 'string'; use one of {TYPE_NAMES}" in message
