"""What a new user of the command line trips on (issue 22): ``--db`` before the
command, one behaviour for every reading command on a missing store, words
that agree with their numbers, ``show`` as TSV when piped and in the types'
load order, ``diff A`` that says what it compared, ``list --limit 0``, and
help text whose metavars and ``--version`` say what they mean."""

from __future__ import annotations

import json
import re

import pytest

from test_cli import SAMPLE, Cli, tsv

ONE = '{"patients": [{"patient_id": "p"}]}'


@pytest.fixture
def cli(tmp_path) -> Cli:
    """The command on a DuckDB file named by HEALTHSIM_DB, with ``one.json`` in its directory."""
    made = Cli(tmp_path)
    (made.cwd / "one.json").write_text(ONE)
    return made


# --- --db before the command ---------------------------------------------------------------------

def test_db_goes_before_the_command_too_and_the_commands_own_wins(cli, tmp_path):
    other = tmp_path / "other.duckdb"
    cli("save", "one.json", "-n", "in-env")  # HEALTHSIM_DB, as before
    assert cli("--db", other, "save", "one.json", "-n", "in-other").stdout.startswith("saved 'in-other'")
    assert [row["name"] for row in tsv(cli("--db", other, "list").stdout)] == ["in-other"]
    assert [row["name"] for row in tsv(cli("--db", other, "list", "--db", cli.db).stdout)] == ["in-env"]
    assert [row["name"] for row in tsv(cli("list").stdout)] == ["in-env"]
    missing = cli("--db", tmp_path / "typo.duckdb", "show", "in-env", expect=1)
    assert missing.stderr == f"error: no database at {tmp_path / 'typo.duckdb'} (nothing has been saved there yet)\n"


# --- a missing store: one behaviour for every reading command ---------------------------------------

@pytest.mark.parametrize("args", [
    ("list",), ("list", "--json"), ("show", "s"), ("load", "s"), ("export", "s"), ("history", "s"), ("diff", "s"),
    ("diff", "s", "t"), ("sql", "SELECT 1"), ("history-limit",), ("restore", "s", "1"), ("prune", "--all", "--keep", "1"),
    ("delete", "s", "--yes"), ("rename", "s", "t"), ("update", "s", "-d", "x"), ("compact",),
])
def test_every_reading_command_names_a_missing_database_and_creates_nothing(cli, tmp_path, args):
    typo = tmp_path / "typo.duckdb"
    result = cli(*args, "--db", typo, expect=1)
    assert result.stderr == f"error: no database at {typo} (nothing has been saved there yet)\n"
    assert result.stdout == "" and not typo.exists()


def test_types_on_a_missing_database_shows_the_mapping_files_and_says_so(cli, tmp_path):
    typo = tmp_path / "typo.duckdb"
    result = cli("types", "--db", typo)
    assert result.stderr == (f"warning: no database at {typo} (nothing has been saved there yet): these are the "
                             "mapping files' types\n")
    assert "patient" in {row["entity"] for row in tsv(result.stdout)} and not typo.exists()


# --- words that agree with their numbers ----------------------------------------------------------------

def test_update_of_tags_alone_does_not_print_description_none(cli):
    cli("save", "one.json", "-n", "s")
    assert cli("update", "s", "--add-tag", "x").stdout == "updated 's' (version 2): tags x; description (none)\n"
    assert cli("update", "s", "-d", "D").stdout == "updated 's' (version 3): tags x; description 'D'\n"


def test_one_entity_is_one_entity_everywhere(cli):
    cli("save", "one.json", "-n", "s")
    assert cli("export", "s").stdout == "exported 's' (1 entity) to s.json\n"
    assert cli("export", "s", "--format", "parquet").stdout.startswith("exported 's' (1 entity) to s-parquet/: 1 "
                                                                       "Parquet file and")
    cli("update", "s", "-d", "D")
    assert cli("restore", "s", "1").stdout == "restored 's' to version 1: now version 3 (1 entity)\n"
    cli("save", SAMPLE, "-n", "sample")
    patients = [p["patient_id"] for p in json.loads(cli("load", "sample").stdout)["entities"]["patients"]]
    out = cli("delete-entities", "sample", "patient", patients[0]).stdout
    assert out == "deleted 1 patient from 'sample' (version 2; 22 entities left)\n"
    assert cli("delete", "s", "--yes").stdout == "deleted 's' (1 entity)\n"


# --- show -------------------------------------------------------------------------------------------

def test_show_piped_is_tab_separated_with_the_types_in_load_order(cli):
    cli("save", SAMPLE, "-n", "sample", "-d", "The sample", "-t", "demo")
    rows = tsv(cli("show", "sample").stdout)
    assert list(rows[0]) == ["field", "value"]
    fields = {row["field"]: row["value"] for row in rows}
    info = json.loads(cli("show", "sample", "--json").stdout)
    assert (fields["name"], fields["id"], fields["version"], fields["description"], fields["tags"]) == \
        ("sample", info["scenario_id"], "1", "The sample", "demo")
    assert (fields["created"], fields["updated"], fields["entities"]) == (info["created_at"], info["updated_at"], "23")
    loaded = json.loads(cli("load", "sample").stdout)["entities"]
    singular = {"claims": "claim", "claim_lines": "claim_line", "clinical_notes": "clinical_note",
                "diagnoses": "diagnosis", "encounters": "encounter", "lab_results": "lab_result", "members": "member",
                "patients": "patient", "prescriptions": "prescription", "subjects": "subject",
                "trial_visits": "trial_visit", "vital_signs": "vital_sign"}
    shown = [(row["field"], int(row["value"])) for row in rows if row["field"].startswith("entities.")]
    assert shown == [(f"entities.{singular[plural]}", len(items)) for plural, items in loaded.items()]
    assert list(info["entity_counts"]) == [singular[plural] for plural in loaded]  # --json in the same order


