"""The files the actions keep true: the list file and the pending file (guests a start
must still resume), the seen file (what each URI was running), the migrated record
(guests away on a peer), the started marker and the run report.

A failed write is reported, never fatal to the guests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from virtguests import state
from virtguests.actions.context import Context
from virtguests.model import Departure


def disk(ctx: Context, what: str, action: Callable[[], None]) -> bool:
    """Do one state-file write; a failure is reported, never fatal to the guests."""
    try:
        action()
    except OSError as err:
        ctx.messages.error(f"cannot {what}: {err}")
        return False
    return True


def read_recorded(ctx: Context) -> tuple[state.Entries, state.Entries, list[state.BadLine]]:
    """The list file, the pending file (guests earlier starts could not resume), and
    their damaged lines."""
    entries, bad = state.read_list(ctx.paths.list_file)
    pending, bad_pending = state.read_list(ctx.paths.pending)
    return entries, pending, [*bad, *bad_pending]


def recorded_earlier(ctx: Context, *,
                     stale_warning: bool) -> tuple[dict[str, list[str]], list[state.BadLine]]:
    """Entries still on disk from an earlier stop or failed start (never dropped), and the
    damage found (reported here)."""
    entries, pending, bad = read_recorded(ctx)
    for line in bad:
        ctx.messages.error(str(line))
    if entries and stale_warning:
        count = sum(len(v) for v in entries.values())
        ctx.messages.warn(
            f"{ctx.paths.list_file} from an earlier stop was never resumed by a start; "
            f"its {count} guest(s) stay recorded, and running guests are protected now"
        )
    return state.merge(entries, pending), bad


def set_aside_unreadable(ctx: Context, bad: Sequence[state.BadLine]) -> bool:
    """A list or pending file we could not read is moved aside, not overwritten or removed:
    what it records is unknown, and the admin may still recover it."""
    ok = True
    for path in dict.fromkeys(b.path for b in bad if b.unreadable):
        if not path.exists() and not path.is_symlink():
            continue
        try:
            aside = state.set_aside(path)
        except OSError as err:
            ctx.messages.error(f"cannot move the unreadable {path} aside: {err}")
            ok = False
        else:
            ctx.messages.error(f"{path} could not be read; kept as {aside}")
    return ok


def update_seen(ctx: Context, running: Mapping[str, Mapping[str, str]], *,
                replace_uris: bool) -> dict[str, dict[str, str]]:
    """Remember the persistent guests each URI was running (URI -> UUID -> name).

    When a URI cannot be reached at the next stop, these are the guests we can
    still name, and record for the next start.  `stop` sees everything running
    (*replace_uris*); `start` adds what it resumed or found already running.
    """
    seen = read_seen(ctx, warn=True)
    for uri, guests in running.items():
        seen[uri] = dict(guests) if replace_uris else {**seen.get(uri, {}), **guests}
    if not ctx.dry_run:
        try:
            state.write_json(ctx.paths.seen, seen)
        except OSError as err:
            ctx.messages.warn(f"cannot write {ctx.paths.seen}: {err}")
    return seen


def read_seen(ctx: Context, *, warn: bool) -> dict[str, dict[str, str]]:
    """The seen file's valid entries; with *warn*, a warning for its damage (once per run
    is enough)."""
    seen, problems = state.read_seen(ctx.paths.seen)
    if warn:
        for problem in problems:
            ctx.messages.warn(f"{problem} (ignored; the file is rewritten)")
    return seen


def mark_started(ctx: Context) -> None:
    if not ctx.dry_run:
        disk(ctx, f"create the started marker {ctx.paths.marker}",
             lambda: state.touch(ctx.paths.marker))


def marker_exists(ctx: Context) -> bool:
    return ctx.paths.marker.exists()


def write_run_report(ctx: Context, command: str, status: Optional[int]) -> None:
    if ctx.dry_run:
        return
    try:
        state.write_json(ctx.paths.run_report, ctx.run_report.document(
            command, status if status is not None else -1, virsh_started(ctx)))
    except OSError as err:
        ctx.messages.warn(f"cannot write the run report {ctx.paths.run_report}: {err}")


def virsh_started(ctx: Context) -> list[dict[str, Any]]:
    """Per URI, the virsh processes this run started and the connections they opened
    (the run report's and the metrics file's ``virsh``)."""
    return [{"uri": uri, "processes": counts.processes, "connections": counts.connections}
            for uri, counts in ctx.virsh.started().items()]


def write_metrics(ctx: Context, command: str, status: int) -> None:
    """METRICS_FILE, when set: the run that ends now.  A failure is a warning: it never
    changes the exit status, and the run report and the records are written already."""
    from pathlib import Path

    from virtguests import metrics

    if ctx.dry_run or not ctx.config.metrics_file:
        return
    path = Path(ctx.config.metrics_file)
    try:
        metrics.write(path, metrics.text(command, status, ctx.run_report.started, time.time(),
                                         ctx.config.uris, ctx.run_report.outcomes(),
                                         virsh_started(ctx)))
    except OSError as err:
        ctx.messages.warn(f"cannot write the metrics file {path}: {err}")


def read_run_report(ctx: Context, say: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The last run's report, its valid parts; each problem with the file goes to *say*."""
    document, problems = state.read_run_report(ctx.paths.run_report)
    for problem in problems:
        say(str(problem))
    return document


