"""The fake virsh: (a) it replays the real-virsh recordings byte for byte,
(b) its simulated host behaves (timing on a virtual clock, failures, hangs,
unreachable hosts, the call log, concurrency).

Most calls are answered in this process by the fake's own entry points (``ask``: the
same answer, bytes and call log line as its process; a process per call was most of
this file's time). Processes stay where they are the subject: the command line, exit
codes and the call log of the console entry point, a sample of the replays, calls
that hang or wait for virtual time (``popen``), signals, concurrent processes and the
shim.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sizes import examples
from virtguests import virshout
from virtguests.testing import fixtures_dir, write_shim
from virtguests.testing.fakevirsh import jsonfile
from virtguests.testing.harness import ask
from virtguests.testing.recordings import load_yaml

FIXTURES = Path(fixtures_dir())
TEST_NS = "{http://libvirt.org/schemas/domain/test/1.0}"

# recordings the fake deliberately does not reproduce
NOT_REPLAYED = {
    "test-unknown-command": "unknown commands fail loudly with exit 2 in the fake",
    "test-unknown-option": "unknown options fail loudly with exit 2 in the fake",
    "test-dominfo-running": "the fake's guests have no memory from the host XML",
    "test-dominfo-saved": "the fake's guests have no memory from the host XML",
}


@pytest.fixture(scope="session")
def virsh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shim(tmp_path_factory.mktemp("bin"))


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTGUESTS_", "LC_", "LIBVIRT_")) and k != "LANG"
    }
    env["LC_ALL"] = "C"
    env["VIRTGUESTS_FIXTURES"] = str(FIXTURES)
    return env


def run(
    virsh: Path, env: dict[str, str], *argv: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """*virsh* as a process."""
    return subprocess.run(
        [str(virsh), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ask_text(
    virsh: Path, env: dict[str, str], *argv: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """*virsh* asked in this process, its output read back as ``run`` reads a process's
    (``text=True``: UTF-8, universal newlines)."""
    raw = ask(virsh, argv, env, timeout)

    def text(data: bytes) -> str:
        return data.decode().replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess(raw.args, raw.returncode, text(raw.stdout),
                                       text(raw.stderr))


# ---------------------------------------------------------------------------
# (a) replay the recordings
# ---------------------------------------------------------------------------
def host_from_test_xml(xml_path: Path, uri: str) -> dict[str, Any]:
    """The fake host equivalent to a libvirt test-driver host XML."""
    guests = []
    for dom in ET.parse(xml_path).getroot().findall("domain"):
        runstate = dom.findtext(f"{TEST_NS}runstate")
        guests.append(
            {
                "name": dom.findtext("name"),
                "uuid": dom.findtext("uuid"),
                "state": {None: "running", "1": "running", "3": "paused", "5": "shutoff"}[runstate],
                "persistent": dom.find(f"{TEST_NS}transient") is None,
                "managed_save": dom.findtext(f"{TEST_NS}hasmanagedsave") == "yes",
            }
        )
    return {"uris": {uri: {"driver": "test", "guests": guests}}}


def load_fixture(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def _one_shot(path: Path) -> Optional[dict[str, Any]]:
    """The recording of one virsh process, or None for a session's (fed on stdin:
    tests/test_session.py).  libyaml at collection, which every xdist worker repeats
    (1 s a worker in pure Python); the tests read their recording with load_fixture."""
    doc: dict[str, Any] = load_yaml(str(path))
    return None if "stdin" in doc else doc


_RECORDED = {p: _one_shot(p) for p in FIXTURES.glob("[tn]*-*.yaml")}
REPLAY = sorted(
    p
    for p, doc in _RECORDED.items()
    if p.stem.startswith("test-") and p.stem not in NOT_REPLAYED and doc is not None
    and (doc["uri"] or "").startswith("test:///FIXTURES/hosts/")
)
NOHOST = sorted(p for p, doc in _RECORDED.items()
                if p.stem.startswith("nohost-") and p.stem != "nohost-version"
                and doc is not None)


def test_replay_covers_the_recordings() -> None:
    assert len(REPLAY) >= 100
    assert not set(NOT_REPLAYED) - {p.stem for p in FIXTURES.glob("*.yaml")}


REPLAY_AS_PROCESS = ["test-batch-every-basic", "test-domstate-missing-name",
                     "test-list-all-names", "test-list-all-names-utf8", "test-managedsave-ok"]
"""Replayed by the fake as a process too (command string, an error, names that are not
ASCII through a real pipe, a state change): its bytes on the real stdout."""


@pytest.mark.parametrize(
    ("path", "process"),
    [(p, False) for p in REPLAY] + [(FIXTURES / f"{stem}.yaml", True)
                                    for stem in REPLAY_AS_PROCESS],
    ids=[p.stem for p in REPLAY] + [f"{stem}-process" for stem in REPLAY_AS_PROCESS])
def test_replay_test_driver_recording(path: Path, process: bool, virsh: Path,
                                      tmp_path: Path) -> None:
    doc = load_fixture(path)
    uri = doc["uri"].replace("/FIXTURES", str(FIXTURES))
    xml = FIXTURES / doc["uri"][len("test:///FIXTURES/") :]
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump(host_from_test_xml(xml, uri), allow_unicode=True))
    env = base_env()
    env.update(doc.get("env") or {})
    env["VIRTGUESTS_FAKE_HOST"] = str(host)
    argv = [str(virsh), "-c", uri, *doc["argv"]]
    if process:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=20)
    else:
        proc = ask(virsh, argv[1:], env)
    expected_out = doc["stdout"].replace("/FIXTURES", str(FIXTURES))
    assert proc.stdout.decode("utf-8", "surrogateescape") == expected_out
    assert proc.stderr.decode("utf-8", "surrogateescape") == doc["stderr"]
    assert proc.returncode == doc["exit"]


@pytest.mark.parametrize("path", NOHOST, ids=[p.stem for p in NOHOST])
def test_replay_unreachable_recording(path: Path, virsh: Path, tmp_path: Path) -> None:
    doc = load_fixture(path)
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump({"uris": {doc["uri"]: {"unreachable": True}}}))
    env = base_env() | {"VIRTGUESTS_FAKE_HOST": str(host)}
    proc = ask_text(virsh, env, "-c", doc["uri"], *doc["argv"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        doc["exit"],
        doc["stdout"],
        doc["stderr"],
    )


def test_version_matches_recording(virsh: Path) -> None:
    doc = load_fixture(FIXTURES / "nohost-version.yaml")
    proc = run(virsh, base_env(), "--version")
    assert (proc.returncode, proc.stdout) == (0, doc["stdout"])


# ---------------------------------------------------------------------------
# (b) behaviour
# ---------------------------------------------------------------------------
class Host:
    """A fake host in tmp_path, with a virtual clock and a call log."""

    def __init__(self, virsh: Path, tmp: Path, spec: dict[str, Any], clock: bool = True) -> None:
        self.virsh = virsh
        self.path = tmp / "host.yaml"
        self.path.write_text(yaml.safe_dump(spec))
        self.log = tmp / "calls.jsonl"
        self.now_file: Optional[Path] = tmp / "now" if clock else None
        self.env = base_env() | {
            "VIRTGUESTS_FAKE_HOST": str(self.path),
            "VIRTGUESTS_FAKE_LOG": str(self.log),
        }
        if self.now_file is not None:
            self.set_now(1000.0)
            self.env["VIRTGUESTS_FAKE_NOW_FILE"] = str(self.now_file)

    def set_now(self, t: float) -> None:
        assert self.now_file is not None
        tmp = self.now_file.with_suffix(".tmp")
        tmp.write_text(repr(t))
        tmp.replace(self.now_file)

    def __call__(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """A call answered in this process (``ask``)."""
        return ask_text(self.virsh, self.env, *argv, timeout=timeout)

    def process(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """A call as a process of its own."""
        return run(self.virsh, self.env, *argv, timeout=timeout)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.virsh), *argv],
            env={"VIRTGUESTS_FAKE_JOURNAL": str(self.path.parent / "popen.jsonl")} | self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def dispatched(self, proc: subprocess.Popen[str]) -> None:
        """Wait (with a deadline) until the fake has taken *proc*'s call: only then may the
        test move the virtual clock, whatever the load (a late start would read the new
        time as its own start)."""
        journal = Path(self.env.get("VIRTGUESTS_FAKE_JOURNAL",
                                    self.path.parent / "popen.jsonl"))

        def seen() -> bool:
            return journal.exists() and any(
                json.loads(line)["pid"] == proc.pid for line in journal.read_text().split("\n")
                if line)

        wait_for(seen)

    def state(self, dom: str) -> str:
        return self("-q", "domstate", "--reason", dom).stdout.strip()

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def one_uri(*guests: dict[str, Any], **conf: Any) -> dict[str, Any]:
    return {"uris": {"default": {"guests": list(guests), **conf}}}


def wait_for(pred: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def data_processed(out: str) -> float:
    m = re.search(r"^Data processed:\s+([\d.]+) (B|KiB|MiB|GiB)$", out, re.M)
    assert m, out
    return float(m.group(1)) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[m.group(2)]


def test_managedsave_takes_save_seconds_of_virtual_time(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "save_seconds": 10, "memory_mib": 2048}))
    job = h("domjobinfo", "g")
    assert job.stdout == "Job type:         None        \n\n"
    saver = h.popen("managedsave", "g")
    wait_for(lambda: h.state("g") == "paused (saving)")
    h.set_now(1002.0)
    first = h("domjobinfo", "g").stdout
    assert first.startswith("Job type:         Unbounded   \nOperation:        Save        \n")
    assert "Time elapsed:     2000         ms\n" in first
    h.set_now(1005.0)
    second = h("domjobinfo", "g").stdout
    assert data_processed(first) < data_processed(second) < 2 * 2**30
    assert data_processed(second) == pytest.approx(2**30, rel=1e-3)
    time.sleep(0.2)
    assert saver.poll() is None, "managedsave returned before its virtual time"
    h.set_now(1010.0)
    out, err = saver.communicate(timeout=10)
    assert (saver.returncode, out, err) == (0, "\nDomain 'g' state saved by libvirt\n\n", "")
    assert h.state("g") == "shut off (saved)"
    assert h("-q", "list", "--all", "--with-managed-save", "--name").stdout == "g\n"
    assert h("start", "g").stdout == "Domain 'g' started\n\n"
    assert h.state("g") == "running (restored)"
    assert h("-q", "list", "--with-managed-save", "--all", "--name").stdout == ""


def test_start_from_uuid_and_ids_increment(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "a"}, {"name": "b", "state": "shutoff"}))
    uuid = h("domuuid", "b").stdout.strip()
    assert h("domid", uuid).stdout == "-\n\n"
    assert h("start", "--bypass-cache", uuid).stdout == "Domain 'b' started\n\n"
    assert h("domid", "b").stdout == "2\n\n"
    assert h("destroy", "a").returncode == 0
    assert h("start", "a").returncode == 0
    assert h("domid", "a").stdout == "3\n\n"
    assert h("domname", "3").stdout == "a\n\n"
    r = h("start", "a")
    assert (r.returncode, r.stderr) == (1, "error: Domain is already active\n")


def test_shutdown_takes_shutdown_seconds(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "shutdown_seconds": 30}))
    r = h("shutdown", "g")
    assert (r.returncode, r.stdout) == (0, "Domain 'g' is being shutdown\n\n")
    h.set_now(1029.9)
    assert h.state("g") == "running (booted)"
    assert h("-q", "list", "--state-running", "--name").stdout == "g\n"
    h.set_now(1030.0)
    assert h.state("g") == "shut off (shutdown)"
    r = h("shutdown", "g")
    assert r.returncode == 1
    assert "domain is not running" in r.stderr


def test_ignore_shutdown(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "ignore_shutdown": True}))
    assert h("shutdown", "g").returncode == 0
    h.set_now(99999.0)
    assert h.state("g") == "running (booted)"
    assert h("destroy", "g").stdout == "Domain 'g' destroyed\n\n"
    assert h.state("g") == "shut off (destroyed)"


def test_transient_guest_disappears_when_it_stops(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "t", "persistent": False, "shutdown_seconds": 1}))
    r = h("managedsave", "t")
    assert r.returncode == 1
    assert "cannot do managed save for transient domain" in r.stderr
    assert h("shutdown", "t").returncode == 0
    h.set_now(1001.0)
    assert h("-q", "list", "--all", "--name").stdout == ""
    r = h("domstate", "t")
    assert (r.returncode, r.stderr) == (1, "error: failed to get domain 't'\n")


@pytest.mark.parametrize(
    ("key", "argv", "message"),
    [
        ("fail_save", ["managedsave", "g"], "error: Failed to save domain 'g' state\n"),
        ("fail_shutdown", ["shutdown", "g"], "error: Failed to shutdown domain 'g'\n"),
        ("fail_start", ["start", "g"], "error: Failed to start domain 'g'\n"),
    ],
)
def test_fail_flags(virsh: Path, tmp_path: Path, key: str, argv: list[str], message: str) -> None:
    state = "shutoff" if key == "fail_start" else "running"
    h = Host(virsh, tmp_path, one_uri({"name": "g", "state": state, key: True}))
    r = h(*argv)
    assert r.returncode == 1
    assert r.stdout == "\n"
    assert r.stderr.startswith(message)
    assert len(r.stderr.splitlines()) == 2
    assert h("-q", "domstate", "g").stdout == ("shut off\n" if state == "shutoff" else "running\n")


def test_domtime_sync_needs_an_agent(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g"}, {"name": "a", "agent": True}))
    r = h("domtime", "--sync", "g")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "agent" in r.stderr
    assert h("domtime", "--sync", "a").returncode == 0


def test_guest_hang_is_killable(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "hang": ["managedsave"]}))
    proc = h.popen("managedsave", "g")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)
    proc.kill()
    proc.wait(timeout=5)
    assert h.state("g") == "running (booted)"  # other commands are not blocked


def test_uri_hang_and_sigterm_is_logged(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g"}, hang=True))
    with pytest.raises(subprocess.TimeoutExpired):
        h.process("list", timeout=1.0)
    proc = h.popen("list")
    h.dispatched(proc)  # its SIGTERM handler is in place: a late start would die of it
    proc.terminate()
    assert proc.wait(timeout=5) == 143
    assert [c["exit"] for c in h.calls()] == [143]  # the killed (SIGKILL) one left no line


def test_unreachable_variants(virsh: Path, tmp_path: Path) -> None:
    spec = {
        "uris": {
            "default": {"unreachable": True},
            "qemu+ssh://h2/system": {"unreachable_calls": 2, "guests": [{"name": "x"}]},
            "qemu:///session": {"unreachable_until": 1010, "guests": [{"name": "y"}]},
        }
    }
    h = Host(virsh, tmp_path, spec)
    r = h("list")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Failed to connect socket to '/var/run/libvirt/libvirt-sock'" in r.stderr
    codes = [h("-c", "qemu+ssh://h2/system", "connect").returncode for _ in range(3)]
    assert codes == [1, 1, 0]
    assert h("-c", "qemu:///session", "list", "--name").returncode == 1
    h.set_now(1010.0)
    assert h("-c", "qemu:///session", "list", "--name").stdout == "y\n\n"


def test_log_lines(virsh: Path, tmp_path: Path) -> None:
    """The console entry point's log; ``ask`` writes the same lines."""
    h = Host(virsh, tmp_path, one_uri({"name": "g"}))
    h.process("list", "--uuid")
    h.process("domstate", "nosuch")
    h.process("frobnicate")
    h("domstate", "nosuch")
    h("frobnicate")
    *calls, asked_domstate, asked_frobnicate = h.calls()
    assert [(c["argv"], c["exit"]) for c in (asked_domstate, asked_frobnicate)] == [
        (["domstate", "nosuch"], 1), (["frobnicate"], 2)]
    assert [c["argv"] for c in calls] == [
        ["list", "--uuid"],
        ["domstate", "nosuch"],
        ["frobnicate"],
    ]
    assert [c["exit"] for c in calls] == [0, 1, 2]
    for c in calls:
        assert set(c) == {"argv", "pid", "call", "start", "end", "exit"}
        assert c["call"] == str(c["pid"])  # a process of its own (sessions: test_session)
        assert c["start"] <= c["end"]


