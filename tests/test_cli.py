"""The ``healthsim-state`` command end to end: save, list, show, load, export
both formats, import every accepted shape, migrate (dry run, for real,
again), delete; and the error paths, each with its exit code and its
one-line message.

The commands run in this process (tests/clirun.py: a subprocess per call made
this file take minutes); what needs a process (the installed console script,
a terminal, --debug's traceback) runs the script as one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from healthsim_state import StateManager
from healthsim_state.interop import run_query
from clirun import run
from stores import Store

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "interop"
SAMPLE = REPO / "examples" / "sample-scenario.json"


def _executable() -> str:
    beside = Path(sys.executable).parent / "healthsim-state"
    found = str(beside) if beside.exists() else shutil.which("healthsim-state")
    if not found:
        pytest.skip("the healthsim-state console script is not installed (pip install -e '.[test]')")
    return found


EXE = _executable()


class Cli:
    """Runs the command with HOME in a temp dir and the store in
    ``HEALTHSIM_DB`` (a DuckDB file there, or a PostgreSQL database): in this
    process, or with ``process=True`` as the installed console script."""

    def __init__(self, tmp_path: Path, store: Store | None = None, process: bool = False):
        self.process = process
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        self.store = store or Store("duckdb", str(tmp_path / "cli.duckdb"))
        self.db = Path(self.store.target) if self.store.kind == "duckdb" else self.store.target
        # Built after conftest's autouse fixture ran: no HEALTHSIM_* of the user's leaks in.
        self.env = {**os.environ, "HOME": str(self.home), "HEALTHSIM_DB": self.store.target, "COLUMNS": "200"}

    def created(self) -> bool:
        """Whether the store exists: the file, or the tables on the server."""
        if self.store.kind == "duckdb":
            return self.db.exists()
        return bool(self.store.tables())

    def __call__(self, *args: str, input: str | None = None, expect: int = 0) -> subprocess.CompletedProcess:
        if self.process:
            result = subprocess.run([EXE, *map(str, args)], input=input, capture_output=True, text=True,
                                    cwd=self.cwd, env=self.env, timeout=60)
        else:  # self.env exactly: what it lacks is unset for the call
            result = run(args, input=input, cwd=self.cwd,
                         env={**{name: None for name in os.environ if name not in self.env}, **self.env})
        assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
        if expect:
            assert result.stderr.startswith("error: ") or result.stderr.startswith("Usage:"), result.stderr
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str):
        return json.loads(self(*args).stdout)


@pytest.fixture
def cli(tmp_path, store) -> Cli:
    """The command on each backend."""
    return Cli(tmp_path, store)


@pytest.fixture
def file_cli(tmp_path) -> Cli:
    """The command on a DuckDB file (for what does not depend on the backend,
    or only a file has)."""
    return Cli(tmp_path)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A database holding scenario 's' (one patient), made once in-process:
    copying it is much quicker than creating the tables in every test."""
    path = tmp_path_factory.mktemp("template") / "s.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("s", {"patients": [{"patient_id": "p"}]})
    return path


@pytest.fixture
def cli_with_s(file_cli, template_db) -> Cli:
    shutil.copyfile(template_db, file_cli.db)
    (file_cli.cwd / "s.json").write_text('{"patients": [{"patient_id": "p"}]}')
    return file_cli


def tsv(text: str) -> list[dict[str, str]]:
    header, *rows = text.splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


# --- the main job, end to end --------------------------------------------------------

