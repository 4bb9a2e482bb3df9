"""The ``healthsim-state`` command run in this process, with click's
``CliRunner``, for the tests that are about what a command does rather than
about the process that runs it.

A process per invocation costs 0.3-0.5 s of interpreter start and imports (far
more on a loaded machine) and the CLI tests make hundreds of invocations; in
process one costs a few milliseconds. What a subprocess gives a test is kept:
the environment (``env``, where ``None`` removes a variable) and the working
directory are the command's own for the call and restored after it; stdin,
stdout and stderr are separate pipes (not terminals, as when piped); warnings
show as they would in a fresh interpreter (each once per call, the
interpreter's default filters); and an exception that escapes the command is
printed to stderr as the traceback a process would print, exit code 1, so a
test's ``"Traceback" not in stderr`` still catches it.

Tests about process behaviour (the installed console script, terminals,
signals, locks held by another process) still start a process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import traceback
import warnings
from pathlib import Path
from typing import Iterator, Mapping

from click.testing import CliRunner

from healthsim_state.cli import cli

# Python's own filters in a fresh interpreter (no -W, no PYTHONWARNINGS), last given first.
_INTERPRETER_FILTERS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@contextlib.contextmanager
def _directory(path: str | os.PathLike | None) -> Iterator[None]:
    if path is None:
        yield
        return
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _fresh_warnings() -> Iterator[None]:
    """The command sets ``warnings.showwarning``; catch_warnings puts it back,
    and entering it forgets which warnings were already shown."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in _INTERPRETER_FILTERS:
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        yield


def run(args: list[str | os.PathLike], *, env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``healthsim-state ARGS``; the result looks like ``subprocess.run``'s
    with ``capture_output=True, text=True``."""
    argv = [str(a) for a in args]
    with _directory(cwd), _fresh_warnings():
        result = CliRunner(env=dict(env or {})).invoke(cli, argv, input=input, prog_name="healthsim-state",
                                                      catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(type(result.exception), result.exception, result.exc_info[2])[1:])
    return subprocess.CompletedProcess(["healthsim-state", *argv], result.exit_code, result.stdout, stderr)


def env_for(home: Path, **variables: str | None) -> dict[str, str | None]:
    """The environment a test's command gets: HOME in a temp dir, none of the
    user's HEALTHSIM_* settings unless given."""
    return {"HOME": str(home), "HEALTHSIM_DB": None, "HEALTHSIM_MAPPINGS": None, **variables}
