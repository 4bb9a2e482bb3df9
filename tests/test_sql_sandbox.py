"""The read-only SQL feature runs one query, whatever the text holds.

Each hostile text below fooled, or could fool, a reading of the statement's
kind written by hand (PostgreSQL nests block comments; dollar quotes, E''
strings and ``;`` inside strings hide where a statement ends). Through the
Python API, the command line and the MCP ``query`` tool, on both backends,
each is refused with a :class:`QueryError` that says why, runs nothing
(a file the text would write is never made) and leaves the store as it was;
legitimate queries of the same shapes still work. Values go in order or by
name; values that do not fit the placeholders are a
:class:`QueryParameterError` saying what the query takes and what was given.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthsim_state import StateManager
from healthsim_state.interop import QueryError, QueryParameterError, run_query
from healthsim_state.mcp_server import ScenarioTools
from stores import Store
from test_cli import REPO, Cli

HIDE = "/* /* */ SELECT */ "  # a nested comment: a reader that does not nest sees SELECT first

# Refused on both backends: (text, what the message says, or (on PostgreSQL, on DuckDB)). {file} is a
# path the text would write. DuckDB has no COPY ... TO PROGRAM: its parser refuses the text.
HOSTILE = [
    (HIDE + "COPY (SELECT 1) TO PROGRAM 'touch {file}'", ("this is COPY", "does not parse")),
    (HIDE + "COPY (SELECT 1) TO '{file}'", "this is COPY"),
    (HIDE + "ATTACH '{file}' AS other", ("does not parse", "this is ATTACH")),
    (HIDE + "CREATE TABLE stolen AS SELECT * FROM scenarios", "this is CREATE"),
    (HIDE + "DELETE FROM scenario_tags", "this is DELETE"),
    (HIDE + "ANALYZE", "this is ANALYZE"),
    (HIDE + "LISTEN sandbox", "LISTEN"),
    (HIDE + "PREPARE p AS SELECT 1", "PREPARE"),
    ("ANALYZE", "this is ANALYZE"),
    ("DO $$BEGIN PERFORM pg_sleep(0); END$$", "DO"),
    (HIDE + "DO $$BEGIN PERFORM pg_sleep(0); END$$", "DO"),
    ("LISTEN sandbox", "LISTEN"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    # dollar quotes, E'' strings and ; inside strings: where does the first statement end?
    ("SELECT $$ ; $$ AS d; COPY (SELECT 1) TO PROGRAM 'touch {file}'", ("exactly one statement", "does not parse")),
    ("SELECT $x$ $$ ; $x$ AS d; COPY (SELECT 1) TO '{file}'", "exactly one statement"),
    ("/* $$ */ COPY (SELECT 1) TO PROGRAM 'touch {file}' /* $$ */", ("this is COPY", "does not parse")),
    ("SELECT E'\\'' AS e; COPY (SELECT 1) TO PROGRAM 'touch {file}'", ("exactly one statement", "does not parse")),
    ("SELECT E'\\'' AS e; COPY (SELECT 1) TO '{file}'", "exactly one statement"),
    ("/* E'*/ COPY (SELECT 1) TO '{file}' --'", "this is COPY"),
    ("SELECT ';' AS s; DELETE FROM scenario_tags", "exactly one statement"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    # writes a SELECT or an EXPLAIN carries
    ("WITH gone AS (DELETE FROM scenario_tags RETURNING 1) SELECT * FROM gone", ""),
    ("EXPLAIN ANALYZE DELETE FROM scenario_tags", ""),
    ("EXPLAIN ANALYZE INSERT INTO scenario_tags SELECT scenario_id, 9, 'x' FROM scenarios", ""),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{file}'", ""),
    ("EXPLAIN ANALYZE CREATE TABLE stolen AS SELECT 1", ""),
    ("SELECT * INTO stolen FROM scenarios", ""),
    ("SELECT 1 AS a) AS q; COPY (SELECT 1) TO PROGRAM 'touch {file}'; SELECT * FROM (SELECT 1", ""),
    ("SELECT 1 /*", ""),
]

# Work on both backends: (text, params, rows).
LEGIT = [
    ("WITH s AS (SELECT name FROM scenarios) SELECT name FROM s", None, [("kept",)]),
    ("SELECT name FROM scenarios;", None, [("kept",)]),
    ("SELECT name FROM scenarios ; ; -- the end\n", None, [("kept",)]),
    ("-- first\nSELECT /* a /* nested */ comment */ name FROM scenarios -- last", None, [("kept",)]),
    ("SELECT ';' AS semicolon, name FROM scenarios", None, [(";", "kept")]),
    ("SELECT $$a; b$$ AS d, $x$ $$ ; $x$ AS e", None, [("a; b", " $$ ; ")]),
    ("SELECT E'it\\'s; ok' AS e", None, [("it's; ok",)]),
    ("VALUES (1), (2)", None, [(1,), (2,)]),
    ("(SELECT 1 AS n) UNION ALL (SELECT 2) ORDER BY n DESC", None, [(2,), (1,)]),
    ("SELECT '?' AS mark, name FROM scenarios WHERE name = ?", ["kept"], [("?", "kept")]),
    ("SELECT name FROM scenarios WHERE name = $1;", ["kept"], [("kept",)]),
    ("SELECT name FROM scenarios WHERE name = $n AND $n <> '' -- $m", {"n": "kept"}, [("kept",)]),
    ("SELECT p.patient_id FROM patients p JOIN scenarios s USING (scenario_id) WHERE s.name = ?", ["kept"],
     [("p1",)]),
]


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def kept(request, tmp_path_factory) -> Store:
    """One store a backend for the module, holding one scenario 'kept' (one
    patient, one tag). The tests that share it leave it as it was, and each
    hostile one checks so."""
    cluster, name = None, f"sandbox_{os.getpid()}"
    if request.param == "duckdb":
        store = Store("duckdb", str(tmp_path_factory.mktemp("kept") / "kept.duckdb"))
    else:
        cluster = request.getfixturevalue("pg_cluster")
        store = Store("postgres", cluster.create_database(name))
    with StateManager(store.target) as sm:
        sm.save_scenario("kept", {"patients": [{"patient_id": "p1"}]}, tags=["t"])
    yield store
    if cluster is not None:
        cluster.drop_database(name)


@pytest.fixture
def victim() -> Path:
    """A path that a hostile text would write; its directory is open to the
    server's user, so a write that ran would show."""
    directory = tempfile.mkdtemp(prefix="sandbox-", dir="/tmp")
    os.chmod(directory, 0o1777)
    yield Path(directory) / "pwned"
    shutil.rmtree(directory, ignore_errors=True)


