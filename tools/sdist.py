#!/usr/bin/env python3
"""The source release: what a sdist must hold, building it offline, checking it.

``python tools/sdist.py [--pytest-args ARGS] [--keep DIR]`` (.ci/sdist-check) builds the
sdist of this tree without the network (``python -m build --sdist --no-isolation`` on a
copy, so the tree gets no build outputs), fails on anything it lacks or should not
carry, unpacks it in a temporary directory and runs ``make test`` there: the tests of a
source release run from it alone. tests/test_release.py runs the same checks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent

REQUIRED = (
    ".ci", "COPYING", "MANIFEST.in", "Makefile", "README.md", "bench", "doc", "examples",
    "fixtures", "packaging", "pyproject.toml", "ruff.toml", "setup.cfg", "setup.py", "tests",
    "tools", "virtguests",
)
"""The top-level paths a sdist holds, each with every git-tracked file under it (MANIFEST.in
grafts them): what ``make test``, ``make lint``, ``make install`` and the docs need."""

LEFT_OUT = {".gitignore": "git's own file: a release is not a checkout"}
"""Tracked top-level paths a sdist leaves out, and why. Every other one is REQUIRED: a new
top-level directory fails the check until it is listed in one or the other."""

UNWANTED = re.compile(
    r"(^|/)(\.git|\.venv[^/]*|build|dist/.*\.(whl|tar\.gz)|__pycache__|\.hypothesis"
    r"|\.pytest_cache|\.mypy_cache|\.ruff_cache)(/|$)|\.py[co]$"
)
"""Build outputs, virtual environments, caches: never in a sdist."""

_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "*.egg-info", "__pycache__", "*.py[co]", ".hypothesis",
    ".pytest_cache", ".mypy_cache", ".ruff_cache",
)


def git_files(tree: Path) -> Optional[list[str]]:
    """The files git tracks in *tree* (relative paths), or None outside a git checkout."""
    if not (tree / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(tree), "ls-files", "-z"], capture_output=True,
                         check=True, timeout=60).stdout
    return sorted(name for name in out.decode().split("\0") if name)


def build_sdist(tree: Path, out: Path) -> Path:
    """Builds the sdist of *tree* into *out*, offline, from a copy without build outputs.

    --no-isolation: the build backend is the running Python's setuptools and wheel (the
    test extras; Debian's python3-setuptools and python3-wheel), nothing is downloaded.
    """
    source = out / "source"
    shutil.copytree(tree, source, ignore=_COPY_IGNORE, symlinks=True)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the sdist failed:\n{result.stdout}{result.stderr}")
    built = sorted(out.glob("*.tar.gz"))
    if len(built) != 1:
        raise RuntimeError(f"building the sdist left {len(built)} archives in {out}")
    return built[0]


def members(sdist: Path) -> list[str]:
    """The sdist's files, relative to its top directory (``virtguests-VERSION/``)."""
    with tarfile.open(sdist) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile() or m.issym()]
    return sorted(name.split("/", 1)[1] for name in names if "/" in name)


def problems(names: Iterable[str], tracked: Optional[list[str]]) -> list[str]:
    """What is wrong with a sdist holding *names*: a REQUIRED path absent, a tracked file
    under one missing, a tracked top-level path neither REQUIRED nor LEFT_OUT, anything
    UNWANTED. *tracked* None (no git checkout): only the first and last checks."""
    held = set(names)
    found: list[str] = []
    for top in REQUIRED:
        if top not in held and not any(name.startswith(top + "/") for name in held):
            found.append(f"missing: {top}")
    for name in tracked or []:
        top = name.split("/", 1)[0]
        if top in LEFT_OUT:
            continue
        if top not in REQUIRED:
            found.append(f"tracked but neither REQUIRED nor LEFT_OUT (tools/sdist.py): {top}")
        elif name not in held:
            found.append(f"missing: {name}")
    found.extend(f"unwanted: {name}" for name in sorted(held) if UNWANTED.search(name))
    return sorted(set(found))


def unpack(sdist: Path, dest: Path) -> Path:
    """Unpacks *sdist* into *dest*; returns its top directory."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise RuntimeError(f"{sdist}: unsafe member {member.name}")
        if hasattr(tarfile, "data_filter"):  # 3.12, and 3.9-3.11 security updates
            archive.extractall(dest, filter="data")
        else:
            archive.extractall(dest)
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise RuntimeError(f"{sdist}: expected one top directory, found {len(tops)}")
    return tops[0]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pytest-args", default="",
                        help="PYTEST_ARGS for make test in the unpacked tree (a subset)")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp dir")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="virtguests-sdist-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sdist = build_sdist(REPO, work / "out")
        names = members(sdist)
        tracked = git_files(REPO)
        if tracked is None:
            print(f"sdist-check: {REPO} is not a git checkout: tracked files not compared")
        found = problems(names, tracked)
        for line in found:
            print(f"sdist-check: {sdist.name}: {line}", file=sys.stderr)
        if found:
            return 1
        print(f"sdist-check: {sdist.name}: {len(names)} files, every required one")
        tree = unpack(sdist, work / "unpacked")
        make = ["make", "-C", str(tree), "--no-print-directory", "test"]
        if args.pytest_args:
            make.append(f"PYTEST_ARGS={args.pytest_args}")
        print("sdist-check: " + " ".join(make), flush=True)
        return subprocess.run(make, timeout=3600).returncode
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