def test_unknown_argv_fails_loudly(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g"}))
    # no command at all reads commands on stdin (tests/test_session.py)
    for argv in (["frobnicate"], ["list", "--title"], ["--debug", "list"], ["domtime", "g"]):
        r = h.process(*argv)
        assert r.returncode == 2, argv
        assert r.stderr.startswith("fakevirsh: ") and repr(argv) in r.stderr
    r = h.process("-c", "qemu:///nowhere", "list")
    assert r.returncode == 2 and "qemu:///nowhere" in r.stderr


def test_missing_host_env_is_a_clear_error(virsh: Path) -> None:
    r = run(virsh, base_env(), "list")
    assert r.returncode == 2
    assert "VIRTGUESTS_FAKE_HOST" in r.stderr


def test_bad_host_keys_are_rejected(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "save_secs": 3}))
    r = h("list")
    assert r.returncode == 2 and "save_secs" in r.stderr


def test_default_uri_from_environment(virsh: Path, tmp_path: Path) -> None:
    spec = {
        "uris": {"default": {"guests": []}, "qemu+ssh://h2/system": {"guests": [{"name": "x"}]}}
    }
    h = Host(virsh, tmp_path, spec)
    assert h("-q", "list", "--name").stdout == ""
    h.env["LIBVIRT_DEFAULT_URI"] = "qemu+ssh://h2/system"
    assert h("-q", "list", "--name").stdout == "x\n"
    assert h("uri").stdout == "qemu+ssh://h2/system\n\n"


