"""No message shows a password of a database URL: redaction by the position
of the user information (also for URLs that do not parse), the driver's
messages scrubbed, and the CLI and MCP server end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

import anyio
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import assume, given, strategies as st
from mcp import Client

from healthsim_state import HealthSimError, StateManager, StoreError
from healthsim_state.backends.urls import MASK, redact, scrub, secrets

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60

# (URL, its password, what the redacted URL must still show)
ODD_URLS = [
    ("postgresql://carol:pa#ssWORD?tail@127.0.0.1:1/db", "pa#ssWORD?tail", "carol:***@127.0.0.1:1/db"),
    ("postgresql://alice:s3cr3tPW!@[::1:5432/db", "s3cr3tPW!", "alice:***@[::1:5432/db"),
    ("postgresql://alice:s3cr%ZZ@127.0.0.1:1/db", "s3cr%ZZ", "alice:***@127.0.0.1:1/db"),
    ("postgresql://u:pw-multi@127.0.0.1:1,127.0.0.1:2/db", "pw-multi", "u:***@127.0.0.1:1,127.0.0.1:2/db"),
    ("postgresql://u:p@ss/wo@rd@127.0.0.1:1/db", "p@ss/wo@rd", "u:***@127.0.0.1:1/db"),
    ("postgres://u:%E2%82%ACuro-sign@127.0.0.1:1/db?sslmode=disable", "€uro-sign",
     "u:***@127.0.0.1:1/db?sslmode=disable"),
    ("postgresql://u@127.0.0.1:1/db?password=q-s3cret&x=1", "q-s3cret", "u@127.0.0.1:1/db?password=***&x=1"),
    ("postgresql://u:n0t-%aa-utf8@127.0.0.1:1/db", "n0t-%aa-utf8", "u:***@127.0.0.1:1/db"),
    ("postgresql://127.0.0.1:1/db?password=at@s1gn", "at@s1gn", "127.0.0.1:1/db?password=***"),
    ("postgresql://u@127.0.0.1:1/db?pass%77ord=enc0ded", "enc0ded", "u@127.0.0.1:1/db?pass%77ord=***"),
]


@pytest.mark.parametrize("url, password, shown", ODD_URLS)
def test_a_url_is_redacted_by_position_and_keeps_everything_else(url, password, shown):
    redacted = redact(url)
    assert password not in redacted and redacted == url.partition("://")[0] + "://" + shown


def test_urls_without_a_password_are_shown_as_written():
    for url in ("postgresql://u@h:5/db?sslmode=require", "postgresql:///db", "postgresql://h1,h2/db"):
        assert redact(url) == url


# --- the fuzzer -------------------------------------------------------------------------------

_ODD = "#?@/:%[]&= ,'\"\\\t!$;*~é€ü中🙂"
odd_passwords = st.one_of(
    st.text(alphabet=st.sampled_from(_ODD) | st.characters(codec="utf-8", exclude_categories=["Cs"]),
             min_size=1, max_size=24),
    st.builds(lambda a, bad, b: a + "%" + bad + b, st.text("abcXYZ09#@", max_size=6),
              st.sampled_from(["ZZ", "G", "", "%", "4", "e2%82"]), st.text("abc?/", max_size=6)),
)
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.-", min_size=1, max_size=10)
hosts = st.lists(st.sampled_from(["127.0.0.1:1", "127.0.0.1:2", "[::1]:3", "db.example:5432", "h-x"]),
                 min_size=1, max_size=3)
databases = st.sampled_from(["db", "team_x", "d%20b", ""])
queries = st.sampled_from(["", "?sslmode=disable", "?connect_timeout=2&application_name=hs"])


def odd_url(user: str, password: str, host_list: list[str], database: str, query: str) -> str:
    """The URL; a password that is also a part of what is shown (a host, an
    "@") cannot be told from it, and is skipped."""
    assume(password not in f"postgresql://{user}:{MASK}@{','.join(host_list)}/{database}{query}")
    return f"postgresql://{user}:{password}@{','.join(host_list)}/{database}{query}"


@given(users, odd_passwords, hosts, databases, queries)
def test_fuzzed_passwords_never_show_and_the_rest_always_does(user, password, host_list, database, query):
    url = odd_url(user, password, host_list, database, query)
    redacted = redact(url)
    assert password not in redacted
    assert redacted == f"postgresql://{user}:***@{','.join(host_list)}/{database}{query}"
    quoted = f'in URI: "{url}"; invalid percent-encoded token: "{password}"; decoded: {unquote(password)}'
    scrubbed = scrub(quoted, url)
    assert password not in scrubbed and unquote(password) not in scrubbed and redacted in scrubbed


@given(users, odd_passwords.filter(lambda password: "&" not in password), hosts, databases)
def test_fuzzed_password_query_values_never_show_and_the_rest_always_does(user, password, host_list, database):
    """A ``password`` query value ends at the next ``&`` (libpq's rule too)."""
    shown = f"postgresql://{user}@{','.join(host_list)}/{database}?sslmode=disable&password={MASK}"
    assume(password not in shown)
    url = shown.replace(MASK, password)
    assert redact(url) == shown
    assert password not in scrub(f'invalid value: "{password}" in "{url}"', url)


# Long enough that it cannot be a word of the message by chance (a "?" is).
long_odd_passwords = odd_passwords.filter(lambda password: len(password) >= 6)


@given(users, long_odd_passwords, st.lists(st.sampled_from(["127.0.0.1:1", "127.0.0.1:2"]), min_size=1, max_size=2),
       databases)
def test_fuzzed_passwords_never_show_in_the_drivers_messages_as_we_raise_them(user, password, host_list, database):
    """libpq's own messages (a URL it cannot parse, a token it cannot decode,
    a host it cannot reach) pass through the backend as our errors."""
    url = odd_url(user, password, host_list, database, "")
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(url)
    except (psycopg.Error, UnicodeDecodeError):
        parsed = None
    hosts_seen = str((parsed or {}).get("host", "127.0.0.1")).split(",")
    assume(all(h in ("127.0.0.1", "") for h in hosts_seen))  # no name lookups of password pieces
    with pytest.raises(HealthSimError) as caught:
        with StateManager(url, read_only=True, lock_timeout=1) as manager:
            manager.list_scenarios()
    message = str(caught.value)
    assert password not in message and unquote(password, errors="replace") not in message
    assert user in message


def test_scrubbing_with_no_url_changes_nothing():
    assert scrub("a message", "") == "a message" and scrub("a message", "postgresql://h/db") == "a message"


def test_the_secrets_include_the_decoded_password_and_its_longer_pieces():
    found = secrets("postgresql://u:ab%40cd/efgh@h/db?password=q1")
    assert {"ab%40cd/efgh", "ab@cd/efgh", "efgh", "ab", "cd", "q1"} <= set(found)
    assert found == sorted(found, key=len, reverse=True)


# --- end to end: the CLI ------------------------------------------------------------------------

class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, home: Path) -> Ran:
    """The command line in this process (a new process costs seconds here)."""
    from healthsim_state.cli import cli as command

    done = CliRunner().invoke(command, list(args), env={"HOME": str(home), "HEALTHSIM_DB": None})
    return Ran(done.exit_code, done.stdout, done.stderr)


