"""The command line: usage, exit codes, status, check, dry-run, JSON.

Most tests run ``cli.main`` and the fake virsh in-process (``run_inprocess``); the few
whose subject is the process (entry points, argv from the command line, --virsh/$VIRSH)
run ``python -m virtguests``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable

import pytest

from virtguests import observe
from virtguests.testing import FakeHost, Run, run_inprocess

USAGE = ("Usage: virtguests {start|stop|status|restart|condrestart|try-restart|reload|"
         "force-reload|gueststatus|shutdown}")

Make = Callable[..., FakeHost]


def inproc(host: FakeHost, *args: str) -> Run:
    """virtguests in this process on the jumping virtual clock, the fake virsh too."""
    return run_inprocess(host, *args)[0]


def two_guests() -> dict[str, object]:
    return {"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]}}}


@pytest.mark.parametrize("args", [[], ["bogus"], ["start", "stop"]])
def test_bad_or_missing_command_prints_usage_and_exits_2(fake_host: Make,
                                                         args: list[str]) -> None:
    host = fake_host(two_guests())
    run = inproc(host, *args)
    assert (run.code, run.out.strip()) == (2, USAGE)
    assert host.calls() == []


def test_help_exits_0_and_documents_every_command(fake_host: Make) -> None:
    run = inproc(fake_host(two_guests()), "--help")
    assert run.code == 0 and run.lines[0] == USAGE
    for word in ("start", "stop", "shutdown", "gueststatus", "condrestart", "check",
                 "--dry-run", "--state-dir", "--virsh", "--json"):
        assert word in run.out


@pytest.mark.parametrize("args", [["--version"], ["--version", "stop"], ["-q", "--version"]])
def test_version_prints_the_package_version_and_exits_0(fake_host: Make,
                                                         args: list[str]) -> None:
    """Before any command runs: ``--version stop`` stops nothing."""
    import virtguests

    host = fake_host(two_guests())
    run = inproc(host, *args)
    assert (run.code, run.out, run.err) == (0, f"virtguests {virtguests.__version__}\n", "")
    assert host.calls() == []


def test_version_is_in_the_help_and_the_man_page() -> None:
    from pathlib import Path

    from virtguests import cli

    assert "--version" in cli.HELP
    man = (Path(__file__).resolve().parent.parent / "doc/virtguests.8.md").read_text()
    assert "\n`--version`\n: Print `virtguests VERSION`" in man


def test_every_command_has_an_action() -> None:
    from virtguests import cli

    assert sorted(cli.ACTIONS) == sorted([*cli.COMMANDS, *cli.EXTRA_COMMANDS])
    for command in cli.ACTIONS:
        assert callable(cli.action(command))


def test_status_imports_only_its_own_action() -> None:
    """``status`` runs at every boot and from monitoring: it must not load the planner,
    the executor or the other commands."""
    code = ("import sys, virtguests.cli as c; c.action('status'); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('virtguests'))))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60).stdout.split()
    assert "virtguests.actions.status" in loaded
    assert not {"virtguests.actions.plan", "virtguests.actions.start", "virtguests.plan",
                "virtguests.executor", "virtguests.actions.drain"} & set(loaded), loaded


def man_page_exit_statuses() -> dict[int, str]:
    """The EXIT STATUS section of doc/virtguests.8.md: code -> its text on one line."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "doc/virtguests.8.md").read_text()
    section = text.split("\n# EXIT STATUS\n", 1)[1].split("\n# ", 1)[0]
    found: dict[int, str] = {}
    for block in section.strip().split("\n\n"):
        head, _, body = block.partition("\n")
        found[int(head.strip("`"))] = " ".join(body.lstrip(": ").split())
    return found


