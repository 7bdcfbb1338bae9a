"""The two install routes (pip + pyproject, conda + environment.yml) must agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {requirement_name(s): s for s in specs}


def conda_packages() -> dict[str, str]:
    """The conda dependencies of environment.yml, read without a YAML library."""
    text = (ROOT / "environment.yml").read_text()
    deps = text.split("dependencies:", 1)[1]
    found = {}
    for line in deps.splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)(.*)$", line)  # two spaces: not the pip: list
        if m and m.group(1) not in NOT_PACKAGES:
            found[CONDA_NAMES.get(m.group(1), m.group(1)).lower()] = m.group(1) + m.group(2)
    return found


def test_environment_yml_and_pyproject_list_the_same_packages():
    assert set(conda_packages()) == set(pyproject_packages())


def test_versions_are_ranges_not_pins():
    for spec in list(pyproject_packages().values()) + list(conda_packages().values()):
        assert "==" not in spec and re.search(r">=", spec), f"{spec!r} should be a version range"


def test_environment_yml_installs_the_course_package():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and re.search(r"- pip:\s*\n\s*- -e \.", text)
