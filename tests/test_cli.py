"""The installed ``healthsim-state`` console script, run as a subprocess end to
end: save, list, show, load, export both formats, import every accepted
shape, migrate (dry run, for real, again), delete; and the error paths, each
with its exit code and its one-line message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from healthsim_state import StateManager
from healthsim_state.interop import run_query

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
    """Runs the console script with HOME and the database in a temp dir."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        self.db = tmp_path / "cli.duckdb"
        # Built after conftest's autouse fixture ran: no HEALTHSIM_* of the user's leaks in.
        self.env = {**os.environ, "HOME": str(self.home), "HEALTHSIM_DB": str(self.db), "COLUMNS": "200"}

    def __call__(self, *args: str, input: str | None = None, expect: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run([EXE, *map(str, args)], input=input, capture_output=True, text=True,
                                cwd=self.cwd, env=self.env, timeout=60)
        assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
        if expect:
            assert result.stderr.startswith("error: ") or result.stderr.startswith("Usage:"), result.stderr
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str):
        return json.loads(self(*args).stdout)


@pytest.fixture
def cli(tmp_path) -> Cli:
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
def cli_with_s(cli, template_db) -> Cli:
    shutil.copyfile(template_db, cli.db)
    (cli.cwd / "s.json").write_text('{"patients": [{"patient_id": "p"}]}')
    return cli


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

    shown = cli("show", "sample").stdout
    assert "description  The README's sample" in shown and "tags         demo, t2d" in shown
    assert "  patient        2" in shown and "  trial_visit    2" in shown
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
    """The README's main job: install, import the example, list it, show it."""
    out = cli("import", SAMPLE, "--overwrite")
    assert out.stdout.startswith(f"imported {SAMPLE} as 'sample-scenario' (")
    out = cli("import", SAMPLE, "--overwrite")  # the README's command can be run again
    assert out.stdout.startswith(f"replaced {SAMPLE} as 'sample-scenario' (")
    assert tsv(cli("list").stdout)[0]["name"] == "sample-scenario"
    assert "entities     23" in cli("show", "sample-scenario").stdout


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


def test_types(cli):
    rows = tsv(cli("types").stdout)
    assert len(rows) == 14 and rows[0]["entity"] == "claim"
    out = cli("types", "patients").stdout.splitlines()
    assert out[0].startswith("# patient (plural patients, table patients, key patient_id)")
    fields = tsv("\n".join(out[1:]))
    assert {"column": "given_name", "path": "name.given", "type": "varchar",
            "aliases": "given_name, name.given_name, first_name", "default": ""} in fields
    assert cli.json("types", "claim", "--json")["table"] == "claims"
    assert not cli.db.exists()  # types never opens the database


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
    assert not cli.db.exists()

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


def test_migrate_with_nothing_to_do(cli):
    out = cli("migrate").stdout
    assert out.startswith("no legacy scenario files in ") and ".healthsim/scenarios" in out


# --- error paths: one line on stderr, non-zero exit, no traceback --------------------------

def test_a_json_syntax_error_names_file_line_and_column(cli):
    (cli.cwd / "bad.json").write_text('{"patients": [\n  {"id": "a",}\n]}')
    result = cli("import", "bad.json", expect=1)
    assert result.stderr == ("error: bad.json: not valid JSON: Expecting property name enclosed in double quotes "
                             "at line 2, column 14\n")
    assert not cli.db.exists() or cli.json("list", "--json") == []


def test_debug_shows_the_traceback(cli):
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
    assert cli.json("list", "--json") == []


@pytest.mark.parametrize("args, message", [
    (("show", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("load", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("export", "nothing"), "error: no scenario has the id or name 'nothing'"),
    (("delete", "nothing", "--yes"), "error: no scenario has the id or name 'nothing'"),
    (("delete", "s"), "error: not deleting 's' (1 entities): confirm with --yes (stdin is not a terminal)"),
    (("save", "s.json", "--name", "s"), "error: s.json: scenario 's' already exists; use --overwrite to replace it"),
    (("import", "missing.json"), "error: missing.json: No such file or directory"),
    (("export", "s", "-o", "s.json"), "error: s.json already exists; use --force to replace it"),
    (("export", "s", "-o", "no/such/dir/s.json"), "error: no/such/dir: the directory does not exist"),
    (("sql", "DELETE FROM patients"), "error: only a read-only SELECT (or WITH ... SELECT, or EXPLAIN) query is allowed; "
                                      "this is DELETE"),
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
def test_usage_errors_exit_2(cli, args):
    result = cli(*args, expect=2)
    assert "Error:" in result.stderr


def test_reading_commands_do_not_create_a_database(cli):
    assert cli("list").stdout == "name\tentities\ttags\tupdated\n"
    result = cli("show", "x", expect=1)
    assert result.stderr.startswith(f"error: no database at {cli.db}")
    result = cli("sql", "SELECT 1", expect=1)
    assert result.stderr.startswith(f"error: no database at {cli.db}")
    assert not cli.db.exists()


def test_db_option_and_default_path(cli, tmp_path):
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


def test_export_force_replaces_and_json_to_stdout(cli):
    cli("import", SAMPLE)
    cli("export", "sample-scenario", "-o", "out.json")
    cli("export", "sample-scenario", "-o", "out.json", "--force")
    assert cli.json("export", "sample-scenario", "-o", "-")["name"] == "sample-scenario"
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq")
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq", expect=1)
    cli("export", "sample-scenario", "--format", "parquet", "-o", "pq", "--force")
    assert sorted(p.name for p in cli.cwd.iterdir()) == ["out.json", "pq"]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_delete_asks_on_a_terminal(cli):
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
