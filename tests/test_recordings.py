"""Where the fake virsh finds its recordings (virtguests/testing/recordings.py): the
variable, the installed package's copy, the source tree, and otherwise a clear error
naming where it looked, never built-in approximations in silence."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from virtguests.testing import recordings, write_shim
from virtguests.testing.recordings import RecordingsMissing, fixtures_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No variable, no packaged copy, and a package directory that is no source tree."""
    monkeypatch.delenv("VIRTGUESTS_FIXTURES", raising=False)
    monkeypatch.setattr(recordings, "packaged_dir", lambda: "")
    monkeypatch.setattr(recordings, "SOURCE_TREE", str(tmp_path))
    return tmp_path


def test_the_source_tree_holds_them() -> None:
    assert Path(fixtures_dir()) == REPO / "fixtures"


def test_none_found_is_an_error_naming_every_place_it_looked(nowhere: Path) -> None:
    with pytest.raises(RecordingsMissing) as raised:
        fixtures_dir()
    message = str(raised.value)
    assert "$VIRTGUESTS_FIXTURES is not set" in message
    assert os.path.join("virtguests", "testing", "recordings") in message
    assert f"{nowhere} is not a source tree with fixtures/" in message


def test_a_fixtures_directory_outside_a_source_tree_is_not_taken(nowhere: Path) -> None:
    """site-packages may hold an unrelated ``fixtures`` package: no setup.cfg, not ours."""
    (nowhere / "fixtures").mkdir()
    (nowhere / "fixtures" / "x.yaml").write_text("{}\n")
    with pytest.raises(RecordingsMissing):
        fixtures_dir()
    (nowhere / "setup.cfg").write_text("")
    assert fixtures_dir() == str(nowhere / "fixtures")


def test_the_packaged_copy_comes_before_the_source_tree(nowhere: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (nowhere / "setup.cfg").write_text("")
    (nowhere / "fixtures").mkdir()
    (nowhere / "fixtures" / "x.yaml").write_text("{}\n")
    packaged = nowhere / "pkg"
    packaged.mkdir()
    (packaged / "y.yaml").write_text("{}\n")
    monkeypatch.setattr(recordings, "packaged_dir", lambda: str(packaged))
    assert fixtures_dir() == str(packaged)
    monkeypatch.setenv("VIRTGUESTS_FIXTURES", str(REPO / "fixtures"))
    assert fixtures_dir() == str(REPO / "fixtures")


def test_packaged_dir_is_empty_in_a_checkout() -> None:
    """An editable install reads fixtures/ in place; only a build copies them."""
    assert recordings.packaged_dir() == ""


def _bad_variable(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "no-yaml":
        path.mkdir()
        (path / "README").write_text("recordings were here\n")
    elif kind == "a-file":
        path.write_text("x.yaml\n")
    return path  # "missing": nothing there


BAD = ["missing", "empty", "no-yaml", "a-file"]


@pytest.mark.parametrize("kind", BAD)
def test_a_variable_without_recordings_is_an_error(tmp_path: Path, kind: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bad_variable(tmp_path, kind)
    monkeypatch.setenv("VIRTGUESTS_FIXTURES", str(path))
    with pytest.raises(RecordingsMissing, match=f"VIRTGUESTS_FIXTURES={path}: no recordings"):
        fixtures_dir()


@pytest.mark.parametrize("kind", BAD)
def test_the_fake_virsh_refuses_to_run_without_them(tmp_path: Path, kind: str) -> None:
    path = _bad_variable(tmp_path, kind)
    host = tmp_path / "host.yaml"
    host.write_text("uris:\n  default:\n    guests: [{name: web}]\n")
    virsh = write_shim(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTGUESTS_")}
    env.update(VIRTGUESTS_FAKE_HOST=str(host), VIRTGUESTS_FIXTURES=str(path), LC_ALL="C")
    run = subprocess.run([str(virsh), "list", "--all"], env=env, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"fakevirsh: $VIRTGUESTS_FIXTURES={path}: no recordings (*.yaml) there\n"
    env["VIRTGUESTS_FIXTURES"] = str(REPO / "fixtures")  # nothing stale was left behind
    run = subprocess.run([str(virsh), "list", "--all"], env=env, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert (run.returncode, run.stderr) == (0, "") and " web " in run.stdout
