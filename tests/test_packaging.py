"""pyproject.toml and environment.yml list the same dependencies; the layout of docs/design.md section 4 exists; every
reference to the design document resolves inside the repository."""

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


def test_every_design_reference_resolves_inside_the_repository():
    import re

    design = (ROOT / "docs/design.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, re.M)}
    files = [p for d in ("spell_lab", "tests", "analysis", "notebooks", "benchmarks") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".ipynb")] + [ROOT / "README.md"]
    cited, bare = set(), []
    for path in files:
        text = path.read_text()
        bare += [f"{path.name}: {m}" for m in re.findall(r"(?<![/\w])design\.md", text)]
        for nums in re.findall(r"docs/design\.md`? sections? (\d+(?: and \d+)?)", text):
            cited |= {int(n) for n in nums.split(" and ")}
    assert not bare, f"cite docs/design.md, the copy in the repository: {bare}"
    assert cited and cited <= sections, sorted(cited - sections)
