"""The checks of the public API's arguments: each raises
:class:`ValidationError` naming every problem (with the argument's path),
before a transaction begins."""

from __future__ import annotations

from typing import Any, Iterable, NoReturn

from .column_types import TYPES, HeldText, Unfit
from .engine.batch import key_function
from .engine.compile import Codec
from .engine.registry import Registry
from .errors import Problem, ValidationError, preview
from .store import Scenarios
from .values import NotJSON, dump_exact, is_text, to_json

MAX_NAME = 200
MAX_TAG = 100
MAX_TAGS = 100
MAX_DESCRIPTION = 10_000
MAX_METADATA = 64_000  # characters of JSON text


def _check_text(value: Any, label: str, path: str, *, limit: int, problems: list[Problem]) -> None:
    if not is_text(value):
        problems.append(Problem(f"the {label} holds a lone surrogate, which is not valid Unicode text",
                                path=path, value=value))
    elif "\x00" in value:
        problems.append(Problem(f"the {label} holds a NUL character, which no store keeps in text", path=path,
                                value=value))
    elif len(value) > limit:
        problems.append(Problem(f"the {label} is {len(value)} characters long; at most {limit} are allowed",
                                path=path))


def check_arguments(name: Any, description: Any, summary: str = "scenario not saved", *,
                     check_name: bool = True) -> None:
    problems: list[Problem] = []
    if not check_name:
        pass
    elif not isinstance(name, str) or not name:
        problems.append(Problem(f"the scenario name must be a non-empty string, got {name!r}", path="name"))
    else:
        _check_text(name, "scenario name", "name", limit=MAX_NAME, problems=problems)
    if description is not None and not isinstance(description, str):
        problems.append(Problem(f"description must be a string or None, got {type(description).__name__}",
                                path="description"))
    elif description is not None:
        _check_text(description, "description", "description", limit=MAX_DESCRIPTION, problems=problems)
    if problems:
        raise ValidationError(problems, summary=summary)


def check_not_an_id(scenarios: Scenarios, name: str, summary: str = "scenario not saved",
                    own_id: str | None = None) -> None:
    """A name may not be a scenario's id: lookups could not tell them apart."""
    if scenarios.id_in_use(name):
        refuse_id_as_name(name, summary, own_id)


def refuse_id_as_name(name: str, summary: str = "scenario not saved", own_id: str | None = None) -> NoReturn:
    """Raise what :func:`check_not_an_id` raises for a name found to be an id."""
    whose = "this scenario's own id" if name == own_id else "the id of another scenario"
    raise ValidationError([Problem(f"{name!r} is {whose}; a name may not be a scenario's id",
                                   path="name", value=name)], summary=summary)


def check_tags(tags: Any, *, path: str = "tags", summary: str = "scenario not saved") -> list[str]:
    """Tags in the order given, exact repeats dropped."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ValidationError([Problem(f"{path} must be a list of strings, got {type(tags).__name__}", path=path)],
                              summary=summary)
    result: list[str] = []
    problems: list[Problem] = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag:
            problems.append(Problem(f"a tag must be a non-empty string, got {tag!r}", path=f"{path}[{index}]"))
            continue
        _check_text(tag, "tag", f"{path}[{index}]", limit=MAX_TAG, problems=problems)
        if tag not in result:
            result.append(tag)
    if len(result) > MAX_TAGS:
        problems.append(Problem(f"{len(result)} tags; at most {MAX_TAGS} are allowed", path=path))
    if problems:
        raise ValidationError(problems, summary=summary)
    return result


def check_metadata(metadata: Any, summary: str = "scenario not saved") -> dict[str, Any] | None:
    """A JSON object, at most :data:`MAX_METADATA` characters as JSON."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ValidationError([Problem(f"metadata must be a JSON object (a dict), got {type(metadata).__name__}",
                                       path="metadata")], summary=summary)
    try:
        rendered = to_json(metadata)
    except NotJSON as error:
        raise ValidationError([Problem(str(error), path="metadata")], summary=summary) from None
    if len(dump_exact(rendered)) > MAX_METADATA:
        raise ValidationError([Problem(f"metadata is larger than {MAX_METADATA} characters of JSON", path="metadata")],
                              summary=summary)
    return rendered


def check_created_at(value: Any) -> Any:
    """``created_at`` as the store keeps it (naive UTC), or None."""
    if value is None:
        return None
    try:
        column, _ = TYPES["timestamp"].convert(value)
    except Unfit as reason:
        raise ValidationError([Problem(f"created_at: {reason}, got {preview(value)}", path="created_at",
                                       value=value)], summary="scenario not saved") from None
    return column


