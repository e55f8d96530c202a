"""Issue 10 on real libvirt: a save already in progress, a wedged libvirtd, SIGTERM
during a real save, a closed stdout.

Each hostile situation is made real, not simulated: a ``virsh managedsave`` held in
progress by SIGSTOPping the guest's QEMU (libvirt then holds the domain's job, as it
does for a long save left behind by a killed run), a libvirtd SIGSTOPped right after
virtguests listed it (through a ``--virsh`` wrapper that also logs every call), a
SIGTERM while virtguests' own save is being written, and stdout closed (``>&-``).
Every check is made from libvirt's own view (``domstate --reason``, ``list
--with-managed-save``) and from the virsh calls virtguests made, never from timing.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tools.realhost.guestimage import GuestImage, domain_xml
from tools.realhost.libvirtd import Guest, PrivateLibvirtd, StalledSave, ThreadStop, thread_named

from .calllog import CallLog, names_guest, stop_on_a_frozen_daemon, verb
from .cli import Run, VirtGuestsCli, installed_command
from .conftest import DefineGuest, private_libvirtd, record_timing
from .test_e2e import boot, list_entries, managed_saved, outcomes, uuid_of

RUN_TIMEOUT = 300.0
"""Seconds any virtguests run may take before the test gives up on it (never hangs)."""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
@pytest.fixture
def cli(libvirtd: PrivateLibvirtd, tmp_path: Path) -> VirtGuestsCli:
    return VirtGuestsCli(tmp_path / "vg", libvirtd)


def finish(proc: subprocess.Popen[str], began: float) -> Run:
    """Collect a spawned virtguests; killed (and the test failed) if it outlives RUN_TIMEOUT."""
    try:
        out, err = proc.communicate(timeout=max(RUN_TIMEOUT - (time.monotonic() - began), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"virtguests still running after {RUN_TIMEOUT:.0f}s; killed\n"
                    f"--- stdout ---\n{out}--- stderr ---\n{err}")
    return Run(proc.returncode, out, err, time.monotonic() - began)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


@pytest.fixture
def spare_libvirtd(realhost_ready: None) -> Iterator[PrivateLibvirtd]:
    """A second private libvirtd for this test only (one a test may SIGSTOP)."""
    with private_libvirtd("libvirtd (spare)") as daemon:
        yield daemon


def boot_on(daemon: PrivateLibvirtd, image: GuestImage, tmp_path: Path,
            *names: str) -> list[Guest]:
    """Define persistent guests on *daemon*, start them all, wait until each is ready."""
    guests = []
    for name in names:
        console = tmp_path / f"{name}.console.log"
        xml = tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, image=image, console_log=console))
        daemon.virsh("define", str(xml))
        guests.append(Guest(daemon, name, console, persistent=True))
    for guest in guests:
        guest.virsh("start", timeout=120)
    for guest in guests:
        guest.wait_console("vg: ready")
    return guests


# ---------------------------------------------------------------------------
# item 9: a save already in progress is never destroyed
# ---------------------------------------------------------------------------
def stop_while_held(cli: VirtGuestsCli, calls: CallLog, stalled: StalledSave, busy: Guest,
                    busy_uuid: str, during: str) -> tuple[Run, str]:
    """``virtguests stop`` while *stalled* holds another job's save of *busy*.

    The save is let go 3 s after virtguests' own managedsave of the guest fails on
    libvirt's state-change lock (~30 s), or after 10 s if virtguests sends none; until
    then the guest is *during* (its ``domstate --reason``).  Returns the run and the
    context for failure messages.
    """
    uri = busy.daemon.qemu_uri

    def saves_of_busy() -> list[dict[str, Any]]:
        return [c for c in calls.calls(uri)
                if verb(c) == "managedsave" and names_guest(c, busy_uuid, busy.name)]

    began = time.monotonic()
    proc = cli.spawn("--virsh", str(calls.path), "stop")
    resumed_because = ""
    try:
        while proc.poll() is None and time.monotonic() - began < RUN_TIMEOUT:
            now = time.monotonic()
            ours = saves_of_busy()
            ended = sorted((c for c in ours if c["end"] is not None),
                           key=lambda c: float(c["end"]))
            if ended and now >= ended[0]["end"] + 3:
                resumed_because = (f"virtguests' managedsave ended (exit "
                                   f"{ended[0]['exit']}) {now - ended[0]['end']:.1f}s "
                                   "earlier")
            elif not ours and now - began >= 10:
                resumed_because = "10 s passed with no managedsave of the guest"
            if resumed_because:
                assert busy.state() == during and stalled.held, (
                    "the held save no longer holds the guest\n" + busy.describe()
                    + "\n" + calls.describe(began))
                stalled.resume()
                break
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    run = finish(proc, began)
    context = f"{run}\nsave let go: {resumed_because or 'at the end (virtguests ended first)'}" \
              f"\nvirsh calls:\n{calls.describe(began)}"
    return run, context


def test_save_in_progress_is_waited_for_never_escalated(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """A managedsave left running (a killed earlier run) holds the guest's job.

    The chain ``suspend shutdown poweroff`` must not move on to shutdown or
    poweroff for that guest while its memory image is being written: it waits
    for the save (SAVE_TIMEOUT bounds it), which completes once let go.  The
    save is held by stopping QEMU's migration thread (QEMU itself still answers,
    as during a slow save); see ``stop_while_held`` for when it is let go.
    """
    uri = libvirtd.qemu_uri
    busy, other = boot(define_guest, ("ip-busy", {}), ("ip-other", {}))
    busy_uuid, other_uuid = uuid_of(busy), uuid_of(other)
    calls = CallLog(tmp_path / "calls")
    cli.config(ON_SHUTDOWN="suspend shutdown poweroff", SHUTDOWN_TIMEOUT=5, SAVE_TIMEOUT=120)

    with StalledSave(libvirtd, busy.name, domain=busy_uuid) as stalled:
        # the setup: the earlier save really is in progress and holds the job
        assert busy.state() == "paused (saving)", busy.describe()
        assert busy.name not in managed_saved(libvirtd)
        run, context = stop_while_held(cli, calls, stalled, busy, busy_uuid,
                                       "paused (saving)")
    first_save = stalled.result
    record_timing("stop with a save in progress", run.seconds)
    context += f"\nthe earlier save: {first_save}"

    # never escalated while the save was being written
    escalations = [c for c in calls.calls(uri) if verb(c) in ("shutdown", "destroy")
                   and names_guest(c, busy_uuid, busy.name)]
    assert escalations == [], "shutdown/poweroff of a guest whose save is in progress\n" \
        + context
    # the earlier save completed: libvirt's view
    assert first_save is not None and first_save[0] == 0, context
    assert busy.state() == "shut off (saved)", busy.describe() + "\n" + context
    assert managed_saved(libvirtd) == {busy.name, other.name}, context
    assert other.state() == "shut off (saved)", context
    assert outcomes(cli)[other.name] == "saved", context
    assert "Traceback" not in run.err, context
    entries = list_entries(cli)
    assert set(entries) == {uri} and sorted(entries[uri]) == sorted([busy_uuid, other_uuid]), \
        context

    start = cli.run("start")
    assert start.code == 0, start
    assert busy.state() == "running (restored)", busy.describe()
    assert other.state() == "running (restored)", other.describe()
    assert managed_saved(libvirtd) == set()
    assert not cli.list_file.exists() and not cli.pending_file.exists()


@pytest.mark.parametrize("chain", ["suspend shutdown poweroff", "poweroff"])
def test_a_paused_guest_saved_by_another_job_is_never_powered_off(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, cli: VirtGuestsCli, tmp_path: Path,
    chain: str
) -> None:
    """Found in review: libvirt gives a guest the reason ``saving`` only when it pauses
    a running guest for the save.  A guest paused before keeps ``paused (user)`` for the
    whole save; only ``virsh domjobinfo`` (``Operation: Save``) and a failed call's
    words (the state-change lock held by the save) show it.  virtguests destroyed it.

    Now it waits for that save (let go as in ``stop_while_held``) and counts the guest
    as saved by another job; ``start`` restores it, paused as it was.
    """
    uri = libvirtd.qemu_uri
    (busy,) = boot(define_guest, ("pz-" + chain.split()[0], {}))
    busy_uuid = uuid_of(busy)
    busy.virsh("suspend")
    assert busy.state() == "paused (user)", busy.describe()
    calls = CallLog(tmp_path / "calls")
    cli.config(ON_SHUTDOWN=chain, SHUTDOWN_TIMEOUT=5, SAVE_TIMEOUT=120, QUERY_TIMEOUT=5)

    with StalledSave(libvirtd, busy.name, domain=busy_uuid) as stalled:
        # the setup: the other job's save is in progress, and the reason is not "saving".
        # It is "user", or "migrating" when the first save ended before it could be held
        # (the guest was restored, paused, to try again; found in CI)
        during = busy.state()
        assert during in ("paused (user)", "paused (migrating)"), busy.describe()
        job = libvirtd.virsh("domjobinfo", busy_uuid, check=False).stdout
        assert "Operation:        Save" in job, job
        run, context = stop_while_held(cli, calls, stalled, busy, busy_uuid, during)
    first_save = stalled.result
    record_timing(f"stop with a paused guest's save in progress ({chain})", run.seconds)
    context += f"\nthe earlier save: {first_save}"

    escalations = [c for c in calls.calls(uri) if verb(c) in ("shutdown", "destroy")
                   and names_guest(c, busy_uuid, busy.name)]
    assert escalations == [], "shutdown/poweroff of a guest whose save is in progress\n" \
        + context
    assert [c for c in calls.calls(uri) if verb(c) == "domjobinfo"], context
    assert first_save is not None and first_save[0] == 0, context
    assert busy.state() == "shut off (saved)", busy.describe() + "\n" + context
    assert outcomes(cli)[busy.name] == "saved", context
    assert "is being saved by another job" in run.err, context
    assert "Traceback" not in run.err, context
    assert list_entries(cli) == {uri: [busy_uuid]}, context

    start = cli.run("start")
    assert start.code == 0, start
    assert busy.state().startswith("paused"), busy.describe()
    assert not cli.list_file.exists() and not cli.pending_file.exists()


@pytest.mark.parametrize("recorded_by", ["libvirt-guests", "virtguests"])
def test_start_keeps_a_recorded_guest_another_job_is_saving(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, cli: VirtGuestsCli, tmp_path: Path,
    recorded_by: str
) -> None:
    """Found in review: at start, a recorded guest another job was saving looked active
    and was reported ``already active``, its record dropped; when the save ended it was
    shut off with an image that nothing would resume.

    Both ways start meets it: a libvirt-guests list file (bare UUIDs) makes start list
    the URI and see the guest active; after virtguests' own stop, ``virsh start`` by
    UUID is refused (``Domain is already active``).  Either way it stays recorded, and
    the start after the save resumes it.
    """
    uri = libvirtd.qemu_uri
    tag = "lg" if recorded_by == "libvirt-guests" else "vg"
    busy, other = boot(define_guest, (f"sb-{tag}", {}), (f"so-{tag}", {}))
    busy_uuid, other_uuid = uuid_of(busy), uuid_of(other)
    cli.config(PARALLEL_START=1)
    if recorded_by == "virtguests":
        stop = cli.run("stop")
        assert stop.code == 0, stop
        assert busy.state() == "shut off (saved)" and other.state() == "shut off (saved)"
        busy.virsh("start", timeout=120)  # restored behind virtguests' back
    else:
        other.virsh("managedsave", timeout=120)
        cli.list_file.write_text(f"{uri} {busy_uuid} {other_uuid}\n")
    assert busy.state().startswith("running"), busy.describe()

    with StalledSave(libvirtd, busy.name, domain=busy_uuid) as stalled:
        assert busy.state() == "paused (saving)", busy.describe()
        run = cli.run("start", timeout=RUN_TIMEOUT)
        during = busy.state()
        assert stalled.held, busy.describe()
    context = f"{run}\nthe other job's save: {stalled.result}"
    record_timing("start with a save in progress", run.seconds)
    assert run.code == 0, context
    assert "Traceback" not in run.err, context
    assert during == "paused (saving)", context  # virtguests did not touch it
    assert f"Resuming guest {busy.name}: a save by another job is in progress" \
        in run.lines, context
    assert f"Resuming guest {other.name}: done" in run.lines, context
    assert f"guest {busy.name} on {uri} is being saved by another job (virsh domstate: " \
        "paused (saving)); not resumed, kept for the next start" in run.err, context
    assert outcomes(cli)[busy.name] == "save in progress", context
    assert cli.pending_file.read_text() == f"{uri} {busy_uuid}\n", context
    assert other.state().startswith("running"), other.describe()
    assert stalled.result is not None and stalled.result[0] == 0, context
    assert busy.state() == "shut off (saved)", busy.describe()

    again = cli.run("start", timeout=RUN_TIMEOUT)
    assert again.code == 0, again
    assert f"Resuming guest {busy.name}: done" in again.lines, again
    assert busy.state().startswith("running"), busy.describe()
    assert not cli.list_file.exists() and not cli.pending_file.exists()


# ---------------------------------------------------------------------------
# item 7: a wedged URI is given up once, not once per guest
# ---------------------------------------------------------------------------
def test_wedged_uri_is_given_up_after_one_timeout_other_uri_handled(
    libvirtd: PrivateLibvirtd, spare_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    guest_image: GuestImage, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """libvirtd stops answering right after virtguests listed it (SIGSTOP).

    Serial suspend with QUERY_TIMEOUT=2 and SAVE_TIMEOUT=4: the first call on the
    wedged URI (a guest's save, whose session is still connecting) times out, then the
    liveness check (``virsh list --uuid``) times out too, and no further call is made
    there (the progress query due at 5 s, during the check, waits for its verdict and
    is not run); its guests are recorded and named; the healthy URI's guest is saved
    in the same run.
    """
    wedged_uri, healthy_uri = spare_libvirtd.qemu_uri, libvirtd.qemu_uri
    stuck = boot_on(spare_libvirtd, guest_image, tmp_path, "wg-a", "wg-b", "wg-c")
    healthy = define_guest("wg-healthy")
    daemon_pid = spare_libvirtd.pid
    assert daemon_pid is not None
    calls = CallLog(tmp_path / "calls", wedge=(wedged_uri, daemon_pid))
    cli.config(uris=[wedged_uri, healthy_uri], QUERY_TIMEOUT=2, SAVE_TIMEOUT=4,
               PARALLEL_SUSPEND=0)

    run, wedged, context = stop_on_a_frozen_daemon(cli, calls, spare_libvirtd, wedged_uri,
                                                   RUN_TIMEOUT)
    record_timing("stop with a wedged URI (3 guests)", run.seconds)
    listing = [c for c in calls.calls(wedged_uri) if c["end"] is not None
               and c["end"] <= wedged and verb(c) != "connect"]
    assert len(listing) == 1 and verb(listing[0]) == "list" and listing[0]["exit"] == 0, \
        context
    assert_given_up_then_brought_back(cli, run, context, spare_libvirtd, wedged_uri, stuck,
                                      healthy_uri, healthy)


@contextlib.contextmanager
def a_save_held(daemon: PrivateLibvirtd, guests: list[Guest], proc: subprocess.Popen[str],
                began: float) -> Iterator[Guest]:
    """The guest of *guests* whose save (by the virtguests run *proc*) is caught in
    progress: its QEMU's migration thread stopped, so the save stays in flight until the
    block ends.  The run is killed if the block fails (the test then reports it)."""
    held: Optional[ThreadStop] = None
    try:
        saving: Optional[Guest] = None
        while held is None and proc.poll() is None and time.monotonic() - began < 120:
            for guest in guests:
                if daemon.domain_status(guest.name) != ("paused", "save"):
                    continue
                tid = thread_named(daemon.qemu_pid(guest.name), "live_migration")
                if tid is not None:
                    with contextlib.suppress(OSError):  # OSError: that save just ended
                        held, saving = ThreadStop(tid), guest
                    break
            time.sleep(0.001)
        assert held is not None and saving is not None, \
            f"no save was seen in progress\n{finish(proc, began)}"
        yield saving
    except BaseException:
        proc.kill()
        raise
    finally:
        if held is not None:
            held.cont()


def assert_given_up_then_brought_back(
    cli: VirtGuestsCli, run: Run, context: str, daemon: PrivateLibvirtd, wedged_uri: str,
    stuck: list[Guest], healthy_uri: str, healthy: Guest
) -> None:
    """After a stop whose *wedged_uri* stopped answering (its libvirtd, *daemon*, since
    resumed): the run failed, naming each of its guests and the URI, and recorded them;
    the healthy URI's guest was saved in the same run; then start brings all back."""
    assert run.code == 1, context
    assert "Traceback" not in run.err, context
    errors = [ln for ln in run.err.splitlines() if "error" in ln.lower()]
    for guest in stuck:
        assert any(guest.name in ln for ln in errors), f"{guest.name} not named\n{context}"
    assert any(wedged_uri in ln for ln in errors), f"the wedged URI not named\n{context}"
    entries = list_entries(cli)
    assert sorted(entries.get(wedged_uri, [])) == sorted(uuid_of(g) for g in stuck), context
    assert entries.get(healthy_uri) == [uuid_of(healthy)], context
    assert f"Suspending {healthy.name}: done" in run.lines, context
    assert healthy.state() == "shut off (saved)", healthy.describe()

    wait_until("the resumed libvirtd answers",
               lambda: daemon.virsh("uri", check=False, timeout=30).returncode == 0)
    start = cli.run("start", timeout=RUN_TIMEOUT)
    assert start.code == 0 and "Traceback" not in start.err, start
    assert healthy.state() == "running (restored)", f"{start}\n{healthy.describe()}"
    for guest in stuck:
        assert guest.state().startswith("running"), f"{start}\n{guest.describe()}"
    assert not cli.list_file.exists() and not cli.pending_file.exists(), start


# ---------------------------------------------------------------------------
# item 1: SIGTERM during a real managedsave
# ---------------------------------------------------------------------------
def test_sigterm_during_a_real_save_lets_it_complete(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, cli: VirtGuestsCli
) -> None:
    """SIGTERM while virtguests' managedsave is writing the image.

    The save is held (QEMU's migration thread stopped) from the moment libvirt
    pauses the guest for it until 2 s after the SIGTERM, so the signal lands
    mid-save every time.
    """
    uri = libvirtd.qemu_uri
    guests = boot(define_guest, ("term-a", {}), ("term-b", {}), ("term-c", {}))
    uuids = {g.name: uuid_of(g) for g in guests}
    cli.config(ON_SHUTDOWN="suspend")

    began = time.monotonic()
    proc = cli.spawn("stop")
    with a_save_held(libvirtd, guests, proc, began) as saving:
        # the setup: virtguests' save is in progress and stays so while the signal lands
        assert saving.state() == "paused (saving)", saving.describe()
        saved_before = {g.name for g in guests
                        if g is not saving and g.state() == "shut off (saved)"}
        proc.send_signal(signal.SIGTERM)
        time.sleep(2)
        assert proc.poll() is None, "virtguests exited while its save was in flight"
        assert saving.state() == "paused (saving)", saving.describe()
    run = finish(proc, began)
    record_timing("stop interrupted mid-save", run.seconds)
    others = [g for g in guests if g is not saving and g.name not in saved_before]

    assert run.code == 1, run
    assert "got SIGTERM" in run.err and "Traceback" not in run.err, run
    assert saving.state() == "shut off (saved)", f"{run}\n{saving.describe()}"
    assert managed_saved(libvirtd) == {saving.name, *saved_before}, run
    for guest in others:  # nothing new was started after the signal
        assert guest.state().startswith("running"), f"{run}\n{guest.describe()}"
    entries = list_entries(cli)
    assert set(entries) == {uri} and sorted(entries[uri]) == sorted(uuids.values()), run

    start = cli.run("start")
    assert start.code == 0 and "Traceback" not in start.err, start
    assert saving.state() == "running (restored)", f"{start}\n{saving.describe()}"
    for guest in guests:
        if guest is not saving:
            assert guest.state().startswith("running"), f"{start}\n{guest.describe()}"
    assert managed_saved(libvirtd) == set()
    assert not cli.list_file.exists() and not cli.pending_file.exists(), start


# ---------------------------------------------------------------------------
# item 2: a closed stdout never hurts the guests
# ---------------------------------------------------------------------------
ENTRIES = {
    "python -I -m virtguests": [sys.executable, "-I", "-m", "virtguests"],
    "console script": [str(Path(sys.executable).with_name("virtguests"))],
} if installed_command() is None else {"installed command": [str(installed_command())]}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_stop_with_stdout_closed_saves_every_guest(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, cli: VirtGuestsCli, entry: str
) -> None:
    """``virtguests stop >&-`` as the installed entry points run it, without PYTHONUNBUFFERED."""
    uri = libvirtd.qemu_uri
    prefix = "cs" if entry == "console script" else "pi"
    guests = boot(define_guest, (f"{prefix}-a", {}), (f"{prefix}-b", {}))
    cli.config(ON_SHUTDOWN="suspend")
    argv = [*ENTRIES[entry], *cli.argv("stop")]
    assert Path(argv[0]).exists(), argv
    env = cli.env()
    env.pop("PYTHONUNBUFFERED", None)
    began = time.monotonic()
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], env=env,
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=RUN_TIMEOUT, check=False)
    record_timing("stop with stdout closed", time.monotonic() - began)
    context = f"{entry}: exit {proc.returncode}\n--- stderr ---\n{proc.stderr}"

    for guest in guests:
        assert guest.state() == "shut off (saved)", f"{context}\n{guest.describe()}"
    assert managed_saved(libvirtd) == {g.name for g in guests}, context
    entries = list_entries(cli)
    assert sorted(entries.get(uri, [])) == sorted(uuid_of(g) for g in guests), context
    assert "Traceback" not in proc.stderr, context
    assert proc.returncode == 0, context

    start = cli.run("start")
    assert start.code == 0, start
    for guest in guests:
        assert guest.state() == "running (restored)", guest.describe()
