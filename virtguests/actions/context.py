"""What every action is given, and the guards it runs in.

The context (config, paths, virsh, messages, clock, options, run report), asking every
URI at once, warning about the config and refusing a bad one, the lock, and the summary
of a run a signal cut short.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TypeVar

from virtguests import state
from virtguests.clock import Clock
from virtguests.config import Config, Loaded, blocks
from virtguests.exitstatus import EXIT_FAIL
from virtguests.messages import Messages
from virtguests.model import PolicyLookup, UriView, no_policy
from virtguests.runreport import RunReport
from virtguests.virsh import Virsh

T = TypeVar("T")


@dataclass
class Context:
    loaded: Loaded
    paths: state.Paths
    virsh: Virsh
    messages: Messages
    clock: Clock
    dry_run: bool = False
    json: bool = False
    lock_wait: float = 3600.0
    policy: PolicyLookup = no_policy
    run_report: RunReport = field(default_factory=RunReport)
    host_root: Path = Path("/")
    """Where the host's ``/etc`` is, for the conflict checks (``$VIRTGUESTS_HOST_ROOT``)."""

    @property
    def config(self) -> Config:
        return self.loaded.config


def for_each_uri(uris: Sequence[str], job: Callable[[str], T]) -> dict[str, T]:
    """Ask every URI at once: one slow or wedged host never delays the others."""
    results: dict[str, T] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(uri: str) -> None:
        try:
            value = job(uri)
        except BaseException as err:  # re-raised below, in the caller's thread
            with lock:
                errors.append(err)
            return
        with lock:
            results[uri] = value

    threads = [threading.Thread(target=run, args=(uri,), daemon=True) for uri in uris]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    if errors:
        raise errors[0]
    return {uri: results[uri] for uri in uris}


def look(ctx: Context, uri: str, view: Callable[[], UriView]) -> UriView:
    """Look at one URI; a bug there makes it unreachable for this run, not the others."""
    try:
        return view()
    except Exception as exc:
        what = f"listing the guests on {uri}"
        ctx.messages.internal_error(what, exc)
        return UriView(uri, error=f"internal error while {what}")


def unique(uris: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(uris))


def warn_config(ctx: Context, command: Optional[str] = None) -> None:
    """Warnings, then problems: errors, or warnings for those *command* does not use."""
    for warning in ctx.loaded.warnings:
        ctx.messages.warn(warning)
    for problem in ctx.loaded.problems:
        if command is None or blocks(command, problem):
            ctx.messages.error(str(problem))
        else:
            ctx.messages.warn(f"{problem} (not used by {command})")


def warn_conflicts(ctx: Context) -> None:
    from virtguests import conflicts

    for warning in conflicts.on_host(ctx.host_root):
        ctx.messages.warn(warning)


def refuse_bad_config(ctx: Context, command: Optional[str] = None) -> bool:
    """Report the config; True when a problem touches a setting *command* uses.

    Without *command*, every problem counts (config.USED_BY says what each
    command uses).
    """
    warn_config(ctx, command)
    if any(blocks(command, problem) for problem in ctx.loaded.problems):
        ctx.messages.error("refusing to act with an invalid configuration (see above); "
                           "`virtguests check` lists every problem")
        return True
    return False


@contextlib.contextmanager
def holding_lock(ctx: Context) -> Iterator[bool]:
    """Hold the lock for the block; a second virtguests waits for the first.

    Yields False when the lock could not be had (another run kept it, or a signal
    came while waiting; reported): the action must do nothing.  A dry run takes no
    lock; a lock file that cannot be opened is reported and we go on without it.
    """
    with contextlib.ExitStack() as held:
        yield ctx.dry_run or _lock(ctx, held)


def _lock(ctx: Context, held: contextlib.ExitStack) -> bool:
    try:
        held.enter_context(state.exclusive(ctx.paths.lock, wait=ctx.lock_wait,
                                           on_wait=ctx.messages.warn, sleep=ctx.clock.sleep))
    except (state.LockBusy, state.LockInterrupted) as err:
        ctx.messages.error(str(err))
        return False
    except OSError as err:
        # A read-only or full /var at shutdown must not stop us protecting guests.
        ctx.messages.error(f"cannot lock {ctx.paths.lock}: {err}; going on without the lock")
    return True


def interrupted_summary(ctx: Context, command: str) -> int:
    """Say what a run cut short by a signal did; its exit status."""
    counts: dict[str, int] = {}
    for outcome in ctx.run_report.results.values():
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing done"
    ctx.messages.error(f"{command} interrupted by a signal: {summary}")
    return EXIT_FAIL
