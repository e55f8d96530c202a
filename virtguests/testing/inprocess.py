"""virtguests against the fake virsh in-process: no process per call, no real sleeping.

``run_inprocess(host, "stop")`` is ``host.run("stop")`` without processes:
``cli.main`` runs in this process, and every virsh call is dispatched
to the fake's own ``execute`` (the same host state file, recordings, lock waits
and fault rules) by ``InProcessVirsh`` (given to ``cli.main`` as *make_virsh*),
the production ``Virsh`` with only ``_spawn`` and ``watch`` replaced: timeouts,
wedged URIs and refusals stay the real ones.  Each call gets a clock that waits
on the run's virtual time and ends at the call's timeout, and a process whose
environment is the one virtguests gave virsh.  Time is a ``VirtualClock`` that
jumps to the next wake-up as soon as every thread of the run is waiting, so a
300 s shutdown timeout costs milliseconds and a run gives the same virtual
times on a loaded machine.

What stays subprocess (``FakeHost.run``/``spawn``): signals, closed or full
stdout, the fake's own command line, ``signal`` fault rules (the fake would
signal this process), and the reference comparisons.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, NoReturn, Optional

from virtguests import cli
from virtguests.clock import clamp
from virtguests.testing.clock import FakeClock
from virtguests.testing.fakevirsh.commandline import VirshCall
from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.faults import inject
from virtguests.testing.fakevirsh.main import answer, state_file
from virtguests.testing.fakevirsh.process import CallerProcess
from virtguests.testing.fakevirsh.rendering import lifecycle_events
from virtguests.testing.fakevirsh.state import (
    HostClock,
    StateFile,
    apply_due_transitions,
    lifecycle_view,
)
from virtguests.testing.harness import FakeHost, Run
from virtguests.virsh import Result, Virsh, VirshError

VIRTUAL_EPOCH = 1_000_000.0
"""Where a host's first in-process run starts the virtual clock."""
POLL = 0.001
"""Real seconds between two looks at the other threads by the thread on duty."""
OFF_DUTY = 0.05
"""Real seconds a waiting thread not on duty sleeps before looking again itself."""
QUIET = 0.002
"""Real seconds every thread must stay waiting before the clock jumps: a thread that
was just woken gets this long to show it is running again."""
STALL = 1.0
"""Real seconds without any activity and no fake call running after which the clock
jumps anyway (a thread blocked where ``_parked`` cannot see): ``VirtualClock.stalls``."""
NAP = 0.25
"""Virtual seconds a waiting fake call (a migrate) sleeps before it looks at the host
again (an abort of its job)."""
STUCK = 120.0
"""Real seconds one virtual wait may take before the test fails instead of hanging."""
SIGNALS_THREAD = "virtguests-signals"
_THREADING = threading.__file__
_FUTURES = os.path.join("concurrent", "futures", "thread.py")


def _parked(frame: FrameType) -> bool:
    """Whether a thread whose innermost Python frame is *frame* waits for another thread.

    A thread blocked in ``Condition.wait`` (every Event and Queue wait) still listed
    among the condition's waiters was not notified; one joining a thread waits while
    that thread is alive; an idle pool worker waits while its queue is empty.
    """
    code, local = frame.f_code, frame.f_locals
    if code.co_filename == _THREADING:
        if code.co_name == "wait" and "waiter" in local and "self" in local:
            return local["waiter"] in local["self"]._waiters
        if code.co_name == "_wait_for_tstate_lock" and "self" in local:
            return not local["self"]._is_stopped
        return False
    if code.co_name == "_worker" and code.co_filename.endswith(_FUTURES):
        queue = local.get("work_queue")
        return queue is not None and queue.empty()
    return False


class _Sleeper:
    def __init__(self, until: float, event: Optional[threading.Event]) -> None:
        self.until = until
        self.event = event


