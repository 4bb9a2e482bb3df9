"""Writing export files safely: names that stay where they are put, and
writes that either fully happen or leave the target as it was.

- :func:`safe_filename` turns any scenario name (``../../etc/passwd``, ``CON``,
  an empty string) into one plain file name: no separators, no leading dot.
- :func:`write_atomic` writes a temporary file in the target's directory and
  then moves it into place, so a reader never sees half a file; without
  ``force`` an existing file is never replaced, even one that appears while
  we write.
- :func:`replace_directory` does the same for a directory of files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from .errors import OutputExistsError

MAX_NAME = 100
_UNSAFE = re.compile(r"[^\w.+=@-]+")  # \w is Unicode-aware: letters and digits of any script stay
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def safe_filename(name: str, suffix: str = "") -> str:
    """A file name derived from ``name`` that is one plain path component.

    Every run of characters other than letters, digits, ``. _ - + = @`` becomes
    ``-`` (so ``/`` and ``\\`` never survive), leading dots and dashes go (no
    hidden files, no ``..``, no option-like names), the length is capped, and
    an empty result becomes ``scenario``.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = _UNSAFE.sub("-", text).strip(".-")
    text = re.sub(r"-{2,}", "-", text)[:MAX_NAME].rstrip(".-")
    if not text:
        text = "scenario"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text + suffix


def default_target(directory: str | os.PathLike, name: str, suffix: str) -> Path:
    """``directory / safe_filename(name, suffix)``, checked to be directly in ``directory``."""
    base = Path(directory)
    target = base / safe_filename(name, suffix)
    if target.parent != base or target.resolve().parent != base.resolve():  # belt and braces
        raise OutputExistsError(f"refusing the file name {target.name!r}: it would leave {base}")
    return target


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(2, "the directory does not exist", str(path.parent))


def _umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode an ordinary new file (or,
    with 0o777, directory) would get."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_atomic(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    Without ``force`` an existing ``path`` raises :class:`OutputExistsError`,
    and the final step links rather than renames, so a file that appears
    meanwhile is not replaced either.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force to replace it")
    _check_parent(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, _umask_mode())
        if force:
            os.replace(temp, path)
        else:
            _link_no_clobber(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def _link_no_clobber(temp: str, path: Path) -> None:
    try:
        os.link(temp, path)  # fails if path exists: no check-then-write race
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists; use --force to replace it") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise OutputExistsError(f"{path} already exists; use --force to replace it") from None
        os.replace(temp, path)


def new_work_directory(target: Path) -> Path:
    """A fresh hidden directory beside ``target`` to build its contents in."""
    _check_parent(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(work, _umask_mode(0o777))  # mkdtemp makes it private; the export is an ordinary directory
    return work


def is_replaceable_export(path: Path, marker: str) -> bool:
    """True for an empty directory or one holding our ``manifest.json`` with
    ``format == marker``: the only directories ``force`` may replace."""
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    try:
        manifest = json.loads((path / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == marker


def replace_directory(work: Path, target: Path, *, force: bool, marker: str) -> Path:
    """Move the finished directory ``work`` to ``target``.

    An existing ``target`` is replaced only with ``force`` and only if
    :func:`is_replaceable_export` says it is a previous export (never some
    other directory a mistyped ``-o`` points at). The old one is moved aside
    first and removed after, so ``target`` is never half written.
    """
    if target.exists() or target.is_symlink():
        check_directory_target(target, force=force, marker=marker)
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / "old")
        try:
            os.replace(work, target)
        except OSError:
            os.replace(aside / "old", target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(work, target)
    return target


def check_directory_target(target: Path, *, force: bool, marker: str) -> None:
    """Raise :class:`OutputExistsError` unless ``target`` is absent, or ``force``
    is given and it is a previous export."""
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        raise OutputExistsError(f"{target} already exists; use --force to replace it")
    if not is_replaceable_export(target, marker):
        raise OutputExistsError(f"refusing to replace {target}: it is not an empty directory or a "
                                "healthsim-state Parquet export")
