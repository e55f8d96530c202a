"""Golden transcripts: what virtguests prints and which virsh calls it makes, per scenario.

Each scenario runs in-process (``run_inprocess``: the fake virsh, virtual time) on a
fresh ``FakeHost`` and is compared with ``tests/transcripts/NAME.txt``: per run the
command line, the exit status, stdout, stderr, the virsh calls (in the order they were
made, with the virtual second each began and its exit status) and the list file after
it.  A difference fails with a unified diff; ``pytest --regenerate
tests/test_transcripts.py`` rewrites the files instead, to be reviewed in ``git diff``.

Normalised, because it legitimately varies, and nothing else:

- the scenario's temporary directory is written ``<tmp>`` (in command lines and output);
- the wall-clock times of the last run in ``--json`` documents (``"started"``,
  ``"finished"``: ``time.time()``, not the virtual clock) are written ``<timestamp>``;
- calls made at the same virtual moment by more than one thread ran concurrently, so
  their order is the scheduler's: within such a moment they are listed per URI, then
  per guest (calls naming no guest first, then by UUID), each group in the order made.
  A moment with calls from one thread only is listed exactly as made.  stdout is not
  reordered: scenarios that start several guests set ``PARALLEL_START=1``, since
  concurrent starts print in the order they end.

Times need no normalising: they are virtual seconds since the run began, the same on
every run.  Durations in the output are virtual too.  Written without loss, not
normalised: a character that is not printable (a guest name's newline inside an argv,
a carriage return, an escape) is written as a Python escape (``\\r``, ``\\x1b``) and a
backslash as ``\\\\``; output lines are split on newlines only; output without a final
newline ends with the line ``\\ no newline at end``.  A virsh call killed at its
timeout is listed with ``killed`` for its exit status.
"""

from __future__ import annotations

import ast
import difflib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtguests import state
from virtguests.model import Departure
from virtguests.testing import FakeHost, run_inprocess

TRANSCRIPTS = Path(__file__).parent / "transcripts"
START = 1_000_000.0
"""Where ``run_inprocess``'s virtual clock starts."""
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                  r"[0-9a-fA-F]{12}$")

TIMESTAMP = re.compile(r'^(\s*"(?:started|finished)": )[0-9.e+-]+(?=,?$)', re.MULTILINE)


def escaped(text: str) -> str:
    """*text* with every character that is not printable written as a Python escape."""
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    if char in "\t\r\n":
        return repr(char)[1:-1]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def text_lines(text: str) -> list[str]:
    if not text:
        return []
    lines = [escaped(line) for line in text.split("\n")]
    if lines[-1] == "":
        return lines[:-1]
    return [*lines, "\\ no newline at end"]


def _subject(argv: list[str]) -> tuple[str, str]:
    """(URI, guest UUID or "") that one call is about."""
    uri = argv[1] if argv[:1] in (["-c"], ["--connect"]) and len(argv) > 1 else "default"
    guest = next((arg for arg in argv if UUID.match(arg)), "")
    return uri, guest