class VirtualClock(FakeClock):
    """Virtual time that jumps to the earliest wake-up once every thread waits.

    The threads of a run are those alive now or started later, less the ones
    alive when the clock was made (pytest's) and the signal watcher.  The clock
    jumps when each of them is waiting through this clock (sleep, wait, or a fake
    virsh call waiting for a save or a lock) with its event unset, is blocked on
    another thread (``_parked``), or has ended, and no fake virsh call is running;
    and that has held for QUIET real seconds with nothing happening meanwhile.

    ``slept`` lists the seconds of every ``sleep`` and of every ``wait`` that timed
    out; ``jumps`` counts how often the clock moved.
    """

    def __init__(self, start: float = VIRTUAL_EPOCH, **kwargs: Any) -> None:
        super().__init__(start, **kwargs)
        self._cond = threading.Condition()
        self._sleepers: dict[int, _Sleeper] = {}
        self._calls = 0
        self._generation = 0
        self._quiet: Optional[tuple[int, float]] = None
        self._duty: Optional[int] = None
        self._changed = time.monotonic()
        self._outsiders = set(threading.enumerate()) - {threading.current_thread()}
        self.on_jump: list[Callable[[], None]] = []
        """Called after each jump (under the clock's lock)."""
        self.wakeups: list[Callable[[], Optional[float]]] = []
        """Each gives the next virtual time something happens by itself (or None): a
        jump stops there too, so that what is watched is seen when it happens."""
        self.jumps = 0
        self.stalls = 0

    def sleep(self, seconds: float) -> bool:
        if self.cancel.is_set():
            return False
        seconds = clamp(seconds)
        self._pause(self.now() + seconds, self.cancel)
        self.slept.append(seconds)
        return not self.cancel.is_set()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        seconds = clamp(seconds)
        if self._pause(self.now() + seconds, event):
            return True
        if seconds > 0:
            self.slept.append(seconds)
        return event.is_set()

    def wait_until(self, until: float) -> None:
        """For a fake virsh call (inside ``call()``): wait until virtual time *until*
        for a save or a lock; the call is not running meanwhile."""
        with self._cond:
            self._calls -= 1
        try:
            self._pause(until, None)
        finally:
            with self._cond:
                self._calls += 1

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """A fake virsh call is running: the clock stays while it does."""
        with self._cond:
            self._calls += 1
            self._touch()
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                self._touch()

    def _pause(self, until: float, event: Optional[threading.Event]) -> bool:
        """Until virtual time *until* or *event*; True if the event ended it.

        One waiting thread at a time is on duty: it looks at the others every POLL
        and makes the jumps; the rest sleep until a jump or a set event wakes them.
        """
        me = threading.get_ident()
        began = time.monotonic()
        with self._cond:
            self._sleepers[me] = _Sleeper(until, event)
            self._touch()
            try:
                while True:
                    if event is not None and event.is_set():
                        return True
                    if self.now() >= until:
                        return False
                    if time.monotonic() - began > STUCK:
                        raise AssertionError(f"virtual clock stuck for {STUCK:g}s at "
                                             f"{self.now()} waiting for {until}")
                    if self._duty is None:
                        self._duty = me
                    if self._duty != me:
                        self._cond.wait(OFF_DUTY)
                    elif not self._maybe_jump():
                        self._cond.wait(POLL)
            finally:
                del self._sleepers[me]
                if self._duty == me:
                    self._duty = None
                    self._cond.notify_all()
                self._touch()

    def _touch(self) -> None:
        self._generation += 1
        self._changed = time.monotonic()
        self._quiet = None

    def _all_waiting(self) -> bool:
        if self._calls:
            return False
        now = self.now()
        if any(s.until <= now or (s.event is not None and s.event.is_set())
               for s in self._sleepers.values()):
            self._cond.notify_all()  # done waiting: its thread may be off duty
            return False
        frames = sys._current_frames()
        for thread in threading.enumerate():
            if thread in self._outsiders or thread.name == SIGNALS_THREAD:
                continue
            ident = thread.ident
            if ident is not None and ident in self._sleepers:
                continue
            frame = frames.get(ident) if ident is not None else None
            if frame is None:
                if thread._is_stopped:  # type: ignore[attr-defined]
                    continue
                return False  # being started: no Python frame yet (its starter waits)
            if not _parked(frame):
                return False
        return True

    def _maybe_jump(self) -> bool:
        """Jump to the earliest wake-up if every thread has been waiting for QUIET."""
        real = time.monotonic()
        if not self._all_waiting():
            self._quiet = None
            if self._calls or real - self._changed < STALL:
                return False
            self.stalls += 1
        elif self._quiet is None or self._quiet[0] != self._generation:
            self._quiet = (self._generation, real)
            return False
        elif real - self._quiet[1] < QUIET:
            return False
        due = [s.until for s in self._sleepers.values()
               if s.event is None or not s.event.is_set()]
        if not due:
            return False
        due.extend(t for t in (wakeup() for wakeup in self.wakeups) if t is not None)
        with self._lock:
            self._now = max(self._now, min(due))
            self._publish()
        self.jumps += 1
        for hook in self.on_jump:
            hook()
        self._touch()
        self._cond.notify_all()
        return True