def key_requests(registry: Registry, keys: Any) -> list[tuple[Codec, list[tuple[Any, tuple]]]]:
    """Per type, ``(key as given, key-column values)`` for each distinct key
    of a :meth:`~healthsim_state.manager.StateManager.delete_entities` call; every problem at once."""
    problems: list[Problem] = []
    if not isinstance(keys, dict):
        raise ValidationError([Problem(f"keys must map an entity type to a list of keys, got {type(keys).__name__}",
                                       path="keys")], summary="nothing deleted")
    out: dict[str, tuple[Codec, list[tuple[Any, tuple]], set]] = {}
    for name, given in keys.items():
        codec = registry.resolve(name)
        if codec is None:
            problems.append(Problem(f"unknown entity type {preview(name)}; the types in force: "
                                    f"{', '.join(registry.entity_types)}", path=f"keys.{name}", value=name))
            continue
        if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
            problems.append(Problem(f"expected a list of keys, got {type(given).__name__}", path=f"keys.{name}"))
            continue
        entity, fields = codec.mapping.entity, codec.mapping.key_fields
        _, requests, seen = out.setdefault(entity, (codec, [], set()))
        key_of = key_function(codec)
        for index, key in enumerate(given):
            values = key_values(fields, key, f"keys.{name}[{index}]", problems)
            if values is not None and key_of(values) not in seen:
                seen.add(key_of(values))
                requests.append((key, values))
    if problems:
        raise ValidationError(problems, summary="nothing deleted")
    return [(codec, requests) for codec, requests, _ in out.values()]


def key_values(fields: tuple, key: Any, path: str, problems: list[Problem]) -> tuple | None:
    """The key-column values of one key, or None after adding a problem."""
    if len(fields) == 1:
        parts = [key]
    elif isinstance(key, (list, tuple)) and len(key) == len(fields):
        parts = list(key)
    else:
        names = ", ".join(f.dotted for f in fields)
        problems.append(Problem(f"the key has {len(fields)} parts ({names}): give a list of {len(fields)} values, "
                                f"got {preview(key)}", path=path, value=key))
        return None
    values = []
    for f, part in zip(fields, parts):
        try:
            if part is None:
                raise Unfit("a key may not be null")
            column, _ = f.type.convert(part)
        except (Unfit, HeldText) as reason:
            text = "a key cannot hold a NUL character" if isinstance(reason, HeldText) else str(reason)
            problems.append(Problem(f"{f.dotted}: {text}, got {preview(part)} (type {f.type.name})", path=path,
                                    value=part))
            return None
        values.append(column)
    return tuple(values)


def key_text(key: Any) -> str:
    return repr(key) if not isinstance(key, (list, tuple)) else "[" + ", ".join(map(repr, key)) + "]"


def check_version_number(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError([Problem(f"{label} must be a positive integer, got {value!r}", path=label)],
                              summary="invalid call")


def check_slice(limit: Any, offset: Any, what: str = "load_scenario") -> None:
    problems = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        problems.append(Problem(f"limit must be a non-negative integer or None, got {limit!r}", path="limit"))
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        problems.append(Problem(f"offset must be a non-negative integer, got {offset!r}", path="offset"))
    if problems:
        raise ValidationError(problems, summary=f"invalid {what} call")



def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationError([Problem(f"batch_size must be a positive integer, got {batch_size!r}",
                                       path="batch_size")], summary="invalid iter_entities call")


def check_filters(tag: Any, search: Any) -> None:
    """The filters of a list of scenarios: each a string or None."""
    for label, value in (("tag", tag), ("search", search)):
        if value is not None and not isinstance(value, str):
            raise ValidationError([Problem(f"{label} must be a string, got {type(value).__name__}", path=label)],
                                  summary="invalid list_scenarios call")


def check_history_versions(versions: list[dict[str, Any]], summary: str) -> None:
    """Each version record's description, tags and metadata, checked (tags
    and metadata replaced by their checked form); every problem at once."""
    problems: list[Problem] = []
    for index, version in enumerate(versions):
        try:
            check_arguments(None, version.get("description"), summary=summary, check_name=False)
            version["tags"] = check_tags(version.get("tags"), path=f"versions[{index}].tags", summary=summary)
            version["metadata"] = check_metadata(version.get("metadata"), summary=summary)
        except ValidationError as error:
            problems += [Problem(f"versions[{index}]: {p.message}", path=p.path) for p in error.problems]
    if problems:
        raise ValidationError(problems, summary=summary)
