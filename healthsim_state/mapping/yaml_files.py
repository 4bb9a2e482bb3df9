"""PyYAML, imported on the first file read (a warm parsed-mapping cache reads none)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def yaml_parser() -> tuple[Any, Any]:
    """PyYAML's module and its fastest safe loader: libyaml's when PyYAML was
    built with it (pure-Python parsing is many times slower)."""
    import yaml

    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)
