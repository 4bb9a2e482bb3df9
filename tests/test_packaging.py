"""The wheel carries the built-in mappings and the JSON Schema, and an installed
copy finds them without a source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import healthsim_state, tempfile, os
from healthsim_state.mapping.loader import builtin_mapping_dir
from healthsim_state import StateManager
assert str(builtin_mapping_dir()).startswith(os.environ["TARGET"]), builtin_mapping_dir()
with StateManager(os.path.join(tempfile.mkdtemp(), "w.duckdb")) as sm:
    sm.save_scenario("w", {"patient": [{"patient_id": "p"}]})
    print(len(sm.entity_types), sm.load_scenario("w")["entities"]["patient"][0]["patient_id"])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    (found,) = out.glob("healthsim_state-*.whl")
    return found


def test_wheel_contains_mappings_and_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    mappings = {n for n in names if n.startswith("healthsim_state/mappings/") and n.endswith(".yaml")}
    assert len(mappings) == 15
    assert "healthsim_state/mapping/mapping.schema.json" in names


def test_installed_wheel_finds_its_mappings(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "TARGET": str(target)}
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["15", "p"]
