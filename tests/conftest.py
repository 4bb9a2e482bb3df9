"""Shared fixtures, and the hypothesis profiles.

Profiles: ``ci`` (used when ``CI`` is set: few examples, keeps the suite short),
``dev`` (the default), ``soak`` (thousands of examples; run it on purpose with
``HYPOTHESIS_PROFILE=soak``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from healthsim_state import StateManager

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("soak", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

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