class _TimedOut(Exception):
    """The call's timeout ended a wait (or a hang) inside the fake."""


class _CallClock(HostClock):
    """The fake's clock for one call: the run's virtual time, cut at the call's timeout
    (where the production runner would kill the process)."""

    def __init__(self, clock: VirtualClock, deadline: Optional[float]) -> None:
        self.path = None
        self.clock = clock
        self.deadline = deadline

    def now(self) -> float:
        return self.clock.now()

    def wait_until(self, moment: float) -> None:
        if self.deadline is not None and moment >= self.deadline:
            self.clock.wait_until(self.deadline)
            raise _TimedOut()
        self.clock.wait_until(moment)

    def nap(self, moment: float) -> None:
        """Slices of the run's virtual time (it jumps when every thread waits)."""
        self.wait_until(min(moment, self.now() + NAP))

    def hang(self) -> NoReturn:
        if self.deadline is None:
            raise AssertionError("a fake virsh call hangs and has no timeout")
        self.clock.wait_until(self.deadline)
        raise _TimedOut()


class _VirtguestsProcess(CallerProcess):
    """A call's process, seen in-process: the environment virtguests gave virsh; its
    parent would be this (the test's) process, so a ``signal`` fault is refused."""

    def __init__(self, environ: Mapping[str, str], started: float) -> None:
        super().__init__(environ)
        self.started = started

    def signal_parent(self, name: str) -> None:
        raise Unsupported(f"a 'signal' fault (SIG{name}) would signal the test process: "
                          "run virtguests as a process (FakeHost.run or spawn)")

    def spawned(self) -> float:
        return self.started


class _World:
    """The clock, the options and the event watches shared by one in-process run."""

    def __init__(self, clock: VirtualClock, events: bool, log_killed: bool = False) -> None:
        self.clock = clock
        self.events = events
        self.log_killed = log_killed
        self.watches: list[InProcessWatch] = []
        self.lock = threading.Lock()
        self.made = 0


@dataclass(frozen=True)
class _Made:
    seq: int
    now: float
    thread: str