def test_save_list_show_load_export_import_delete(cli):
    out = cli("save", SAMPLE, "--name", "sample", "--description", "The README's sample", "-t", "demo", "-t", "t2d")
    assert out.stdout.startswith("saved 'sample' (") and "2 patients, 3 encounters" in out.stdout

    (row,) = tsv(cli("list").stdout)
    assert (row["name"], row["entities"], row["tags"]) == ("sample", "23", "demo, t2d")
    (item,) = cli.json("list", "--json", "--tag", "T2D")
    assert (item["name"], item["entity_count"], item["description"]) == ("sample", 23, "The README's sample")
    assert cli.json("list", "--json", "--search", "nothing-like-this") == []

    shown = {row["field"]: row["value"] for row in tsv(cli("show", "sample").stdout)}
    assert (shown["description"], shown["tags"]) == ("The README's sample", "demo, t2d")
    assert (shown["entities.patient"], shown["entities.trial_visit"]) == ("2", "2")
    assert cli.json("show", item["scenario_id"], "--json")["name"] == "sample"

    document = cli.json("load", "sample")
    assert (document["format"], document["version"], document["name"]) == ("healthsim-scenario", 1, "sample")
    assert document["entities"]["patients"][0]["name"]["given"] == "Maria"
    cli("load", "sample", "-o", "loaded.json")
    assert json.loads((cli.cwd / "loaded.json").read_text()) == document

    out = cli("export", "sample")
    assert out.stdout.strip() == "exported 'sample' (23 entities) to sample.json"
    assert json.loads((cli.cwd / "sample.json").read_text())["entities"] == document["entities"]

    out = cli("export", "sample", "--format", "parquet")
    assert "to sample-parquet/: 12 Parquet files and manifest.json" in out.stdout
    con = duckdb.connect()
    rows = con.execute("SELECT given_name, date_of_birth FROM read_parquet(?)",
                       [str(cli.cwd / "sample-parquet" / "patients.parquet")]).fetchall()
    assert [(name, born.isoformat()) for name, born in rows] == [("Maria", "1958-03-14"), ("James", "1971-11-02")]
    assert json.loads((cli.cwd / "sample-parquet" / "manifest.json").read_text())["entities"]["claim"]["rows"] == 1

    out = cli("import", "sample.json", "--name", "copy")
    assert out.stdout.startswith("imported sample.json as 'copy' (")
    assert cli.json("load", "copy")["entities"] == document["entities"]

    assert cli("delete", "sample", "--yes").stdout.strip() == "deleted 'sample' (23 entities)"
    assert [i["name"] for i in cli.json("list", "--json")] == ["copy"]


def test_readme_try_it_commands(cli):
    """The README's main job: install, import the example, list it, show it,
    as a user runs it: the installed console script, a process per command."""
    cli.process = True
    out = cli("import", SAMPLE, "--overwrite")
    assert out.stdout.startswith(f"imported {SAMPLE} as 'sample-scenario' (")
    out = cli("import", SAMPLE, "--overwrite")  # the README's command can be run again, and writes nothing
    assert out.stdout.startswith("'sample-scenario' unchanged (")
    assert out.stdout.rstrip().endswith(f"it already holds what {SAMPLE} holds")
    assert [v["version"] for v in cli.json("history", "sample-scenario", "--json")] == [1]
    assert tsv(cli("list").stdout)[0]["name"] == "sample-scenario"
    assert "entities\t23\n" in cli("show", "sample-scenario").stdout


def test_import_every_accepted_shape_in_one_run(cli):
    files = [DATA / name for name in ("export-v1.json", "predecessor.json", "workspace.json", "entities.json",
                                      "singular.json")]
    out = cli("import", *files)
    assert out.stdout.splitlines()[-1] == "5 files: 5 imported, 0 failed"
    assert "as 'ws-cohort'" in out.stdout and "1 patient, 1 encounter" in out.stdout
    listed = {i["name"]: i for i in cli.json("list", "--json")}
    assert set(listed) == {"exported-cohort", "pred-cohort", "ws-cohort", "entities", "singular-keys"}
    assert listed["pred-cohort"]["tags"] == ["diabetes", "legacy"]
    assert listed["entities"]["entity_counts"] == {"patient": 2, "claim": 1}
    patient = cli.json("load", "ws-cohort")["entities"]["patients"][0]
    assert patient["_provenance"]["skill_used"] == "diabetes-management"


def test_import_from_stdin_and_save_with_options(cli):
    out = cli("import", "-", "--name", "piped", input='{"patient": {"patient_id": "p1"}}')
    assert "imported <stdin> as 'piped'" in out.stdout and "1 patient" in out.stdout
    cli("save", DATA / "predecessor.json", "--name", "pred", "--tag", "mine")
    item = cli.json("show", "pred", "--json")
    assert (item["tags"], item["description"]) == (["mine"], "Exported by the previous HealthSim state manager")


def test_sql_outputs(cli):
    cli("import", SAMPLE)
    query = "SELECT given_name, date_of_birth FROM patients WHERE family_name = ? ORDER BY _position"
    assert tsv(cli("sql", query, "-p", "Gonzalez").stdout) == [{"given_name": "Maria",
                                                                 "date_of_birth": "1958-03-14"}]
    assert cli.json("sql", query, "-p", "Whitaker", "--json") == [{"given_name": "James",
                                                                    "date_of_birth": "1971-11-02"}]
    csv_text = cli("sql", "SELECT name, entity_count FROM scenarios", "--csv").stdout
    assert csv_text == "name,entity_count\nsample-scenario,23\n"