def assert_hidden(done: Ran | subprocess.CompletedProcess, password: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output
    assert password not in output and unquote(password, errors="replace") not in output


@pytest.mark.parametrize("url, password, shown", ODD_URLS)
@pytest.mark.parametrize("as_json", [False, True])
def test_list_on_a_bad_url_never_prints_the_password(url, password, shown, as_json, tmp_path):
    done = cli("list", "--db", url, *(["--json"] if as_json else []), home=tmp_path)
    assert_hidden(done, password)
    assert done.stderr.startswith("error: ") and shown in done.stderr


def test_a_real_process_never_prints_the_password(tmp_path):
    url, password, shown = ODD_URLS[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    env.pop("HEALTHSIM_DB", None)
    done = subprocess.run([sys.executable, "-m", "healthsim_state.cli", "list", "--json", "--db", url],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert_hidden(done, password)
    assert done.stderr == f"error: cannot connect to postgresql://{shown}: Connection refused; is the server " \
                          "running, and accepting TCP/IP connections on that host and port?\n"


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "source.duckdb"
    with StateManager(path) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    return path


@pytest.mark.parametrize("url, password, shown", ODD_URLS[:6])
def test_copy_to_an_unreachable_or_malformed_url_never_prints_the_password(url, password, shown, source, tmp_path):
    done = cli("copy", "s", "--from", str(source), "--to", url, home=tmp_path)
    assert_hidden(done, password)
    assert shown in done.stderr


def test_copy_to_a_server_shows_the_url_without_an_odd_password(pg_url, source, tmp_path):
    """The test server trusts its user: any password connects, and the
    success line and "already exists in ..." must not show it."""
    password = "pa#ssWORD?tail"
    url = pg_url.replace("postgres@", f"postgres:{password}@")
    copied = cli("copy", "s", "--from", str(source), "--to", url, home=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip().endswith(f"to {redact(url)}") and password not in copied.stdout + copied.stderr
    again = cli("copy", "s", "--from", str(source), "--to", url, home=tmp_path)
    assert_hidden(again, password)
    assert f"already exists in {redact(url)}" in again.stderr


# --- end to end: the MCP server -----------------------------------------------------------------

@pytest.mark.parametrize("url, password, shown", ODD_URLS[:5])
def test_mcp_tools_on_a_bad_url_never_show_the_password(url, password, shown, caplog):
    from healthsim_state import mcp_server

    caplog.set_level("DEBUG")

    async def calls() -> list:
        with anyio.fail_after(TIMEOUT):
            async with Client(mcp_server.build_server(url)) as client:  # in process
                return [await client.call_tool("list_scenarios", {}),
                        await client.call_tool("query", {"sql": "SELECT 1"}),
                        await client.call_tool("save_scenario", {"name": "s", "entities": {"patients": []}})]

    for result in anyio.run(calls):
        text = result.content[0].text
        assert result.is_error and password not in text and shown in text
    assert password not in caplog.text


# --- the last guard: a message that forgot to redact ------------------------------------------------

def _leaky(url: str):
    def list_scenarios(*args, **kwargs):
        raise StoreError(f"the database {url} broke (a message naming the URL as given)")
    return list_scenarios


@pytest.mark.parametrize("url, password, shown", ODD_URLS[:3])
def test_the_front_ends_scrub_any_message_of_the_urls_they_were_given(url, password, shown, monkeypatch, tmp_path):
    from healthsim_state import mcp_server

    monkeypatch.setattr(StateManager, "list_scenarios", _leaky(url))
    monkeypatch.setattr(StateManager, "__enter__", lambda self: self)
    done = cli("list", "--db", url, home=tmp_path)
    assert_hidden(done, password)
    assert done.stderr == f"error: the database {redact(url)} broke (a message naming the URL as given)\n"

    async def call():
        with anyio.fail_after(TIMEOUT):
            async with Client(mcp_server.build_server(url)) as client:
                return await client.call_tool("list_scenarios", {})

    result = anyio.run(call)
    assert result.is_error and result.content[0].text.endswith(f"the database {redact(url)} broke (a message "
                                                              "naming the URL as given)")


def test_a_failed_copy_line_is_scrubbed_too(source, monkeypatch, tmp_path):
    from healthsim_state.interop import copy as copy_module

    url, password, shown = ODD_URLS[0]

    def failing(*args, **kwargs):
        yield copy_module.CopyResult("s", None, error=f"could not write to {url}")

    monkeypatch.setattr(copy_module, "iter_copies", failing)
    done = cli("copy", "s", "--from", str(source), "--to", url, home=tmp_path)
    assert_hidden(done, password)
    assert done.stderr == f"error: could not write to {redact(url)}\n"
