"""The test dependencies are installed: a test that needs one fails without it, and this says
which. (Tests skipped for a missing package would pass a run that tested less.)"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TEST_EXTRA = [Requirement(r) for r in
              tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]]


@pytest.mark.parametrize("requirement", TEST_EXTRA, ids=lambda r: r.name)
def test_test_dependency_is_installed(requirement):
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed: pip install -e '.[test]'")
    assert requirement.specifier.contains(installed, prereleases=True), \
        f"{requirement.name} {installed} does not satisfy {requirement}"
