"""The errors interop adds. Like the core's, each subclasses
:class:`~healthsim_state.HealthSimError` and the builtin a caller would catch."""

from __future__ import annotations

from ..errors import SHOWN_PROBLEMS, HealthSimError, Problem, QueryError, QueryParameterError, UnknownEntityTypeError  # noqa: F401 (re-exported)


class DocumentError(HealthSimError, ValueError):
    """A file (or document) that cannot be imported. Nothing was written.

    ``source`` names the file; ``line`` and ``column`` (1-based) are set for
    JSON syntax errors; ``problems`` lists every problem found in the entities.
    The first line of the message names the file and says what is wrong.
    """

    def __init__(self, source: str, message: str, *, line: int | None = None, column: int | None = None,
                 problems: list[Problem] | tuple[Problem, ...] = ()):
        self.source = source
        self.reason = message
        self.line = line
        self.column = column
        self.problems = list(problems)
        text = f"{source}: {message}"
        if self.problems:
            text += "".join(f"\n  - {p}" for p in self.problems[:SHOWN_PROBLEMS])
            if len(self.problems) > SHOWN_PROBLEMS:
                text += f"\n  ... and {len(self.problems) - SHOWN_PROBLEMS} more"
        super().__init__(text)


class OutputExistsError(HealthSimError, FileExistsError):
    """An export target exists and ``force`` was not given (or it is not
    something an export may replace)."""