# --- diff -------------------------------------------------------------------------------------------

def test_diff_of_one_scenario_alone_compares_the_version_before_the_newest(cli):
    cli("save", "one.json", "-n", "s")
    alone = cli("diff", "s", expect=1)
    assert alone.stderr == "error: scenario 's' has one version only: nothing to compare it with; give B, another " \
                           "scenario\n"
    (cli.cwd / "two.json").write_text('{"patients": [{"patient_id": "p", "gender": "F"}, {"patient_id": "q"}]}')
    cli("save", "two.json", "-n", "s", "--overwrite")
    assert cli("diff", "s").stdout.splitlines() == [
        "--- 's' version 1", "+++ 's' version 2", "patient: 1 added, 0 removed, 1 changed", "  + q", "  ~ p: gender"]
    assert json.loads(cli("diff", "s", "--json").stdout)["patient"]["added"] == ["q"]
    assert cli("diff", "s", "--a-version", "2").stdout == "no differences between 's' version 2 and 's' version 2\n"
    cli("update", "s", "-d", "only the description")
    assert cli("diff", "s").stdout == "no differences between 's' version 2 and 's' version 3\n"
    cli("prune", "s", "--keep", "1")
    assert cli("diff", "s", expect=1).stderr == ("error: scenario 's' keeps no version before its newest (3): give B, "
                                                 "another scenario\n")
    cli("save", "one.json", "-n", "t")
    assert cli("diff", "t", "s").stdout.splitlines()[:2] == ["--- 't' version 1", "+++ 's' version 3"]


# --- list --limit -------------------------------------------------------------------------------------

def test_list_limit_zero_lists_every_scenario(cli):
    for name in ("a", "b", "c"):
        cli("save", "one.json", "-n", name)
    assert [row["name"] for row in tsv(cli("list", "--limit", "0").stdout)] == ["c", "b", "a"]
    assert [row["name"] for row in tsv(cli("list", "--limit", "2").stdout)] == ["c", "b"]
    assert len(json.loads(cli("list", "--json", "--limit", "0", "--offset", "1").stdout)) == 2
    assert "--limit N         List at most N scenarios; 0 lists them all." in cli("list", "--help").stdout


# --- help ---------------------------------------------------------------------------------------------

COMMANDS = ["save", "import", "load", "list", "show", "delete", "rename", "update", "delete-entities", "export",
            "history", "diff", "restore", "prune", "history-limit", "compact", "migrate", "types", "migrate-schema",
            "sql", "copy", "mcp"]


def test_metavars_are_uniform(cli):
    helps = {command: cli(command, "--help").stdout for command in COMMANDS}
    for command, text in helps.items():  # no type names where the others say N, PATH, DIR, TAG
        assert not re.search(r"INTEGER|RANGE|DIRECTORY|--output TEXT|--tag TEXT", text), (command, text)
    assert "-o, --output PATH" in helps["load"] and "-o, --output PATH" in helps["export"]
    assert "--a-version N" in helps["diff"] and "--b-version N" in helps["diff"] and "--keep N" in helps["prune"]
    assert "--from DIR" in helps["migrate"] and "-t, --tag TAG" in helps["save"]
    assert "Usage: healthsim-state restore [OPTIONS] NAME_OR_ID N" in helps["restore"]


def test_version_help_says_whose_version(cli):
    top = cli("--help").stdout
    assert re.search(r"--version\s+Show the program's version and exit", top)
    assert cli("--version").stdout.startswith("healthsim-state, version ")
    for command in ("load", "show", "export"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "--version N Version N of the scenario (see `history`; not the program's version" in text, command


def test_a_fhir_export_of_one_resource_says_one_resource_in_one_file(cli):
    cli("save", "one.json", "-n", "s")
    out = cli("export", "s", "--format", "fhir", "-o", "out").stdout
    assert out == "exported 's' (version 1) to out/: 1 resource in 1 NDJSON file and manifest.json\n"


# --- a lone surrogate the store keeps can be written out -------------------------------------------

LONE = '{"patients": [{"patient_id": "p", "note": "a\\udc80b"}]}'  # JSON's escape of a lone surrogate


def test_a_kept_lone_surrogate_is_written_as_its_json_escape_and_read_back(cli):
    (cli.cwd / "lone.json").write_text(LONE)
    cli("save", "lone.json", "-n", "s")
    assert '"note": "a\\udc80b"' in cli("load", "s").stdout  # stdout, not a UnicodeEncodeError
    cli("export", "s", "-o", "s.json")
    assert '"a\\udc80b"' in (cli.cwd / "s.json").read_text("utf-8")  # valid UTF-8 text
    cli("import", "s.json", "-n", "again")
    assert json.loads(cli("load", "again").stdout)["entities"]["patients"][0]["note"] == "a\udc80b"
    assert cli("diff", "s", "again").stdout.startswith("no differences")