def test_types(file_cli):
    cli = file_cli
    rows = tsv(cli("types").stdout)
    assert len(rows) == 15 and rows[0]["entity"] == "claim"
    out = cli("types", "patients").stdout.splitlines()
    assert out[0].startswith("# patient (plural patients, table patients, key patient_id)")
    fields = tsv("\n".join(out[1:]))
    assert {"column": "given_name", "path": "name.given", "type": "varchar",
            "aliases": "given_name, name.given_name, first_name", "default": ""} in fields
    assert cli.json("types", "claim", "--json")["table"] == "claims"
    assert not cli.created()  # types never opens the database


# --- migrate ---------------------------------------------------------------------------

def test_migrate_dry_run_then_for_real_then_again(cli):
    scenarios = cli.home / ".healthsim" / "scenarios"
    workspaces = cli.home / ".healthsim" / "workspaces"
    scenarios.mkdir(parents=True)
    workspaces.mkdir()
    shutil.copy(DATA / "predecessor.json", scenarios / "diabetes.json")
    shutil.copy(DATA / "workspace.json", workspaces / "8d7f2a52.json")
    originals = {p: p.read_bytes() for p in (scenarios / "diabetes.json", workspaces / "8d7f2a52.json")}

    dry = cli("migrate", "--dry-run").stdout.splitlines()
    assert dry[0] == f"would migrate {scenarios / 'diabetes.json'} -> 'pred-cohort' (2 patients, 1 encounter)"
    assert dry[1] == f"would migrate {workspaces / '8d7f2a52.json'} -> 'ws-cohort' (1 patient, 1 encounter)"
    assert dry[2] == "2 files: 2 would be migrated, 0 skipped, 0 failed; dry run, nothing was changed"
    assert not cli.created()

    real = cli("migrate").stdout.splitlines()
    assert real[0].startswith("migrated      ") and real[2] == "2 files: 2 migrated, 0 skipped, 0 failed"
    assert "migrated" in cli.json("show", "ws-cohort", "--json")["tags"]

    again = cli("migrate").stdout.splitlines()
    assert again[0].startswith("skipped       ") and again[0].endswith(": already migrated from this content")
    assert again[2] == "2 files: 0 migrated, 2 skipped, 0 failed"

    replaced = cli.json("migrate", "--overwrite", "--json")
    assert [f["status"] for f in replaced["files"]] == ["migrated", "migrated"]
    assert all(f["replaced"] for f in replaced["files"])
    assert {p: p.read_bytes() for p in originals} == originals


def test_migrate_reports_failures_and_exits_non_zero(cli, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "a-good.json").write_text(json.dumps({"patients": [{"patient_id": "p"}]}))
    (legacy / "b-broken.json").write_text('{"patients": [}')
    result = cli("migrate", "--from", legacy, expect=1)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("migrated      ") and "-> 'a-good' (1 patient)" in lines[0]
    assert lines[1] == (f"failed        {legacy / 'b-broken.json'}: not valid JSON: Expecting value "
                        "at line 1, column 15")
    assert lines[2] == "2 files: 1 migrated, 0 skipped, 1 failed"
    assert result.stderr == "error: 1 of 2 files could not be migrated\n"


def test_migrate_with_nothing_to_do(file_cli):
    cli = file_cli
    out = cli("migrate").stdout
    assert out.startswith("no legacy scenario files in ") and ".healthsim/scenarios" in out


# --- error paths: one line on stderr, non-zero exit, no traceback --------------------------

def test_a_json_syntax_error_names_file_line_and_column(file_cli):
    cli = file_cli
    (cli.cwd / "bad.json").write_text('{"patients": [\n  {"id": "a",}\n]}')
    result = cli("import", "bad.json", expect=1)
    assert result.stderr == ("error: bad.json: not valid JSON: Expecting property name enclosed in double quotes "
                             "at line 2, column 14\n")
    assert not cli.created() or cli.json("list", "--json") == []


