"""The wheel's package list must name every package in the tree.

An editable install made before a package was added or removed keeps working locally, so a stale
list in pyproject.toml only shows up on a clean clone (CI). This test reads the list the way
setuptools does and compares it with the directories that hold an ``__init__.py``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]


def _directory_of(package: str, package_dir: dict[str, str]) -> Path:
    """The source directory setuptools maps a dotted package name to (longest mapped prefix wins)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def test_every_listed_package_exists():
    config = _setuptools_config()
    missing = [
        name for name in config["packages"]
        if not (_directory_of(name, config["package-dir"]) / "__init__.py").is_file()
    ]
    assert not missing, f"pyproject.toml lists packages with no directory: {missing}"


def test_every_package_in_the_tree_is_listed():
    config = _setuptools_config()
    listed = {_directory_of(name, config["package-dir"]).resolve() for name in config["packages"]}
    roots = {ROOT / directory for directory in config["package-dir"].values()}
    in_tree = {
        init.parent.resolve()
        for root in roots
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    unlisted = sorted(str(path.relative_to(ROOT)) for path in in_tree - listed)
    assert not unlisted, f"packages missing from pyproject.toml's list: {unlisted}"
