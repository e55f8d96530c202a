"""packaging/: the systemd unit, the LSB init script, the man page, the example config,
make man/install/uninstall, make deb.

Tools these tests need (systemd-analyze, groff, man, dash) come from
.ci/install-dist-deps, those of make deb and make install's default Python
(debhelper, dh-python, lintian, python3-pip, ...) from .ci/install-deb-deps; when one
is missing the test skips here and fails in CI. make deb itself runs only in CI.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest

from virtguests import cli, config
from virtguests.testing import FakeHost, run_inprocess

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(660)  # past _make's own 600 s deadline, which reports better
UNIT = REPO / "packaging" / "virtguests.service.in"
INIT = REPO / "packaging" / "virtguests.init.in"
MAN_SOURCE = REPO / "doc" / "virtguests.8.md"
SERVICE_MANAGERS = ("systemctl", "deb-systemd-invoke", "deb-systemd-helper", "service",
                    "invoke-rc.d", "update-rc.d", "initctl", "rc-service", "chkconfig")
SOCKETS = ("libvirtd.socket", "virtqemud.socket", "virtlxcd.socket", "virtvboxd.socket",
           "virtvzd.socket", "virtxend.socket")


def _required() -> bool:
    # the rule of tests/realhost and tests/test_reference_compat.py
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (.ci/install-dist-deps installs it)"
        if _required():
            pytest.fail(f"{reason}; required in CI", pytrace=False)
        pytest.skip(reason)
    return path


def _tool(name: str) -> ModuleType:
    """tools/NAME.py, a script run by path (make man, debian/rules), as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mkman = _tool("mkman")
mkconfig = _tool("mkconfig")


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys repeat in units)."""
    section = ""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    """Every space-separated value of a (possibly repeated) key."""
    return [v for s, k, value in entries if (s, k) == (section, key) for v in value.split()]


def man_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    name = ""
    for line in MAN_SOURCE.read_text().splitlines():
        if line.startswith("# "):
            name = line[2:]
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def terms(section_text: str) -> list[str]:
    """The term lines of a definition list."""
    lines = section_text.splitlines()
    return [line for line, nxt in zip(lines, lines[1:]) if nxt.startswith(": ")]


def help_options() -> set[str]:
    options = cli.HELP.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    found = set()
    for line in options.splitlines():
        # the option column only, not the environment variables and paths after it
        column = re.match(r"\s+((?:-{1,2}[\w-]+(?: [A-Z]+)?(?:, )?)+)", line)
        if column:
            found |= set(re.findall(r"(?<![\w-])-{1,2}[a-z][\w-]*", column.group(1)))
    return found


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 300)
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False, **kw)


# ---------------------------------------------------------------------------
# the unit
# ---------------------------------------------------------------------------
def test_unit_ordering_is_libvirt_guests() -> None:
    entries = unit_entries(UNIT.read_text())
    after = values(entries, "Unit", "After")
    for unit in (*SOCKETS, "network.target", "time-sync.target",
                 "virt-guest-shutdown.target"):
        assert unit in after
    assert values(entries, "Unit", "Requires") == ["virt-guest-shutdown.target"]
    # ordered, never pulled in: the monolithic and modular daemons conflict
    assert values(entries, "Unit", "Wants") == []
    assert values(entries, "Install", "WantedBy") == ["multi-user.target"]


def test_unit_service_settings() -> None:
    entries = unit_entries(UNIT.read_text())
    service = {k: v for s, k, v in entries if s == "Service"}
    assert service["Type"] == "oneshot"
    assert service["RemainAfterExit"] == "yes"
    assert service["TimeoutStopSec"] == "0"
    assert service["StandardOutput"] == "journal+console"
    # stderr follows stdout into the journal, where the <N> line prefixes are parsed
    assert "StandardError" not in service and service["SyslogLevelPrefix"] == "yes"
    assert service["SyslogIdentifier"] == "virtguests"
    # a start that fails for one guest must leave the unit active: systemd runs
    # ExecStop only for units that started successfully
    assert service["ExecStart"] == "-@BINDIR@/virtguests start"
    assert service["ExecStop"] == "@BINDIR@/virtguests stop"
    # virtguests reads the config file itself; the environment does not configure it
    assert "EnvironmentFile" not in service


def test_unit_upgrade_guard() -> None:
    """Nothing in the unit turns a package upgrade's reload or restart into a stop."""
    entries = unit_entries(UNIT.read_text())
    service = {k: v for s, k, v in entries if s == "Service"}
    # reload-or-restart / try-reload-or-restart reload: only validates the config
    assert service["ExecReload"] == "@BINDIR@/virtguests reload"
    for key in ("ExecStartPre", "ExecStartPost", "ExecStopPost", "ExecCondition"):
        assert key not in service
    for _, key, value in entries:
        if key.startswith("Exec"):
            command = value.lstrip("-:+!").split()  # not "@": @BINDIR@
            assert command[0] == "@BINDIR@/virtguests"
            assert command[1:] in (["start"], ["stop"], ["reload"])
    # NixOS' switch-to-configuration honours it; systemd ignores X- keys
    assert values(entries, "Unit", "X-RestartIfChanged") == ["false"]
    # no Conflicts=libvirt-guests.service: starting libvirt-guests (libvirt's own
    # package upgrade does) would stop us, i.e. save or shut down every guest.
    # Ordered after it instead: with both active we stop first, it then does nothing.
    assert "libvirt-guests.service" not in values(entries, "Unit", "Conflicts")
    assert "libvirt-guests.service" in values(entries, "Unit", "After")
    assert values(entries, "Unit", "RefuseManualStop") == []