def test_debug_shows_the_traceback(file_cli):
    cli = file_cli
    (cli.cwd / "bad.json").write_text("[")
    result = subprocess.run([EXE, "--debug", "save", "bad.json", "--name", "x"], capture_output=True, text=True,
                            cwd=cli.cwd, env=cli.env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "DocumentError" in result.stderr


def test_bad_entities_list_every_problem_and_save_nothing(cli):
    (cli.cwd / "invalid.json").write_text(json.dumps({"patients": [{"id": "a", "dob": "1/2/2003"},
                                                                   {"id": "b", "deceased": "no"}]}))
    result = cli("save", "invalid.json", "--name", "x", expect=1)
    lines = result.stderr.splitlines()
    assert lines[0] == "error: invalid.json: scenario not saved: 2 problems"
    assert lines[1].startswith("  - patient[0] @ birthDate: ") and lines[2].startswith("  - patient[1] @ deceased: ")
    assert not cli.created()  # nothing saved: not even the store was made


@pytest.mark.parametrize("args, message", [
    (("show", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("load", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("export", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("delete", "nothing", "--yes"), "error: no scenario has the id or name 'nothing'"),
    (("delete", "s"), "error: not deleting 's' (1 entity): confirm with --yes (stdin is not a terminal)"),
    (("save", "s.json", "--name", "s"), "error: s.json: scenario 's' already exists; use --overwrite to replace it"),
    (("import", "missing.json"), "error: missing.json: No such file or directory"),
    (("export", "s", "-o", "s.json"), "error: s.json already exists; use --force to replace it"),
    (("export", "s", "-o", "no/such/dir/s.json"), "error: no/such/dir: the directory does not exist"),
    (("sql", "DELETE FROM patients"), "error: only a read-only query (SELECT, WITH ... SELECT, VALUES, TABLE, or an "
                                      "EXPLAIN of one) is allowed; this is DELETE"),
    (("sql", "SELECT 1; DROP TABLE patients"), "error: give exactly one statement; found 2"),
    (("sql", "SELECT nope FROM patients"), "error: the query failed: Binder Error: Referenced column \"nope\" "
                                           "not found in FROM clause!"),
    (("types", "widget"), "error: unknown entity type 'widget'; the types in force: claim, claim_line, "),
])
def test_errors(cli_with_s, args, message):
    result = cli_with_s(*args, expect=1)
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert run_query(cli_with_s.db, "SELECT name, entity_count FROM scenarios").rows == [("s", 1)]  # unchanged


@pytest.mark.parametrize("args", [
    ("import", "a.json", "b.json", "--name", "x"),
    ("export", "x", "--format", "xml"),
    ("sql", "SELECT 1", "--json", "--csv"),
    ("list", "--limit", "-1"),
    ("export", "x", "--format", "parquet", "-o", "-"),
])
def test_usage_errors_exit_2(file_cli, args):
    result = file_cli(*args, expect=2)
    assert "Error:" in result.stderr


def test_reading_commands_do_not_create_a_database(cli):
    missing = f"error: no database at {cli.db}" if cli.store.kind == "duckdb" else \
        f"error: {cli.db} holds no healthsim-state store"
    for args in (("list",), ("show", "x"), ("history-limit",)):  # one behaviour for every reading command
        assert cli(*args, expect=1).stderr.startswith(missing)
    result = cli("sql", "SELECT 1", expect=1)
    assert result.stderr.startswith(missing)
    assert not cli.created()


def test_db_option_and_default_path(file_cli, tmp_path):
    cli = file_cli
    other = tmp_path / "other.duckdb"
    cli("import", SAMPLE, "--db", other)
    assert [i["name"] for i in cli.json("list", "--json", "--db", other)] == ["sample-scenario"]
    assert not cli.db.exists()
    del cli.env["HEALTHSIM_DB"]
    cli("import", DATA / "entities.json")
    assert (cli.home / ".healthsim" / "healthsim.duckdb").exists()


def test_export_of_a_hostile_name_stays_in_the_directory(cli_with_s):
    cli = cli_with_s
    cli("save", "s.json", "--name", "../../etc/passwd")
    out = cli("export", "../../etc/passwd")
    assert out.stdout.strip().endswith("to etc-passwd.json")
    assert (cli.cwd / "etc-passwd.json").is_file()
    cli("export", "../../etc/passwd", "--format", "parquet")
    assert (cli.cwd / "etc-passwd-parquet" / "patients.parquet").is_file()
    assert sorted(p.name for p in cli.cwd.iterdir()) == ["etc-passwd-parquet", "etc-passwd.json", "s.json"]


def test_export_force_replaces_and_json_to_stdout(file_cli):
    cli = file_cli
    cli("import", SAMPLE)
    cli("export", "sample-scenario", "-o", "out.json")
    cli("export", "sample-scenario", "-o", "out.json", "--force")
    assert cli.json("export", "sample-scenario", "-o", "-")["name"] == "sample-scenario"
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq")
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq", expect=1)
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq", "--force")
    assert sorted(p.name for p in cli.cwd.iterdir()) == ["out.json", "pq"]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_delete_asks_on_a_terminal(file_cli):
    cli = file_cli
    import pty  # noqa: F401  (POSIX only)

    cli("import", SAMPLE)
    for answer, code, left in (("n\n", 1, 1), ("y\n", 0, 0)):
        primary, secondary = os.openpty()
        process = subprocess.Popen([EXE, "delete", "sample-scenario"], stdin=secondary, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=cli.cwd, env=cli.env)
        os.close(secondary)
        os.write(primary, answer.encode())
        _, err = process.communicate(timeout=60)
        os.close(primary)
        assert process.returncode == code
        assert b"Delete scenario 'sample-scenario' (23 entities)? [y/N]" in err
        assert len(cli.json("list", "--json")) == left


# --- issue 11: nothing lost at the edges ----------------------------------------------------------

def test_a_name_may_not_shadow_an_id_and_an_ambiguous_lookup_names_both(cli_with_s):
    cli = cli_with_s
    (first,) = run_query(cli.db, "SELECT scenario_id FROM scenarios").rows[0]
    result = cli("save", "s.json", "--name", first, expect=1)
    assert result.stderr.splitlines() == ["error: s.json: scenario not saved: 1 problem",
                                          f"  - name: '{first}' is the id of another scenario; a name may not be "
                                          "a scenario's id"]
    con = duckdb.connect(str(cli.db))  # written around the library, as an older version could have
    con.execute("INSERT INTO scenarios SELECT 'other-id', ?, NULL, created_at, updated_at, 0, '{}', 1 "
                "FROM scenarios", [first])
    con.close()
    for command in (("show", first), ("delete", first, "--yes"), ("load", first)):
        result = cli(*command, expect=1)
        assert result.stderr == (f"error: '{first}' is the id of scenario 's' and the name of scenario other-id; "
                                 "rename scenario other-id to use its name\n")
    cli("rename", "other-id", "renamed")
    assert cli.json("show", first, "--json")["name"] == "s"


def test_a_key_given_twice_in_a_file_is_refused_naming_key_and_line(cli):
    (cli.cwd / "twice.json").write_text('{"patients": [{"patient_id": "a"}],\n"patients": []}')
    result = cli("import", "twice.json", expect=1)
    assert result.stderr.splitlines()[0] == (
        "error: twice.json: not a usable JSON document: a key is given twice in one object, and only one of its "
        "values would be kept: 'patients' at lines 1 and 2")
    assert not cli.created() or cli.json("list", "--json") == []


def test_sql_prints_nan_and_infinity_by_name_and_decimals_with_every_digit(cli_with_s):
    query = ("SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, '-inf'::DOUBLE AS c, "
             "12345678901234567890.123456789::DECIMAL(38, 9) AS d")
    assert tsv(cli_with_s("sql", query).stdout) == [{"a": "NaN", "b": "Infinity", "c": "-Infinity",
                                                     "d": "12345678901234567890.123456789"}]
    assert cli_with_s("sql", query, "--csv").stdout == "a,b,c,d\nNaN,Infinity,-Infinity,12345678901234567890.123456789\n"
    text = cli_with_s("sql", query, "--json").stdout
    assert json.loads(text, parse_float=Decimal) == [{"a": None, "b": None, "c": None,
                                                      "d": Decimal("12345678901234567890.123456789")}]


def test_sql_json_columns_are_json_and_explain_is_allowed(cli):
    (cli.cwd / "c.json").write_text(json.dumps({"claims": [{"claim_id": "c", "other_diagnoses": [{"code": "I10"}]}]}))
    cli("import", "c.json")
    assert cli.json("sql", "SELECT other_diagnoses FROM claims", "--json") == [{"other_diagnoses": [{"code": "I10"}]}]
    assert "SEQ SCAN" in cli("sql", "EXPLAIN SELECT * FROM claims").stdout.upper()


@pytest.mark.parametrize("args, lines", [
    (("save", "s.json", "--name", "n" * 201), ["error: s.json: scenario not saved: 1 problem",
                                               "  - name: the scenario name is 201 characters long; at most 200 "
                                               "are allowed"]),
    (("save", "s.json", "--name", "t", "-t", "x" * 101), ["error: s.json: scenario not saved: 1 problem",
                                                          "  - tags[0]: the tag is 101 characters long; at most 100 "
                                                          "are allowed"]),
    (("save", "s.json", "--name", "t", "-d", "d" * 10_001), ["error: s.json: scenario not saved: 1 problem",
                                                             "  - description: the description is 10001 characters "
                                                             "long; at most 10000 are allowed"]),
    (("rename", "s", "n" * 201), ["error: scenario not renamed: 1 problem",
                                  "  - name: the scenario name is 201 characters long; at most 200 are allowed"]),
    (("update", "s", "--add-tag", "x" * 101), ["error: scenario not updated: 1 problem",
                                               "  - add_tags[0]: the tag is 101 characters long; at most 100 are "
                                               "allowed"]),
])
def test_limits_are_one_clear_error(cli_with_s, args, lines):
    assert cli_with_s(*args, expect=1).stderr.splitlines() == lines
    assert run_query(cli_with_s.db, "SELECT name, version FROM scenarios").rows == [("s", 1)]


def test_list_offset_rename_update_and_delete_entities(cli):
    cli("import", SAMPLE)
    for name in ("b", "c"):
        cli("save", SAMPLE, "--name", name)
    assert [i["name"] for i in cli.json("list", "--json")] == ["c", "b", "sample-scenario"]
    assert [row["name"] for row in tsv(cli("list", "--offset", "1", "--limit", "1").stdout)] == ["b"]

    assert cli("rename", "b", "bee").stdout.startswith("renamed 'b' to 'bee' (")
    assert cli("rename", "bee", "c", expect=1).stderr.startswith("error: scenario 'c' already exists")
    out = cli("update", "bee", "-d", "A copy", "--add-tag", "x", "--add-tag", "y").stdout
    assert out == "updated 'bee' (version 2): tags x, y; description 'A copy'\n"
    assert cli("update", "bee", "--add-tag", "x").stdout == \
        "'bee' unchanged: it already has that description and those tags\n"
    cli("update", "bee", "--remove-tag", "x", "-d", "")
    shown = cli.json("show", "bee", "--json")
    assert (shown["tags"], shown["description"], shown["version"]) == (["y"], None, 3)
    assert cli("update", "bee", expect=2).stderr.startswith("Usage:")

    patients = [p["patient_id"] for p in cli.json("load", "bee")["entities"]["patients"]]
    out = cli("delete-entities", "bee", "patients", patients[0]).stdout
    assert out == "deleted 1 patient from 'bee' (version 4; 22 entities left)\n"
    missing = cli("delete-entities", "bee", "patient", patients[0], patients[1], expect=1)
    assert missing.stderr == (f"error: scenario 'bee' holds no entity with these keys (patient: '{patients[0]}'); "
                              "nothing was deleted (use --missing-ok to delete the others)\n")
    done = cli("delete-entities", "bee", "patient", patients[0], patients[1], "--missing-ok")
    assert done.stderr == f"warning: 'bee' holds no patient with the key {patients[0]}\n"
    lines = {line["claim_id"] for line in cli.json("load", "bee")["entities"]["claim_lines"]}
    (claim,) = lines
    assert cli("delete-entities", "bee", "claim_line", json.dumps([claim, 1])).stdout.startswith("deleted 1 claim_line")
    usage = cli("delete-entities", "bee", "claim_line", claim, expect=2)
    assert "give each KEY as a JSON array" in usage.stderr
    with StateManager(cli.db) as sm:
        assert [v["operation"] for v in sm.scenario_history("bee")] == \
            ["delete_entities"] * 3 + ["update", "update", "save"]


def test_the_progress_bar_of_one_import_moves_by_entities(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from healthsim_state import cli as cli_module
    from healthsim_state.engine import batch

    monkeypatch.setattr(batch, "CHUNK", 100)
    moves: list[tuple] = []

    class Recorder(cli_module._Reporter):
        def set(self, done, total, description=None):
            moves.append((done, total, description))

    @contextlib.contextmanager
    def recording(total, description):
        moves.append(("bar", total, description))
        yield Recorder()

    monkeypatch.setattr(cli_module, "progress", recording)
    (tmp_path / "big.json").write_text(json.dumps({"patients": [{"patient_id": f"p{i}"} for i in range(250)]}))
    result = CliRunner().invoke(cli_module.cli, ["import", str(tmp_path / "big.json"), "--db", str(tmp_path / "b.duckdb")])
    assert result.exit_code == 0, result.output
    assert moves == [("bar", 1, "importing"), (0, 250, "importing big"), (100, 250, None), (200, 250, None),
                     (250, 250, None)]
