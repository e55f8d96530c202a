"""Schema checks for the virsh recordings in fixtures/ (written by tools/record_fixtures.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtguests.testing import fixtures_dir

FIXTURES = Path(fixtures_dir())
FILES = sorted(FIXTURES.glob("*.yaml"))
REQUIRED = {"description", "virsh_version", "uri", "argv", "exit", "stdout", "stderr", "subjects"}
OPTIONAL = {"env", "stdin"}
"""``stdin``: a session recording, one virsh fed these lines on a pipe (argv empty)."""
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), path
    return doc


def test_there_are_fixtures() -> None:
    assert len(FILES) >= 50
    drivers = {p.name.split("-", 1)[0] for p in FILES}
    assert {"test", "nohost"} <= drivers


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_schema(path: Path) -> None:
    doc = load(path)
    assert set(doc) >= REQUIRED, f"missing keys: {REQUIRED - set(doc)}"
    assert set(doc) <= REQUIRED | OPTIONAL, f"unknown keys: {set(doc) - REQUIRED - OPTIONAL}"
    driver = path.stem.split("-", 1)[0]
    assert driver in ("test", "qemu", "nohost")
    assert isinstance(doc["description"], str) and doc["description"]
    assert isinstance(doc["virsh_version"], str)
    assert re.match(r"^\d+\.\d+\.\d+$", doc["virsh_version"])
    assert doc["uri"] is None or isinstance(doc["uri"], str)
    if driver == "test":
        assert isinstance(doc["uri"], str) and doc["uri"].startswith("test://")
    session = "stdin" in doc
    assert isinstance(doc["argv"], list) and (doc["argv"] or session)
    assert not session or (isinstance(doc["stdin"], str) and doc["stdin"].endswith("\n"))
    assert all(isinstance(a, str) for a in doc["argv"])
    assert isinstance(doc["exit"], int) and not isinstance(doc["exit"], bool)
    assert isinstance(doc["stdout"], str)
    assert isinstance(doc["stderr"], str)
    command_string = len(doc["argv"]) == 1 and ";" in doc["argv"][0]
    if doc["exit"] == 0:
        # a command string exits with its last command's status, errors or not
        assert "error:" not in doc["stderr"] or command_string or session
    else:
        assert doc["stderr"].startswith("error: ")
    assert isinstance(doc["subjects"], list)
    for subject in doc["subjects"]:
        assert set(subject) == {"name", "uuid"}
        assert isinstance(subject["name"], str) and subject["name"]
        assert UUID_RE.match(subject["uuid"])
    if "env" in doc:
        assert isinstance(doc["env"], dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["env"].items())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_paths_are_stable(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert str(FIXTURES) not in text


def test_test_hosts_exist() -> None:
    for path in FILES:
        doc = load(path)
        uri = doc["uri"] or ""
        if uri.startswith("test:///FIXTURES/"):
            assert (FIXTURES / uri[len("test:///FIXTURES/") :]).is_file(), uri