class Checkpoint:
    """Rewrite the run report as guests are handled, at most once a second.

    Rewriting it after every guest made large runs quadratic; the list file,
    which is what `start` needs, is already on disk before anything is done.
    """

    EVERY = 1.0

    def __init__(self, ctx: Context, command: str) -> None:
        self.ctx = ctx
        self.command = command
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self) -> None:
        if time.monotonic() - self.last < self.EVERY or not self.lock.acquire(blocking=False):
            return
        try:
            write_run_report(self.ctx, self.command, None)
            self.last = time.monotonic()
        finally:
            self.lock.release()


class MigratedRecord:
    """The migrated record (``virtguests-migrated``) during a stop or drain, under the
    run's lock: what earlier runs recorded, plus each guest as soon as it left.

    Entries are only ever added (a guest that leaves again replaces its own entry) or
    dropped for a guest seen running at home: a guest that is away is never
    forgotten.  A file that cannot be read whole is set aside (kept for the admin) and
    its readable entries carried over.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.writable = not ctx.dry_run
        self.failed = False
        """A write failed, or the earlier record could not be read whole: exit 1."""
        self.entries, problems = state.read_migrated(ctx.paths.migrated)
        for problem in problems:
            ctx.messages.error(str(problem))
        if problems:
            self.failed = True
            path = ctx.paths.migrated
            if path.exists() or path.is_symlink():
                try:
                    aside = state.set_aside(path)
                except OSError as err:
                    ctx.messages.error(f"cannot move the unreadable {path} aside: {err}")
                    self.writable = False  # never overwrite what no one has read
                    return
                ctx.messages.error(f"{path} could not be read whole; kept as {aside}")
            if self.entries:
                self._write()

    def home_again(self, running: Mapping[str, Iterable[str]]) -> None:
        """Drop the entries of guests seen running at their home URI (*running*: URI ->
        UUIDs): they are known home."""
        home = {(uri, uuid) for uri, uuids in running.items() for uuid in uuids}
        with self.lock:
            kept = [d for d in self.entries if (d.home, d.uuid) not in home]
            if len(kept) != len(self.entries):
                self.entries = kept
                self._write()

    def __call__(self, departure: Departure) -> None:
        """A guest left: written before the run goes on (a power cut then keeps it)."""
        with self.lock:
            self.entries = [d for d in self.entries if d.uuid != departure.uuid]
            self.entries.append(departure)
            self._write()

    def _write(self) -> None:
        if not self.writable:
            if not self.ctx.dry_run:
                self.failed = True
                self.ctx.messages.error(f"not recorded in {self.ctx.paths.migrated} (it "
                                        "could not be read or moved aside): "
                                        + ", ".join(f"{d.name} on {d.peer}"
                                                    for d in self.entries))
            return
        entries = list(self.entries)
        if not disk(self.ctx, f"write the migrated record {self.ctx.paths.migrated} (the "
                    "guests named there run on their peer; start will not bring them home)",
                    lambda: state.write_migrated(self.ctx.paths.migrated, entries)):
            self.failed = True