class InProcessVirsh(Virsh):
    """The production runner with the fake virsh dispatched in this process."""

    def __init__(self, path: str, *, world: _World, **kwargs: Any) -> None:
        kwargs["sessions"] = False  # one dispatch per call: sessions are tested as processes
        super().__init__(path, **kwargs)
        self.world = world

    def state(self, clock: Optional[HostClock] = None) -> StateFile:
        """The fake's state file, as a call with this runner's environment finds it."""
        return state_file(self._env, clock)

    def process(self, started: float) -> _VirtguestsProcess:
        return _VirtguestsProcess(self._env, started)

    def log(self, args: Sequence[str], start: float, status: Optional[int],
            made: _Made) -> None:
        """One line of ``VIRTGUESTS_FAKE_LOG``, as the fake writes it when it exits, plus
        what only an in-process run knows: the order the calls were made in (``seq``),
        the virtual time then and at the end (``virtual_start``, ``virtual_end``) and
        the calling thread (``thread``)."""
        path = self._env.get("VIRTGUESTS_FAKE_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"argv": list(args), "pid": os.getpid(), "start": start,
                                      "end": time.time(), "exit": status, "seq": made.seq,
                                      "virtual_start": made.now,
                                      "virtual_end": self.world.clock.now(),
                                      "thread": made.thread})
                          + "\n")

    def made(self) -> _Made:
        """A call made now, by this thread."""
        with self.world.lock:
            self.world.made += 1
            seq = self.world.made
        return _Made(seq, self.world.clock.now(), threading.current_thread().name)

    def _spawn(self, argv: list[str], limit: float) -> Result:
        clock = self.world.clock
        made = self.made()
        began, started = made.now, time.time()
        args = argv[1:]
        when = _CallClock(clock, began + clamp(limit) if limit > 0 else None)
        status, out, err = 2, "", ""
        timed_out = False
        with clock.call():
            try:
                status, out, err = self._dispatch(args, when, started)
            except _TimedOut:
                timed_out = True
        if not timed_out:  # a killed fake logs nothing
            self.log(args, started, status, made)
        elif self.world.log_killed:
            self.log(args, started, None, made)
        for watch in self.world.watches:
            watch.look()
        if timed_out:
            raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                             timed_out=True)
        return Result(tuple(argv), status, _as_read(out), _as_read(err), clock.now() - began)

    def _dispatch(self, args: list[str], when: _CallClock,
                  started: float) -> tuple[int, str, str]:
        try:
            return answer(VirshCall(args, self.process(started)), self._env, when)
        except Unsupported as exc:
            return 2, "", f"fakevirsh: {exc}\n"

    def watch(self, uri: str, args: Sequence[str],  # type: ignore[override]
              on_line: Callable[[str], None]) -> InProcessWatch:
        argv = self.argv(uri, args)
        self._refuse_if_given_up(uri, argv)
        with self._lock:
            self.calls += 1
        self._count_start(uri)
        watch = InProcessWatch(self, argv, on_line)
        self.world.watches.append(watch)
        return watch