def test_host_file_change_rebuilds_state(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g"}))
    assert h("-q", "list", "--name").stdout == "g\n"
    time.sleep(0.01)
    h.path.write_text(yaml.safe_dump(one_uri({"name": "g"}, {"name": "h2"})))
    assert h("-q", "list", "--name").stdout == "g\nh2\n"


def test_concurrent_processes_do_not_corrupt_state(virsh: Path, tmp_path: Path) -> None:
    n = 12
    guests = [{"name": f"g{i}", "state": "shutoff"} for i in range(n)]
    h = Host(virsh, tmp_path, one_uri(*guests), clock=False)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: h.process("start", f"g{i}"), range(n)))
    assert [r.returncode for r in results] == [0] * n
    ids = sorted(int(h("domid", f"g{i}").stdout) for i in range(n))
    assert ids == list(range(1, n + 1))
    # parallel saves overlap in time (the lock is not held while a save runs)
    spec = one_uri(*[{"name": f"g{i}", "save_seconds": 0.5} for i in range(n)])
    (tmp_path / "saves").mkdir()
    h2 = Host(virsh, tmp_path / "saves", spec, clock=False)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: h2.process("managedsave", f"g{i}"), range(n)))
    assert [r.returncode for r in results] == [0] * n
    assert h2("-q", "list", "--all", "--with-managed-save", "--name").stdout.split() == sorted(
        f"g{i}" for i in range(n)
    )
    saves = [c for c in h2.calls() if c["argv"][0] == "managedsave"]
    events = sorted([(c["start"], 1) for c in saves] + [(c["end"], -1) for c in saves])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    assert peak >= 2


@pytest.mark.parametrize("command", ["managedsave", "shutdown"])
def test_saving_seconds_another_jobs_save_holds_the_lock(
        virsh: Path, tmp_path: Path, command: str) -> None:
    """Someone else's managedsave: domstate says so, a second job waits for the lock."""
    h = Host(virsh, tmp_path, one_uri({"name": "g", "saving_seconds": 100}))
    assert h.state("g") == "paused (saving)"
    assert h("domjobinfo", "g").stdout.startswith("Job type:         Unbounded   \n"
                                                 "Operation:        Save        \n")
    proc = h.popen(command, "g")
    h.dispatched(proc)
    assert proc.poll() is None, "no wait for the state-change lock"
    h.set_now(1029.9)
    time.sleep(0.1)
    assert proc.poll() is None
    h.set_now(1030.0)  # LOCK_WAIT after the call: libvirt gives up on the lock
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "cannot acquire state change lock" in err
    assert h.state("g") == "paused (saving)"
    h.set_now(1100.0)
    assert h.state("g") == "shut off (saved)"
    assert h("-q", "list", "--all", "--with-managed-save", "--name").stdout == "g\n"


def domjobinfo_labels(text: str) -> list[str]:
    return [line[:17].rstrip() for line in text.splitlines() if line.strip()]


def test_saving_seconds_on_a_paused_guest_keeps_its_reason(virsh: Path, tmp_path: Path) -> None:
    """libvirt gives a guest the reason ``saving`` only when it pauses a running guest for
    the save: a guest paused before keeps its reason the whole save, and only
    domjobinfo shows the save, in the recorded format."""
    h = Host(virsh, tmp_path, one_uri({"name": "g", "state": "paused", "saving_seconds": 100}))
    assert h.state("g") == "paused (user)"
    out = h("domjobinfo", "g").stdout
    assert out.startswith("Job type:         Unbounded   \nOperation:        Save        \n")
    recorded = recording("qemu-domjobinfo-saving")["stdout"]
    assert domjobinfo_labels(out) == domjobinfo_labels(recorded)
    proc = h.popen("shutdown", "g")
    h.dispatched(proc)
    assert proc.poll() is None, "no wait for the state-change lock"
    h.set_now(1030.0)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert err == recording("qemu-shutdown-busy")["stderr"].replace(
        "0f1e7a5e-0000-4000-8000-000000000001", "g")
    assert h.state("g") == "paused (user)"
    h.set_now(1100.0)
    assert h.state("g") == "shut off (saved)"
    assert h("domjobinfo", "g").returncode == 1  # not running any more


@pytest.mark.parametrize(("state", "during"), [("running", "paused (saving)"),
                                               ("paused", "paused (user)")])
def test_managedsave_pauses_only_a_running_guest_for_the_save(
        virsh: Path, tmp_path: Path, state: str, during: str) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "state": state, "save_seconds": 10}))
    saver = h.popen("managedsave", "g")
    wait_for(lambda: "Operation:        Save" in h("domjobinfo", "g").stdout)
    assert h.state("g") == during
    h.set_now(1010.0)
    assert saver.communicate(timeout=10)[1] == "" and saver.returncode == 0
    assert h.state("g") == "shut off (saved)"


def test_a_lock_wait_ends_with_the_job_and_the_command_runs_then(
        virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "saving_seconds": 10}))
    proc = h.popen("managedsave", "g")
    h.dispatched(proc)
    h.set_now(1010.0)
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (1, "error: Failed to save domain 'g' state\nerror: "
                                         "Requested operation is not valid: domain is not "
                                         "running\n")
    assert h.state("g") == "shut off (saved)"


@pytest.mark.parametrize("command", ["managedsave", "shutdown"])
def test_a_uris_lock_wait_is_how_long_a_second_job_waits(
        virsh: Path, tmp_path: Path, command: str) -> None:
    """``lock_wait`` (libvirt: 30 s) moves when a second job gives up, nothing else."""
    h = Host(virsh, tmp_path, one_uri({"name": "g", "saving_seconds": 100}, lock_wait=2))
    proc = h.popen(command, "g")
    h.dispatched(proc)
    h.set_now(1001.9)
    time.sleep(0.1)
    assert proc.poll() is None, "gave up on the lock early"
    h.set_now(1002.0)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "cannot acquire state change lock" in err
    assert h.state("g") == "paused (saving)"


