"""The supported sh and PyYAML versions: what is installed here is served, anything else
is refused at start-up with one line and exit status 5, before anything is done."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sh
import yaml
from hypothesis import given
from hypothesis import strategies as st

from virtguests import cli, deps
from virtguests.exitstatus import EXIT_DEPENDENCY
from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]
REPO = Path(__file__).resolve().parent.parent
HOST = {"uris": {"default": {"guests": [{"name": "web"}]}}}


def test_the_installed_sh_and_pyyaml_are_served() -> None:
    """make test: sh 2.x; make test-sh1: sh 1.14.2 and PyYAML 6.0."""
    assert deps.refusal() is None, (sh.__version__, yaml.__version__)


def test_install_requires_states_the_same_ranges() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    required = parser["options"]["install_requires"].split()
    assert required == [deps.spec(name) for name in deps.SUPPORTED] == [
        "sh>=1.14,<3", "PyYAML>=6.0"]


@pytest.mark.parametrize(("name", "version"), [
    ("sh", "1.14.0"), ("sh", "1.14.1"), ("sh", "1.14.2"), ("sh", "1.14.3"), ("sh", "2.0.0"),
    ("sh", "2.4.0"), ("sh", "2.99"), ("PyYAML", "6.0"), ("PyYAML", "6.0.2"),
    ("PyYAML", "7.1")])
def test_served(name: str, version: str) -> None:
    assert deps.problem(name, version, "/somewhere") is None


@pytest.mark.parametrize(("name", "version"), [
    ("sh", "1.13.1"), ("sh", "1.12.14"), ("sh", "0.107"), ("sh", "3.0.0"), ("sh", "10.1"),
    ("sh", "unknown"), ("sh", None), ("sh", ""), ("sh", " "), ("PyYAML", "5.4.1"),
    ("PyYAML", "3.13")])
def test_refused(name: str, version: str) -> None:
    shown = (version or "").strip() or "of unknown version"
    assert deps.problem(name, version, "/somewhere") == (
        f"{name} {shown} is installed (/somewhere), virtguests needs {deps.spec(name)}: "
        "nothing was done")


@given(st.sampled_from(sorted(deps.SUPPORTED)), st.one_of(st.none(), st.text()))
def test_any_version_string_gets_an_answer_on_one_line(name: str, version: str) -> None:
    """Whatever a module calls its version: served, or one line naming it (never raises)."""
    found = deps.problem(name, version, "/somewhere")
    if found is not None:
        assert deps.spec(name) in found and len(found.splitlines()) == 1


@pytest.mark.parametrize("command", [c for c in (*cli.COMMANDS, *cli.EXTRA_COMMANDS)
                                     if c not in cli.NO_DEPENDENCY])
def test_every_command_that_needs_sh_refuses_an_unserved_one_before_anything(
        fake_host: Make, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    host = fake_host(HOST)
    monkeypatch.setattr(sh, "__version__", "1.13.1")
    run = run_inprocess(host, command)[0]
    assert (run.code, run.out) == (EXIT_DEPENDENCY, "")
    assert run.err == (f"virtguests: error: sh 1.13.1 is installed ({sh.__file__}), "
                       "virtguests needs sh>=1.14,<3: nothing was done\n")
    assert host.calls() == []
    assert not host.state_dir.exists() or os.listdir(host.state_dir) == []


@pytest.mark.parametrize("command", cli.NO_DEPENDENCY)
def test_commands_without_virsh_or_yaml_work_whatever_sh_is(
        fake_host: Make, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """status, report and reload need neither: an admin can still ask what happened."""
    host = fake_host(HOST)
    monkeypatch.setattr(sh, "__version__", "1.13.1")
    monkeypatch.setattr(yaml, "__version__", "5.4.1")
    expected = run_inprocess(host, command)[0]
    assert expected.code != EXIT_DEPENDENCY and "is installed" not in expected.err
    monkeypatch.undo()
    served = run_inprocess(host, command)[0]
    assert (served.code, served.out, served.err) == (expected.code, expected.out, expected.err)


def test_an_unserved_pyyaml_is_refused(fake_host: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml, "__version__", "5.4.1")
    run = run_inprocess(fake_host(HOST), "start")[0]
    assert run.code == EXIT_DEPENDENCY
    assert "PyYAML 5.4.1 is installed" in run.err and "PyYAML>=6.0" in run.err


def test_help_and_usage_errors_need_no_dependency(fake_host: Make,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sh, "__version__", "3.0.0")
    host = fake_host(HOST)
    assert run_inprocess(host, "--help")[0].code == 0
    assert run_inprocess(host, "frobnicate")[0].code == 2


def _with_shadow_sh(host: FakeHost, tmp_path: Path, module: str,
                    command: str) -> subprocess.CompletedProcess[str]:
    """virtguests COMMAND as systemd runs it, with *module* as the sh first on sys.path."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sh.py").write_text(module)
    env = host.env()
    env["PYTHONPATH"] = f"{shadow}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run([sys.executable, "-m", "virtguests", *host.argv(command)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize(("module", "said"), [
    ('__version__ = "1.13.1"\n', "sh 1.13.1 is installed ({path})"),
    ('raise ImportError("no sh here")\n', "cannot import sh (no sh here)")])
def test_the_process_says_it_on_one_line_and_exits_5(fake_host: Make, tmp_path: Path,
                                                     module: str, said: str) -> None:
    """As systemd runs it: an sh that cannot serve (found first on sys.path) ends the
    process with one line on stderr, not a traceback, and nothing is done."""
    host = fake_host(HOST)
    proc = _with_shadow_sh(host, tmp_path, module, "stop")
    assert (proc.returncode, proc.stdout) == (EXIT_DEPENDENCY, "")
    expected = said.format(path=tmp_path / "shadow" / "sh.py")
    assert proc.stderr == (f"virtguests: error: {expected}, virtguests needs sh>=1.14,<3: "
                           "nothing was done\n")
    assert host.calls() == []


def test_status_runs_without_importing_sh(fake_host: Make, tmp_path: Path) -> None:
    """The process: an sh that cannot even be imported does not stop status (exit 3)."""
    proc = _with_shadow_sh(fake_host(HOST), tmp_path, 'raise ImportError("no sh here")\n',
                           "status")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        3, "stopped, with no saved guests\n", "")
