"""Type-check the installed package, `imgsearch`, with mypy: `python scripts/typecheck.py [MYPY ARGS]`.

The repository keeps the design's top-level folders and pyproject.toml maps each into the one
namespace (indexer/ is imgsearch.indexer, ...; [tool.setuptools.package-dir]). mypy knows no such
mapping, and the editable install's import hook is invisible to it, so this script builds the
installed layout as a tree of links to the sources (build/typecheck/imgsearch/..., rebuilt each
run from pyproject.toml, so a folder mapped there later is checked without a change here), runs
mypy on it with the settings of [tool.mypy], and reports each finding at the source file's own
path (indexer/store.py, not build/typecheck/imgsearch/indexer/store.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def package_folders(pyproject: dict) -> dict[str, Path]:
    """Each package of [tool.setuptools] --> its source folder, the way setuptools finds it: a
    package named in package-dir is there, any other is its parent's folder plus its last name."""
    setuptools = pyproject["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    folders: dict[str, Path] = {}
    for package in sorted(setuptools["packages"], key=lambda name: name.count(".")):
        if package in mapped:
            folders[package] = ROOT / mapped[package]
        elif "." in package:
            parent, _, last = package.rpartition(".")
            folders[package] = folders[parent] / last
        else:
            folders[package] = ROOT / mapped.get("", "") / package
    return folders


def build_tree(folders: dict[str, Path]) -> dict[str, str]:
    """Link every .py/.pyi file of each package into TREE at its installed place; returns
    link path --> source path, both relative to ROOT, for rewriting mypy's report."""
    shutil.rmtree(TREE, ignore_errors=True)
    links: dict[str, str] = {}
    for package, folder in folders.items():
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(folder.glob("*.py")) + sorted(folder.glob("*.pyi")):
            link = target / source.name
            link.symlink_to(source)
            links[str(link.relative_to(ROOT))] = str(source.relative_to(ROOT))
    return links


def main(argv: list[str]) -> int:
    with open(ROOT / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    folders = package_folders(pyproject)
    links = build_tree(folders)
    roots = sorted({package.partition(".")[0] for package in folders})
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *argv]
    command += [arg for root in roots for arg in ("-p", root)]
    env = {**os.environ, "MYPYPATH": str(TREE)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    for stream, text in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
        for line in text.splitlines(keepends=True):
            path, sep, rest = line.partition(":")
            stream.write(links.get(path, path) + sep + rest)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