class InProcessWatch:
    """``virsh event --loop --event lifecycle``: the lines of guests started, stopped or
    migrated (``rendering.lifecycle_events``), looked for after every call and every
    jump of the clock (the fake's own loop looks every 20 ms of real time)."""

    def __init__(self, runner: InProcessVirsh, argv: Sequence[str],
                 on_line: Callable[[str], None]) -> None:
        self.runner = runner
        self.argv = tuple(argv)
        self.on_line = on_line
        self.started = time.time()
        self.made = runner.made()
        self.running = False
        self.silent = False
        self.seen: Optional[dict[str, Any]] = None
        self.lock = threading.Lock()
        self.call = VirshCall(list(argv[1:]), runner.process(self.started))
        self.key = self.call.uri_arg or "default"
        if runner.world.events:  # else: virsh exits 1, "unknown command", before the fake
            self.running = True
            self._start()
            runner.world.clock.on_jump.append(self.look)
            runner.world.clock.wakeups.append(self.next_change)

    def _start(self) -> None:
        """The fake loop's first round: count the call, inject its fault, or fail."""
        state = self.runner.state()
        with self.lock, state as host:
            uri_state = host["uris"].get(self.key)
            if uri_state is None:  # the fake exits 2: not in the host file
                self.running = False
                self.runner.log(self.argv[1:], self.started, 2, self.made)
                return
            now = self.runner.world.clock.now()
            dirty = apply_due_transitions(uri_state, now)
            injected = inject(host, self.call, self.key, uri_state, now)
            dirty = injected.counted or dirty
            if uri_state["hang_after_calls"] or uri_state["hang"]:
                uri_state["calls"] += 1
                dirty = True
            if dirty:
                state.save()
            self.seen = lifecycle_view(uri_state)
        if (uri_state["unreachable"] or now < uri_state["unreachable_until"]
                or injected.action == "fail"):
            self.running = False
            self.runner.log(self.argv[1:], self.started, 1, self.made)
        elif (uri_state["hang"] or injected.hang
              or 0 < uri_state["hang_after_calls"] < uri_state["calls"]
              or injected.action == "slow"):
            self.silent = True
        elif injected.action == "signal":
            raise AssertionError("a 'signal' fault on 'event' would signal the test process")
        elif injected.action == "garbage":
            self.on_line(injected.output("", uri_state))


    def look(self) -> None:
        if not self.running or self.silent:
            return
        state = self.runner.state()
        with self.lock, state as host:
            uri_state = host["uris"][self.key]
            if apply_due_transitions(uri_state, self.runner.world.clock.now()):
                state.save()
            current = lifecycle_view(uri_state)
            seen, self.seen = self.seen or {}, current
            lines = lifecycle_events(host["templates"], seen, current)
        for line in lines.splitlines(True):
            self.on_line(line)

    def next_change(self) -> Optional[float]:
        """When the next save or start ends or a guest shuts off by itself."""
        if not self.running or self.silent:
            return None
        state = self.runner.state()
        with self.lock, state as host:
            uri_state = host["uris"][self.key]
            now = self.runner.world.clock.now()
            times = [guest["job"]["end"] for guest in uri_state["guests"]
                     if guest["job"] is not None]
            times += [guest["shutdown_at"] for guest in uri_state["guests"]
                      if guest["shutdown_at"] is not None]
        return min((float(t) for t in times if t > now), default=None)

    def alive(self) -> bool:
        return self.running

    def close(self) -> None:
        """SIGTERM: the fake exits 143 and logs the call."""
        if self.running:
            self.running = False
            self.runner.log(self.argv[1:], self.started, 143, self.made)


def _as_read(text: str) -> str:
    """What the runner reads back from a process that wrote *text* as the fake does."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")


def _time_left_at(now_file: Path) -> float:
    """Where an earlier run left the virtual clock: a second run of a test goes on from
    there (a save or shutdown still under way keeps its timing), never back."""
    try:
        return max(VIRTUAL_EPOCH, float(now_file.read_text()))
    except (OSError, ValueError):
        return VIRTUAL_EPOCH


def run_inprocess(host: FakeHost, *args: str, events: bool = True,
                  log_killed: bool = False) -> tuple[Run, VirtualClock]:
    """virtguests in-process, the fake virsh in-process, on a virtual clock.

    With *events* False the fake behaves as a virsh without ``event`` (before 0.9.x).
    With *log_killed* a call killed at its timeout is logged too, with ``"exit": null``
    (a fake process that is killed logs nothing).
    Every call goes to the fake: a run that would use another virsh (``--virsh``,
    ``$VIRSH``, say a wrapper script) raises ValueError instead of ignoring it.
    """
    host.now_file = host.root / "now"
    clock = VirtualClock(start=_time_left_at(host.now_file), now_file=host.now_file)
    world = _World(clock, events, log_killed)
    shim = os.path.realpath(host.bin / "virsh")
    other: list[str] = []

    def make_virsh(path: str, **kwargs: Any) -> Virsh:
        if os.path.realpath(path) != shim:
            other.append(path)
            raise ValueError(f"run_inprocess runs only the fake virsh, not {path!r}")
        return InProcessVirsh(path, world=world, **kwargs)

    out, err = io.StringIO(), io.StringIO()
    try:
        code = cli.main(host.argv(*args), environ=host.env(), out=out, err=err, clock=clock,
                        make_virsh=make_virsh)
    finally:
        for watch in world.watches:
            watch.close()
    if other:
        raise ValueError(f"run_inprocess runs only the fake virsh ({shim}), not {other[0]!r}:"
                         " express the wrapper as a fault rule, or use FakeHost.run")
    return Run(code, out.getvalue(), err.getvalue()), clock