def test_packaging_notes_name_the_guards() -> None:
    text = (REPO / "packaging" / "README.md").read_text()
    for needle in ("--no-stop-on-upgrade", "--no-restart-after-upgrade", "%systemd_postun",
                   "restartIfChanged", "never start, stop, restart or reload"):
        assert needle in text


def test_no_source_where_build_tools_write() -> None:
    """Python builds write dist/ and build/ (make clean removes both): no source there."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: which files are sources is unknown")
    tracked = _run([git, "-C", str(REPO), "ls-files", "--", "dist", "build"])
    assert (tracked.returncode, tracked.stdout) == (0, "")
    templates = _run([git, "-C", str(REPO), "ls-files", "--", "packaging/*.in"])
    assert templates.stdout.split() == ["packaging/virtguests.init.in",
                                        "packaging/virtguests.service.in"]


# The unit's commands, run in-process (run_inprocess: virtguests and the fake in this
# process; the command is the subject, not the process): the installed command runs as a
# process in test_installed_command_runs and the init script's tests.
@pytest.mark.parametrize("command", ["reload", "force-reload"])
def test_reload_is_a_no_op(fake_host: Any, command: str) -> None:
    host: FakeHost = fake_host({"uris": {"default": {"guests": [
        {"name": "web"}, {"name": "db"}]}}}, "ON_SHUTDOWN=suspend\n")
    assert run_inprocess(host, "start")[0].code == 0
    before = len(host.calls())
    run, _ = run_inprocess(host, command)
    assert (run.code, run.out, run.err) == (0, "", "")
    assert host.calls()[before:] == []
    assert host.active() == {"web", "db"} and not host.list_file.exists()


def test_reload_reports_a_bad_config_without_virsh(fake_host: Any) -> None:
    host: FakeHost = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}},
                               "ON_BOOT=sometimes\n")
    run, _ = run_inprocess(host, "reload")
    assert run.code == 6 and "ON_BOOT" in run.err
    assert host.calls() == [] and host.active() == {"web"}


def test_try_restart_is_what_an_upgrade_must_not_run(fake_host: Any) -> None:
    """Why packages must not restart the unit: try-restart saves and resumes everyone."""
    host: FakeHost = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}},
                               "ON_SHUTDOWN=suspend\n")
    assert run_inprocess(host, "try-restart")[0].code == 0  # not started: nothing
    assert host.calls() == []
    assert run_inprocess(host, "start")[0].code == 0
    assert run_inprocess(host, "try-restart")[0].code == 0
    assert ["managedsave", host.uuid("web")] in host.commands()
    assert host.active() == {"web"}


# ---------------------------------------------------------------------------
# systemd-analyze verify
# ---------------------------------------------------------------------------
def _verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    analyze = need("systemd-analyze")
    need("man")  # systemd-analyze checks Documentation=man:virtguests(8) with it
    stubs = tmp_path / "stub-units"
    stubs.mkdir(exist_ok=True)
    # virt-guest-shutdown.target ships with libvirt's daemon package: a stub stands in
    # for it (and shadows the real one, if any). The rest come from the system.
    (stubs / "virt-guest-shutdown.target").write_text("[Unit]\nDescription=stub\n")
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True, exist_ok=True)
    (man8 / "virtguests.8").write_text(mkman.convert(MAN_SOURCE.read_text()))
    unit = tmp_path / "units" / "virtguests.service"
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(unit_text)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{stubs}:", MANPATH=str(tmp_path / "man"),
               SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return _run([analyze, "verify", str(unit)], env=env, cwd=tmp_path)


def test_systemd_analyze_verify(tmp_path: Path, installed_prefix: Path) -> None:
    """The installed unit verifies with no output at all, Documentation= included."""
    unit = installed_prefix / "lib" / "systemd" / "system" / "virtguests.service"
    assert f"ExecStop={installed_prefix}/bin/virtguests stop" in unit.read_text()
    result = _verify(tmp_path, unit.read_text())
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    """The harness is not vacuous: a unit whose binary is missing fails."""
    result = _verify(tmp_path, UNIT.read_text().replace("@BINDIR@", str(tmp_path / "no")))
    assert result.returncode != 0 and "virtguests" in result.stderr


# ---------------------------------------------------------------------------
# the init script
# ---------------------------------------------------------------------------
def test_init_script_lsb_header() -> None:
    text = INIT.read_text()
    header = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO", 1)[0]
    fields = {}
    for line in header.splitlines():
        match = re.match(r"# ([\w-]+):\s+(.*)", line)
        if match:
            fields[match.group(1)] = match.group(2).strip()
    assert fields["Provides"] == "virtguests"
    assert fields["Required-Start"] == "$remote_fs $network libvirtd"
    assert fields["Required-Stop"] == "$remote_fs $network libvirtd"
    assert fields["Default-Start"] == "2 3 4 5"
    assert fields["Default-Stop"] == "0 1 6"
    assert text.startswith("#!/bin/sh\n") and os.access(INIT, os.X_OK)


def _init_copy(tmp_path: Path, bindir: Path) -> Path:
    script = tmp_path / "virtguests.init"
    script.write_text(INIT.read_text().replace("@BINDIR@", str(bindir)))
    script.chmod(0o755)
    return script


@pytest.fixture
def stub_virtguests(tmp_path: Path) -> Path:
    """A virtguests that logs its arguments and exits with $STUB_EXIT."""
    bindir = tmp_path / "stubbin"
    bindir.mkdir()
    stub = bindir / "virtguests"
    stub.write_text('#!/bin/sh\necho "$*" >> "$STUB_LOG"\nexit "${STUB_EXIT:-0}"\n')
    stub.chmod(0o755)
    return bindir


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_init_script_passes_commands_and_exit_status(tmp_path: Path, stub_virtguests: Path,
                                                     command: str) -> None:
    dash = need("dash")
    script = _init_copy(tmp_path, stub_virtguests)
    log = tmp_path / "log"
    for code in (0, 1, 3, 5, 6):
        env = dict(os.environ, STUB_LOG=str(log), STUB_EXIT=str(code))
        assert _run([dash, str(script), command], env=env).returncode == code
    assert log.read_text() == f"{command}\n" * 5


@pytest.mark.parametrize("args", [[], ["bogus"], ["check"], ["--config"]])
def test_init_script_usage(tmp_path: Path, stub_virtguests: Path, args: list[str]) -> None:
    dash = need("dash")
    script = _init_copy(tmp_path, stub_virtguests)
    log = tmp_path / "log"
    result = _run([dash, str(script), *args], env=dict(os.environ, STUB_LOG=str(log)))
    assert result.returncode == 2 and "Usage:" in result.stderr
    assert not log.exists()


def test_init_script_without_the_binary(tmp_path: Path) -> None:
    dash = need("dash")
    script = _init_copy(tmp_path, tmp_path / "nowhere")
    assert _run([dash, str(script), "stop"]).returncode == 5
    assert _run([dash, str(script), "status"]).returncode == 4


def test_init_script_is_posix_sh() -> None:
    for shell in ("dash", "sh"):
        path = shutil.which(shell)
        if path:
            assert _run([path, "-n", str(INIT)]).returncode == 0
    checkbashisms = shutil.which("checkbashisms")
    if checkbashisms:
        assert _run([checkbashisms, str(INIT)]).returncode == 0


# ---------------------------------------------------------------------------
# the man page
# ---------------------------------------------------------------------------
def test_man_page_has_every_section() -> None:
    assert list(man_sections()) == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "BRINGING GUESTS HOME", "WORDS",
        "OPTIONS", "CONFIGURATION", "FILES",
        "ENVIRONMENT", "EXIT STATUS", "SIGNALS", "RELIABILITY", "SERVICE INTEGRATION",
        "JOURNAL", "JSON", "METRICS", "DIFFERENCES FROM LIBVIRT-GUESTS", "SEE ALSO"]


def test_man_page_documents_every_command() -> None:
    documented = set()
    for term in terms(man_sections()["COMMANDS"]):
        # "`plan` [`stop`|`start`]": the command, not its argument
        documented |= set(re.findall(r"`([\w-]+)`", term.split(" [")[0]))
    assert set(cli.COMMANDS) | set(cli.EXTRA_COMMANDS) | {"check"} <= documented
    assert documented <= set(cli.COMMANDS) | set(cli.EXTRA_COMMANDS)


def test_man_page_documents_every_option() -> None:
    documented = set()
    for term in terms(man_sections()["OPTIONS"]):
        documented |= set(re.findall(r"`(-[\w-]+)`", term))
    parser_options = {o for action in cli._parser()._actions for o in action.option_strings}
    assert help_options() and help_options() <= documented
    assert parser_options == documented


def _shown_default(key: str) -> Optional[str]:
    value = config.default_of(key)
    if value is None:
        return None
    if isinstance(value, tuple):
        return " ".join(value) or None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_man_page_documents_every_variable_with_its_default() -> None:
    documented = {}
    for term in terms(man_sections()["CONFIGURATION"]):
        match = re.match(r"`([A-Z_]+)` \(default:? (.*)\)$", term)
        assert match, term
        documented[match.group(1)] = match.group(2)
    assert list(documented) == list(config.variable_names())
    for key, shown in documented.items():
        default = _shown_default(key)
        if default is not None:
            assert shown == f"`{default}`", key


def test_man_page_files_exit_codes_and_signals() -> None:
    sections = man_sections()
    for path in ("/var/lib/libvirt/libvirt-guests", "/var/lock/subsys/libvirt-guests",
                 "/var/lock/libvirt-guests", "/var/lib/libvirt/virtguests-pending",
                 "/var/lib/libvirt/virtguests-last-run.json",
                 "/var/lib/libvirt/virtguests.lock", "/etc/init.d/virtguests",
                 *(str(p) for p in config.SEARCH_PATH)):
        assert f"`{path}`" in sections["FILES"], path
    codes = [t.strip("`") for t in terms(sections["EXIT STATUS"])]
    assert codes == ["0", "1", "2", "3", "5", "6"]
    assert "`SIGTERM`, `SIGINT`" in sections["SIGNALS"]
    for variable in ("VIRTGUESTS_CONFIG", "VIRTGUESTS_STATE_DIR", "VIRSH"):
        assert f"`{variable}`" in terms(sections["ENVIRONMENT"])


@pytest.fixture(scope="module")
def built_man() -> Path:
    """``make man``, as a user runs it."""
    make = need("make")
    result = _run([make, "-C", str(REPO), "--no-print-directory", "man",
                   f"PYTHON={sys.executable}"])
    assert result.returncode == 0, result.stderr
    page = REPO / "build" / "virtguests.8"
    assert page.is_file()
    return page


def test_make_man_renders_without_warnings(built_man: Path) -> None:
    groff = need("groff")
    result = _run([groff, "-man", "-Tutf8", "-ww", "-z", str(built_man)])
    assert (result.returncode, result.stderr) == (0, "")


def test_man_renders_at_80_columns(built_man: Path) -> None:
    man = need("man")
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    result = _run([man, "--warnings=w", "-l", str(built_man)], env=env)
    assert (result.returncode, result.stderr) == (0, "")
    text = re.sub(r".\x08", "", result.stdout)
    assert max(len(line) for line in text.splitlines()) <= 80
    for heading in ("NAME", "SYNOPSIS", "CONFIGURATION", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in text
    for command in (*cli.COMMANDS, *cli.EXTRA_COMMANDS):
        assert command in text
    assert "@" not in text and "`" not in text and "\\" not in text


# ---------------------------------------------------------------------------
# tools/mkman.py
# ---------------------------------------------------------------------------
def test_mkman_escapes() -> None:
    roff = mkman.convert(
        "% x(8) | T\n\n# NAME\n\nx - y\n\n# A B\n\n.starts with a dot\n"
        "'and a quote, back\\slash, `--opt` and -v\n\n"
        "    .literal \\n --x\n\n`term`\n: def *it*\n: more\n  cont\n\n- item\n  more\n",
        date="2000-01-01", ver="9")
    lines = roff.splitlines()
    assert lines[1] == '.TH X 8 "2000-01-01" "x 9" "T"'
    assert '.SH "A B"' in lines
    assert "\\&.starts with a dot" in lines
    assert "\\&'and a quote, back\\eslash, \\fB\\-\\-opt\\fR and \\-v" in lines
    assert "\\&.literal \\en \\-\\-x" in lines
    assert lines[lines.index(".TP"):lines.index(".TP") + 6] == [
        ".TP", "\\fBterm\\fR", "def \\fIit\\fR", ".IP", "more", "cont"]
    assert lines[-3:] == [".IP \\(bu 2", "item", "more"]


@pytest.mark.parametrize("bad", ["| a | b |", "caf\u00e9", "[a](b)", "a <b>", "### h",
                                 "trailing ", "\ttab", ": orphan"])
def test_mkman_refuses_what_it_cannot_render(bad: str) -> None:
    with pytest.raises(mkman.SourceError):
        mkman.convert(f"% x(8) | T\n\n# NAME\n\n{bad}\n")


# ---------------------------------------------------------------------------
# tools/mkconfig.py: the example configuration file (the Debian package's)
# ---------------------------------------------------------------------------
def test_example_config_names_every_variable_in_order() -> None:
    text = mkconfig.convert(MAN_SOURCE.read_text())
    assert re.findall(r"^#([A-Z_]+)=", text, re.MULTILINE) == list(config.variable_names())
    assert all(len(line) <= 86 for line in text.splitlines())
    # as shipped, everything is commented out: the defaults, no problem, no warning
    loaded = config.parse_text(text, "example", {})
    assert (loaded.problems, loaded.warnings) == ((), ())
    assert loaded.config == config.parse_text("", "empty", {}).config


def test_example_config_values_are_the_defaults() -> None:
    """Uncommented, every line parses and sets its variable to its default
    (GUEST_POLICY's default applies only when the file exists: left commented)."""
    text = mkconfig.convert(MAN_SOURCE.read_text())
    active = re.sub(r"^#(?!GUEST_POLICY=)([A-Z_]+=)", r"\1", text, flags=re.MULTILINE)
    assert active.count("\n#") < text.count("\n#")
    loaded = config.parse_text(active, "example", {})
    assert (loaded.problems, loaded.warnings) == ((), ())
    assert set(loaded.sources) == set(config.variable_names()) - {"GUEST_POLICY"}
    assert loaded.config == config.parse_text("", "empty", {}).config


def test_mkconfig_refuses_a_page_without_variables() -> None:
    for page in ("% x(8) | T\n\n# NAME\n\nx\n",
                 "% x(8) | T\n\n# CONFIGURATION\n\nnone\n\n# FILES\n"):
        with pytest.raises(mkconfig.SourceError):
            mkconfig.convert(page)


# ---------------------------------------------------------------------------
# make install / uninstall
# ---------------------------------------------------------------------------
def _recording_path(tmp: Path) -> tuple[dict[str, str], Path]:
    """PATH with every service manager replaced by a recorder."""
    fakes = tmp / "service-managers"
    fakes.mkdir()
    log = tmp / "service-manager-calls"
    for name in SERVICE_MANAGERS:
        fake = fakes / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 0\n')
        fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fakes}{os.pathsep}{os.environ.get('PATH', '')}")
    return env, log