def test_destroy_during_a_save_loses_the_memory(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g", "saving_seconds": 100}))
    assert h("destroy", "g").returncode == 0
    h.set_now(2000.0)
    assert h.state("g") == "shut off (destroyed)"
    assert h("-q", "list", "--all", "--with-managed-save", "--name").stdout == ""


def test_hang_after_calls(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, one_uri({"name": "g"}, hang_after_calls=2))
    assert h.process("list", "--name").returncode == 0
    assert h.process("list --name; echo x; list --uuid").returncode == 0  # one process, one call
    with pytest.raises(subprocess.TimeoutExpired):
        h.process("domstate", "g", timeout=1.0)
    events = h.popen("event", "--loop", "--event", "lifecycle")
    h.dispatched(events)
    assert events.poll() is None
    events.kill()
    events.wait(timeout=5)


@pytest.mark.parametrize("stem", ["qemu-managedsave-busy", "qemu-shutdown-busy",
                                  "qemu-migrate-busy"])
def test_replay_busy_recordings(virsh: Path, tmp_path: Path, stem: str) -> None:
    """A second job on a guest whose save holds its job: what real virsh 9.0 printed
    after libvirt's 30 s lock wait, byte for byte."""
    doc = load_fixture(FIXTURES / f"{stem}.yaml")
    [subject] = doc["subjects"]
    h = Host(virsh, tmp_path, {"uris": {"qemu:///system": {"guests": [
        {**subject, "saving_seconds": 1000}]}}})
    proc = h.popen("-c", "qemu:///system", *doc["argv"])
    h.dispatched(proc)
    h.set_now(1030.0)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (doc["exit"], doc["stdout"], doc["stderr"])


# ---------------------------------------------------------------------------
# (b2) live migration between the URIs of one fake host
# ---------------------------------------------------------------------------
def migrate_setup() -> dict[str, Any]:
    """The fake host the migrate recordings were made on (tools/record_fixtures.py
    record_migrate): home, peer, a twin with home's host UUID, an unreachable URI; the
    guest that migrates (512 MiB) and the one whose disk only home has."""
    ok = load_fixture(FIXTURES / "qemu-migrate-ok.yaml")
    home, peer = ok["uri"], ok["argv"][-1]
    twin = load_fixture(FIXTURES / "qemu-migrate-same-host.yaml")["argv"][-1]
    unreachable = load_fixture(FIXTURES / "qemu-migrate-unreachable.yaml")["argv"][-1]
    caps = load_fixture(FIXTURES / "qemu-capabilities.yaml")["stdout"]
    host_uuid = caps.split("<uuid>", 1)[1].split("</uuid>", 1)[0]
    [mig] = ok["subjects"]
    [disk] = load_fixture(FIXTURES / "qemu-migrate-local-disk.yaml")["subjects"]
    return {
        "home": home, "peer": peer, "twin": twin, "unreachable": unreachable,
        "mig": mig, "disk": disk,
        "host": {"uris": {
            home: {"host_uuid": host_uuid, "guests": [
                {**mig, "memory_mib": 512, "migrate_seconds": 10},
                {**disk, "memory_mib": 96, "fail_migrate": True}]},
            peer: {"guests": []},
            twin: {"host_uuid": host_uuid, "guests": []},
            unreachable: {"unreachable": True},
        }},
    }


def same_as_recorded(r: subprocess.CompletedProcess[str], stem: str) -> None:
    doc = recording(stem)
    assert (r.returncode, r.stdout, r.stderr) == (doc["exit"], doc["stdout"], doc["stderr"]), stem


def test_replay_the_migrate_recordings_in_their_order(virsh: Path, tmp_path: Path) -> None:
    """The migrate group as recorded from two real daemons, call by call, on the fake:
    byte for byte, except domjobinfo's figures (its labels and operation are)."""
    setup = migrate_setup()
    home, peer, uuid = setup["home"], setup["peer"], setup["mig"]["uuid"]
    h = with_journal(Host(virsh, tmp_path, setup["host"]))
    h.env["VIRTGUESTS_FAKE_JOURNAL"] = str(h.path.parent / "popen.jsonl")
    for stem in ("qemu-capabilities", "qemu-dominfo-running", "qemu-domjobabort-none"):
        same_as_recorded(h("-c", home, *recording(stem)["argv"]), stem)
    migrate = recording("qemu-migrate-aborted")["argv"]
    proc = h.popen("-c", home, *migrate)
    h.dispatched(proc)
    h.set_now(1002.5)
    job = h("-c", home, "domjobinfo", uuid)
    held = recording("qemu-domjobinfo-migrating")["stdout"]
    assert job.stdout.startswith("Job type:         Unbounded   \nOperation:        Outgoing "
                                 "migration\n")
    assert domjobinfo_labels(job.stdout) == domjobinfo_labels(held)
    assert "Data processed:   128.000 MiB\n" in job.stdout  # 2.5 s of 10 s
    for stem, uri in (("qemu-domstate-reason-migrating", home),
                      ("qemu-domstate-reason-incoming", peer),
                      ("qemu-domjobinfo-incoming", peer),
                      ("qemu-domjobabort-migrating", home)):
        same_as_recorded(h("-c", uri, *recording(stem)["argv"]), stem)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (1, *(recording("qemu-migrate-aborted")[k]
                                                for k in ("stdout", "stderr")))
    for stem, uri in (("qemu-domstate-reason-migration-aborted", home),
                      ("qemu-domstate-migration-aborted-peer", peer),
                      ("qemu-migrate-unreachable", home), ("qemu-migrate-same-host", home),
                      ("qemu-migrate-local-disk", home), ("qemu-migrate-missing", home),
                      ("qemu-domstate-reason-migrate-refused", home)):
        same_as_recorded(h("-c", uri, *recording(stem)["argv"]), stem)
    ok = recording("qemu-migrate-ok")
    proc = h.popen("-c", home, *ok["argv"])
    h.dispatched(proc)
    h.set_now(1100.0)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (ok["exit"], ok["stdout"], ok["stderr"])
    for stem, uri in (("qemu-domstate-reason-migrated", peer),
                      ("qemu-domjobinfo-migrated", peer),
                      ("qemu-domjobinfo-migrated-away", home),
                      ("qemu-list-uuid-name-all-migrated-away", home)):
        same_as_recorded(h("-c", uri, *recording(stem)["argv"]), stem)
    back = recording("qemu-migrate-back-ok")
    proc = h.popen("-c", peer, *back["argv"])
    h.dispatched(proc)
    h.set_now(1200.0)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (back["exit"], back["stdout"], back["stderr"])
    same_as_recorded(h("-c", home, "domstate", "--reason", uuid),
                     "qemu-domstate-reason-migrated-back")
    assert h("-c", home, "destroy", uuid).returncode == 0
    for stem in ("qemu-migrate-not-running", "qemu-dominfo-shutoff"):
        same_as_recorded(h("-c", home, *recording(stem)["argv"]), stem)


def recorded_events(stem: str) -> str:
    """The event lines of a recorded ``virsh event --loop``, without what virsh printed
    when the recording's SIGINT ended it."""
    return "".join(line for line in recording(stem)["stdout"].splitlines(True)
                   if line.startswith("event 'lifecycle'"))


class EventWatch:
    """``virsh -c URI event --loop --event lifecycle`` on the fake, as a process."""

    def __init__(self, h: Host, uri: str) -> None:
        self.proc = h.popen("-c", uri, "event", "--loop", "--event", "lifecycle")
        h.dispatched(self.proc)  # its first look (the baseline) is taken
        self.out = b""

    def until(self, want: str, timeout: float = 60) -> str:
        """Everything it printed once it printed at least as many lines as *want* has, or
        exited (then the test fails on the comparison, not here)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self.out.count(b"\n") < want.count("\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no more events; so far {self.out!r}, want {want!r}"
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self.out += chunk
        return self.out.decode()

    def stop(self) -> str:
        self.proc.terminate()
        rest, _ = self.proc.communicate(timeout=10)
        return self.out.decode() + rest


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_migration_events_and_states_as_recorded(virsh: Path, tmp_path: Path,
                                                 paused: bool) -> None:
    """Both daemons' event streams during a migration and one back home, the guest's
    state where it arrived, as recorded (a paused guest arrives paused, its reason kept,
    ``Suspended Paused`` instead of ``Resumed Migrated``); the old fake printed
    ``Stopped Shutdown`` at home and ``Started Booted`` at the peer."""
    setup = migrate_setup()
    home, peer, uuid = setup["home"], setup["peer"], setup["mig"]["uuid"]
    if paused:
        setup["host"]["uris"][home]["guests"][0]["state"] = "paused"
    h = Host(virsh, tmp_path, setup["host"])
    h.env["VIRTGUESTS_FAKE_JOURNAL"] = str(h.path.parent / "popen.jsonl")
    kind = "-paused" if paused else ""
    if paused:
        same_as_recorded(h("-c", home, "domstate", "--reason", uuid),
                         "qemu-domstate-reason-paused-before-migrate")
    for way, source, dest, now in (("", home, peer, 1100.0), ("-back", peer, home, 1200.0)):
        watches = {"home": EventWatch(h, home), "peer": EventWatch(h, peer)}
        stem = f"qemu-migrate{kind}{way}-ok"
        ok = recording(stem)
        assert ok["uri"] == source and ok["argv"][-1] == dest
        proc = h.popen("-c", source, *ok["argv"])
        h.dispatched(proc)
        h.set_now(now)
        out, err = proc.communicate(timeout=10)
        assert (proc.returncode, out, err) == (ok["exit"], ok["stdout"], ok["stderr"]), stem
        for side, watch in watches.items():
            want = recorded_events(f"qemu-event-migrate{kind}{way}-{side}")
            assert watch.until(want) == want, (way, side)
            assert watch.stop() == want, (way, side)
        if not way:
            arrived = "paused" if paused else ""
            same_as_recorded(h("-c", peer, "domstate", "--reason", uuid),
                             f"qemu-domstate-reason-migrated{'-' + arrived if arrived else ''}")
            info = h("-c", peer, "dominfo", uuid).stdout
            recorded = recording(f"qemu-dominfo-migrated{kind}")["stdout"]
            for label in ("State:", "Persistent:", "Max memory:"):
                assert [line for line in info.splitlines() if line.startswith(label)] == [
                    line for line in recorded.splitlines() if line.startswith(label)], label
    back = f"qemu-domstate-reason-migrated{kind}-back"
    same_as_recorded(h("-c", home, "domstate", "--reason", uuid), back)


def test_dominfo_and_nodememstats_in_the_recorded_formats(virsh: Path, tmp_path: Path) -> None:
    recorded = recording("qemu-nodememstats")["stdout"]
    fields = {line.split(":")[0].strip(): int(line.split()[-2])
              for line in recorded.splitlines() if line}
    available = fields["free"] + fields["buffers"] + fields["cached"]
    h = Host(virsh, tmp_path, {"uris": {"qemu:///system": {
        "memory_mib": fields["total"] / 1024, "free_mib": available / 1024,
        "guests": [{"name": "g", "memory_mib": 2048}]}}})
    out = h("-c", "qemu:///system", "nodememstats").stdout
    assert [line.split(":")[0] for line in out.splitlines()] == [
        line.split(":")[0] for line in recorded.splitlines()]
    assert [len(line) for line in out.splitlines()] == [len(line) for line in
                                                       recorded.splitlines()]
    assert virshout.free_kib(["nodememstats"], out) == available
    assert f"total  : {fields['total']:>20} KiB\n" in out
    info = h("-c", "qemu:///system", "dominfo", "g").stdout
    assert virshout.max_memory_kib(["dominfo"], info) == 2048 * 1024
    assert "Name:           g\nUUID:           " in info and "Persistent:     yes\n" in info


def two_hosts(**guest: Any) -> dict[str, Any]:
    return {"uris": {"qemu:///system": {"guests": [{"name": "g", "memory_mib": 1024,
                                                      **guest}]},
                     "qemu+ssh://peer/system": {"free_mib": 4096, "guests": []}}}


HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"


@pytest.mark.parametrize(("options", "home_after", "peer_persistent"), [
    (["--live", "--persistent", "--undefinesource"], None, "yes"),
    (["--live", "--persistent"], "shut off (migrated)", "yes"),
    (["--live"], "shut off (migrated)", "no"),
])
def test_migrate_takes_its_time_and_leaves_the_guest_where_the_options_say(
        virsh: Path, tmp_path: Path, options: list[str], home_after: Optional[str],
        peer_persistent: str) -> None:
    h = Host(virsh, tmp_path, two_hosts())  # 1024 MiB at 512 MiB/s: 2 s
    before = virshout.free_kib(["n"], h("-c", PEER, "nodememstats").stdout)
    proc = h.popen("-c", HOME, "migrate", *options, "g", PEER)
    h.dispatched(proc)
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"
    assert h("-c", PEER, "-q", "list", "--all").stdout == " 1   g   paused\n"
    percents = []
    for moment in (1000.5, 1001.0, 1001.5):
        h.set_now(moment)
        percents.append(virshout.job_percent(h("-c", HOME, "domjobinfo", "g").stdout))
    assert percents == [25, 50, 75]
    time.sleep(0.1)
    assert proc.poll() is None, "migrate returned before its virtual time"
    h.set_now(1002.0)
    assert proc.communicate(timeout=10) == ("\n", "") and proc.returncode == 0
    assert h("-c", PEER, "-q", "domstate", "--reason", "g").stdout == "running (migrated)\n"
    info = h("-c", PEER, "dominfo", "g").stdout
    assert f"Persistent:     {peer_persistent}\n" in info
    home = h("-c", HOME, "-q", "domstate", "--reason", "g")
    assert (home.stdout.strip() or None) == home_after
    after = virshout.free_kib(["n"], h("-c", PEER, "nodememstats").stdout)
    assert before - after == 1024 * 1024
    assert h("-c", HOME, "domjobinfo", "g").returncode == 1  # not running here


def test_a_transient_guest_leaves_nothing_behind(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, two_hosts(persistent=False, migrate_seconds=0))
    assert h("-c", HOME, "migrate", "--live", "g", PEER).returncode == 0
    assert h("-c", HOME, "-q", "list", "--all", "--name").stdout == ""
    assert "Persistent:     no\n" in h("-c", PEER, "dominfo", "g").stdout


def test_a_definition_at_the_destination_is_replaced_and_given_back_on_abort(
        virsh: Path, tmp_path: Path) -> None:
    spec = two_hosts(migrate_seconds=10)
    uuid = str(__import__("uuid").uuid5(__import__("uuid").NAMESPACE_URL, f"{HOME}/g"))
    spec["uris"][PEER]["guests"] = [{"name": "g", "uuid": uuid, "state": "shutoff"}]
    h = Host(virsh, tmp_path, spec)
    proc = h.popen("-c", HOME, "migrate", "--live", "g", PEER)
    h.dispatched(proc)
    assert h("-c", PEER, "-q", "domstate", "--reason", "g").stdout == "paused (migrating)\n"
    assert h("-c", HOME, "domjobabort", "g").returncode == 0
    assert proc.communicate(timeout=10)[1] == recording("qemu-migrate-aborted")["stderr"]
    assert h("-c", PEER, "-q", "domstate", "--reason", "g").stdout == "shut off (unknown)\n"
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"
    # a second run arrives (the dest definition was persistent: so is the arrival)
    proc = h.popen("-c", HOME, "migrate", "--live", "g", PEER)
    h.dispatched(proc)
    h.set_now(1010.0)
    assert proc.communicate(timeout=10) == ("\n", "")
    assert "Persistent:     yes\n" in h("-c", PEER, "dominfo", "g").stdout


def test_destroy_at_home_ends_the_migration(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, two_hosts(migrate_seconds=10))
    proc = h.popen("-c", HOME, "migrate", "--live", "g", PEER)
    h.dispatched(proc)
    assert h("-c", HOME, "destroy", "g").returncode == 0
    assert proc.communicate(timeout=10)[1] == recording("qemu-migrate-aborted")["stderr"]
    assert proc.returncode == 1
    assert h("-c", PEER, "-q", "list", "--all").stdout == ""
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "shut off (destroyed)\n"


def test_sigterm_of_the_migrate_call_cancels_the_migration(virsh: Path,
                                                           tmp_path: Path) -> None:
    """libvirt cancels a migration whose client went away: the guest runs on at home."""
    h = Host(virsh, tmp_path, two_hosts(migrate_seconds=10))
    proc = h.popen("-c", HOME, "migrate", "--live", "--undefinesource", "g", PEER)
    h.dispatched(proc)
    assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == "g\n"
    proc.terminate()
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + 15
    assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == ""
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"
    assert h("-c", HOME, "domjobabort", "g").returncode == 1  # nothing left to abort
    h.set_now(1100.0)
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"


def test_sigkill_of_the_migrate_call_cancels_the_migration_at_the_next_call(
        virsh: Path, tmp_path: Path) -> None:
    """virtguests kills a timed-out call's session with SIGKILL: the fake cannot act
    then, so the next call (any URI) finds its process gone and cancels its migration,
    as libvirt does at once."""
    h = Host(virsh, tmp_path, two_hosts(migrate_seconds=10))
    proc = h.popen("-c", HOME, "migrate", "--live", "--undefinesource", "g", PEER)
    h.dispatched(proc)
    proc.kill()
    proc.communicate(timeout=10)  # reaped (a zombie would count as gone too)
    assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == ""
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"
    h.set_now(1100.0)
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == "running (booted)\n"
    zombie = h.popen("-c", HOME, "migrate", "--live", "g", PEER)
    h.dispatched(zombie)
    os.kill(zombie.pid, 9)
    wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[1].split()[0]
             == "Z")
    assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == ""
    zombie.communicate(timeout=10)


def test_a_question_that_would_wait_for_the_migration_cancels_it(virsh: Path,
                                                                 tmp_path: Path) -> None:
    """``ask`` (in-process) cannot let virtual time pass: the call ends at once, as a
    killed process would, and the migration with it."""
    h = Host(virsh, tmp_path, two_hosts(migrate_seconds=10))
    with pytest.raises(subprocess.TimeoutExpired):
        h("-c", HOME, "migrate", "--live", "g", PEER)
    assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == ""
    assert h("-c", HOME, "domjobinfo", "g").stdout == "Job type:         None        \n\n"


RECORDED_HOST = "0f1e7a5e-0000-4000-8000-0000000000a1"
"""The host UUID of the daemon the migrate group was recorded at (record_fixtures)."""


@pytest.mark.parametrize(("peer", "guest", "stem"), [
    ({"unreachable": True}, {}, "qemu-migrate-unreachable"),
    ({"host_uuid": RECORDED_HOST}, {}, "qemu-migrate-same-host"),
    ({}, {"fail_migrate": True}, "qemu-migrate-local-disk"),
    ({}, {"state": "shutoff"}, "qemu-migrate-not-running"),
])
def test_refusals_change_nothing(virsh: Path, tmp_path: Path, peer: dict[str, Any],
                                 guest: dict[str, Any], stem: str) -> None:
    spec = two_hosts(**guest)
    spec["uris"][HOME]["host_uuid"] = RECORDED_HOST
    spec["uris"][PEER].update(peer)
    h = Host(virsh, tmp_path, spec)
    before = h("-c", HOME, "-q", "domstate", "--reason", "g").stdout
    r = h("-c", HOME, "migrate", "--live", "--persistent", "g", PEER)
    doc = recording(stem)
    expected = doc["stderr"]
    if stem == "qemu-migrate-unreachable":
        expected = expected.replace("/nonexistent/sock", "/var/run/libvirt/libvirt-sock")
    assert (r.returncode, r.stdout, r.stderr) == (1, "\n", expected)
    assert h("-c", HOME, "-q", "domstate", "--reason", "g").stdout == before
    if not peer.get("unreachable"):
        assert h("-c", PEER, "-q", "list", "--all", "--name").stdout == ""


def test_capabilities_give_each_uri_its_host_uuid(virsh: Path, tmp_path: Path) -> None:
    spec = two_hosts()
    spec["uris"]["qemu:///session"] = {"host_uuid": "AAAAAAAA-0000-4000-8000-000000000001"}
    h = Host(virsh, tmp_path, spec)
    uuids = [virshout.host_uuid(["capabilities"], h("-c", uri, "capabilities").stdout)
             for uri in (HOME, PEER, "qemu:///session")]
    assert len(set(uuids)) == 3
    assert uuids[2] == "aaaaaaaa-0000-4000-8000-000000000001"
    recorded = recording("qemu-capabilities")["stdout"]
    out = h("-c", HOME, "capabilities").stdout
    assert len(out) == len(recorded)  # the recorded XML, with this host's UUID


def test_a_host_uuid_that_is_no_uuid_is_refused(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, {"uris": {HOME: {"host_uuid": "same-as-peer"}}})
    r = h.process("-c", HOME, "capabilities")
    assert (r.returncode, r.stdout) == (2, "")
    assert "host_uuid 'same-as-peer' is not a UUID" in r.stderr


def test_a_hung_peer_hangs_the_migrate_and_a_fault_rule_refuses_it(virsh: Path,
                                                                   tmp_path: Path) -> None:
    spec = two_hosts()
    spec["uris"][PEER]["hang"] = True
    h = Host(virsh, tmp_path, spec)
    with pytest.raises(subprocess.TimeoutExpired):
        h.process("-c", HOME, "migrate", "--live", "g", PEER, timeout=1.0)
    assert h("-c", HOME, "domjobinfo", "g").stdout == "Job type:         None        \n\n"
    spec = two_hosts()
    spec["faults"] = [{"cmd": "migrate", "nth": 1, "action": "fail",
                       "error": "qemu-migrate-unreachable"},
                      {"cmd": "migrate", "guest": "g", "action": "hang"}]
    peer = "qemu+unix:///system?socket=/run/peer/sock"
    spec["uris"][peer] = {"guests": []}
    h.path.write_text(yaml.safe_dump(spec))
    r = h("-c", HOME, "migrate", "--live", "g", peer)
    assert (r.returncode, r.stderr) == (1, recording("qemu-migrate-unreachable")["stderr"]
                                        .replace("/nonexistent/sock", "/run/peer/sock"))
    with pytest.raises(subprocess.TimeoutExpired):
        h("-c", HOME, "migrate", "--live", "g", PEER)


@pytest.mark.parametrize("argv", [
    ["migrate", "--live", "g"],                     # no destination
    ["migrate", "--live", "g", "qemu+ssh://nowhere/system"],  # not in the host file
    ["migrate", "--frobnicate", "g", PEER],
    ["-c", "test:///default", "migrate", "g", PEER],
    ["-c", "test:///default", "domjobabort", "g"],
])
def test_what_migration_does_not_simulate_fails_loudly(virsh: Path, tmp_path: Path,
                                                        argv: list[str]) -> None:
    spec = two_hosts()
    spec["uris"]["test:///default"] = {"guests": [{"name": "g"}]}
    h = Host(virsh, tmp_path, spec)
    r = h(*(argv if argv[0] == "-c" else ["-c", HOME, *argv]))
    assert r.returncode == 2 and r.stderr.startswith("fakevirsh: "), r


def test_migrate_options_with_values_and_the_named_destination(virsh: Path,
                                                               tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, two_hosts(migrate_seconds=0))
    r = h("-c", HOME, "migrate", "--live", "--migrateuri", "tcp://10.0.0.2",
          "--domain", "g", "--desturi", PEER)
    assert (r.returncode, r.stderr) == (0, "")
    assert h("-c", PEER, "-q", "list", "--name").stdout == "g\n"
    r = h("-c", PEER, "migrate", "--live", "--migrateuri=tcp://10.0.0.1", "g", HOME)
    assert (r.returncode, r.stderr) == (0, "")


# ---------------------------------------------------------------------------
# (c) the fault layer (``faults:``)
# ---------------------------------------------------------------------------
SIGNAL_PARENT = """
import json, signal, subprocess, sys
got = []
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, f: got.append(signal.Signals(n).name))
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                      timeout=20)
print(json.dumps({"got": got, "exit": proc.returncode, "out": proc.stdout, "err": proc.stderr}))
"""


def faulty(*rules: dict[str, Any], guests: Optional[list[dict[str, Any]]] = None,
           uris: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """One URI ``default`` (or *uris*) with the given fault rules."""
    default = {"default": {"guests": guests or [{"name": "g"}, {"name": "h"}]}}
    spec: dict[str, Any] = {"uris": uris or default}
    spec["faults"] = list(rules)
    return spec


def journal(h: Host) -> list[dict[str, Any]]:
    path = h.path.parent / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_journal(h: Host) -> Host:
    h.env["VIRTGUESTS_FAKE_JOURNAL"] = str(h.path.parent / "journal.jsonl")
    return h


def recording(stem: str) -> dict[str, Any]:
    return load_fixture(FIXTURES / f"{stem}.yaml")


def test_fail_prints_a_recorded_error(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "list", "action": "fail"},
                                     {"cmd": "shutdown", "action": "fail", "error": "internal"}))
    r = h("list", "--uuid")
    connect = recording("nohost-system-connect")  # the default URI's socket, as recorded
    assert (r.returncode, r.stdout, r.stderr) == (1, "", connect["stderr"])
    r = h("shutdown", "g")
    internal = recording("test-shutdown-not-running")["stderr"]
    assert internal.startswith("error: Failed to shutdown domain '4444")
    assert (r.returncode, r.stdout) == (1, "\n")
    assert r.stderr == ("error: Failed to shutdown domain 'g'\n"
                        "error: internal error: domain 'g' not running\n")
    assert h.state("g") == "running (booted)"  # a failed call changes nothing


def test_fail_by_fixture_stem_and_on_a_socket_uri(virsh: Path, tmp_path: Path) -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/sock"
    h = Host(virsh, tmp_path, faulty(
        {"cmd": "connect", "action": "fail", "error": "nohost-connect"},
        {"cmd": "domjobinfo", "action": "fail", "error": "test-domjobinfo-running"},
        uris={uri: {"guests": [{"name": "g"}]}}))
    r = h("-c", uri, "connect")
    doc = recording("nohost-connect")
    assert (r.returncode, r.stdout, r.stderr) == (doc["exit"], doc["stdout"], doc["stderr"])
    r = h("-c", uri, "domjobinfo", "g")
    assert r.stderr == recording("test-domjobinfo-running")["stderr"]


def test_hang_until_killed_without_blocking_other_calls(virsh: Path, tmp_path: Path) -> None:
    h = with_journal(Host(virsh, tmp_path, faulty({"cmd": "managedsave", "action": "hang"})))
    proc = h.popen("managedsave", "g")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)
    assert h.state("h") == "running (booted)"  # the state lock is free
    proc.kill()
    proc.wait(timeout=5)
    assert h.state("g") == "running (booted)"
    assert [c["argv"] for c in h.calls()] == [["-q", "domstate", "--reason", "h"],
                                               ["-q", "domstate", "--reason", "g"]]
    hung = [j for j in journal(h) if j["cmd"] == "managedsave"]
    assert len(hung) == 1 and hung[0]["fault"] == "hang"  # the journal has the killed call


def test_slow_acts_at_once_and_answers_late_in_virtual_time(virsh: Path,
                                                            tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "destroy", "action": "slow", "seconds": 30}))
    proc = h.popen("destroy", "g")
    wait_for(lambda: h.state("g") == "shut off (destroyed)")
    h.dispatched(proc)
    assert proc.poll() is None, "answered before its virtual time"
    h.set_now(1029.0)
    time.sleep(0.1)
    assert proc.poll() is None
    h.set_now(1030.5)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (0, "Domain 'g' destroyed\n\n", "")


def test_slow_counts_from_the_dispatch_however_late_its_wait_begins(virsh: Path,
                                                                    tmp_path: Path) -> None:
    """A fake process descheduled between its dispatch and its wait (load) must not answer
    later than asked: the test above moves the clock once the journal shows the dispatch.
    Here the clock moves on at every reading."""
    from virtguests.testing.fakevirsh.commandline import VirshCall
    from virtguests.testing.fakevirsh.main import answer
    from virtguests.testing.fakevirsh.process import CallerProcess
    from virtguests.testing.fakevirsh.state import HostClock

    h = with_journal(Host(virsh, tmp_path, faulty(
        {"cmd": "destroy", "action": "slow", "seconds": 30})))
    waited: list[float] = []

    class Ticking(HostClock):
        def now(self) -> float:
            moment = super().now()
            h.set_now(moment + 1)
            return moment

        def wait_until(self, moment: float) -> None:
            waited.append(moment)

    call = VirshCall(["destroy", "g"], CallerProcess(h.env))
    assert answer(call, h.env, Ticking(h.env)) == (0, "Domain 'g' destroyed\n\n", "")
    [dispatched] = [j["now"] for j in journal(h) if j["cmd"] == "destroy"]
    assert waited == [dispatched + 30]


@pytest.mark.parametrize("output", ["binary", "truncated", "not-uuid"])
def test_garbage_exits_0_with_output_no_parser_accepts(virsh: Path, tmp_path: Path,
                                                       output: str) -> None:
    from virtguests import virshout

    h = Host(virsh, tmp_path, faulty({"cmd": "list", "options": ["uuid", "name"],
                                      "action": "garbage", "output": output}))
    real = h("list", "--uuid")  # not matched: the real answer
    proc = subprocess.run([str(virsh), "list", "--uuid", "--name"], env=h.env,
                          capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == b""
    text = proc.stdout.decode("utf-8", "replace")
    with pytest.raises(virshout.OutputError):
        virshout.uuid_names(["virsh", "list", "--uuid", "--name"], text)
    first_uuid = real.stdout.split()[0]
    if output == "binary":
        with pytest.raises(UnicodeDecodeError):
            proc.stdout.decode("utf-8")
    elif output == "truncated":
        assert text == first_uuid[:18]  # cut inside the first line, no newline
    else:
        assert text.splitlines()[0] == " Id   Name   State"
        assert text.splitlines()[1].startswith(first_uuid)


def run_under_parent(h: Host, *argv: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", SIGNAL_PARENT, str(h.virsh), *argv],
                          env=h.env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_signal_goes_to_the_parent_and_the_call_completes(virsh: Path, tmp_path: Path,
                                                          sig: str) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "managedsave", "guest": "g", "action": "signal",
                                      "signal": sig}), clock=False)
    result = run_under_parent(h, "managedsave", "h")
    assert result["got"] == [] and result["exit"] == 0
    result = run_under_parent(h, "managedsave", "g")
    assert result["got"] == [f"SIG{sig}"]
    assert (result["exit"], result["out"]) == (0, "\nDomain 'g' state saved by libvirt\n\n")


def fired(h: Host, argv: list[str], times: int) -> list[bool]:
    """Run *argv* *times* times; True where the call was hit (a ``fail`` rule)."""
    return [h(*argv).returncode == 1 for _ in range(times)]


def test_nth_and_after_count_matching_calls(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "domid", "nth": 2, "action": "fail"},
                                     {"cmd": "domname", "after": 2, "action": "fail"}))
    assert fired(h, ["domid", "g"], 4) == [False, True, False, False]
    assert h("domuuid", "g").returncode == 0  # other commands do not count
    assert fired(h, ["domname", "1"], 4) == [False, False, True, True]


def test_selectors_uri_guest_options_and_command_lists(virsh: Path, tmp_path: Path) -> None:
    guests = {"guests": [{"name": "g"}, {"name": "h"}]}
    h = Host(virsh, tmp_path, faulty(
        {"cmd": ["domid", "domstate"], "uri": "test:///b", "guest": "h", "action": "fail"},
        {"cmd": "list", "options": ["--uuid"], "uri": ["default"], "action": "fail"},
        uris={"default": guests, "test:///b": guests}))
    uuid_h = h("-c", "test:///b", "domuuid", "h").stdout.strip()
    assert h("domid", "h").returncode == 0  # wrong URI
    assert h("-c", "test:///b", "domid", "g").returncode == 0  # wrong guest
    assert h("-c", "test:///b", "domuuid", "h").returncode == 0  # wrong command
    assert h("-c", "test:///b", "domid", uuid_h).returncode == 1  # the guest by its UUID
    assert h("-c", "test:///b", "domstate", "h").returncode == 1
    assert h("list", "--uuid").returncode == 1
    assert h("list", "--uuid", "--all").returncode == 0  # not exactly these options
    assert h("-c", "test:///b", "list", "--uuid").returncode == 0


def test_a_command_string_is_one_call_hit_at_its_first_match(virsh: Path,
                                                             tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "list", "nth": 1, "action": "garbage",
                                      "output": "not-uuid"},
                                     {"cmd": "list", "nth": 2, "action": "fail"}))
    r = h("list --uuid; echo MARK; list --name")
    assert r.returncode == 0
    first, second = r.stdout.split("MARK\n")
    assert first.startswith(" Id   Name   State\n")  # the first list only
    assert second == "g\nh\n\n"
    r = h("list --uuid; echo MARK; list --name")  # the next call: rule 2's 2nd match
    assert r.returncode == 1 and r.stdout == "" and "failed to connect" in r.stderr


def test_wedge_after_the_listing(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "*", "after": 1, "action": "hang"}))
    assert h("list --uuid --name; echo x; list --uuid --name --persistent").returncode == 0
    for argv in (["managedsave", "g"], ["list", "--uuid"], ["event", "--loop", "--event",
                                                            "lifecycle"]):
        with pytest.raises(subprocess.TimeoutExpired):
            h(*argv, timeout=1.0)


def test_event_stream_faults(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, faulty({"cmd": "event", "nth": 1, "action": "fail"},
                                     {"cmd": "event", "nth": 2, "action": "garbage"}))
    r = h("event", "--loop", "--event", "lifecycle")
    assert r.returncode == 1 and "failed to connect to the hypervisor" in r.stderr
    proc = subprocess.Popen([str(virsh), "event", "--loop", "--event", "lifecycle"],
                            env=h.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    # garbage first, then events as usual
    first = os.read(proc.stdout.fileno(), 4096) if ready else b""
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    assert first.startswith(b"\xff") and b"lifecycle" not in first + out


def test_random_faults_are_reproducible_from_the_seed(virsh: Path, tmp_path: Path) -> None:
    def run(name: str, seed: int, order: list[str]) -> dict[str, list[bool]]:
        (tmp_path / name).mkdir()
        h = Host(virsh, tmp_path / name, faulty({"cmd": "domid", "p": 0.4, "seed": seed,
                                                 "action": "fail"}))
        hits: dict[str, list[bool]] = {"g": [], "h": []}
        for guest in order:
            hits[guest].append(h("domid", guest).returncode == 1)
        return hits

    order = ["g"] * 12 + ["h"] * 12
    first = run("a", 7, order)
    assert 0 < sum(first["g"]) < 12, first
    # another process order (as concurrent threads would give): the same decisions
    assert run("b", 7, [x for pair in zip(["g"] * 12, ["h"] * 12) for x in pair]) == first
    assert run("c", 8, order) != first


def test_faults_off_and_the_journal(virsh: Path, tmp_path: Path) -> None:
    """Processes: the journal's pid and fork time are the process's."""
    before = time.time()
    h = with_journal(Host(virsh, tmp_path, faulty(
        {"cmd": "destroy", "action": "fail", "nth": 1},
        guests=[{"name": "g", "save_seconds": 100}])))
    h.env["VIRTGUESTS_FAKE_FAULTS"] = "off"
    assert h.process("domid", "g").returncode == 0
    saver = h.popen("managedsave", "g")
    wait_for(lambda: h.process("-q", "domstate", "--reason", "g").stdout == "paused (saving)\n")
    h.env.pop("VIRTGUESTS_FAKE_FAULTS")
    assert h.process("destroy", "g").returncode == 1  # the first *counted* destroy
    assert h.process("destroy", "g").returncode == 0
    saver.kill()
    saver.wait(timeout=5)
    entries = journal(h)
    assert [(j["cmd"], j["job"], j["fault"]) for j in entries if j["cmd"] != "domstate"] == [
        ("domid", None, None), ("managedsave", None, None), ("destroy", "save", "fail"),
        ("destroy", "save", None)]
    assert ("domstate", "save") in [(j["cmd"], j["job"]) for j in entries]  # wait_for's
    assert all(j["uri"] == "default" and j["pid"] > 0 for j in entries)
    # forked by this test, before it was dispatched (to a clock tick), however late
    assert all(before - 0.02 <= j["spawned"] <= j["t"] + 0.02 for j in entries)


@pytest.mark.parametrize(("rules", "message"), [
    ({"cmd": "list"}, "action must be one of"),
    ({"action": "explode"}, "action must be one of"),
    ({"action": "fail", "seconds": 3}, "unknown keys for action 'fail': ['seconds']"),
    ({"action": "hang", "cmd": "frobnicate"}, "'frobnicate' is not a simulated subcommand"),
    ({"action": "hang", "uri": "test:///nowhere"}, "'test:///nowhere' is not in the host"),
    ({"action": "hang", "nth": 0}, "nth must be an integer >= 1"),
    ({"action": "hang", "p": 1.5}, "p must be a number from 0 to 1"),
    ({"action": "fail", "error": "made up words"}, "no recording"),
    ({"action": "fail", "error": "test-list-basic"}, "is not a failure"),
    ({"action": "slow"}, "slow needs seconds"),
    ({"action": "garbage", "output": "noise"}, "output must be one of"),
    ({"action": "signal", "signal": "KILL"}, "signal must be one of"),
])
def test_bad_fault_rules_are_rejected(virsh: Path, tmp_path: Path, rules: dict[str, Any],
                                      message: str) -> None:
    h = Host(virsh, tmp_path, faulty(rules))
    r = h("list")
    assert r.returncode == 2 and "faults rule 1" in r.stderr and message in r.stderr, r.stderr


def test_unknown_top_level_keys_are_rejected(virsh: Path, tmp_path: Path) -> None:
    h = Host(virsh, tmp_path, {**one_uri({"name": "g"}), "fault": []})
    r = h("list")
    assert r.returncode == 2 and "unknown keys ['fault']" in r.stderr


# ---------------------------------------------------------------------------
# the shim's byte-code cache
# ---------------------------------------------------------------------------
def _cached(pycache: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in pycache.rglob("*.pyc")}


def test_shims_sharing_a_pycache_compile_the_fake_once(tmp_path: Path) -> None:
    """FakeHost's shims share one cache: the fake is compiled by the first call of a
    session, not by every host's first call (about six times a call's own cost)."""
    pycache = tmp_path / "pycache"
    env = dict(base_env(), VIRTGUESTS_FAKE_HOST=str(tmp_path / "host.yaml"))
    (tmp_path / "host.yaml").write_text(yaml.safe_dump({"uris": {"default": {"guests": [
        {"name": "web", "state": "running"}]}}}))
    first = write_shim(tmp_path / "one", pycache)
    assert run(first, env, "list", "--name").stdout.split() == ["web"]
    compiled = _cached(pycache)
    assert any(p.name.startswith("commands.") for p in compiled), sorted(compiled)

    second = write_shim(tmp_path / "two", pycache)
    assert run(second, env, "list", "--name").stdout.split() == ["web"]
    assert _cached(pycache) == compiled
    assert not (tmp_path / "two" / "__pycache__").exists()


def test_a_shim_without_a_pycache_keeps_its_own(tmp_path: Path) -> None:
    env = dict(base_env(), VIRTGUESTS_FAKE_HOST=str(tmp_path / "host.yaml"))
    (tmp_path / "host.yaml").write_text(yaml.safe_dump({"uris": {"default": {"guests": []}}}))
    shim = write_shim(tmp_path / "bin")
    assert run(shim, env, "list", "--name").returncode == 0
    assert _cached(tmp_path / "bin" / "__pycache__")


def test_every_fake_host_of_a_process_shares_one_pycache(fake_host: Any,
                                                          tmp_path: Path) -> None:
    from virtguests.testing.harness import shared_pycache

    host = fake_host({"uris": {"default": {"guests": []}}})
    assert f"sys.pycache_prefix = {str(shared_pycache())!r}" in (host.bin / "virsh").read_text()
    assert shared_pycache() == shared_pycache()
    assert not str(shared_pycache()).startswith(str(tmp_path))


# ---------------------------------------------------------------------------
# what a call costs: its imports
# ---------------------------------------------------------------------------
IMPORTS_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from virtguests.testing.fakevirsh.main import main
status = main(sys.argv[2:])
print(sorted(m for m in ("json", "re", "enum", "signal", "typing", "yaml", "subprocess")
             if m in sys.modules), status, file=sys.stderr)
"""


