"""Shared fixtures, and the hypothesis profiles.

Profiles:

- ``ci``: the default, and what CI runs. Deterministic (``derandomize``: the
  same examples every run), so a submission never fails by chance, and sized
  to keep the whole suite within a few minutes.
- ``explore``: random examples, more of them. Chosen automatically when a seed
  is given (``python3 -m pytest --hypothesis-seed=$RANDOM tests/...``); run it
  before you stop, to look for what the fixed examples miss.
- ``soak``: thousands of random examples; run it on purpose with
  ``HYPOTHESIS_PROFILE=soak``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from healthsim_state import StateManager

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=_QUIET,
                          print_blob=True)
settings.register_profile("explore", max_examples=100, deadline=None, suppress_health_check=_QUIET,
                          print_blob=True)
settings.register_profile("soak", max_examples=2000, deadline=None, suppress_health_check=_QUIET,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")


def pytest_configure(config):
    """A seed on the command line means: explore with random examples."""
    if not os.environ.get("HYPOTHESIS_PROFILE") and config.getoption("hypothesis_seed", None) is not None:
        settings.load_profile("explore")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test touches the user's ~/.healthsim or inherits their settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HEALTHSIM_DB", raising=False)
    monkeypatch.delenv("HEALTHSIM_MAPPINGS", raising=False)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "test.duckdb"


@pytest.fixture
def sm(db_path):
    with StateManager(db_path) as manager:
        yield manager