SYSTEM_PYTHON = "/usr/bin/python3"


def _offline() -> list[str]:
    """A prefix that runs a command without network (a new network namespace), when
    this process may create one; [] otherwise (--no-index still keeps pip off it)."""
    unshare = shutil.which("unshare")
    if unshare and _run([unshare, "--net", "true"]).returncode == 0:
        return [unshare, "--net"]
    return []


def _make(target: str, tmp: Path, *variables: str,
          python: Optional[str] = sys.executable) -> tuple[subprocess.CompletedProcess[str],
                                                           str]:
    """make TARGET with the service managers recorded; PYTHON=python unless None (the
    Makefile's default, /usr/bin/python3), without network."""
    make = need("make")
    env, log = _recording_path(tmp)
    argv = [make, "-C", str(REPO), "--no-print-directory", target, *variables]
    if python is not None:
        argv.append(f"PYTHON={python}")
    result = _run([*_offline(), *argv], env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text() if log.exists() else ""
    return result, calls


def _need_system_python() -> None:
    """make install's default: Debian's python3 with pip, setuptools and wheel."""
    probe = [SYSTEM_PYTHON, "-c", "import importlib.util as u, sys; sys.exit(any("
             "u.find_spec(m) is None for m in ('pip', 'setuptools', 'wheel')))"]
    if not os.access(SYSTEM_PYTHON, os.X_OK) or _run(probe).returncode != 0:
        reason = (f"{SYSTEM_PYTHON} with pip, setuptools and wheel "
                  "(.ci/install-deb-deps installs them)")
        if _required():
            pytest.fail(f"{reason}; required in CI", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def installed_destdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """make install's defaults: Debian's python3, nothing vendored, offline."""
    _need_system_python()
    tmp = tmp_path_factory.mktemp("destdir")
    root = tmp / "root"
    _, calls = _make("install", tmp, f"DESTDIR={root}", python=None)
    assert calls == "", f"make install called a service manager: {calls}"
    yield root


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed for real (no DESTDIR) under a temporary PREFIX, so it can run."""
    tmp = tmp_path_factory.mktemp("prefix")
    prefix = tmp / "prefix"
    _, calls = _make("install", tmp, f"PREFIX={prefix}", f"INITDIR={prefix}/etc/init.d")
    assert calls == ""
    return prefix


INSTALLED = {
    "usr/local/bin/virtguests": 0o755,
    "usr/local/lib/virtguests/virtguests/cli.py": 0o644,
    "usr/local/lib/virtguests/virtguests/testing/fakevirsh/main.py": 0o644,
    "usr/local/share/man/man8/virtguests.8": 0o644,
    "usr/local/lib/systemd/system/virtguests.service": 0o644,
    "etc/init.d/virtguests": 0o755,
}


def test_make_install_destdir_layout(installed_destdir: Path) -> None:
    for rel, mode in INSTALLED.items():
        path = installed_destdir / rel
        assert path.is_file(), rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, rel
    unit = (installed_destdir / "usr/local/lib/systemd/system/virtguests.service").read_text()
    assert unit == UNIT.read_text().replace("@BINDIR@", "/usr/local/bin")
    assert "@" not in unit and "ExecStop=/usr/local/bin/virtguests stop" in unit
    init = (installed_destdir / "etc/init.d/virtguests").read_text()
    assert init == INIT.read_text().replace("@BINDIR@", "/usr/local/bin")
    assert "VIRTGUESTS=/usr/local/bin/virtguests\n" in init
    page = (installed_destdir / "usr/local/share/man/man8/virtguests.8").read_text()
    assert page.startswith('.\\" Generated by tools/mkman.py') and ".SH NAME" in page
    wrapper = (installed_destdir / "usr/local/bin/virtguests").read_text()
    assert wrapper.startswith(f"#!{SYSTEM_PYTHON} -I\n")
    assert 'sys.path.insert(0, "/usr/local/lib/virtguests")' in wrapper
    assert str(installed_destdir) not in wrapper + unit + init
    # the developers' tooling is not shipped (the fake virsh is: virtguests.testing)
    lib = installed_destdir / "usr/local/lib/virtguests"
    assert not (lib / "tools").exists() and not (lib / "tests").exists()
    # nothing vendored: sh and PyYAML are the distribution's (python3-sh, python3-yaml)
    assert sorted(p.name for p in lib.iterdir() if p.name != "bin" and p.name != "share") == [
        "virtguests", f"virtguests-{_version()}.dist-info"]
    # nothing lands outside DESTDIR's documented places
    tops = {p.relative_to(installed_destdir).parts[:3] for p in installed_destdir.rglob("*")
            if p.is_file()}
    assert tops <= {("usr", "local", "bin"), ("usr", "local", "lib"),
                    ("usr", "local", "share"), ("etc", "init.d", "virtguests")}


def _version() -> str:
    import virtguests

    return virtguests.__version__


def test_make_install_runs_on_the_system_python(installed_destdir: Path) -> None:
    """The wrapper, as installed, imports the package from LIBDIR and the distribution's
    sh and PyYAML (-I: no PYTHONPATH, no user site)."""
    lib = installed_destdir / "usr/local/lib/virtguests"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "import sh, yaml, virtguests; "
              "print(virtguests.__file__, sh.__file__, yaml.__file__, sep='\\n')")
    result = _run([SYSTEM_PYTHON, "-I", "-c", script, str(lib)])
    if result.returncode != 0 and "No module named" in result.stderr:
        reason = f"{SYSTEM_PYTHON} lacks sh or PyYAML (apt-get install python3-sh python3-yaml)"
        if _required():
            pytest.fail(f"{reason}; required in CI", pytrace=False)
        pytest.skip(reason)
    assert result.returncode == 0, result.stderr
    package, sh_file, yaml_file = result.stdout.splitlines()
    assert package.startswith(str(lib))
    assert not sh_file.startswith(str(lib)) and not yaml_file.startswith(str(lib))


def test_make_uninstall_removes_what_install_put(installed_destdir: Path,
                                                 tmp_path: Path) -> None:
    copy = tmp_path / "root"
    shutil.copytree(installed_destdir, copy, symlinks=True)
    _, calls = _make("uninstall", tmp_path, f"DESTDIR={copy}")
    assert calls == ""
    assert [p for p in copy.rglob("*") if not p.is_dir()] == []


def test_installed_command_runs(installed_prefix: Path, fake_host: Any) -> None:
    virtguests = installed_prefix / "bin" / "virtguests"
    # PYTHON overrides the default /usr/bin/python3
    assert virtguests.read_text().startswith(f"#!{sys.executable} -I\n")
    result = _run([str(virtguests), "--help"])
    assert result.returncode == 0 and result.stdout.startswith("Usage: virtguests {start|")
    host: FakeHost = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}})
    run = _run([str(virtguests), *host.argv("status")], env=host.env())
    assert (run.returncode, run.stdout) == (3, "stopped, with no saved guests\n")
    run = _run([str(virtguests), *host.argv("reload")], env=host.env())
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert host.calls() == []


def test_installed_init_script_drives_the_installed_command(installed_prefix: Path,
                                                            fake_host: Any) -> None:
    host: FakeHost = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}},
                               "ON_SHUTDOWN=suspend\n")
    env = dict(host.env(), VIRTGUESTS_CONFIG=str(host.config_file),
               VIRTGUESTS_STATE_DIR=str(host.state_dir), VIRSH=str(host.bin / "virsh"))
    init = [str(installed_prefix / "etc" / "init.d" / "virtguests")]
    assert _run([*init, "reload"], env=env).returncode == 0
    assert host.calls() == []
    assert _run([*init, "start"], env=env).returncode == 0
    assert _run([*init, "status"], env=env).stdout == "started\n"
    stop = _run([*init, "stop"], env=env)
    assert stop.returncode == 0 and "Suspending web: done" in stop.stdout
    assert host.active() == set()
    assert _run([*init, "status"], env=env).returncode == 3


# ---------------------------------------------------------------------------
# both units active: virtguests stops first, libvirt-guests then does nothing
# ---------------------------------------------------------------------------
def test_libvirt_guests_after_virtguests_does_nothing(tmp_path: Path) -> None:
    from tools import reference

    reason = reference.reference_available()
    if reason is not None:
        if _required():
            pytest.fail(f"{reason}; required in CI", pytrace=False)
        pytest.skip(reason)
    conf = "ON_SHUTDOWN=suspend\nON_BOOT=start\nCONNECT_RETRIES=0\n"
    root = tmp_path / "h"
    root.mkdir()
    host = FakeHost(root, {"uris": {"default": {"guests": [{"name": "web"},
                                                           {"name": "db"}]}}}, conf)
    assert host.run("start").code == 0
    # shutdown: we are ordered after libvirt-guests.service, so we stop first
    assert host.run("stop").code == 0
    saved = host.list_file.read_text()
    calls = len(host.calls())
    ref = reference.run_reference("stop", host=host, config_text=conf)
    assert ref.code == 0 and ref.out == ""
    changing = [c["argv"] for c in host.calls()[calls:]
                if {"managedsave", "shutdown", "destroy"} & set(c["argv"])]
    assert changing == []
    assert host.list_file.read_text() == saved and host.managed_saved() == {"web", "db"}
    # boot: libvirt-guests starts first and resumes them; we have nothing left to do
    assert reference.run_reference("start", host=host, config_text=conf).code == 0
    assert host.active() == {"web", "db"}
    calls = len(host.calls())
    assert host.run("start").code == 0
    assert not [c for c in host.calls()[calls:] if "start" in c["argv"]]


# ---------------------------------------------------------------------------
# the Debian package (make deb; packaging/debian)
# ---------------------------------------------------------------------------
DEBIAN = REPO / "packaging" / "debian"


def test_debian_changelog_version_is_the_package_version() -> None:
    import virtguests

    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.match(r"virtguests \(([^)]+)\) ", first)
    assert first.split("(", 1)[1].split(")", 1)[0] == virtguests.__version__
    assert (DEBIAN / "source" / "format").read_text() == "3.0 (native)\n"


def test_debian_control_depends() -> None:
    control = (DEBIAN / "control").read_text()
    binary = control.split("\nPackage: virtguests\n", 1)[1]
    depends = re.search(r"^Depends:(.*?)^\S", binary, re.MULTILINE | re.DOTALL)
    assert depends is not None
    assert [d.strip() for d in depends.group(1).split(",") if d.strip()] == [
        "python3 (>= 3.9)", "python3-sh (>= 1.14)", "python3-yaml (>= 6.0)", "libvirt-clients",
        "${python3:Depends}", "${misc:Depends}"]
    # the versions virtguests.deps accepts (Debian 12: python3-sh 1.14.2, python3-yaml 6.0)
    from virtguests import deps

    assert deps.SUPPORTED["sh"][1] == (1, 14) and deps.SUPPORTED["PyYAML"][1] == (6, 0)


def _deb_field(info: str, field: str) -> str:
    match = re.search(rf"^ {field}: (.*)$", info, re.MULTILINE)
    assert match, field
    return match.group(1)


@pytest.fixture(scope="module")
def built_deb() -> Path:
    """``make deb``, in CI only: it needs debhelper and dh-python (.ci/install-deb-deps)."""
    if not _required():
        pytest.skip("make deb builds a Debian package (20 s, debhelper, dh-python): "
                    "run with CI=true after .ci/install-deb-deps")
    for tool in ("dpkg-buildpackage", "dh", "pybuild", "dpkg-deb"):
        need(tool)
    before = sorted(p.relative_to(DEBIAN) for p in DEBIAN.rglob("*"))
    result = _run([need("make"), "-C", str(REPO), "--no-print-directory", "deb"], timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # dpkg-buildpackage ran on a copy: nothing it writes lands in the tree
    assert sorted(p.relative_to(DEBIAN) for p in DEBIAN.rglob("*")) == before
    debs = sorted((REPO / "build").glob("virtguests_*_all.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def test_deb_metadata_and_maintainer_scripts(built_deb: Path, tmp_path: Path) -> None:
    import virtguests

    info = _run(["dpkg-deb", "-I", str(built_deb)]).stdout
    assert _deb_field(info, "Package") == "virtguests"
    assert _deb_field(info, "Version") == virtguests.__version__
    assert _deb_field(info, "Architecture") == "all"
    depends = [d.strip() for d in _deb_field(info, "Depends").split(",")]
    for dep in ("python3 (>= 3.9)", "python3-sh (>= 1.14)", "python3-yaml (>= 6.0)",
                "libvirt-clients"):
        assert dep in depends
    control = tmp_path / "control"
    assert _run(["dpkg-deb", "-e", str(built_deb), str(control)]).returncode == 0
    # the init script is the only conffile: /etc/default/libvirt-guests is libvirt's
    assert (control / "conffiles").read_text().split() == ["/etc/init.d/virtguests"]
    scripts = {name: (control / name).read_text() for name in
               ("preinst", "postinst", "prerm", "postrm") if (control / name).exists()}
    everything = "\n".join(scripts.values())
    # installing or upgrading never enables, starts or restarts anything
    assert "deb-systemd-invoke" not in scripts["postinst"]
    assert "invoke-rc.d" not in scripts["postinst"]
    assert "defaults-disabled" in scripts["postinst"]
    # enable only re-creates what the admin had enabled (was-enabled)
    lines = scripts["postinst"].splitlines()
    for n, line in enumerate(lines):
        if "deb-systemd-helper enable" in line:
            assert any("was-enabled" in before for before in lines[max(0, n - 3):n]), line
    assert not re.search(r"\b(restart|try-restart|reload-or-restart)\b", everything)
    # removal (only) stops it; an upgrade's prerm does not
    assert 'if [ "$1" = remove ]' in scripts["prerm"]
    assert "deb-systemd-invoke stop virtguests.service" in scripts["prerm"]


def test_deb_contents(built_deb: Path, tmp_path: Path) -> None:
    listing = _run(["dpkg-deb", "-c", str(built_deb)]).stdout
    files = {line.split()[5].lstrip("."): line.split()[0] for line in listing.splitlines()
             if not line.startswith("d")}
    assert files["/usr/bin/virtguests"] == "-rwxr-xr-x"
    assert files["/etc/init.d/virtguests"] == "-rwxr-xr-x"
    for path in ("/lib/systemd/system/virtguests.service",
                 "/usr/share/man/man8/virtguests.8.gz",
                 "/usr/share/doc/virtguests/README.Debian",
                 "/usr/share/doc/virtguests/examples/libvirt-guests",
                 "/usr/share/doc/virtguests/copyright",
                 "/usr/lib/python3/dist-packages/virtguests/cli.py"):
        assert files[path] == "-rw-r--r--", path
    assert [p for p in files if p.startswith("/usr/bin/")] == ["/usr/bin/virtguests"]
    assert not [p for p in files if p.startswith("/etc/") and p != "/etc/init.d/virtguests"]
    assert not [p for p in files if "/tests/" in p or "/tools/" in p]
    root = tmp_path / "root"
    assert _run(["dpkg-deb", "-x", str(built_deb), str(root)]).returncode == 0
    command = (root / "usr/bin/virtguests").read_text()
    assert command.startswith("#!/usr/bin/python3\n")
    unit = (root / "lib/systemd/system/virtguests.service").read_text()
    assert unit == UNIT.read_text().replace("@BINDIR@", "/usr/bin")
    init = (root / "etc/init.d/virtguests").read_text()
    assert init == INIT.read_text().replace("@BINDIR@", "/usr/bin")
    example = (root / "usr/share/doc/virtguests/examples/libvirt-guests").read_text()
    assert example == mkconfig.convert(MAN_SOURCE.read_text())


def test_deb_lintian_reports_no_error(built_deb: Path) -> None:
    lintian = need("lintian")
    result = _run([lintian, "--fail-on", "error", str(built_deb)], timeout=600)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert (result.returncode, errors) == (0, []), result.stdout + result.stderr
