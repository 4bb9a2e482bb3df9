"""The ``healthsim-state`` command: a thin layer over :class:`StateManager` and
:mod:`healthsim_state.interop`.

Output for people goes to a terminal as tables; piped, the same commands
print tab-separated lines (with a header) that ``cut`` and ``awk`` read, and
``--json`` gives machine output. Errors print ``error: ...`` on stderr and
exit 1 (usage errors exit 2), with a traceback only under ``--debug``.
Progress bars appear only when stderr is a terminal.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import click

from . import __version__
from .backends.urls import scrub_all
from .config import default_target, is_url
from .errors import (
    EntityNotFoundError, HealthSimError, ScenarioExistsError, StoreNotFoundError, VersionNotFoundError,
)
from .manager import MISSING_OK_HINT, StateManager, plan_schema_changes
from .values import JSON_ENCODE_ERRORS, dump_exact, json_bytes, parse_exact

if TYPE_CHECKING:
    from .interop import legacy
    from .interop.json_io import ScenarioDocument

# The interchange modules (JSON documents, Parquet, SQL, migration) are
# imported by the commands that use them: `list` and `--help` do not pay for them.

_URLS = "healthsim_state.urls"  # the context's meta key: the URLs this command uses
DB_HELP = ("The store: a DuckDB file, or a postgresql:// URL (default: $HEALTHSIM_DB, else "
           "~/.healthsim/healthsim.duckdb).")
ROOT_DB_HELP = DB_HELP[:-2] + "; a command's own --db wins)."


# --- errors ---------------------------------------------------------------------------

class CliError(click.ClickException):
    """One ``error:`` line on stderr (then any details the error carries), exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def describe_error(error: BaseException) -> str:
    if isinstance(error, HealthSimError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, OSError):
        return str(error.strerror or error)
    return f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        _escape_what_cannot_print()
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # `healthsim-state load x | head`: not an error worth a message
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            raise CliError(_scrubbed(describe_error(error))) from None


def _escape_what_cannot_print() -> None:
    """A lone surrogate a store keeps (in an unmapped field) prints as its
    JSON escape instead of failing the command (see :func:`.values.json_bytes`)."""
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors=JSON_ENCODE_ERRORS)


def _scrubbed(message: str) -> str:
    """``message`` without a password of any URL this command was given."""
    return scrub_all(message, click.get_current_context().meta.get(_URLS, ()))


def _debug() -> bool:
    return bool(click.get_current_context().find_root().params.get("debug"))


def db_option(function: Callable) -> Callable:
    return click.option("--db", metavar="PATH_OR_URL", default=None, help=DB_HELP)(function)