def _unchanged(target: str, victim: Path) -> None:
    assert not victim.exists(), "the hostile text ran"
    assert run_query(target, "SELECT name FROM scenarios").rows == [("kept",)]
    assert run_query(target, "SELECT tag FROM scenario_tags").rows == [("t",)]
    assert run_query(target, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'stolen'").rows \
        == [(0,)]


@pytest.mark.parametrize("text, message", HOSTILE)
def test_hostile_text_is_refused_and_runs_nothing(kept, victim, text, message):
    if isinstance(message, tuple):
        message = message[kept.kind == "duckdb"]
    with pytest.raises(QueryError) as refused:
        run_query(kept.target, text.format(file=victim), timeout=10)
    _unchanged(kept.target, victim)
    shown = str(refused.value)
    assert message in shown and "didn't produce a result" not in shown


@pytest.mark.parametrize("text, params, rows", LEGIT)
def test_legitimate_queries_still_work(kept, text, params, rows):
    assert run_query(kept.target, text, params).rows == rows


def test_explain_still_works_and_explains_the_query(kept):
    for text in ("EXPLAIN SELECT * FROM scenarios", "explain analyze SELECT * FROM scenarios;",
                 "/* plan */ EXPLAIN SELECT * FROM scenarios WHERE name = ?"):
        plan = run_query(kept.target, text, ["kept"] if "?" in text else None)
        assert plan.rows and "scenarios" in " ".join(str(cell) for row in plan.rows for cell in row).lower()


def _hidden_copy(store, victim: Path) -> str:
    """A COPY that writes ``victim``, behind a nested comment: to a program on
    PostgreSQL, to the file on DuckDB."""
    return HIDE + (f"COPY (SELECT 1) TO PROGRAM 'touch {victim}'" if store.kind == "postgres" else
                   f"COPY (SELECT 1) TO '{victim}'")


def test_the_command_line_refuses_a_hidden_copy_and_still_runs_queries(kept, victim, tmp_path):
    cli = Cli(tmp_path, kept)
    result = cli("sql", _hidden_copy(kept, victim), expect=1)
    assert result.stderr.startswith("error: only a read-only query (SELECT, WITH ... SELECT, VALUES, TABLE, or an "
                                    "EXPLAIN of one) is allowed; this is COPY")
    assert len(result.stderr.splitlines()) == 1
    assert cli("sql", "SELECT ';' AS s, name FROM scenarios; -- done").stdout == "s\tname\n;\tkept\n"
    _unchanged(kept.target, victim)


def test_the_mcp_query_tool_refuses_a_hidden_copy(kept, victim):
    with pytest.raises(ValueError, match="this is COPY"):
        ScenarioTools(kept.target).query(_hidden_copy(kept, victim))
    assert ScenarioTools(kept.target).query("SELECT name FROM scenarios;")["rows"] == [["kept"]]
    _unchanged(kept.target, victim)


# --- parameters: in order or by name, and a clear error when they do not match ----------------

MISMATCHED = [
    ("SELECT ? AS a", None, "the query takes 1 value in order (? or $1, $2, ...); 0 given"),
    ("SELECT ? AS a, ? AS b", ["x"], "the query takes 2 values in order (? or $1, $2, ...); 1 given"),
    ("SELECT $1 AS a", ["x", "y"], "the query takes 1 value in order (? or $1, $2, ...); 2 given"),
    ("SELECT 1 AS a", ["x"], "the query has no placeholders; 1 given"),
    ("SELECT ? AS a", {"s": "x"}, "the query takes 1 value in order (? or $1, $2, ...); given by name: s"),
    ("SELECT 1 AS a", {"s": "x"}, "the query has no placeholders; given by name: s"),
    ("SELECT $s AS a", None, "the query takes values by name ($s); none given"),
    ("SELECT $s AS a", ["x"], "the query takes values by name ($s); 1 value given in order"),
    ("SELECT $s AS a, $t AS b, $s AS c", {"s": "x", "u": "y"},
     "the query takes values by name ($s, $t); given: s, u; no value for $t; not in the query: u"),
]


@pytest.mark.parametrize("text, params, message", MISMATCHED)
def test_values_that_do_not_match_the_placeholders_are_a_clear_error(kept, text, params, message):
    with pytest.raises(QueryParameterError) as refused:
        run_query(kept.target, text, params)
    assert str(refused.value) == message


def test_values_by_name_fill_each_name_wherever_it_stands(kept):
    result = run_query(kept.target, "SELECT $b AS b, $a AS a, $b || $a AS ba, '$a' AS literal", {"a": "1", "b": "2"})
    assert result.rows == [("2", "1", "21", "$a")]


def _versions(target: str) -> str:
    """'kept' in three versions (patients p1; p1, p2; p2); its id."""
    with StateManager(target) as sm:
        sm.save_scenario("kept", {"patients": [{"patient_id": "p1"}]})
        sm.save_scenario("kept", {"patients": [{"patient_id": "p1"}, {"patient_id": "p2"}]}, overwrite=True)
        sm.save_scenario("kept", {"patients": [{"patient_id": "p2"}]}, overwrite=True)
        return sm.scenario_info("kept")["scenario_id"]


def test_the_readmes_named_parameter_example_runs_on_the_command_line(store, tmp_path):
    scenario_id = _versions(store.target)
    block = re.search(r"```sh\n(healthsim-state sql '[^`]*\$s[^`]*)```", (REPO / "README.md").read_text())
    command = shlex.split(block.group(1).replace("SCENARIO_ID", scenario_id))
    assert command[0] == "healthsim-state" and command[-2:] == ["-p", f"s={scenario_id}"]
    cli = Cli(tmp_path, store)
    assert [row["patient_id"] for row in cli.json(*command[1:], "--json")] == ["p2"]
    for version, patients in ((1, ["p1"]), (2, ["p1", "p2"])):
        query = command[2].replace("<= 3", f"<= {version}").replace("> 3", f"> {version}") + " ORDER BY _position"
        assert [row["patient_id"] for row in cli.json("sql", query, "-p", f"s={scenario_id}", "--json")] == patients


def test_the_command_line_takes_values_by_name_or_in_order(kept, tmp_path):
    cli = Cli(tmp_path, kept)
    assert cli("sql", "SELECT $n AS n, $m AS m", "-p", "m=a=b", "-p", "n=").stdout == "n\tm\n\ta=b\n"
    assert cli("sql", "SELECT name FROM scenarios WHERE name = ?", "-p", "kept").stdout == "name\nkept\n"
    assert cli("sql", "SELECT ? AS v", "-p", "a=b").stdout == "v\na=b\n"  # no $name: a value, = and all
    result = cli("sql", "SELECT $s AS s", "-p", "t=x", expect=1)
    assert result.stderr == "error: the query takes values by name ($s); given: t; no value for $s; " \
                            "not in the query: t\n"
    result = cli("sql", "SELECT ? AS a, ? AS b", "-p", "x", expect=1)
    assert result.stderr == "error: the query takes 2 values in order (? or $1, $2, ...); 1 given\n"
    result = cli("sql", "SELECT $s AS s", "-p", "x", expect=2)
    assert "the query takes values by name ($s): give each as -p NAME=VALUE (not 'x')" in result.stderr
    result = cli("sql", "SELECT $s AS s", "-p", "s=1", "-p", "s=2", expect=2)
    assert "-p s= is given twice" in result.stderr


# --- random texts from the pieces that hide statements ----------------------------------------

PIECES = ["/*", "*/", "--", "\n", " ", "'", "''", "E'", "\\'", "$$", "$x$", ";", "(", ")", ") AS q", "SELECT 1",
          "SELECT * FROM (", "EXPLAIN ANALYZE ", "COPY (SELECT 1) TO '{file}'",
          "COPY (SELECT 1) TO PROGRAM 'touch {file}'", "DELETE FROM scenario_tags",
          "WITH d AS (DELETE FROM scenario_tags RETURNING 1) SELECT * FROM d"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=10))
def test_no_text_made_of_hiding_pieces_runs_anything_but_a_query(kept, victim, pieces):
    """Whatever the pieces make, the outcome is rows or a QueryError, and
    never a write."""
    try:
        run_query(kept.target, "".join(pieces).format(file=victim), timeout=10)
    except QueryError as refused:
        assert "didn't produce a result" not in str(refused)
    _unchanged(kept.target, victim)