def test_one_exit_status_list_agrees_with_the_man_page_and_help() -> None:
    import re

    from virtguests import cli, exitstatus

    documented = man_page_exit_statuses()
    assert sorted(documented) == sorted(exitstatus.MEANING) == [0, 1, 2, 3, 5, 6]
    for code, meaning in exitstatus.MEANING.items():
        assert documented[code].replace("`", "") == meaning
    help_lines = cli.HELP.split("\nexit status:", 1)[1]  # the last paragraph
    assert [int(n) for n in re.findall(r"(\d) [a-z]", help_lines)] == sorted(exitstatus.MEANING)


def test_unknown_option_is_a_usage_error(fake_host: Make) -> None:
    """A process: argv as the command line gives it, exit status 2 from the interpreter."""
    run = fake_host(two_guests()).run("--frobnicate", "status")
    assert run.code == 2 and "--frobnicate" in run.err and USAGE in run.out


def test_python_dash_m_and_console_script_agree(fake_host: Make) -> None:
    """A process: the `python -m virtguests` entry point."""
    proc = subprocess.run([sys.executable, "-m", "virtguests", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith(USAGE)


def test_status_lifecycle(fake_host: Make) -> None:
    """Processes: status, stop and start end to end, as systemd runs them."""
    host = fake_host(two_guests())
    first = host.run("status")
    assert (first.code, first.out) == (3, "stopped, with no saved guests\n")
    assert host.run("stop").code == 0
    saved = host.run("status")
    assert (saved.code, saved.out) == (3, "stopped, with saved guests\n")
    assert host.run("start").code == 0
    started = host.run("status")
    assert (started.code, started.out) == (0, "started\n")


def test_status_json(fake_host: Make) -> None:
    host = fake_host(two_guests())
    inproc(host, "stop")
    run = inproc(host, "--json", "status")
    doc = json.loads(run.out)
    assert run.code == 3 and doc["state"] == "stopped, with saved guests"
    assert doc["list_file"]["entries"] == {"default": [host.uuid("web"), host.uuid("db")]}
    assert [g["outcome"] for g in doc["last_run"]["guests"]] == ["saved", "saved"]


def test_reload_does_nothing(fake_host: Make) -> None:
    host = fake_host(two_guests())
    for command in ("reload", "force-reload"):
        run = inproc(host, command)
        assert (run.code, run.out) == (0, "")
    assert host.calls() == []


def test_condrestart_only_when_started(fake_host: Make) -> None:
    host = fake_host(two_guests())
    assert inproc(host, "condrestart").code == 0
    assert host.calls() == []
    inproc(host, "start")
    run = inproc(host, "try-restart")
    assert run.code == 0
    assert "Suspending web: done" in run.lines and "Resuming guest web: done" in run.lines
    assert host.active() == {"web", "db"}


def test_restart_stops_then_starts(fake_host: Make) -> None:
    host = fake_host(two_guests())
    run = inproc(host, "restart")
    assert run.code == 0
    assert run.lines.index("Suspending db: done") < run.lines.index("Resuming guest web: done")
    assert not host.list_file.exists() and host.active() == {"web", "db"}


def test_check_reports_every_problem_and_exits_6(fake_host: Make) -> None:
    host = fake_host(two_guests(), "ON_BOOT=maybe\nSTART_DELAY=-3\nFOO=1\n")
    run = inproc(host, "check")
    assert run.code == 6
    path = host.config_file
    assert f"{path}:1: ON_BOOT: invalid value 'maybe' (allowed: start, ignore)" in run.err
    assert f"{path}:2: START_DELAY: must be equal or greater than 0" in run.err
    assert f"{path}:3: FOO: unknown variable, ignored" in run.err
    host.set_config("ON_BOOT=ignore\n")
    ok = inproc(host, "check")
    assert ok.code == 0 and ok.out == f"{path}: OK\n"


@pytest.mark.parametrize("command", ["gueststatus", "restart", "reload", "condrestart"])
def test_invalid_config_makes_other_commands_refuse(fake_host: Make, command: str) -> None:
    host = fake_host(two_guests(), "ON_SHUTDOWN=hibernate\n")
    inproc(host, "stop")  # leaves a list file for start to refuse to act on
    before = host.list_file.read_text()
    calls = len(host.calls())
    run = inproc(host, command)
    assert run.code == 6
    assert "ON_SHUTDOWN: invalid action 'hibernate'" in run.err
    assert len(host.calls()) == calls and host.list_file.read_text() == before


def test_stop_with_invalid_config_still_protects_guests_then_exits_6(fake_host: Make) -> None:
    host = fake_host(two_guests(), "ON_SHUTDOWN=hibernate\nSHUTDOWN_TIMEOUT=-1\n")
    run = inproc(host, "stop")
    assert run.code == 6
    assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
    assert "SHUTDOWN_TIMEOUT: must be equal or greater than 0" in run.err
    assert host.managed_saved() == {"web", "db"}


def test_missing_explicit_config_is_an_error(fake_host: Make) -> None:
    host = fake_host(two_guests())
    host.config_file.unlink()
    run = inproc(host, "start")
    assert run.code == 6 and f"{host.config_file}: config file does not exist" in run.err
    status = inproc(host, "status")  # needs nothing from the config: answers, with a warning
    assert status.code == 3 and f"{host.config_file}: config file does not exist" in status.err


def test_dry_run_stop_prints_exact_commands_and_changes_nothing(fake_host: Make) -> None:
    host = fake_host(two_guests(), "BYPASS_CACHE=1\n")
    run = inproc(host, "--dry-run", "stop")
    web, db = host.uuid("web"), host.uuid("db")
    assert run.code == 0
    virsh = host.bin / "virsh"
    assert run.lines[-2:] == [f"{virsh} managedsave --bypass-cache {web}",
                              f"{virsh} managedsave --bypass-cache {db}"]
    assert not host.list_file.exists() and host.active() == {"web", "db"}
    assert set(host.verbs()) == {"list", "echo"}


def test_dry_run_start(fake_host: Make) -> None:
    host = fake_host(two_guests(), "SYNC_TIME=1\n")
    inproc(host, "stop")
    after_stop = len(host.commands())
    run = inproc(host, "-n", "start")
    web, db = host.uuid("web"), host.uuid("db")
    virsh = host.bin / "virsh"
    assert run.lines[-4:] == [f"{virsh} start {web}", f"{virsh} domtime --sync {web}",
                              f"{virsh} start {db}", f"{virsh} domtime --sync {db}"]
    assert host.list_file.exists() and host.active() == set()
    assert len(host.commands()) == after_stop, "names from the stop: nothing to list"
    plan = inproc(host, "plan", "start")
    assert plan.lines[:2] == ["default:", "  (not listed: names from the last stop; virsh "
                              "start reports guests already running)"]
    assert f"{virsh} start {web}" in plan.out


def test_gueststatus_prints_each_uri_table(fake_host: Make) -> None:
    host = fake_host({"uris": {
        "default": {"guests": [{"name": "web"}]},
        "test:///other": {"guests": [{"name": "x"}, {"name": "y", "state": "shutoff"}]},
        "test:///down": {"unreachable": True}}},
        'URIS="default test:///other test:///down"\nCONNECT_RETRIES=0\n')
    run = inproc(host, "gueststatus")
    table_web = host.virsh("list").stdout
    table_other = host.virsh("-c", "test:///other", "list").stdout
    assert run.out == ("* default URI:\n" + table_web + "* test:///other URI:\n" + table_other
                       + "* test:///down URI:\n\n")
    assert run.code == 1 and "test:///down" in run.err


def test_gueststatus_json(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [
        {"name": "web"}, {"name": "gone", "state": "shutoff", "managed_save": True},
        {"name": "tmp", "persistent": False}]}}})
    doc = json.loads(inproc(host, "--json", "gueststatus").out)
    guests = {g["name"]: g for g in doc["uris"][0]["guests"]}
    assert guests["web"]["active"] and guests["web"]["persistent"]
    assert guests["gone"]["managed_save"] and not guests["gone"]["active"]
    assert not guests["tmp"]["persistent"]


