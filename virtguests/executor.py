"""Carry out a plan: run the virsh commands, wait for guests, escalate, report.

Each URI runs in its own thread (URIs are often different hosts), with its
own timeout accounting.  Waiting for shutdowns asks virsh once per URI per
tick which guests are still active, instead of once per guest.  A guest's
action chain (suspend -> shutdown -> poweroff) moves to the next step when a
step fails or times out.  After a stop request (SIGTERM/SIGINT) nothing new is
started; calls in flight finish or time out.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from virtguests import observe, virshout
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.plan import (
    POWEROFF,
    SHUTDOWN,
    SUSPEND,
    GuestStart,
    GuestStop,
    StartPlan,
    StopPlan,
    UriStart,
    UriStop,
    action_args,
    start_args,
)
from virtguests.report import Outcome, Reporter
from virtguests.virsh import Interrupted, Virsh, VirshError, Watch

POLL = 0.05
"""Seconds between two "which guests are still active" checks (one virsh call)."""

SLOW_POLL = 1.0
"""Long waits (a guest that ignores ACPI) back off to this, to spare libvirtd."""


def poll_interval(waited: float) -> float:
    """Fast checks while shutdowns are fresh (most finish in seconds), slower later."""
    if waited <= 2:
        return POLL
    if waited <= 5:
        return 2 * POLL
    return min(SLOW_POLL, 2 * POLL + (waited - 5) / 50)

PROGRESS_EVERY = 5.0
"""The reference prints save and shutdown progress every 5 seconds."""

STAGES = (SUSPEND, SHUTDOWN, POWEROFF)

SAFETY_POLL = 1.0
"""With a lifecycle event stream, checks run on each event, and at least this often."""


_STOPPED = re.compile(r"^event 'lifecycle' for domain '(?P<name>.*)': Stopped\b")


class Doorbell:
    """``virsh event --loop --event lifecycle`` on a URI: wakes the wait loop when guests stop.

    A ``Stopped`` event for a guest we wait for counts as its stop; any other
    line makes the loop check right away with one ``list``.  A missed or
    unparsable event costs at most SAFETY_POLL; where events are unavailable
    the loop simply polls.
    """

    def __init__(self, virsh: Virsh, uri: str) -> None:
        self.rung = threading.Event()
        self._stopped: list[str] = []
        self._lock = threading.Lock()
        self.proven = False
        self.watch: Optional[Watch] = None
        try:
            self.watch = virsh.watch(uri, ["event", "--loop", "--event", "lifecycle"],
                                     self._line)
        except VirshError:
            self.watch = None

    def _line(self, line: str) -> None:
        match = _STOPPED.match(line.rstrip("\r\n"))
        if match:
            with self._lock:
                self._stopped.append(match.group("name"))
                self.proven = True
        self.rung.set()

    def take_stopped(self) -> set[str]:
        with self._lock:
            names, self._stopped = set(self._stopped), []
        return names

    def wait(self, clock: Clock, poll: float, limit: float) -> None:
        """Until an event, or the next check, or *limit* seconds.

        Checks stay as frequent as without events until the stream has proven
        itself by reporting a stop; from then on they are only a safety net.
        """
        if self.watch is not None and self.watch.alive():
            every = max(poll, SAFETY_POLL) if self.proven else poll
            clock.wait(self.rung, max(min(every, limit), 0.0))
        else:
            clock.sleep(max(min(poll, limit), 0.0))

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()


class Executor:
    def __init__(
        self,
        virsh: Virsh,
        config: Config,
        reporter: Reporter,
        clock: Clock,
        *,
        checkpoint: Callable[[], None] = lambda: None,
    ) -> None:
        self.virsh = virsh
        self.config = config
        self.report = reporter
        self.clock = clock
        self.checkpoint = checkpoint
        self.deadline: Optional[float] = None
        self.status = 0
        self.not_resumed: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    # -- shared helpers -------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.clock.cancel.is_set()

    def _fail(self) -> None:
        with self._lock:
            self.status = 1

    def _remaining(self) -> float:
        if self.deadline is None:
            return math.inf
        return self.deadline - self.clock.now()

    def _run_concurrently(self, jobs: Sequence[Callable[[], None]]) -> None:
        """Run one job per URI in its own thread; the main thread stays signal-ready.

        A bug hit on one URI is reported and fails the run, but never stops the
        other URIs' guests from being handled.
        """
        if len(jobs) == 1:
            self._guarded(jobs[0])
            return
        threads = [threading.Thread(target=self._guarded, args=(job,), daemon=True)
                   for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)

    def _guarded(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            import traceback

            self._fail()
            self.report.error("internal error, please report it:\n"
                              + traceback.format_exc().rstrip())

    # -- stop -----------------------------------------------------------------

    def stop(self, plan: StopPlan) -> int:
        if self.config.stop_deadline > 0:
            self.deadline = self.clock.now() + self.config.stop_deadline
        self._run_concurrently([functools.partial(self._stop_uri, item)
                                for item in plan.uris if item.guests])
        return self.status

    def _stop_uri(self, item: UriStop) -> None:
        if self.config.suspending:
            self.report.say(f"Suspending guests on {item.uri} URI...")
        else:
            self.report.say(f"Shutting down guests on {item.uri} URI...")
        for group in item.groups():
            self._stop_group(item.uri, group)

    def _stop_group(self, uri: str, steps: Sequence[GuestStop]) -> None:
        queues: dict[str, list[GuestStop]] = {stage: [] for stage in STAGES}
        for step in steps:
            queues[step.actions[0]].append(step)
        for stage in STAGES:
            todo = queues[stage]
            if not todo:
                continue
            if self.cancelled:
                for step in todo:
                    self._interrupted(uri, step)
                continue
            if stage == SUSPEND:
                failed = self._suspend_all(uri, todo)
            elif stage == SHUTDOWN:
                failed = self._shutdown_all(uri, todo)
            else:
                failed = self._poweroff_all(uri, todo)
            for step in failed:
                following = _next_action(step, stage)
                if following is not None:
                    queues[following].append(step)

    def _outcome(self, uri: str, step: GuestStop) -> Outcome:
        return self.report.outcome(uri, step.guest.uuid, step.guest.name)

    def _interrupted(self, uri: str, step: GuestStop) -> None:
        self.report.step(self._outcome(uri, step), "none", "interrupted", 0.0,
                         "stop requested before this guest was handled")
        self.checkpoint()

    def _escalating(self, step: GuestStop, action: str) -> str:
        following = _next_action(step, action)
        return f"; trying {following}" if following else ""

    # suspend ---------------------------------------------------------------

    def _suspend_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        workers = self.config.parallel_suspend
        if workers <= 1 or len(steps) == 1:
            return [s for s in steps if not self._suspend(uri, s)]
        with ThreadPoolExecutor(max_workers=min(workers, len(steps))) as pool:
            results = list(pool.map(lambda s: self._suspend(uri, s), steps))
        return [s for s, ok in zip(steps, results) if not ok]

    def _suspend(self, uri: str, step: GuestStop) -> bool:
        """managedsave one guest, printing progress every 5 s; True if saved."""
        name, uuid = step.guest.name, step.guest.uuid
        outcome = self._outcome(uri, step)
        label = f"Suspending {name}: "
        if self.cancelled:
            self._interrupted(uri, step)
            return True
        budget = min(float(self.config.save_timeout), self._remaining())
        if budget <= 0:
            self.report.error(f"no time left before STOP_DEADLINE to save guest {name}"
                              f"{self._escalating(step, SUSPEND)}")
            self.report.step(outcome, SUSPEND, "skipped", 0.0, "STOP_DEADLINE reached")
            return False
        self.report.say(f"{label}...")
        started = self.clock.now()
        done = threading.Event()
        errors: list[VirshError] = []

        def save() -> None:
            try:
                self.virsh.run(uri, action_args(SUSPEND, uuid, self.config), timeout=budget,
                               ignore_interrupt=True)
            except VirshError as err:
                errors.append(err)
            finally:
                done.set()

        worker = threading.Thread(target=save, daemon=True)
        worker.start()
        next_progress = started + PROGRESS_EVERY
        while not self.clock.wait(done, max(next_progress - self.clock.now(), 0.0)):
            if self.clock.now() >= next_progress:
                next_progress += PROGRESS_EVERY
                self.report.say(f"{label}{self._save_progress(uri, uuid)}")
        worker.join()
        seconds = self.clock.now() - started
        if errors and self._saved_anyway(uri, uuid):
            errors.clear()
        if errors:
            self._fail()
            self.report.error(f"saving guest {name} failed: {errors[0].detail}"
                              f"{self._escalating(step, SUSPEND)}")
            self.report.step(outcome, SUSPEND, "failed", seconds, errors[0].detail)
            self.checkpoint()
            return False
        self.report.say(f"{label}done")
        self.report.step(outcome, SUSPEND, "saved", seconds)
        self.checkpoint()
        return True

    def _saved_anyway(self, uri: str, uuid: str) -> bool:
        """A save can "fail" because another process saved the guest meanwhile."""
        try:
            result = self.virsh.run(uri, ["list", "--all", "--uuid", "--with-managed-save"],
                                    timeout=self.config.query_timeout, ignore_interrupt=True)
            return uuid in virshout.uuids(result.argv, result.stdout)
        except VirshError:
            return False

    def _save_progress(self, uri: str, uuid: str) -> str:
        try:
            result = self.virsh.run(uri, ["domjobinfo", uuid],
                                    timeout=self.config.query_timeout)
        except (VirshError, Interrupted):
            return "..."
        return virshout.data_processed(result.stdout) or "..."

    # shutdown --------------------------------------------------------------

    def _shutdown_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        bell = Doorbell(self.virsh, uri)
        try:
            if self.config.parallel_shutdown > 1:
                return self._shutdown_parallel(uri, steps, bell)
            failed: list[GuestStop] = []
            for index, step in enumerate(steps):
                if self.cancelled:
                    self._interrupted(uri, step)
                    continue
                share = self._remaining() / (len(steps) - index)
                if not self._shutdown_serial(uri, step, share, bell):
                    failed.append(step)
            return failed
        finally:
            bell.close()

    def _request_shutdown(self, uri: str, step: GuestStop) -> bool:
        self.report.say(f"Starting shutdown on guest: {step.guest.name}")
        return self._send_shutdown(uri, step)

    def _send_shutdown(self, uri: str, step: GuestStop) -> bool:
        try:
            self.virsh.run(uri, action_args(SHUTDOWN, step.guest.uuid, self.config),
                           timeout=self.config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            self._fail()
            self.report.error(f"shutdown of guest {step.guest.name} failed: {err.detail}"
                              f"{self._escalating(step, SHUTDOWN)}")
            self.report.step(self._outcome(uri, step), SHUTDOWN, "failed", 0.0, err.detail)
            self.checkpoint()
            return False
        return True

    def _request_shutdowns(self, uri: str, steps: Sequence[GuestStop]) -> list[bool]:
        """Announce, then send several shutdown requests at once (each is one virsh call)."""
        for step in steps:
            self.report.say(f"Starting shutdown on guest: {step.guest.name}")
        if len(steps) == 1:
            return [self._send_shutdown(uri, steps[0])]
        with ThreadPoolExecutor(max_workers=len(steps)) as pool:
            return list(pool.map(lambda s: self._send_shutdown(uri, s), steps))

    def _shutdown_serial(self, uri: str, step: GuestStop, share: float,
                         bell: Doorbell) -> bool:
        """One guest at a time, with its own timeout (the reference's serial mode)."""
        name = step.guest.name
        outcome = self._outcome(uri, step)
        if not self._request_shutdown(uri, step):
            return False
        started = self.clock.now()
        limit = step.timeout if step.timeout > 0 else math.inf
        limit = min(limit, share)
        next_progress = started + PROGRESS_EVERY
        while True:
            bell.rung.clear()
            try:
                still = step.guest.uuid in observe.active_uuids(self.virsh, uri, self.config)
            except (VirshError, Interrupted) as err:
                self._fail()
                self.report.say(f"Failed to determine state of guest: {step.guest.uuid}. "
                                "Not tracking it anymore.")
                self.report.step(outcome, SHUTDOWN, "unknown", self.clock.now() - started,
                                 str(err))
                self.checkpoint()
                return True
            elapsed = self.clock.now() - started
            if not still:
                self.report.say(f"Shutdown of guest {name} complete.")
                self.report.step(outcome, SHUTDOWN, "shut off", elapsed)
                self.checkpoint()
                return True
            if self.cancelled:
                self.report.step(outcome, SHUTDOWN, "interrupted", elapsed,
                                 "stop requested while waiting")
                self.checkpoint()
                return True
            if elapsed >= limit:
                break
            if self.clock.now() >= next_progress:
                next_progress += PROGRESS_EVERY
                self.report.say(_waiting(f"guest {name}", limit - elapsed))
            bell.wait(self.clock, poll_interval(elapsed), limit - elapsed)
        self.report.say(f"Shutdown of guest {name} failed to complete in time.")
        self.report.step(outcome, SHUTDOWN, "timed out", self.clock.now() - started)
        self.checkpoint()
        return False

    def _shutdown_parallel(self, uri: str, steps: Sequence[GuestStop],
                           bell: Doorbell) -> list[GuestStop]:
        """Up to PARALLEL_SHUTDOWN guests in flight; the timeout covers the whole URI."""
        queue = deque(steps)
        inflight: dict[str, tuple[GuestStop, float]] = {}
        failed: list[GuestStop] = []
        started = self.clock.now()
        timeout = self.config.shutdown_timeout
        uri_deadline = min(started + timeout if timeout > 0 else math.inf,
                           started + self._remaining())
        next_progress = started + PROGRESS_EVERY
        poll_failures = 0
        last_request = started
        while queue or inflight:
            free = self.config.parallel_shutdown - len(inflight)
            if queue and free > 0 and not self.cancelled:
                batch = [queue.popleft() for _ in range(min(free, len(queue)))]
                sent = self._request_shutdowns(uri, batch)
                last_request = self.clock.now()
                for step, ok in zip(batch, sent):
                    if ok:
                        own = last_request + step.timeout if step.timeout > 0 else math.inf
                        inflight[step.guest.uuid] = (step, min(own, uri_deadline))
                    else:
                        failed.append(step)
            if self.cancelled:
                for step in queue:
                    self._interrupted(uri, step)
                queue.clear()
            if not inflight:
                continue
            bell.wait(self.clock, poll_interval(self.clock.now() - last_request),
                      uri_deadline - self.clock.now())
            bell.rung.clear()
            now = self.clock.now()
            by_name = {step.guest.name: uuid for uuid, (step, _) in inflight.items()}
            stopped = {by_name[n] for n in bell.take_stopped() if n in by_name}
            try:
                if stopped:  # the event stream said so: no need to ask
                    active = set(inflight) - stopped
                else:
                    active = observe.active_uuids(self.virsh, uri, self.config)
                poll_failures = 0
            except (VirshError, Interrupted) as err:
                poll_failures += 1
                timed_out = isinstance(err, VirshError) and err.timed_out
                if poll_failures < 3 and not timed_out and not self.cancelled:
                    continue
                self._fail()
                for uuid, (step, _) in inflight.items():
                    self.report.say(f"Failed to determine state of guest: {uuid}. "
                                    "Not tracking it anymore.")
                    self.report.step(self._outcome(uri, step), SHUTDOWN, "unknown",
                                     now - started, str(err))
                inflight.clear()
                self.checkpoint()
                continue
            for uuid in [u for u in inflight if u not in active]:
                step, _ = inflight.pop(uuid)
                self.report.say(f"Shutdown of guest {step.guest.name} complete.")
                self.report.step(self._outcome(uri, step), SHUTDOWN, "shut off", now - started)
                self.checkpoint()
            if now >= next_progress and (inflight or queue):
                next_progress += PROGRESS_EVERY
                self.report.say(_waiting(f"{len(inflight) + len(queue)} guests",
                                         uri_deadline - now))
            if now >= uri_deadline and (inflight or queue):
                self.report.say("Timeout expired while shutting down domains")
                self._fail()
                # Unlike the reference, guests still queued get a shutdown request too.
                late = list(queue)
                queue.clear()
                for step, ok in zip(late, self._request_shutdowns(uri, late) if late else []):
                    if ok:
                        inflight[step.guest.uuid] = (step, now)
                    else:
                        failed.append(step)
            if self.cancelled and inflight:
                for step, _ in inflight.values():
                    self.report.step(self._outcome(uri, step), SHUTDOWN, "interrupted",
                                     now - started, "stop requested while waiting")
                inflight.clear()
                self.checkpoint()
                continue
            for uuid in [u for u, (_, due) in inflight.items() if now >= due]:
                step, _ = inflight.pop(uuid)
                self.report.step(self._outcome(uri, step), SHUTDOWN, "timed out",
                                 now - started)
                failed.append(step)
                self.checkpoint()
        return failed

    # poweroff --------------------------------------------------------------

    def _poweroff_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        for step in steps:
            outcome = self._outcome(uri, step)
            started = self.clock.now()
            try:
                self.virsh.run(uri, action_args(POWEROFF, step.guest.uuid, self.config),
                               timeout=self.config.query_timeout, ignore_interrupt=True)
            except VirshError as err:
                self._fail()
                self.report.error(f"powering off guest {step.guest.name} failed: {err.detail}")
                self.report.step(outcome, POWEROFF, "failed", 0.0, err.detail)
            else:
                self.report.say(f"Powering off guest {step.guest.name}: done")
                self.report.step(outcome, POWEROFF, "powered off",
                                 self.clock.now() - started)
            self.checkpoint()
        return []

    # -- start ----------------------------------------------------------------

    def start(self, plan: StartPlan) -> int:
        self._run_concurrently([functools.partial(self._start_uri, item)
                                for item in plan.uris])
        return self.status

    def _start_uri(self, item: UriStart) -> None:
        order = sorted(item.guests, key=lambda g: g.group)  # stable: list order within a group
        tried: dict[str, _Attempt] = {}
        if item.probe and not self.cancelled:
            lead = next((g for g in order if g.start), None)
            if lead is not None:
                attempt = self._attempt(item.uri, lead, first=True)
                if attempt.refusal == "unreachable":
                    self._fail()
                    for guest in item.guests:
                        self._keep(item.uri, guest.uuid)
                    self.report.cannot_resume_uri(item.uri, attempt.detail,
                                                  [g.uuid for g in item.guests])
                    return
                tried[lead.uuid] = attempt
        self.report.say(f"Resuming guests on {item.uri} URI...")
        first = True
        for group in sorted({g.group for g in order}):
            members = [g for g in order if g.group == group]
            parallel = (self.config.start_delay == 0 and self.config.parallel_start > 1
                        and all(g.delay_after is None for g in members))
            if parallel:
                with ThreadPoolExecutor(max_workers=self.config.parallel_start) as pool:
                    list(pool.map(lambda g: self._start_guest(item.uri, g, tried.get(g.uuid)),
                                  members))
                continue
            for guest in members:
                if guest.start and not first and not self.cancelled \
                        and guest.uuid not in tried:
                    delay = self.config.start_delay
                    if delay:
                        self.clock.sleep(delay)
                started = self._start_guest(item.uri, guest, tried.get(guest.uuid))
                if started:
                    first = False
                    if guest.delay_after:
                        self.clock.sleep(guest.delay_after)

    def _attempt(self, uri: str, guest: GuestStart, *, first: bool = False) -> _Attempt:
        """One ``virsh start``.  The *first* on a URI that was not listed doubles as its
        connection check, retried like a listing while libvirtd may still be starting."""
        began = self.clock.now()
        try:
            result = observe.run_with_retries(
                self.virsh, uri, start_args(guest.uuid, self.config), self.config, self.clock,
                timeout=self.config.save_timeout,
                retry_if=lambda err: first
                and virshout.start_refusal(err.stderr) == "unreachable")
        except VirshError as err:
            return _Attempt(self.clock.now() - began, error=err)
        return _Attempt(self.clock.now() - began, name=virshout.started_name(result.stdout))

    def _start_guest(self, uri: str, guest: GuestStart,
                     attempt: Optional[_Attempt] = None) -> bool:
        """Start (resume) one guest; True if a start was issued and succeeded."""
        outcome = self.report.outcome(uri, guest.uuid, guest.name)
        issued = False
        if not guest.start:
            self.report.say(f"Resuming guest {guest.name}: {guest.reason}")
            self.report.step(outcome, "start", guest.reason, 0.0)
        elif self.cancelled and attempt is None:
            self._keep(uri, guest.uuid)
            self.report.step(outcome, "start", "interrupted", 0.0,
                             "stop requested before this guest was started")
        else:
            attempt = attempt or self._attempt(uri, guest)
            name = attempt.name or guest.name
            if attempt.refusal == "already active":
                self.report.say(f"Resuming guest {name}: already active")
                self.report.step(outcome, "start", "already active", attempt.seconds)
            elif attempt.refusal == "missing":
                self._fail()
                self.report.gone(uri, guest.uuid)
                self.report.step(outcome, "start", "no longer exists", attempt.seconds,
                                 attempt.detail)
                self.checkpoint()
                return False
            elif attempt.error is not None:
                self._fail()
                self._keep(uri, guest.uuid)
                self.report.say(f"Resuming guest {name}: failed")
                self.report.error(f"starting guest {name} failed: {attempt.detail}; "
                                  "it stays recorded for the next start")
                self.report.step(outcome, "start", "failed", attempt.seconds, attempt.detail)
                self.checkpoint()
                return False
            else:
                issued = True
                outcome.name = name
                self.report.say(f"Resuming guest {name}: done")
                self.report.step(outcome, "start", "resumed", attempt.seconds)
        if self.config.sync_time and guest.reason != "skipped by policy" \
                and not self.cancelled:
            self._sync_time(uri, guest)
        self.checkpoint()
        return issued

    def _sync_time(self, uri: str, guest: GuestStart) -> None:
        try:
            self.virsh.run(uri, ["domtime", "--sync", guest.uuid],
                           timeout=self.config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            self.report.warn(f"could not sync the time of guest {guest.name}: {err.detail}")

    def _keep(self, uri: str, uuid: str) -> None:
        with self._lock:
            self.not_resumed.setdefault(uri, []).append(uuid)


@dataclass(frozen=True)
class _Attempt:
    """One ``virsh start``: its time, and either the name virsh printed or the error."""

    seconds: float
    name: Optional[str] = None
    error: Optional[VirshError] = None

    @property
    def refusal(self) -> Optional[str]:
        return virshout.start_refusal(self.error.stderr) if self.error else None

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.timed_out

    @property
    def detail(self) -> str:
        return self.error.detail if self.error else ""


def _waiting(who: str, left: float) -> str:
    """The reference's progress line, with or without a countdown."""
    if math.isinf(left):
        return f"Waiting for {who} to shut down"
    return f"Waiting for {who} to shut down, {max(round(left), 0)} seconds left"


def _next_action(step: GuestStop, after: str) -> Optional[str]:
    actions = step.actions
    if after not in actions:
        return None
    index = actions.index(after)
    return actions[index + 1] if index + 1 < len(actions) else None