def version_option(function: Callable) -> Callable:
    return click.option("--version", "version", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Version N of the scenario (see `history`; not the program's version, which "
                             "`healthsim-state --version` prints); default: the newest.")(function)


def _target(db: str | None) -> str:
    """The store: a file path (``~`` expanded) or a PostgreSQL URL. A
    command's ``--db`` wins over one given before the command, which wins
    over ``$HEALTHSIM_DB`` and the default file. A URL is kept in the
    context, so that no error message can show its password."""
    context = click.get_current_context(silent=True)
    if db is None and context is not None:
        db = context.find_root().params.get("db")
    target = default_target() if db is None else db if is_url(db) else str(Path(db).expanduser())
    if context is not None and is_url(target):
        context.meta.setdefault(_URLS, set()).add(target)
    return target


def _manager(db: str | None) -> StateManager:
    """The store, opened for writing (commands that write create it)."""
    return StateManager(_target(db))


def _reader(db: str | None) -> StateManager:
    """The store, read-only (commands that read: nothing is created, evolved
    or written; a missing store is an error naming it)."""
    return StateManager(_target(db), read_only=True)


# --- output ---------------------------------------------------------------------------

def _tty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _console(stderr: bool = False):
    from rich.console import Console  # only on a terminal: keeps piped runs quick

    return Console(stderr=stderr, highlight=False)


_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _cell(value: Any) -> str:
    """A value as text for a table, TSV or CSV: NULL empty, NaN and the
    infinities by their names, a decimal with every digit."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value - value != 0.0:
        return _SPECIAL_FLOATS[repr(value)]
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        return dump_exact(value, ensure_ascii=False, default=jsonable)
    return str(jsonable(value))


def jsonable(value: Any) -> Any:
    """A query value as JSON (:func:`healthsim_state.interop.query.jsonable`)."""
    from .interop.query import jsonable as as_json

    return as_json(value)


def _tsv(value: Any) -> str:
    return _cell(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def print_table(headers: list[str], rows: Iterable[Iterable[Any]], *, title: str | None = None,
                right: Iterable[int] = ()) -> None:
    """A table on a terminal; tab-separated lines, header first, when piped."""
    rows = [list(row) for row in rows]
    if not _tty(sys.stdout):
        click.echo("\t".join(headers))
        for row in rows:
            click.echo("\t".join(_tsv(value) for value in row))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    right = set(right)
    for index, header in enumerate(headers):
        table.add_column(header, justify="right" if index in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*("[dim]NULL[/dim]" if value is None else _escape(_cell(value)) for value in row))
    _console().print(table)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def print_json(value: Any) -> None:
    """Indented JSON; a decimal with every digit."""
    click.echo(dump_exact(value, ensure_ascii=False, indent=2, default=jsonable))


class _Reporter:
    """Per-item lines and, on a terminal, a progress bar under them."""

    def __init__(self, progress: Any = None, task: Any = None):
        self._progress, self._task = progress, task

    def line(self, text: str, err: bool = False) -> None:
        if self._progress is not None and _tty(sys.stderr if err else sys.stdout):
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text, err=err)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def set(self, done: int, total: int, description: str | None = None) -> None:
        """Show ``done`` of ``total`` (a save's entities, say)."""
        if self._progress is not None:
            fields = {} if description is None else {"description": description}
            self._progress.update(self._task, completed=done, total=total, **fields)


@contextmanager
def progress(total: int, description: str) -> Iterator[_Reporter]:
    if not _tty(sys.stderr) or total <= 0:
        yield _Reporter()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as bar:
        yield _Reporter(bar, bar.add_task(description, total=total))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 entity``, ``2 entities``: the count and the noun that agrees with it."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def entities_text(count: int) -> str:
    return counted(count, "entity", "entities")


def counts_text(manager_or_registry: Any, counts: dict[str, int]) -> str:
    """``2 patients, 1 encounter`` (types by their singular or plural name)."""
    registry = getattr(manager_or_registry, "registry", manager_or_registry)
    parts = []
    for key, number in counts.items():
        codec = registry.resolve(key) if registry is not None else None
        if codec is None:
            parts.append(f"{number} {key}")
        else:
            parts.append(f"{number} {codec.mapping.entity if number == 1 else codec.mapping.plural}")
    return ", ".join(parts) if parts else "no entities"


# --- the commands ----------------------------------------------------------------------

@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.option("--db", metavar="PATH_OR_URL", default=None, help=ROOT_DB_HELP)
@click.version_option(__version__, prog_name="healthsim-state",
                      help="Show the program's version and exit (on load, show and export, --version N is a "
                           "scenario's version).")
def cli(debug: bool, db: str | None) -> None:
    """Save, load, version, query and move HealthSim scenarios in one store
    (a DuckDB file, or a PostgreSQL database).

    --db goes before the command or after it; reading commands (load, list,
    show, export, history, diff, sql, ...) never create the store: a missing
    one is an error naming it."""
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Library warnings (an orphaned entity type, ...) as one ``warning:`` line."""
    click.echo(f"warning: {message}", err=True)


@cli.command()
@click.argument("file")
@click.option("--name", "-n", required=True, metavar="NAME", help="The scenario's name.")
@click.option("--description", "-d", metavar="TEXT", help="Replaces the file's description.")
@click.option("--tag", "-t", "tags", multiple=True, metavar="TAG",
              help="A tag (repeat for more); replaces the file's tags.")
@click.option("--overwrite", is_flag=True, help="Replace a scenario of the same name.")
@db_option
def save(file: str, name: str, description: str | None, tags: tuple[str, ...], overwrite: bool,
         db: str | None) -> None:
    """Save the entities of a JSON FILE (any shape `import` reads; - is stdin) as scenario NAME."""
    from .interop.json_io import read_document

    document = read_document(file)
    with _manager(db) as manager, progress(sum(document.counts.values()), f"saving {name}") as report:
        result = _save(manager, document, name, description=description, tags=list(tags) or None,
                       overwrite=overwrite, progress=lambda done, total: report.set(done, total))
        if result.unchanged:
            click.echo(f"{name!r} unchanged ({result.scenario_id}): it already holds these entities, description "
                       "and tags")
            return
        click.echo(f"{'replaced' if result.replaced else 'saved'} {name!r} ({result.scenario_id}): "
                   f"{counts_text(manager, result.counts)}")


def _save(manager: StateManager, document: ScenarioDocument, name: str, **options: Any):
    from .interop.json_io import save_document

    try:
        return save_document(manager, document, name, **options)
    except ScenarioExistsError:
        raise CliError(f"{document.source}: scenario {name!r} already exists; use --overwrite to replace it") \
            from None


@cli.command()
@click.argument("name_or_id")
@click.option("--output", "-o", metavar="PATH", help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@version_option
@db_option
def load(name_or_id: str, output: str | None, force: bool, version: int | None, db: str | None) -> None:
    """Print the scenario NAME_OR_ID as export JSON (or write it with -o)."""
    from .interop.files import write_atomic
    from .interop.json_io import STDIN, dumps, export_document

    with _reader(db) as manager:
        text = dumps(export_document(manager, name_or_id, version=version))
    if output is None or output == STDIN:
        click.echo(text, nl=False)
    else:
        write_atomic(output, json_bytes(text), force=force)
        click.echo(f"wrote {output}", err=True)


@cli.command(name="list")
@click.option("--tag", metavar="TAG", help="Only scenarios with this tag (case-insensitive).")
@click.option("--search", metavar="TEXT", help="Only names or descriptions containing this text (case-insensitive).")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, metavar="N",
              help="List at most N scenarios; 0 lists them all.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Skip the first N.")
@click.option("--json", "as_json", is_flag=True, help="Machine output: a JSON array.")
@db_option
def list_command(tag: str | None, search: str | None, limit: int, offset: int, as_json: bool, db: str | None) -> None:
    """List scenarios, newest first: name, entities, tags, updated."""
    with _reader(db) as manager:
        items = manager.list_scenarios(tag=tag, search=search, limit=limit or None, offset=offset)
    if as_json:
        print_json(items)
        return
    if not items and _tty(sys.stdout):
        click.echo(f"no scenarios in {manager.label}" if not (tag or search) else "no scenario matches", err=True)
        return
    print_table(["name", "entities", "tags", "updated"],
                [(i["name"], i["entity_count"], ", ".join(i["tags"]),
                  _when(i["updated_at"]) if _tty(sys.stdout) else i["updated_at"].isoformat()) for i in items],
                right=[1])


@cli.command()
@click.argument("name_or_id")
@click.option("--json", "as_json", is_flag=True, help="Machine output: a JSON object.")
@version_option
@db_option
def show(name_or_id: str, as_json: bool, version: int | None, db: str | None) -> None:
    """Show one scenario: id, version, description, tags, dates and entity counts per type."""
    with _reader(db) as manager:
        item = manager.scenario_info(name_or_id, version=version)
        item["entity_counts"] = _in_mapping_order(manager, item["entity_counts"])
    if as_json:
        print_json(item)
        return
    _print_info(item)


def _in_mapping_order(manager: StateManager, counts: dict[str, int]) -> dict[str, int]:
    """Counts per type in the mappings' order (as load and export give the
    types); a type no mapping names, after them."""
    order = {entity: index for index, entity in enumerate(manager.registry.entity_types)}
    return dict(sorted(counts.items(), key=lambda pair: order.get(pair[0], len(order))))


def _print_info(item: dict[str, Any]) -> None:
    """Aligned lines on a terminal; piped, ``field<TAB>value`` lines under a
    header, dates in ISO 8601 and each type's count as ``entities.<type>``."""
    tty = _tty(sys.stdout)
    when = _when if tty else (lambda value: value.isoformat())
    fields = [("name", item["name"]), ("id", item["scenario_id"]), ("version", str(item["version"])),
              ("description", item["description"] or ""), ("tags", ", ".join(item["tags"])),
              ("created", when(item["created_at"])), ("updated", when(item["updated_at"])),
              ("entities", str(item["entity_count"]))]
    counts = [(entity, count) for entity, count in item["entity_counts"].items() if count]
    if not tty:
        print_table(["field", "value"], fields + [(f"entities.{entity}", count) for entity, count in counts])
        return
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        click.echo(f"{label:<{width}}  {value}")
    if counts:
        name_width = max(len(entity) for entity, _ in counts)
        count_width = max(len(str(count)) for _, count in counts)
        for entity, count in counts:
            click.echo(f"  {entity:<{name_width}}  {count:>{count_width}}")


@cli.command()
@click.argument("name_or_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
def delete(name_or_id: str, yes: bool, db: str | None) -> None:
    """Delete a scenario, all its entities and its history (asks first on a terminal)."""
    with _reader(db) as reader:
        item = reader.scenario_info(name_or_id)  # a missing store is an error, and is not created
    with _manager(db) as manager:
        label = f"{item['name']!r} ({entities_text(item['entity_count'])})"
        if not yes:
            if not _tty(sys.stdin):
                raise CliError(f"not deleting {label}: confirm with --yes (stdin is not a terminal)")
            click.confirm(f"Delete scenario {label}?", abort=True, err=True)
        manager.delete_scenario(item["scenario_id"])
    click.echo(f"deleted {label}")


@cli.command()
@click.argument("name_or_id")
@click.argument("new_name")
@db_option
def rename(name_or_id: str, new_name: str, db: str | None) -> None:
    """Give a scenario a new name (its id, entities and versions stay as they are)."""
    with _reader(db) as reader:
        reader.scenario_info(name_or_id)  # a missing store is an error, and is not created
    with _manager(db) as manager:
        before = manager.scenario_info(name_or_id)["name"]
        item = manager.rename_scenario(name_or_id, new_name)
    click.echo(f"renamed {before!r} to {item['name']!r} ({item['scenario_id']})")


@cli.command()
@click.argument("name_or_id")
@click.option("--description", "-d", metavar="TEXT", help="The new description (\"\" removes it).")
@click.option("--tag", "-t", "tags", multiple=True, metavar="TAG", help="Replace the tags with these (repeat for more).")
@click.option("--no-tags", is_flag=True, help="Remove every tag (before any --add-tag).")
@click.option("--add-tag", "add_tags", multiple=True, metavar="TAG", help="Add a tag (repeat for more).")
@click.option("--remove-tag", "remove_tags", multiple=True, metavar="TAG", help="Remove a tag (repeat for more).")
@db_option
def update(name_or_id: str, description: str | None, tags: tuple[str, ...], no_tags: bool,
           add_tags: tuple[str, ...], remove_tags: tuple[str, ...], db: str | None) -> None:
    """Change a scenario's description or tags, keeping its entities (a new version).

    Nothing is written when the result is what is stored already.
    """
    if tags and no_tags:
        raise click.UsageError("--tag replaces the tags and --no-tags removes them: give one of them")
    if description is None and not (tags or no_tags or add_tags or remove_tags):
        raise click.UsageError("nothing to change: give --description, --tag, --no-tags, --add-tag or --remove-tag")
    changes: dict[str, Any] = {"add_tags": list(add_tags), "remove_tags": list(remove_tags)}
    if description is not None:
        changes["description"] = description or None
    if tags or no_tags:
        changes["tags"] = list(tags)
    with _reader(db) as reader:
        before = reader.scenario_info(name_or_id)  # a missing store is an error, and is not created
    with _manager(db) as manager:
        item = manager.update_scenario(name_or_id, **changes)
    if item["version"] == before["version"]:
        click.echo(f"{item['name']!r} unchanged: it already has that description and those tags")
        return
    click.echo(f"updated {item['name']!r} (version {item['version']}): tags {', '.join(item['tags']) or '(none)'}; "
               f"description {'(none)' if item['description'] is None else repr(item['description'])}")


@cli.command(name="delete-entities")
@click.argument("name_or_id")
@click.argument("entity_type")
@click.argument("keys", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Delete the keys found even if some are not.")
@db_option
def delete_entities(name_or_id: str, entity_type: str, keys: tuple[str, ...], missing_ok: bool,
                    db: str | None) -> None:
    """Delete entities of ENTITY_TYPE from a scenario by their KEYS (a new version).

    A KEY is the key's value as text (converted to the key column's type: 42 for an integer
    key, 2024-01-15 for a date); for a composite key, a JSON array of its values
    ('["CLM-1", 2]'). A key the scenario does not hold is an error and nothing is deleted,
    unless --missing-ok. The entities stay in the scenario's history: `restore` brings them back.
    """
    with _reader(db) as reader:
        reader.scenario_info(name_or_id)  # a missing store is an error, and is not created
        (entity,) = reader.registry.entity_names([entity_type])
        fields = reader.registry.codecs[entity].mapping.key_fields
    parsed = [_cli_key(key, fields) for key in keys]
    with _manager(db) as manager:
        try:
            result = manager.delete_entities(name_or_id, {entity: parsed}, missing_ok=missing_ok)
        except EntityNotFoundError as error:
            raise CliError(str(error).replace(MISSING_OK_HINT, "use --missing-ok to delete the others")) from None
    deleted = result["deleted"].get(entity, 0)
    for key in result["not_found"].get(entity, []):
        click.echo(f"warning: {result['name']!r} holds no {entity} with the key {_key_arg(key)}", err=True)
    if deleted:
        click.echo(f"deleted {counts_text(manager, {entity: deleted})} from {result['name']!r} "
                   f"(version {result['version']}; {entities_text(result['entity_count'])} left)")
    else:
        click.echo(f"nothing deleted from {result['name']!r}")


def _cli_key(text: str, fields: tuple) -> Any:
    """A KEY argument as a key value: text for a text column, else its JSON
    value when it has one (42, 1.5, true); a JSON array for a composite key."""
    if len(fields) > 1:
        try:
            value = parse_exact(text)
        except ValueError:
            value = None
        if not isinstance(value, list):
            names = ", ".join(f.dotted for f in fields)
            raise click.UsageError(f"the key of this type has {len(fields)} parts ({names}): give each KEY as a "
                                   f"JSON array, like '[\"CLM-1\", 2]' (got {text!r})")
        return value
    if fields[0].type.family in ("varchar", "date", "timestamp"):
        return text
    try:
        return parse_exact(text)
    except ValueError:
        return text  # the library says why it does not fit


def _key_arg(key: Any) -> str:
    return json.dumps(key, ensure_ascii=False, default=str) if isinstance(key, list) else str(key)


@cli.command()
@click.argument("name_or_id")
@click.option("--output", "-o", metavar="PATH", help="A file (json; - is stdout) or directory (parquet). Default: a name "
                                     "made from the scenario's, in the current directory.")
@click.option("--format", "fmt", type=click.Choice(["json", "parquet", "fhir", "fhir-bundle"]), default="json",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing file, or a previous Parquet or FHIR export.")
@click.option("--history", "with_history", is_flag=True,
              help="JSON with every kept version (numbers, operations, times, metadata, entities); "
                   "`import` reads it back.")
@click.option("--type", "entity_types", multiple=True, metavar="TYPE",
              help="FHIR: only the resources of this entity type (repeat for more).")
@click.option("--since-version", type=click.IntRange(min=1), metavar="N",
              help="FHIR: only resources added or changed after version N; the removed ones in the manifest's "
                   "`deleted`.")
@click.option("--validate", is_flag=True, help="FHIR: check every resource written against the R4 JSON Schema.")
@click.option("--schema", "schema_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="FHIR: the R4 JSON Schema (fhir.schema.json) for --validate; default: the cached copy.")
@version_option
@db_option
def export(name_or_id: str, output: str | None, fmt: str, force: bool, with_history: bool, entity_types: tuple[str, ...],
           since_version: int | None, validate: bool, schema_file: str | None, version: int | None,
           db: str | None) -> None:
    """Export a scenario: versioned JSON (lossless), a Parquet directory (typed columns),
    or FHIR R4 (--format fhir: Bulk Data NDJSON and manifest.json; --format fhir-bundle:
    one transaction Bundle per patient, ready to POST to a FHIR server).

    With --history the JSON holds every kept version of the scenario (format
    healthsim-scenario-history: each entity once, with the versions that hold
    it); `import` makes the scenario again with that whole history.
    """
    from .interop.files import write_atomic
    from .interop.json_io import STDIN, dumps, export_document, json_target
    from .interop.parquet import export_parquet

    fhir_only = [flag for flag, given in (("--type", entity_types), ("--since-version", since_version),
                                          ("--validate", validate), ("--schema", schema_file)) if given]
    if fhir_only and not fmt.startswith("fhir"):
        raise click.UsageError(f"{', '.join(fhir_only)} {'is' if len(fhir_only) == 1 else 'are'} for --format fhir "
                               "or fhir-bundle")
    if schema_file and not validate:
        raise click.UsageError("--schema goes with --validate")
    if fmt.startswith("fhir"):
        if output == STDIN or with_history:
            raise click.UsageError("--format fhir writes a directory: no -o - (stdout), no --history")
        _export_fhir(name_or_id, output, fmt == "fhir-bundle", force, list(entity_types) or None, since_version,
                     version, schema_file if validate else None, validate, db)
        return
    if fmt == "parquet" and output == STDIN:
        raise click.UsageError("-o - (stdout) is for --format json; Parquet needs a directory")
    if with_history and (fmt != "json" or version is not None):
        raise click.UsageError("--history is for the JSON export of every version (not with --format parquet "
                               "or --version)")
    with _reader(db) as manager:
        if fmt == "json":
            with progress(1, "exporting") as report:
                document = export_document(manager, name_or_id, version=version, history=with_history)
                text = dumps(document)
                report.advance()
            count = sum(len(items) for items in document["entities"].values()) if not with_history else \
                sum(1 for items in document["entities"].values() for item in items if item["until"] is None)
            kept = f", {len(document['versions'])} versions" if with_history else ""
            if output == STDIN:
                click.echo(text, nl=False)
                return
            target = write_atomic(json_target(document["name"], output), json_bytes(text), force=force)
            click.echo(f"exported {document['name']!r} ({entities_text(count)}{kept}) to {target}")
            return
        summary = manager.scenario_info(name_or_id, version=version)
        types = sum(1 for count in summary["entity_counts"].values() if count)
        with progress(types, "writing Parquet") as report:
            result = export_parquet(manager, summary["scenario_id"], output, force=force, version=version,
                                    progress=lambda entity, done, total: report.advance())
    click.echo(f"exported {summary['name']!r} ({entities_text(summary['entity_count'])}) to {result.directory}/: "
               f"{counted(len(result.files), 'Parquet file')} and manifest.json")


def _export_fhir(name_or_id: str, output: str | None, bundles: bool, force: bool, entity_types: list[str] | None,
                 since_version: int | None, version: int | None, schema_file: str | None, validate: bool,
                 db: str | None) -> None:
    from .interop.files import default_target as default_file_target

    with _reader(db) as manager:
        summary = manager.scenario_info(name_or_id, version=version)
        target = Path(output) if output else default_file_target(".", summary["name"], "-fhir")
        with progress(1, "writing FHIR") as report:
            manifest = manager.export_fhir(summary["scenario_id"], target, bundles=bundles,
                                           since_version=since_version, version=version,
                                           entity_types=entity_types, force=force)
            report.advance()
    count = sum(item["count"] for item in manifest["output"])
    files = len(manifest["output"])
    what = f"{counted(count, 'entry', 'entries')} in {counted(files, 'transaction Bundle')}" if bundles else \
        f"{counted(count, 'resource')} in {counted(files, 'NDJSON file')}"
    gone = sum(item["count"] for item in manifest["deleted"])
    deleted = f", {counted(gone, 'Bundle')} of deletions" if gone else ""
    click.echo(f"exported {summary['name']!r} (version {summary['version']}) to {target}/: {what}{deleted} "
               "and manifest.json")
    _say_unresolved(manifest["extension"].get("unresolved") or [], target)
    if validate:
        from .fhir.export import validate_export
        checked, problems = validate_export(target, schema_file)
        for problem in problems[:20]:
            click.echo(f"invalid: {problem}", err=True)
        if problems:
            raise CliError(f"{counted(len(problems), 'problem')} found: not valid FHIR R4 "
                           f"(the files are written, in {target})")
        click.echo(f"validated {counted(checked, 'resource')} against the FHIR R4 JSON Schema: all valid")


def _say_unresolved(unresolved: list[dict], target: Path, shown: int = 20) -> None:
    """The references of a Bundle export that no entry and no resource of the
    export answers (kept as they came): on stderr, the first ``shown`` of them."""
    if not unresolved:
        return
    verb = "names" if len(unresolved) == 1 else "name"
    click.echo(f"{counted(len(unresolved), 'reference')} {verb} no resource of this export, kept as written (a "
               f"server resolves such a reference only if it holds its target; all in {target}/manifest.json, "
               "extension.unresolved):", err=True)
    for item in unresolved[:shown]:
        click.echo(f"  {item['url']}: {item['resource']} @ {item['element']}: {item['reference']}", err=True)
    if len(unresolved) > shown:
        click.echo(f"  ... and {len(unresolved) - shown} more", err=True)


# --- versions -----------------------------------------------------------------------------

@cli.command()
@click.argument("name_or_id")
@click.option("--json", "as_json", is_flag=True, help="Machine output: a JSON array, newest first.")
@db_option
def history(name_or_id: str, as_json: bool, db: str | None) -> None:
    """The versions of a scenario, newest first: what each write did and when.

    Every save, overwrite, add, restore, update and entity delete makes a version;
    `load --version N`, `show --version N`, `export --version N`, `diff` and
    `restore` take these numbers.
    """
    with _reader(db) as manager:
        versions = manager.scenario_history(name_or_id)
    if as_json:
        print_json(versions)
        return
    tty = _tty(sys.stdout)
    print_table(["version", "operation", "at", "entities", "changes", "metadata"],
                [(v["version"], v["operation"], _when(v["at"]) if tty else v["at"].isoformat(), v["entity_count"],
                  _changes_text(v["changes"]), json.dumps(v["metadata"], ensure_ascii=False) if v["metadata"] else "")
                 for v in versions], right=[0, 3])


def _changes_text(changes: dict[str, dict[str, int]]) -> str:
    """``patient +2 ~1 -0; claim +5`` (added, changed, removed)."""
    parts = []
    for entity, change in changes.items():
        marks = [f"{sign}{change[kind]}" for sign, kind in (("+", "added"), ("~", "changed"), ("-", "removed"))
                 if change.get(kind)]
        parts.append(f"{entity} {' '.join(marks)}")
    return "; ".join(parts)


@cli.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--a-version", type=click.IntRange(min=1), metavar="N", help="Version N of A (default: its newest).")
@click.option("--b-version", type=click.IntRange(min=1), metavar="N", help="Version N of B (default: its newest).")
@click.option("--type", "entity_types", multiple=True, metavar="TYPE", help="Only this entity type (repeat for more).")
@click.option("--json", "as_json", is_flag=True, help="Machine output: a JSON object per entity type.")
@db_option
def diff(a: str, b: str | None, a_version: int | None, b_version: int | None, entity_types: tuple[str, ...],
         as_json: bool, db: str | None) -> None:
    """What changed from scenario A to scenario B, or between two versions of A.

    Entities are matched by their key: + added, - removed, ~ changed (with the
    canonical paths that differ), under a --- and +++ line naming the two sides.
    `diff NAME` alone compares its version before the newest with the newest;
    `diff NAME --a-version 3` compares version 3 with the newest.
    """
    with _reader(db) as manager:
        left, right = _diff_sides(manager, a, b, a_version, b_version)
        differences = manager.diff_scenarios(left["scenario_id"], right["scenario_id"], a_version=left["version"],
                                             b_version=right["version"], entity_types=list(entity_types) or None)
    if as_json:
        print_json(differences)
        return
    if not differences:
        click.echo(f"no differences between {_side(left)} and {_side(right)}")
        return
    click.echo(f"--- {_side(left)}\n+++ {_side(right)}")
    styled = _tty(sys.stdout)
    for entity, change in differences.items():
        click.echo(f"{entity}: {len(change['added'])} added, {len(change['removed'])} removed, "
                   f"{len(change['changed'])} changed")
        for sign, colour, keys in (("+", "green", change["added"]), ("-", "red", change["removed"])):
            for key in keys:
                click.echo(click.style(f"  {sign} {_key_text(key)}", fg=colour if styled else None))
        for item in change["changed"]:
            click.echo(click.style(f"  ~ {_key_text(item['key'])}: {', '.join(item['paths'])}",
                                   fg="yellow" if styled else None))


def _diff_sides(manager: StateManager, a: str, b: str | None, a_version: int | None,
                b_version: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two scenario versions a diff compares. A alone, with no version,
    is its version before the newest against the newest (as `git show` does
    with a commit): comparing the newest with itself would say nothing."""
    right = manager.scenario_info(a if b is None else b, version=b_version)
    if b is None and a_version is None and b_version is None:
        if right["version"] == 1:
            raise CliError(f"scenario {right['name']!r} has one version only: nothing to compare it with; "
                           "give B, another scenario")
        try:
            return manager.scenario_info(a, version=right["version"] - 1), right
        except VersionNotFoundError:
            raise CliError(f"scenario {right['name']!r} keeps no version before its newest ({right['version']}): "
                           "give B, another scenario") from None
    return manager.scenario_info(a, version=a_version), right


def _side(info: dict[str, Any]) -> str:
    return f"{info['name']!r} version {info['version']}"


def _key_text(key: Any) -> str:
    return ", ".join(map(str, key)) if isinstance(key, list) else str(key)


@cli.command()
@click.argument("name_or_id")
@click.argument("version", type=click.IntRange(min=1), metavar="N")
@db_option
def restore(name_or_id: str, version: int, db: str | None) -> None:
    """Make version N the scenario's newest again (as a new version: history is
    kept, so a restore can itself be undone). Nothing is written when the
    scenario already is what version N holds."""
    with _reader(db) as reader:
        reader.scenario_info(name_or_id, version=version)  # a missing store is an error, and is not created
        before = reader.scenario_info(name_or_id)
    with _manager(db) as manager:
        info = manager.restore_scenario(name_or_id, version)
    if info["version"] == before["version"]:
        same = "is its newest" if version == info["version"] else f"holds the same as its newest, {info['version']}"
        click.echo(f"{info['name']!r} unchanged: version {version} {same}")
        return
    click.echo(f"restored {info['name']!r} to version {version}: now version {info['version']} "
               f"({entities_text(info['entity_count'])})")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--keep", type=click.IntRange(min=1), required=True, metavar="N", help="Keep the N newest versions.")
@click.option("--all", "every", is_flag=True, help="Every scenario in the store.")
@db_option
def prune(names: tuple[str, ...], keep: int, every: bool, db: str | None) -> None:
    """Drop the older versions of scenarios, keeping the N newest of each (--keep N)."""
    if bool(names) == every:
        raise click.UsageError("name the scenarios, or give --all")
    with _reader(db) as reader:
        reader.scenario_exists("")  # a missing store is an error, and is not created
    with _manager(db) as manager:
        targets = [s["scenario_id"] for s in manager.list_scenarios(limit=None)] if every else list(names)
        dropped = sum(manager.prune_history(target, keep) for target in targets)
    click.echo(f"dropped {counted(dropped, 'version')} from {counted(len(targets), 'scenario')}")


@cli.command()
@db_option
def compact(db: str | None) -> None:
    """Give back unused space: rewrite a DuckDB file compactly (every version
    is kept). A DuckDB file keeps the space of replaced rows and pruned
    versions for reuse and never shrinks by itself."""
    with _reader(db) as reader:
        reader.scenario_exists("")  # a missing store is an error, and is not created
    with _manager(db) as manager:
        sizes = manager.compact()
    click.echo(f"compacted {manager.label}: {sizes['bytes_before']:,} -> {sizes['bytes_after']:,} bytes")


@cli.command(name="history-limit")
@click.argument("keep", required=False)
@db_option
def history_limit(keep: str | None, db: str | None) -> None:
    """Show, or set, how many versions every scenario keeps from now on
    (a number, or `all` to keep every version)."""
    if keep is None:
        with _reader(db) as manager:
            limit = manager.history_limit
        click.echo("every version is kept" if limit is None else f"each scenario keeps its {limit} newest versions")
        return
    if keep != "all" and not (keep.isdigit() and int(keep) >= 1):
        raise click.UsageError(f"KEEP is a positive number or 'all', not {keep!r}")
    with _manager(db) as manager:
        manager.set_history_limit(None if keep == "all" else int(keep))
    click.echo("every version is kept" if keep == "all" else f"each scenario keeps its {keep} newest versions")


@cli.command(name="import")
@click.argument("files", nargs=-1, required=True)
@click.option("--name", "-n", metavar="NAME",
              help="The scenario's name (one FILE only). Default: the file's, else its file name.")
@click.option("--overwrite", is_flag=True, help="Replace scenarios of the same names.")
@db_option
def import_command(files: tuple[str, ...], name: str | None, overwrite: bool, db: str | None) -> None:
    """Import each JSON FILE as one scenario (- is stdin).

    Reads our export (with --history too: the scenario comes back with every
    version), the predecessor's export, old workspace files, and bare
    entity lists ({"patients": [...], ...}). Each file is saved in its own
    transaction; a bad file changes nothing and the others still go in.
    """
    from .interop.json_io import read_document, scenario_name

    if name is not None and len(files) > 1:
        raise click.UsageError("--name needs exactly one FILE (each file becomes its own scenario)")
    failed = 0
    with _manager(db) as manager, progress(len(files), "importing") as report:
        for index, file in enumerate(files):
            try:
                document = read_document(file)
                scenario = scenario_name(document, file, name)
                label = f"importing {scenario}" + (f" ({index + 1}/{len(files)} files)" if len(files) > 1 else "")
                report.set(0, sum(document.counts.values()), label)  # the bar moves by entities
                result = _save(manager, document, scenario, overwrite=overwrite,
                               progress=lambda done, total: report.set(done, total))
            except (HealthSimError, OSError, click.ClickException) as error:
                if _debug():
                    raise
                failed += 1
                message = error.message if isinstance(error, click.ClickException) else describe_error(error)
                report.line(f"error: {message}", err=True)
            else:
                report.line(f"{scenario!r} unchanged ({result.scenario_id}): it already holds what {result.source} "
                            "holds" if result.unchanged else
                            f"{'replaced' if result.replaced else 'imported'} {result.source} as {scenario!r} "
                            f"({result.scenario_id}): {counts_text(manager, result.counts)}")
    if len(files) > 1:
        click.echo(f"{len(files)} files: {len(files) - failed} imported, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)


@cli.command(name="import-fhir")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--name", "-n", required=True, metavar="NAME", help="The scenario's name.")
@click.option("--overwrite", is_flag=True, help="Replace a scenario of the same name (as a new version).")
@click.option("--json", "as_json", is_flag=True, help="Machine output: the report as a JSON object.")
@db_option
def import_fhir(paths: tuple[str, ...], name: str, overwrite: bool, as_json: bool, db: str | None) -> None:
    """Import FHIR R4 as one scenario: Bundles (transaction, batch, collection,
    searchset), NDJSON files, or directories of them (a Bulk Data export, a
    folder of Synthea's per-patient Bundles).

    Every PATH goes into the one scenario, in one transaction. Resources the
    mappings declare become entities (Patient -> patient, Condition ->
    diagnosis, ...); any other resource is kept whole as a fhir_resource and
    exported again unchanged. Bad input (not JSON, not valid R4, an id given
    twice, a reference cycle) is an error naming the file and the resource,
    and nothing is saved.
    """
    with _manager(db) as manager:
        report = manager.import_fhir(list(paths), name, overwrite=overwrite)
        if as_json:
            print_json(report.as_dict())
            return
        read = sum(report.read.values())
        click.echo(f"imported {counted(read, 'resource')} from "
                   f"{counted(report.files, 'file')} as {name!r} ({report.scenario_id})")
        print_table(["resource type", "read", "kept as is"],
                    [(kind, count, report.kept.get(kind, 0)) for kind, count in report.read.items()], right=[1, 2])
        click.echo(f"entities made: {counts_text(manager, report.made)}")


@cli.command()
@click.option("--from", "directories", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A directory of legacy JSON files (repeat for more). Default: ~/.healthsim/scenarios "
                   "and ~/.healthsim/workspaces.")
@click.option("--dry-run", is_flag=True, help="Only list what would be done; change nothing.")
@click.option("--overwrite", is_flag=True, help="Replace scenarios of the same names, even if already migrated.")
@click.option("--json", "as_json", is_flag=True, help="Machine output: one JSON object with every file.")
@db_option
def migrate(directories: tuple[Path, ...], dry_run: bool, overwrite: bool, as_json: bool, db: str | None) -> None:
    """Import the JSON files of earlier HealthSim versions, one scenario a file.

    Originals are never changed. Rerunning skips files already migrated with
    the same content (scenarios carry the tag migrated:sha256:<hash>).
    Exits 1 if any file failed.
    """
    from .interop import legacy

    searched = list(directories) or legacy.legacy_directories()
    files = legacy.find_legacy_files(searched)
    results: list[legacy.MigrationResult] = []
    if files:
        with progress(len(files), "migrating" if not dry_run else "checking") as report:
            registry = None
            for result in legacy.migrate(files, _target(db), dry_run=dry_run, overwrite=overwrite):
                results.append(result)
                if not as_json:
                    registry = registry or _reader(db).registry
                    report.line(_migration_line(result, registry))
                report.advance()
    summary = legacy.summarize(results)
    if as_json:
        print_json({"dry_run": dry_run, "files": [r.as_dict() for r in results], "summary": summary})
    elif not files:
        click.echo("no legacy scenario files in " + ", ".join(str(d) for d in searched))
    else:
        verb = "would be migrated" if dry_run else "migrated"
        click.echo(f"{counted(len(files), 'file')}: {summary['migrated']} {verb}, "
                   f"{summary['skipped']} skipped, {summary['failed']} failed"
                   + ("; dry run, nothing was changed" if dry_run else ""))
    if summary["failed"]:
        raise CliError(f"{summary['failed']} of {len(files)} files could not be migrated")


def _migration_line(result: legacy.MigrationResult, registry: Any) -> str:
    status = {"migrated": "would migrate" if result.dry_run else ("replaced" if result.replaced else "migrated"),
              "skipped": "skipped", "failed": "failed"}[result.status]
    if result.dry_run and result.status == "migrated" and result.replaced:
        status = "would replace"
    text = f"{status:<13} {result.path}"
    if result.name is not None:
        text += f" -> {result.name!r}"
    if result.status == "failed":
        return f"{text}: {result.reason}"
    text += f" ({counts_text(registry, result.counts)})"
    return f"{text}: {result.reason}" if result.reason else text


@cli.command()
@click.argument("entity", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine output: the mapping description(s).")
@db_option
def types(entity: str | None, as_json: bool, db: str | None) -> None:
    """The entity types in force in the store; for one ENTITY, its fields:
    column, path, type, aliases, default.

    The store's own mappings are in force (for a store not made yet: the
    mapping files'). What the local mapping files (built-in and
    $HEALTHSIM_MAPPINGS) would change is marked: additions are applied the
    next time a command writes; other changes wait for migrate-schema.
    """
    with _reader(db) as manager:
        try:
            manager.scenario_exists("")
        except StoreNotFoundError as error:  # still useful: the types a first save would make
            click.echo(f"warning: {error}: these are the mapping files' types", err=True)
        registry = manager.registry
        local = manager.mapping_changes()
    described = [codec.mapping.describe() for codec in registry.codecs.values()]
    for item in described:
        item["local_changes"] = local.get(item["entity"], {"additions": [], "pending": [], "absent": []})
    if entity is not None:
        (name,) = registry.entity_names([entity])
        described = [item for item in described if item["entity"] == name]
    if as_json:
        print_json(described if entity is None else described[0])
        return
    if entity is None:
        print_table(["entity", "plural", "table", "fields", "local files", "description"],
                    [(d["entity"], d["plural"], d["table"], len(d["fields"]), _local_mark(d["local_changes"]),
                      d["description"] or "") for d in described], right=[3])
    else:
        item = described[0]
        title = (f"{item['entity']} (plural {item['plural']}, table {item['table']}, key "
                 f"{', '.join(item['primary_key'])})" + (f": {item['description']}" if item["description"] else ""))
        if not _tty(sys.stdout):
            click.echo(f"# {title}")
        print_table(["column", "path", "type", "aliases", "default"],
                    [(f["column"], f["path"], f["type"] + (" required" if f["required"] else ""),
                      ", ".join(f["aliases"]), _cell(f.get("default"))) for f in item["fields"]],
                    title=title)
    for item in described:
        for kind, note in (("additions", "applied at the next write"),
                           ("pending", "apply with healthsim-state migrate-schema"),
                           ("absent", "not in your files: kept; migrate-schema would remove it")):
            for line in item["local_changes"][kind]:
                click.echo(f"{item['entity']}: local files: {line} ({note})", err=True)


def _local_mark(changes: dict[str, list[str]]) -> str:
    parts = []
    if changes["additions"]:
        parts.append(f"{len(changes['additions'])} to add")
    if changes["pending"]:
        parts.append(f"{len(changes['pending'])} pending")
    if changes["absent"]:
        parts.append(f"{len(changes['absent'])} not in files")
    return ", ".join(parts)


@cli.command()
@click.argument("query")
@click.option("--param", "-p", "params", multiple=True, metavar="[NAME=]VALUE",
              help="A value: NAME=VALUE for $NAME when the query names its placeholders, else VALUE for the "
                   "next ? (or $1, $2, ...). Repeat.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of row objects.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@db_option
def sql(query: str, params: tuple[str, ...], as_json: bool, as_csv: bool, db: str | None) -> None:
    """Run one read-only SELECT over the scenario tables.

    Tables: scenarios, scenario_tags, and one per entity type (patients,
    encounters, ...: see `types`), each with scenario_id, _position and its
    typed columns. The file is opened read-only; other files are out of reach.
    Values go in as parameters: -p VALUE for each ? (or $1, $2, ...), or
    -p NAME=VALUE for each $NAME.
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    from .interop.query import records, run_query

    result = run_query(_target(db), query, _query_params(query, params))
    if as_json:
        print_json(records(result, exact=True))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_cell(value) for value in row] for row in result.rows)
    else:
        print_table(result.columns, result.rows)


def _query_params(query: str, params: tuple[str, ...]) -> list[str] | dict[str, str]:
    """The -p values as the query takes them: by name (each NAME=VALUE) when
    it names its placeholders ($s), else in order, each value whole."""
    from .backends.sqltext import placeholder_names

    names = placeholder_names(query)
    if not names:
        return list(params)
    named: dict[str, str] = {}
    for item in params:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise click.UsageError(f"the query takes values by name ({', '.join('$' + n for n in names)}): "
                                   f"give each as -p NAME=VALUE (not {item!r})")
        if name in named:
            raise click.UsageError(f"-p {name}= is given twice")
        named[name] = value
    return named


@cli.command(name="copy")
@click.argument("names", nargs=-1, metavar="NAME_OR_ID...")
@click.option("--from", "source", required=True, metavar="PATH_OR_URL",
              help="The store to copy from (a DuckDB file or a postgresql:// URL); opened read-only.")
@click.option("--to", "target", required=True, metavar="PATH_OR_URL",
              help="The store to copy to; created if it does not exist.")
@click.option("--overwrite", is_flag=True, help="Replace scenarios of the same names in the target.")
@click.option("--all", "everything", is_flag=True, help="Copy every scenario of the source.")
@click.option("--history", "with_history", is_flag=True,
              help="Copy every kept version (numbers, operations, times, metadata), not only the newest.")
def copy_command(names: tuple[str, ...], source: str, target: str, overwrite: bool, everything: bool,
                 with_history: bool) -> None:
    """Copy scenarios between stores (file to server, server to file, file to file).

    Each scenario is copied in one transaction on the target, with its name,
    description, tags, created_at, the metadata of its newest version and
    every entity exactly, as a new version; its version history stays in the
    source. With --history every kept version goes too, as it was (numbers,
    operations, times, descriptions, tags, metadata, entities), and
    --overwrite replaces the target's scenario with its versions. A scenario
    that exists in the target is refused unless --overwrite. Exits 1 if any failed.
    """
    from .backends import describe_target
    from .interop.copy import iter_copies

    if everything == bool(names):
        raise click.UsageError("name the scenarios to copy, or give --all (not both)")
    source, target = _target(source), _target(target)
    with _reader(source) as reader:  # a missing source is an error naming it; the total for the bar
        total = sum(s["entity_count"] for s in reader.list_scenarios(limit=None)) if everything else \
            sum(_count_or_zero(reader, name) for name in names)
    shown_to, copied, failed = describe_target(target), 0, 0
    with progress(total, "copying") as report:
        state = {"done": 0}

        def advanced(name: str, done: int, _total: int) -> None:
            report.advance(done - state["done"])
            state["done"] = done

        for result in iter_copies(source, target, names, all=everything, overwrite=overwrite, keep_going=True,
                                  progress=advanced, history=with_history):
            if result.ok and result.unchanged:
                copied += 1
                report.line(f"{result.name!r} unchanged in {shown_to}: it holds the same already")
            elif result.ok:
                copied += 1
                verb = "replaced" if result.replaced else "copied"
                kept = ", every version" if with_history else ""
                report.line(f"{verb} {result.name!r} ({entities_text(result.entity_count)}{kept}) to {shown_to}")
            else:
                failed += 1
                report.line(f"error: {_scrubbed(result.error or '')}", err=True)
    if copied + failed > 1:
        click.echo(f"{copied + failed} scenarios: {copied} copied, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)


def _count_or_zero(reader: StateManager, name: str) -> int:
    try:
        return reader.scenario_info(name)["entity_count"]
    except HealthSimError:
        return 0


@cli.command(name="migrate-schema")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine output: a JSON object.")
@db_option
def migrate_schema(dry_run: bool, as_json: bool, db: str | None) -> None:
    """Apply the local mapping files' changes to the store's mappings in force.

    Additions (a type, a field, an alias) are applied whenever a client opens
    the store for writing; everything else (a field removed, renamed, retyped
    or moved, a key or default changed) waits for this command. Stored data is
    never lost: an edit that does not fit the data changes nothing and lists
    what blocks it. --dry-run makes every check and writes nothing.
    """
    target = _target(db)
    if dry_run:
        report = plan_schema_changes(target)
    else:
        with _reader(db) as reader:
            reader.scenario_exists("")  # a missing store is an error, and is not created
        with StateManager(target, evolve=True) as manager:
            report = manager.schema_report or plan_schema_changes(target)
    if as_json:
        print_json({"applied": report.applied, "tables": [vars(t) for t in report.tables]})
        return
    prefix = "would change" if dry_run else "changed"
    click.echo(f"{prefix}:" if report.changed else "the tables already follow the mappings")
    if report.changed:
        for line in report.lines():
            click.echo(f"  {line}")


@cli.command(name="mcp")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio for a client that starts the server; http for streamable HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="HOST", help="Address to listen on (http).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, metavar="PORT",
              help="Port to listen on (http).")
@click.option("--keep-open", type=click.FloatRange(0, 3600), default=1.0, show_default=True, metavar="S",
              help="Keep a DuckDB file open S seconds after a call, so a burst of calls skips DuckDB's start "
                   "(other processes wait for the file meanwhile); 0 closes it after each call.")
@db_option
def mcp_command(transport: str, host: str, port: int, keep_open: float, db: str | None) -> None:
    """Serve the scenarios to an AI assistant: an MCP server with the scenario tools.

    Needs the mcp extra: pip install 'healthsim-state[mcp]'. The database file
    is open while a tool call runs and --keep-open seconds after, so other
    processes can use it while the server is idle.
    """
    try:
        from .mcp_server import serve
    except ModuleNotFoundError as error:
        if error.name != "mcp" and not (error.name or "").startswith("mcp."):
            raise
        raise CliError("the MCP server needs the mcp extra: pip install 'healthsim-state[mcp]'") from None
    serve(_target(db), transport, host, port, keep_open)


def main(argv: list[str] | None = None) -> None:
    """The program (``argv`` None: the process's own arguments, as the
    console script runs it)."""
    try:
        cli.main(args=argv, prog_name="healthsim-state")
    finally:
        if argv is None:
            _spare_the_last_collections()


def _spare_the_last_collections() -> None:
    """The process is ending: its last garbage collections would visit every
    object of every module loaded (DuckDB's, click's, ours), a fifth of a small
    command's time, only to free memory the system takes back. Frozen, they are
    skipped. Nothing is left to them: every store is closed by then (each
    operation closes its connection; kept instances go by ``atexit``, which
    still runs, as do the flushing of the output and the modules' teardown)."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    main()