def in_order(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls in the order made; concurrent ones (see the module doc) canonically."""
    made = sorted(calls, key=lambda call: call["seq"])
    out: list[dict[str, Any]] = []
    index = 0
    while index < len(made):
        end = index
        while end < len(made) and made[end]["virtual_start"] == made[index]["virtual_start"]:
            end += 1
        moment = made[index:end]
        if len({call["thread"] for call in moment}) > 1:
            moment = sorted(moment, key=lambda call: _subject(call["argv"]))  # stable
        out += moment
        index = end
    return out


@dataclass
class Transcript:
    """The runs of one scenario, rendered as the golden file holds them."""

    host: FakeHost
    lines: list[str] = field(default_factory=list)
    logged: int = 0

    def tmp(self, text: str) -> str:
        return text.replace(str(self.host.root), "<tmp>")

    def normalised(self, text: str) -> str:
        return TIMESTAMP.sub(r"\1<timestamp>", self.tmp(text))

    def output(self, title: str, text: str) -> None:
        self.lines.append(f"--- {title}")
        self.lines += text_lines(self.normalised(text))

    def run(self, *args: str) -> None:
        now = self.host.root / "now"  # an earlier run's clock goes on: times since this one
        began = float(now.read_text()) if now.exists() else START
        run, clock = run_inprocess(self.host, *args, log_killed=True)
        assert clock.stalls == 0  # every jump of the clock was a decided one
        calls = self.host.calls()[self.logged:]
        self.logged += len(calls)
        command = shlex.join(["virtguests", *self.host.argv(*args)])
        if self.lines:
            self.lines.append("")
        self.lines += [f"$ {escaped(self.tmp(command))}", f"exit {run.code}"]
        self.output("stdout", run.out)
        self.output("stderr", run.err)
        self.lines.append("--- virsh calls (virtual second made, exit status or killed, argv)")
        for call in in_order(calls):
            argv = escaped(self.tmp(shlex.join(call["argv"])))
            status = "killed" if call["exit"] is None else call["exit"]
            self.lines.append(f"{call['virtual_start'] - began:8.3f} {status:>6} {argv}")
        listed = self.host.list_file
        self.output("list file", listed.read_text() if listed.exists() else "")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def compare(name: str, actual: str, regenerate: bool, directory: Path = TRANSCRIPTS) -> None:
    """*actual* against ``transcripts/NAME.txt``, or rewrite that with --regenerate."""
    path = directory / f"{name}.txt"
    if regenerate:
        directory.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: run `pytest --regenerate tests/{Path(__file__).name}`"
                    " and review the new file", pytrace=False)
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                    f"{path} (golden)", f"{name} (this run)")
        pytest.fail(f"the transcript differs from {path}; if the change is intended, run"
                    f" `pytest --regenerate tests/{Path(__file__).name}` and review the diff:\n"
                    + "".join(diff), pytrace=False)


@dataclass(frozen=True)
class Scenario:
    about: str
    host: dict[str, Any]
    config: str
    steps: tuple[tuple[str, ...], ...]
    prepare: Optional[Callable[[FakeHost], None]] = None


def uri(*guests: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"guests": list(guests), **options}


def one_uri(*guests: dict[str, Any], faults: Optional[list[dict[str, Any]]] = None
            ) -> dict[str, Any]:
    host: dict[str, Any] = {"uris": {"default": uri(*guests)}}
    if faults:
        host["faults"] = faults
    return host


UUIDS = {name: f"5a1e0000-0000-4000-8000-00000000000{n}"
         for n, name in enumerate(["web", "db", "idle", "off", "stubborn", "batch"], 1)}


def guest(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "uuid": UUIDS[name], **keys}


FOUR = one_uri(guest("web", save_seconds=2, agent=True), guest("db", save_seconds=7),
               guest("idle", state="paused"), guest("off", state="shutoff"))
SHUTDOWN = one_uri(guest("web", shutdown_seconds=4), guest("stubborn", ignore_shutdown=True),
                   guest("off", state="shutoff"))


def libvirt_guests_list(host: FakeHost) -> None:
    """The list file as libvirt-guests writes it: the URI, then bare UUIDs."""
    host.list_file.write_text(f"default {UUIDS['web']} {UUIDS['db']}\n")


HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"


def migrated_away(host: FakeHost, *names: str) -> None:
    """The migrated record a stop that sent *names* to PEER leaves."""
    state.write_migrated(host.state_dir / "virtguests-migrated",
                         [Departure(UUIDS[n], n, HOME, PEER) for n in names])


def away_and_saved(host: FakeHost) -> None:
    migrated_away(host, "web", "batch", "idle", "stubborn")
    host.list_file.write_text(f"{HOME} {UUIDS['db']}\n")


CONTROL = "tab\tcr\rbell\x07\x1b[31mred\x1b[0m\u202e"
"""A tenant-chosen name: what a terminal or a log reader would misread."""
NEWLINE = "two\nlines"
"""Recent libvirt refuses a newline in a name when a guest is defined (not checked here);
a fake host accepts one."""

SCENARIOS: dict[str, Scenario] = {
    "stop-suspend": Scenario(
        "stop saves the running and the paused guests one by one (the default)",
        FOUR, "", (("stop",),)),
    "stop-shutdown-serial-poweroff": Scenario(
        "serial shutdown; the guest that ignores it is powered off when its timeout ends",
        SHUTDOWN, 'ON_SHUTDOWN="shutdown poweroff"\nSHUTDOWN_TIMEOUT=30\n', (("stop",),)),
    "stop-shutdown-serial-left-running": Scenario(
        "serial shutdown; the guest that ignores it is left running at its timeout (exit 0, as"
        " libvirt-guests)",
        SHUTDOWN, "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=30\n", (("stop",),)),
    "stop-shutdown-parallel": Scenario(
        "three shutdowns at once, the fourth guest takes the first free place; the URI's"
        " timeout ends",
        one_uri(guest("web", shutdown_seconds=5), guest("db", shutdown_seconds=3),
                guest("batch", shutdown_seconds=12), guest("stubborn", ignore_shutdown=True)),
        "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=3\nSHUTDOWN_TIMEOUT=20\n", (("stop",),)),
    "start-after-stop": Scenario(
        "start resumes what stop saved and syncs the clocks (domtime --sync; only web has"
        " an agent)",
        FOUR, "SYNC_TIME=1\nPARALLEL_START=1\n", (("stop",), ("start",))),
    "start-libvirt-guests-list-file": Scenario(
        "start from a list file libvirt-guests wrote (URI, then bare UUIDs)",
        one_uri(guest("web", state="shutoff", managed_save=True),
                guest("db", state="shutoff", managed_save=True), guest("idle")),
        "PARALLEL_START=1\n", (("start",),), prepare=libvirt_guests_list),
    "status-before-and-after": Scenario(
        "status before a stop, after it and after the start",
        FOUR, "PARALLEL_START=1\n", (("status",), ("stop",), ("status",), ("start",),
                                     ("status",))),
    "json-status": Scenario(
        "--json status before and after a stop",
        FOUR, "", (("--json", "status"), ("stop",), ("--json", "status"))),
    "verbose-stop": Scenario(
        "-v stop logs every virsh call with its (virtual) duration",
        FOUR, "", (("-v", "stop"),)),
    "dry-run-stop": Scenario(
        "--dry-run stop prints the commands and changes nothing",
        FOUR, "", (("--dry-run", "stop"),)),
    "plan": Scenario(
        "plan, --json plan, then plan start after a stop",
        FOUR, 'ON_SHUTDOWN="suspend shutdown"\n',
        (("plan",), ("--json", "plan"), ("stop",), ("plan", "start"))),
    "plan-migrate": Scenario(
        "plan, --json plan and --dry-run stop with ON_SHUTDOWN=\"migrate suspend\" (one peer"
        " down): largest first, db is too large for the other peer, idle goes there, then"
        " web does not fit: db and web fall back to suspend",
        {"uris": {"default": uri(guest("web", memory_mib=2048), guest("db", memory_mib=8192),
                                 guest("idle", memory_mib=3072, state="paused"),
                                 guest("off", state="shutoff")),
                  "qemu:///peer1": uri(free_mib=4096),
                  "qemu:///peer2": uri(unreachable=True)}},
        'ON_SHUTDOWN="migrate suspend"\nMIGRATE_URIS="qemu:///peer1 qemu:///peer2"\n',
        (("plan",), ("--json", "plan"), ("--dry-run", "stop"))),
    "report": Scenario(
        "report and --json report after a stop whose save failed and escalated to shutdown",
        one_uri(guest("web"), guest("db"),
                faults=[{"cmd": "managedsave", "guest": "db", "action": "fail",
                         "error": "internal"}]),
        'ON_SHUTDOWN="suspend shutdown"\n', (("stop",), ("report",), ("--json", "report"))),
    "save-fails": Scenario(
        "a failing save: the guest stays running and recorded, stop exits 1",
        one_uri(guest("web"), guest("db"),
                faults=[{"cmd": "managedsave", "guest": "web", "action": "fail",
                         "error": "internal"}]),
        "", (("stop",), ("status",))),
    "wedged-uri": Scenario(
        "a URI whose listing hangs is given up after QUERY_TIMEOUT; the other URI is saved",
        {"uris": {"default": uri(guest("web"), guest("db")),
                  "test:///wedged": uri({"name": "far1"}, {"name": "far2"}, hang=True)}},
        'URIS="default test:///wedged"\nQUERY_TIMEOUT=5\n', (("stop",), ("status",))),
    "wedged-after-listing": Scenario(
        "every call after the listing hangs: the save and the liveness check are killed",
        one_uri(guest("web"), guest("db"),
                faults=[{"cmd": "*", "after": 1, "action": "hang"}]),
        "QUERY_TIMEOUT=5\nSAVE_TIMEOUT=12\n", (("stop",), ("start",))),
    "guest-name-control-characters": Scenario(
        "a tenant-chosen name with a tab, a carriage return, a bell, colour escapes and a"
        " bidi override",
        one_uri({"name": CONTROL, "uuid": UUIDS["web"]}, guest("db")),
        "PARALLEL_START=1\n", (("gueststatus",), ("stop",), ("report",), ("start",))),
    "guest-name-newline": Scenario(
        "a name with a newline (libvirt refuses one; the fake does not)",
        one_uri({"name": NEWLINE, "uuid": UUIDS["web"]}, guest("db")),
        "", (("gueststatus",), ("stop",), ("--json", "status"))),
    "start-brings-guests-home": Scenario(
        "start migrates the guests a stop sent to a peer home first (two at a time), then"
        " resumes the list file's; one guest is gone from its peer; status before and after",
        {"uris": {HOME: uri(guest("db", state="shutoff", managed_save=True)),
                  PEER: uri(guest("web", reason="migrated", migrate_seconds=12),
                            guest("batch", reason="migrated", migrate_seconds=4),
                            guest("idle", reason="migrated", migrate_seconds=2))}},
        f"URIS={HOME}\nPARALLEL_MIGRATE=2\n",
        (("status",), ("--json", "status"), ("plan", "start"), ("--dry-run", "start"),
         ("start",), ("status",)),
        prepare=away_and_saved),
    "start-leaves-guests-away": Scenario(
        "MIGRATE_RETURN=0: start leaves the migrated guests on their peer, still recorded",
        {"uris": {HOME: uri(), PEER: uri(guest("web", reason="migrated"))}},
        f"URIS={HOME}\nMIGRATE_RETURN=0\n", (("start",), ("status",)),
        prepare=lambda host: migrated_away(host, "web")),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transcript(name: str, tmp_path: Path, regenerate: bool) -> None:
    scenario = SCENARIOS[name]
    host = FakeHost(tmp_path, scenario.host, scenario.config)
    if scenario.prepare is not None:
        scenario.prepare(host)
    transcript = Transcript(host)
    transcript.lines.append(f"# {name}: {scenario.about} (tests/test_transcripts.py)")
    for line in scenario.config.splitlines() or ["(empty: the defaults)"]:
        transcript.lines.append(f"# config: {escaped(line)}")
    for step in scenario.steps:
        transcript.run(*step)
    compare(name, transcript.text(), regenerate)


# -- the transcript machinery itself ----------------------------------------------------


@given(st.text())
def test_escaping_loses_nothing(text: str) -> None:
    line = escaped(text)
    assert "\n" not in line and "\r" not in line and line.isprintable()
    assert ast.literal_eval('"' + line.replace('"', '\\"') + '"') == text


def test_output_without_a_final_newline_says_so() -> None:
    assert text_lines("") == []
    assert text_lines("a\n\nb\n") == ["a", "", "b"]
    assert text_lines("a\r\nb") == ["a\\r", "b", "\\ no newline at end"]


def call(seq: int, at: float, thread: str, *argv: str) -> dict[str, Any]:
    return {"seq": seq, "virtual_start": START + at, "thread": thread, "argv": list(argv)}


def test_one_thread_keeps_its_order_and_concurrent_calls_are_listed_canonically() -> None:
    a, b = UUIDS["web"], UUIDS["db"]
    serial = [call(1, 0, "uri", "managedsave", b), call(2, 0, "uri", "list", "--uuid"),
              call(3, 0, "uri", "managedsave", a)]
    assert in_order(list(reversed(serial))) == serial  # as made, not as logged
    one_way = [call(4, 1, "uri", "list"), call(5, 1, "w1", "shutdown", b),
               call(6, 1, "w2", "-c", "test:///x", "shutdown", a),
               call(7, 1, "w2", "shutdown", a), call(8, 2, "uri", "list", "--uuid")]
    other_way = [call(4, 1, "uri", "list"), call(5, 1, "w1", "shutdown", a),
                 call(6, 1, "w2", "shutdown", b),
                 call(7, 1, "w1", "-c", "test:///x", "shutdown", a),
                 call(8, 2, "uri", "list", "--uuid")]
    expected = [["list"], ["shutdown", a], ["shutdown", b], ["-c", "test:///x", "shutdown", a],
                ["list", "--uuid"]]  # per URI, then per guest; the next moment after
    assert [c["argv"] for c in in_order(one_way)] == expected
    assert [c["argv"] for c in in_order(other_way)] == expected


def test_every_transcript_file_has_its_scenario() -> None:
    """A renamed or removed scenario leaves no stale golden file behind."""
    assert sorted(path.stem for path in TRANSCRIPTS.glob("*.txt")) == sorted(SCENARIOS)


def test_a_missing_or_different_transcript_fails_and_regenerate_rewrites_it(
        tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="missing: run `pytest --regenerate"):
        compare("new", "a\nb\n", False, tmp_path)
    assert not (tmp_path / "new.txt").exists()
    compare("new", "a\nb\n", True, tmp_path)
    assert (tmp_path / "new.txt").read_text() == "a\nb\n"
    compare("new", "a\nb\n", False, tmp_path)
    with pytest.raises(pytest.fail.Exception) as failed:
        compare("new", "a\nc\n", False, tmp_path)
    assert "pytest --regenerate" in str(failed.value)
    assert "\n-b\n+c\n" in str(failed.value)  # a unified diff, golden first
    assert (tmp_path / "new.txt").read_text() == "a\nb\n"
