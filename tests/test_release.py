"""The source release (tools/sdist.py, MANIFEST.in, setup.py, setup.cfg): the sdist holds
every tracked file a release needs and nothing built, a package installed from it carries
the recordings, and the metadata states one licence and one Python floor."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tools.sdist import LEFT_OUT, REQUIRED, build_sdist, git_files, members, problems, unpack
from virtguests.testing.fakevirsh.rendering import compile_templates

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built offline from a copy of this tree (the tree itself gets no build outputs)."""
    return build_sdist(REPO, tmp_path_factory.mktemp("sdist"))


def test_sdist_holds_every_tracked_file_and_nothing_built(sdist: Path) -> None:
    tracked = git_files(REPO)
    if tracked is None:
        pytest.skip(f"{REPO} is not a git checkout (an unpacked sdist?): no list to compare")
    assert problems(members(sdist), tracked) == []


def test_sdist_holds_every_required_path(sdist: Path) -> None:
    """What still holds without git (the suite run from an unpacked sdist)."""
    assert problems(members(sdist), None) == []


def test_problems_names_what_is_missing_unlisted_or_unwanted() -> None:
    tracked = ["COPYING", "tests/conftest.py", "tests/transcripts/a.txt", "contrib/x.in",
               ".gitignore"]
    names = [p for p in REQUIRED if p != "COPYING"]
    names += ["tests/conftest.py", ".gitignore", ".venv/bin/python", "tests/__pycache__/a.pyc",
              "build/lib/virtguests/cli.py", "tools/x.pyc", "dist/virtguests-0.1.0.tar.gz",
              ".hypothesis/examples/1", ".pytest_cache/v"]
    assert problems(names, tracked) == [
        "missing: COPYING",
        "missing: tests/transcripts/a.txt",
        "tracked but neither REQUIRED nor LEFT_OUT (tools/sdist.py): contrib",
        "unwanted: .hypothesis/examples/1",
        "unwanted: .pytest_cache/v",
        "unwanted: .venv/bin/python",
        "unwanted: build/lib/virtguests/cli.py",
        "unwanted: dist/virtguests-0.1.0.tar.gz",
        "unwanted: tests/__pycache__/a.pyc",
        "unwanted: tools/x.pyc",
    ]
    assert problems(names, None) == ["missing: COPYING", *problems(names, tracked)[3:]]


def test_manifest_grafts_every_required_directory() -> None:
    assert not set(REQUIRED) & set(LEFT_OUT)
    grafted = set(re.findall(r"^graft (\S+)$", (REPO / "MANIFEST.in").read_text(), re.M))
    assert grafted == {p for p in REQUIRED if (REPO / p).is_dir()}


def _pkg_info(sdist: Path) -> str:
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.count("/") == 1
                      and m.name.endswith("/PKG-INFO"))
        file = archive.extractfile(member)
        assert file is not None
        return file.read().decode()


def test_sdist_metadata_states_the_licence(sdist: Path) -> None:
    info = _pkg_info(sdist)
    assert "\nLicense: LGPL-2.1-or-later\n" in info
    assert "\nLicense-File: COPYING\n" in info
    assert ("\nClassifier: License :: OSI Approved :: GNU Lesser General Public License v2 "
            "or later (LGPLv2+)\n") in info
    text = (REPO / "COPYING").read_text()
    assert text.split()[:7] == ["GNU", "LESSER", "GENERAL", "PUBLIC", "LICENSE", "Version", "2.1,"]
    assert "END OF TERMS AND CONDITIONS" in text


def _version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    assert match is not None, text
    return int(match[1]), int(match[2])


def test_one_python_floor() -> None:
    """python_requires is the floor; ruff's target-version and the oldest classifier follow
    it; mypy's python_version too, except that mypy 2 checks no target older than 3.10."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    floor = _version(cfg["options"]["python_requires"].removeprefix(">="))
    ruff = re.search(r'^target-version = "py(\d)(\d+)"$', (REPO / "ruff.toml").read_text(), re.M)
    assert ruff is not None and (int(ruff[1]), int(ruff[2])) == floor
    listed = [_version(m) for m in re.findall(r"Programming Language :: Python :: (3\.\d+)$",
                                              cfg["metadata"]["classifiers"], re.M)]
    assert min(listed) == floor
    assert _version(cfg["mypy"]["python_version"]) == max(floor, (3, 10))
    assert sys.version_info[:2] >= floor


def test_an_installed_package_finds_its_recordings(sdist: Path, tmp_path: Path) -> None:
    """Built from the sdist and installed by pip (--target: no sys.prefix/share to guess),
    offline; the fake virsh it ships renders from the recordings it carries."""
    source = unpack(sdist, tmp_path / "unpacked")
    target = tmp_path / "target"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
         str(source)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    packaged = target / "virtguests" / "testing" / "recordings"
    assert sorted(p.relative_to(packaged) for p in packaged.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(REPO / "fixtures") for p in (REPO / "fixtures").rglob("*")
               if p.is_file())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTGUESTS_", "PYTHON", "LC_"))}
    host = tmp_path / "host.yaml"
    host.write_text("uris:\n  default:\n    driver: qemu\n    guests: [{name: web}]\n"
                    "  qemu+unix:///system?socket=/nonexistent/sock:\n    unreachable: true\n")
    script = (f"import sys; sys.path.insert(0, {str(target)!r})\n"
              "from virtguests.testing import fixtures_dir, write_shim\n"
              f"print(fixtures_dir()); print(write_shim({str(tmp_path / 'bin')!r}))\n")
    run = subprocess.run([sys.executable, "-I", "-c", script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found, virsh = run.stdout.splitlines()
    assert found == str(packaged)
    call = subprocess.run(
        [virsh, "-c", "qemu+unix:///system?socket=/nonexistent/sock", "list"],
        env={**env, "VIRTGUESTS_FAKE_HOST": str(host), "LC_ALL": "C"}, cwd=tmp_path,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    recorded = "error: Failed to connect socket to '/nonexistent/sock': No such file or directory"
    assert call.returncode == 1 and recorded in call.stderr, call.stderr
    state = json.loads((tmp_path / "host.yaml.state.json").read_text())
    assert state["fixtures"] == str(packaged)
    assert state["sources"] == compile_templates(str(REPO / "fixtures"))["sources"]