def test_a_call_imports_neither_json_nor_re_nor_enum(virsh: Path, tmp_path: Path) -> None:
    """Half of what a call imported was json (it imports re, which imports enum) and
    signal (enum): every fake call is a process, so the fake reads and writes JSON
    through ``_json`` and sets its SIGTERM handler through ``_signal``."""
    from virtguests.testing.recordings import SOURCE_TREE

    h = with_journal(Host(virsh, tmp_path, one_uri({"name": "g"}), clock=False))
    assert h.state("g") == "running (booted)"  # the state is built (from YAML: yaml, re)
    for argv in (["list", "--name"], ["managedsave", "g"], ["list --all; domstate g"]):
        proc = subprocess.run([sys.executable, "-S", "-c", IMPORTS_PROBE, SOURCE_TREE, *argv],
                              env=h.env, capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
        assert proc.stderr == "[] 0\n", argv
    assert [j["cmd"] for j in journal(h)] == ["domstate", "list", "managedsave", "list",
                                              "domstate"]
    assert [c["exit"] for c in h.calls()] == [0, 0, 0, 0]
    assert h.state("g") == "shut off (saved)"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10)


@settings(max_examples=examples(100))
@given(value=JSON_VALUES, compact=st.booleans())
def test_jsonfile_writes_and_reads_what_json_does(value: Any, compact: bool) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    text = jsonfile.dumps(value, separators=separators)
    assert text == json.dumps(value, separators=separators)
    read = jsonfile.loads(f" \n{text}\t".encode())  # as the state file is read: bytes
    assert json.dumps(read) == json.dumps(json.loads(text))  # NaN != NaN: compared as text


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "[1,]", "nul", '"\\x"', "1 2"])
def test_jsonfile_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jsonfile.loads(text)
    assert str(got.value) == str(expected.value)
