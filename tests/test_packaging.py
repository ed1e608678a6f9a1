"""pyproject.toml and environment.yml list the same dependencies; the layout of design.md section 4 exists."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(project["dependencies"])


def test_layout_and_ci_call_the_readme_test_command():
    for folder in ("spell_lab", "experiments", "analysis", "notebooks", "benchmarks", "tests"):
        assert (ROOT / folder).is_dir(), folder
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert test_command in readme