def test_virsh_path_option_and_env(fake_host: Make) -> None:
    """Processes: $VIRSH and --virsh against a PATH without the fake; the dry run end to
    end."""
    host = fake_host(two_guests())
    shim = str(host.bin / "virsh")
    env = host.env()
    env["PATH"] = "/usr/bin:/bin"
    for extra_args, extra_env in ((["--virsh", shim], {}), ([], {"VIRSH": shim})):
        proc = subprocess.run([sys.executable, "-m", "virtguests", *host.argv(*extra_args,
                                                                              "-n", "stop")],
                              env={**env, **extra_env}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "Running guests on default URI: web, db" in proc.stdout


def test_missing_virsh_is_a_clear_error(fake_host: Make) -> None:
    """A process: --virsh names a program that cannot be started (run_inprocess runs only
    the fake)."""
    host = fake_host(two_guests(), "CONNECT_RETRIES=0\n")
    run = host.run("--virsh", "/nonexistent/virsh", "stop")
    assert run.code == 1
    assert "cannot run '/nonexistent/virsh'" in run.err and "Traceback" not in run.err


def test_quiet_prints_only_errors(fake_host: Make) -> None:
    host = fake_host(two_guests(), "FOO=1\n")
    run = inproc(host, "-q", "stop")
    assert run.code == 0 and run.out == "" and run.err == ""


def test_verbose_logs_each_virsh_command(fake_host: Make) -> None:
    host = fake_host(two_guests())
    run = inproc(host, "-v", "stop")
    listing = shlex.quote(observe.batch(observe.RUNNING))
    assert f"virtguests: virsh: {host.bin / 'virsh'} {listing} (" in run.err
    assert f"managedsave {host.uuid('web')} (" in run.err
    calls = [ln for ln in run.err.splitlines() if ln.startswith("virtguests: virsh: ")]
    assert run.err.splitlines()[-1] == (f"virtguests: virsh on default: {len(calls)} "
                                        f"processes, {len(calls)} connections")
    assert "virsh on" not in inproc(host, "-v", "status").err  # no virsh, no line
    assert "virsh on" not in inproc(host, "stop").err  # only with -v


@pytest.mark.parametrize("args", [
    ["--state-dir", "", "status"], ["--config", "", "status"], ["--virsh", "", "stop"],
    ["--state-dir=", "stop"], ["plan", "start", "extra"], ["plan", "later"],
    ["status", "now"], ["stop", "--", "extra"], ["gueststatus", "all"]])
def test_what_the_cli_cannot_mean_is_a_usage_error(fake_host: Make, args: list[str]) -> None:
    host = fake_host(two_guests())
    run = inproc(host, *args)
    assert (run.code, run.out.strip()) == (2, USAGE), run.err
    assert run.err.startswith("virtguests: error: ") and "Traceback" not in run.err
    assert host.calls() == []


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_is_one_line_and_exit_1_traceback_only_with_v(
        fake_host: Make, monkeypatch: pytest.MonkeyPatch, verbose: bool) -> None:
    import io

    from virtguests import cli
    from virtguests.actions import status

    def broken(ctx: object) -> int:
        raise OverflowError("timeout value is too large")

    monkeypatch.setattr(status, "run_status", broken)
    host = fake_host(two_guests())
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(host.argv(*(["-v"] if verbose else []), "status"), environ=host.env(),
                    out=out, err=err)
    assert code == 1
    first = err.getvalue().splitlines()[0]
    assert first.startswith("virtguests: error: internal error, please report it: "
                            "running virtguests: OverflowError: timeout value is too large")
    assert ("Traceback" in err.getvalue()) is verbose
    assert ("(run with -v for the traceback)" in first) is not verbose
