"""The service commands: config -> observe -> plan -> execute -> report.

Each command reads the host, asks ``plan`` what to do, prints the plan
(``--dry-run``) or hands it to the executor, and keeps the on-disk state
(list file, leftovers, marker, run report) true at every step.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, TypeVar

from virtguests import commands, observe, plan, policy, state, virshout
from virtguests.clock import Clock
from virtguests.config import Config, Loaded, blocks
from virtguests.executor import Executor
from virtguests.model import SHUTDOWN, Guest, PolicyLookup, UriView, no_policy
from virtguests.report import Reporter
from virtguests.virsh import Virsh, VirshError, format_argv

T = TypeVar("T")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_STOPPED, EXIT_CONFIG = 0, 1, 2, 3, 6


@dataclass
class Context:
    loaded: Loaded
    paths: state.Paths
    virsh: Virsh
    report: Reporter
    clock: Clock
    dry_run: bool = False
    json: bool = False
    lock_wait: float = 3600.0
    policy: PolicyLookup = no_policy

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


def _look(ctx: Context, uri: str, view: Callable[[], UriView]) -> UriView:
    """Look at one URI; a bug there makes it unreachable for this run, not the others."""
    try:
        return view()
    except Exception as exc:
        what = f"listing the guests on {uri}"
        ctx.report.internal_error(what, exc)
        return UriView(uri, error=f"internal error while {what}")


def _unique(uris: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(uris))


def report_config(ctx: Context, command: Optional[str] = None) -> None:
    """Warnings, then problems: errors, or warnings for those *command* does not use."""
    for warning in ctx.loaded.warnings:
        ctx.report.warn(warning)
    for problem in ctx.loaded.problems:
        if command is None or blocks(command, problem):
            ctx.report.error(str(problem))
        else:
            ctx.report.warn(f"{problem} (not used by {command})")


def report_conflicts(ctx: Context) -> None:
    from virtguests import conflicts

    for warning in conflicts.warnings():
        ctx.report.warn(warning)


# -- stop ----------------------------------------------------------------------


def stop(ctx: Context, *, force_shutdown: bool = False) -> int:
    config = ctx.config
    if force_shutdown:
        chain = config.on_shutdown
        chain = chain[chain.index("shutdown"):] if "shutdown" in chain else ("shutdown",)
        config = replace(config, on_shutdown=chain)
    report_config(ctx)
    report_conflicts(ctx)
    status = _stop(ctx, config) if ctx.dry_run else _locked(ctx, lambda: _stop(ctx, config))
    if ctx.loaded.problems:
        return EXIT_CONFIG
    return status


def _locked(ctx: Context, body: Callable[[], int]) -> int:
    """Run *body* holding the lock; a second virtguests waits for the first."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(state.exclusive(ctx.paths.lock, wait=ctx.lock_wait,
                                               on_wait=ctx.report.warn, sleep=ctx.clock.sleep))
        except (state.LockBusy, state.LockInterrupted) as err:
            ctx.report.error(str(err))
            return EXIT_FAIL
        except OSError as err:
            # A read-only or full /var at shutdown must not stop us protecting guests.
            ctx.report.error(f"cannot lock {ctx.paths.lock}: {err}; going on without the lock")
        return body()


def _disk(ctx: Context, what: str, action: Callable[[], None]) -> bool:
    """Do one state-file write; a failure is reported, never fatal to the guests."""
    try:
        action()
    except OSError as err:
        ctx.report.error(f"cannot {what}: {err}")
        return False
    return True


def _read_recorded(ctx: Context) -> tuple[state.Entries, state.Entries, list[state.BadLine]]:
    """The list file, the leftovers of failed starts, and their damaged lines."""
    entries, bad = state.read_list(ctx.paths.list_file)
    pending, bad_pending = state.read_list(ctx.paths.pending)
    return entries, pending, [*bad, *bad_pending]


def _recorded_earlier(ctx: Context, *,
                      stale_warning: bool) -> tuple[dict[str, list[str]], list[state.BadLine]]:
    """Entries still on disk from an earlier stop or failed start (never dropped), and the
    damage found (reported here)."""
    entries, pending, bad = _read_recorded(ctx)
    for line in bad:
        ctx.report.error(str(line))
    if entries and stale_warning:
        count = sum(len(v) for v in entries.values())
        ctx.report.warn(
            f"{ctx.paths.list_file} from an earlier stop was never resumed by a start; "
            f"its {count} guest(s) stay recorded, and running guests are protected now"
        )
    return state.merge(entries, pending), bad


def _set_aside_unreadable(ctx: Context, bad: Sequence[state.BadLine]) -> bool:
    """A list or pending file we could not read is moved aside, not overwritten or removed:
    what it records is unknown, and the admin may still recover it."""
    ok = True
    for path in dict.fromkeys(b.path for b in bad if b.unreadable):
        if not path.exists() and not path.is_symlink():
            continue
        try:
            aside = state.set_aside(path)
        except OSError as err:
            ctx.report.error(f"cannot move the unreadable {path} aside: {err}")
            ok = False
        else:
            ctx.report.error(f"{path} could not be read; kept as {aside}")
    return ok


def _stop_uris(ctx: Context, config: Config, earlier: Mapping[str, object]) -> list[str]:
    """URIS; when its line could not be read as written, never fewer hosts than it named.

    Then every URI the broken line still names (or ``default``), and every URI
    in the list file, the pending file and the seen file, are protected.
    """
    salvaged = ctx.loaded.salvaged_uris
    if salvaged is None:
        return _unique(config.uris)
    seen = _read_seen(ctx, report=False)
    uris = _unique([*salvaged, *(u for u in [*earlier, *seen] if _plausible_uri(u))])
    ctx.report.warn("URIS could not be read as written; protecting every URI it names and "
                    "every URI in the state files: " + " ".join(uris))
    return uris


def _plausible_uri(uri: str) -> bool:
    return bool(uri) and uri.isprintable() and not uri.startswith("-") and " " not in uri


def _stop(ctx: Context, config: Config) -> int:
    earlier, damaged = _recorded_earlier(ctx, stale_warning=True)
    uris = _stop_uris(ctx, config, earlier)
    config = replace(config, uris=tuple(uris))
    ask = {uri: policy.wants_canonical(ctx.policy, uri) for uri in uris}
    views = for_each_uri(uris, lambda uri: _look(ctx, uri, lambda: observe.view_running(
        ctx.virsh, uri, config, ctx.clock, ask_uri=ask[uri])))
    lookup = policy.resolving(ctx.policy, {u: views[u].canonical for u in uris})
    status = EXIT_OK
    seen = _update_seen(ctx, {u: {g.uuid: g.name for g in views[u].guests
                                  if g.active and g.persistent}
                              for u in uris if views[u].reachable}, replace_uris=True)
    for uri in uris:
        if not views[uri].reachable and seen.get(uri):
            # Keep them recorded, so the next start brings back whatever was powered off.
            earlier = state.merge(earlier, {uri: list(seen[uri])})
    the_plan = plan.plan_stop(config, [views[u] for u in uris], earlier, lookup)
    for uri in uris:
        view = views[uri]
        if not view.reachable:
            status = EXIT_FAIL
            ctx.report.say(f"Can't connect to {uri}. Skipping.")
            known = seen.get(uri, {})
            names = (f"; last seen running there: {', '.join(known.values())} (recorded, so "
                     "start brings them back)") if known else ""
            ctx.report.error(f"cannot list guests on {uri}: {view.error}; its guests are not "
                             f"protected{names}")
            continue
        item = next(i for i in the_plan.uris if i.uri == uri)
        names = ", ".join(g.name for g in item.running) or "no running guests."
        ctx.report.say(f"Running guests on {uri} URI: {names}")
        if item.transient_skipped:
            verb = "suspending" if config.suspending else "shutting down"
            ctx.report.say(f"Not {verb} transient guests on URI: {uri}: "
                           + ", ".join(g.name for g in item.transient_skipped))
    if ctx.dry_run:
        for argv in plan.stop_commands(the_plan, config, ctx.virsh.argv):
            ctx.report.say(format_argv(argv))
        for item in the_plan.uris:
            for step in item.guests:
                if len(step.actions) > 1:
                    ctx.report.say(f"# {step.guest.name}: if {step.actions[0]} fails: "
                                   + " -> ".join(step.actions[1:]))
        return status
    _set_aside_unreadable(ctx, damaged)
    if any(b.unreadable for b in damaged):
        status = EXIT_FAIL  # an earlier record is unknown: someone must look at it
    if _disk(ctx, f"write the list file {ctx.paths.list_file} (guests are still protected, "
             "but start will not know them)",
             lambda: state.write_list(ctx.paths.list_file, the_plan.record())):
        _disk(ctx, f"remove {ctx.paths.pending}", lambda: state.remove(ctx.paths.pending))
    else:
        status = EXIT_FAIL
    executor = Executor(ctx.virsh, config, ctx.report, ctx.clock,
                        checkpoint=_Checkpoint(ctx, "stop"))
    result = executor.stop(the_plan)  # its bugs are reported: the list file is written
    _disk(ctx, f"remove the started marker {ctx.paths.marker}",
          lambda: state.remove(ctx.paths.marker))
    status = max(status, result.status)
    if ctx.clock.cancel.is_set():
        status = _interrupted_summary(ctx, "stop")
    _write_report(ctx, "stop", status)
    return status


def _update_seen(ctx: Context, running: Mapping[str, Mapping[str, str]], *,
                 replace_uris: bool) -> dict[str, dict[str, str]]:
    """Remember the persistent guests each URI was running (URI -> UUID -> name).

    When a URI cannot be reached at the next stop, these are the guests we can
    still name, and record for the next start.  `stop` sees everything running
    (*replace_uris*); `start` adds what it resumed or found already running.
    """
    seen = _read_seen(ctx, report=True)
    for uri, guests in running.items():
        seen[uri] = dict(guests) if replace_uris else {**seen.get(uri, {}), **guests}
    if not ctx.dry_run:
        try:
            state.write_json(ctx.paths.seen, seen)
        except OSError as err:
            ctx.report.warn(f"cannot write {ctx.paths.seen}: {err}")
    return seen


def _read_seen(ctx: Context, *, report: bool) -> dict[str, dict[str, str]]:
    """The seen file's valid entries; its damage is *report*ed (once per run is enough)."""
    seen, problems = state.read_seen(ctx.paths.seen)
    if report:
        for problem in problems:
            ctx.report.warn(f"{problem} (ignored; the file is rewritten)")
    return seen


def _write_report(ctx: Context, command: str, status: Optional[int]) -> None:
    if ctx.dry_run:
        return
    try:
        state.write_json(ctx.paths.report, ctx.report.document(command, status
                                                                if status is not None else -1))
    except OSError as err:
        ctx.report.warn(f"cannot write the run report {ctx.paths.report}: {err}")


class _Checkpoint:
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
            _write_report(self.ctx, self.command, None)
            self.last = time.monotonic()
        finally:
            self.lock.release()


def _interrupted_summary(ctx: Context, command: str) -> int:
    counts: dict[str, int] = {}
    for outcome in ctx.report.outcomes.values():
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing done"
    ctx.report.error(f"{command} interrupted by a signal: {summary}")
    return EXIT_FAIL


# -- start ---------------------------------------------------------------------


def start(ctx: Context) -> int:
    if refuse_bad_config(ctx, "start"):
        return EXIT_CONFIG
    report_conflicts(ctx)
    code = _start(ctx) if ctx.dry_run else _locked(ctx, lambda: _start(ctx))
    return EXIT_CONFIG if ctx.loaded.problems else code


def refuse_bad_config(ctx: Context, command: Optional[str] = None) -> bool:
    """Report the config; True when a problem touches a setting *command* uses.

    Without *command*, every problem counts (config.USED_BY says what each
    command uses).
    """
    report_config(ctx, command)
    if any(blocks(command, problem) for problem in ctx.loaded.problems):
        ctx.report.error("refusing to act with an invalid configuration (see above); "
                         "`virtguests check` lists every problem")
        return True
    return False


def _start(ctx: Context) -> int:
    config = ctx.config
    list_entries, pending, bad = _read_recorded(ctx)
    status = EXIT_OK
    for line in bad:
        ctx.report.error(str(line))
        status = EXIT_FAIL
    if not ctx.dry_run:
        _set_aside_unreadable(ctx, bad)
    recorded = state.merge(list_entries, pending)
    orphans_wanted = config.resume_orphans and config.on_boot == "start"
    if not recorded and not orphans_wanted:
        _started(ctx)
        return status
    if config.on_boot != "start":
        ctx.report.say("libvirt-guests is configured not to start any guests on boot")
        if not ctx.dry_run:
            _disk(ctx, f"remove {ctx.paths.list_file}", lambda: state.remove(ctx.paths.list_file))
            _disk(ctx, f"remove {ctx.paths.pending}", lambda: state.remove(ctx.paths.pending))
            _started(ctx)
        return status
    wanted = _unique([u for u in recorded if u in config.uris]
                     + (list(config.uris) if orphans_wanted else []))
    views = _start_views(ctx, recorded, wanted, managed_save=orphans_wanted)
    if orphans_wanted:
        for uri, view in views.items():
            known = recorded.get(uri, [])
            extra = plan.orphans(view, known)
            for uuid in extra:
                guest = view.find(uuid)
                ctx.report.warn(f"guest {guest.name if guest else uuid} on {uri} has a "
                                "managed-save image but was not recorded; resuming it "
                                "(RESUME_ORPHANS)")
            if extra:
                recorded[uri] = [*known, *extra]
    lookup = policy.resolving(ctx.policy, {u: v.canonical for u, v in views.items()})
    the_plan = plan.plan_start(config, recorded, views, lookup)
    for token in the_plan.ignored:
        ctx.report.say(f"Ignoring guests on {token} URI")
    for view in the_plan.unreachable:
        status = EXIT_FAIL
        ctx.report.cannot_resume_uri(view.uri, str(view.error),
                                     list(the_plan.keep.get(view.uri, [])))
    for uri, uuid in the_plan.missing:
        status = EXIT_FAIL
        ctx.report.gone(uri, uuid)
    if ctx.dry_run:
        for argv in plan.start_commands(the_plan, config, ctx.virsh.argv):
            ctx.report.say(format_argv(argv))
        return status
    executor = Executor(ctx.virsh, config, ctx.report, ctx.clock,
                        checkpoint=_Checkpoint(ctx, "start"))
    result = executor.start(the_plan)  # the executor reports its own bugs
    up: dict[str, dict[str, str]] = {}
    for done in ctx.report.outcomes.values():
        if done.outcome in (plan.Res.RESUMED, plan.Res.ALREADY_ACTIVE):
            up.setdefault(done.uri, {})[done.uuid] = done.name
    _update_seen(ctx, up, replace_uris=False)
    keep = _still_recorded(config, recorded, result.settled, the_plan.missing)
    # Unreachable and given-up URIs were named with their guests already.
    unreachable = {view.uri for view in the_plan.unreachable} | {
        uri for uri in keep if ctx.virsh.wedged(uri) is not None}
    not_resumed = [ctx.report.outcomes[(uri, uuid)].name
                   if (uri, uuid) in ctx.report.outcomes else uuid
                   for uri, ids in keep.items() if uri not in unreachable for uuid in ids]
    if not_resumed:
        ctx.report.error("not resumed, kept for the next start: " + ", ".join(not_resumed))
    if _disk(ctx, f"write {ctx.paths.pending}", lambda: state.write_list(ctx.paths.pending, keep)):
        _disk(ctx, f"remove the list file {ctx.paths.list_file}",
              lambda: state.remove(ctx.paths.list_file))
    else:
        status = EXIT_FAIL  # the list file stays: the next start retries everything
    _started(ctx)
    status = max(status, result.status)
    if ctx.clock.cancel.is_set():
        status = _interrupted_summary(ctx, "start")
    _write_report(ctx, "start", status)
    return status


def _still_recorded(config: Config, recorded: Mapping[str, Sequence[str]],
                    settled: Mapping[str, frozenset[str]],
                    missing: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """What stays recorded after a start: every guest without a definite outcome.

    Only guests that were resumed, found running, found gone or skipped by
    policy (``plan.SETTLED``) leave the record, whatever else happened (a
    failure, a signal, an unreachable or given-up URI, a bug).  Guests of URIs
    no longer in URIS are dropped, as the reference does.
    """
    done = {uri: set(ids) for uri, ids in settled.items()}
    for uri, uuid in missing:
        done.setdefault(uri, set()).add(uuid)
    keep: dict[str, list[str]] = {}
    for uri, ids in recorded.items():
        if uri not in config.uris:
            continue
        left = [uuid for uuid in dict.fromkeys(ids) if uuid not in done.get(uri, set())]
        if left:
            keep[uri] = left
    return keep


def _start_views(ctx: Context, recorded: Mapping[str, Sequence[str]], wanted: Sequence[str],
                 *, managed_save: bool = False) -> dict[str, UriView]:
    """What start needs to know about each URI, listing only where it must.

    A URI whose recorded guests all have names in our records is not listed:
    starting them by UUID tells which are already active or gone, and the
    first start checks the connection.  Guests we cannot name (a list file
    written by libvirt-guests), a search for unrecorded saved guests, or
    START_DELAY (no delay is spent on a guest that is already running) need a
    listing.
    """
    seen = _read_seen(ctx, report=False)

    def view(uri: str) -> UriView:
        names = seen.get(uri, {})
        ids = recorded.get(uri, [])
        ask = policy.wants_canonical(ctx.policy, uri)
        if managed_save or ctx.config.start_delay or not all(uuid in names for uuid in ids):
            return _look(ctx, uri, lambda: observe.view_all(
                ctx.virsh, uri, ctx.config, ctx.clock, managed_save=managed_save, ask_uri=ask))
        return UriView(uri, tuple(Guest(uuid, names[uuid], active=False) for uuid in ids),
                       listed=False,
                       canonical=observe.canonical_uri(ctx.virsh, uri, ctx.config)
                       if ask else None)

    return for_each_uri(wanted, view)


def _started(ctx: Context) -> None:
    if not ctx.dry_run:
        _disk(ctx, f"create the started marker {ctx.paths.marker}",
              lambda: state.touch(ctx.paths.marker))


# -- status, gueststatus, check -----------------------------------------------------


def status(ctx: Context) -> int:
    if refuse_bad_config(ctx, "status"):
        return EXIT_CONFIG
    entries, pending, bad = _read_recorded(ctx)
    owed = any(pending.values()) or any(b.unreadable for b in bad)
    if ctx.paths.list_file.exists() or owed:
        # Guests a start could not resume are saved guests still owed: never "started".
        word, code = "stopped, with saved guests", EXIT_STOPPED
    elif ctx.paths.marker.exists():
        word, code = "started", EXIT_OK
    else:
        word, code = "stopped, with no saved guests", EXIT_STOPPED
    if ctx.json:
        document: dict[str, Any] = {
            "state": word,
            "exit_status": code,
            "list_file": {"path": str(ctx.paths.list_file), "entries": entries,
                          "bad_lines": [str(b) for b in bad if b.path == ctx.paths.list_file]},
            "not_resumed": {"path": str(ctx.paths.pending), "entries": pending,
                            "bad_lines": [str(b) for b in bad if b.path == ctx.paths.pending]},
            "last_run": _read_report(ctx, ctx.report.warn),
        }
        ctx.report.out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return code
    ctx.report.say(word)
    for uri, ids in pending.items():
        ctx.report.say(f"Not resumed at the last start, kept for the next one: {uri}: "
                       + " ".join(ids))
    for line in bad:
        ctx.report.error(str(line))
    return code


def gueststatus(ctx: Context) -> int:
    if refuse_bad_config(ctx):
        return EXIT_CONFIG
    config = ctx.config
    uris = _unique(config.uris)
    if ctx.json:
        views = for_each_uri(uris, lambda uri: _describe_uri(ctx, uri))
        ctx.report.out.write(json.dumps({"uris": [views[u] for u in uris]}, indent=2,
                                        sort_keys=True) + "\n")
        return EXIT_FAIL if any(v.get("error") for v in views.values()) else EXIT_OK

    def table(uri: str) -> Optional[str]:
        try:
            return observe.guest_table(ctx.virsh, uri, config)
        except VirshError as err:
            ctx.report.error(str(err))
            return None

    tables = for_each_uri(uris, table)
    code = EXIT_OK
    for uri in uris:
        ctx.report.say(f"* {uri} URI:")
        text = tables.get(uri)
        if text is None:
            code = EXIT_FAIL
            ctx.report.say("")
        else:
            ctx.report.out.write(virshout.table_without_domain0(text))
            ctx.report.out.flush()
    return code


def _describe_uri(ctx: Context, uri: str) -> dict[str, Any]:
    config = ctx.config
    view = observe.view_all(ctx.virsh, uri, config, ctx.clock, managed_save=True)
    if not view.reachable:
        return {"uri": uri, "error": view.error, "guests": []}
    persistent: Optional[set[str]] = None
    try:
        persistent = observe.persistent_uuids(ctx.virsh, uri, config)
    except VirshError as err:
        return {"uri": uri, "error": str(err), "guests": []}
    return {"uri": uri, "error": None, "guests": [
        {"uuid": g.uuid, "name": g.name, "active": g.active,
         "persistent": g.uuid in persistent, "managed_save": g.managed_save}
        for g in view.guests]}


def check(ctx: Context) -> int:
    report_config(ctx)
    report_conflicts(ctx)
    where = str(ctx.loaded.path) if ctx.loaded.path else "no config file (defaults)"
    if ctx.loaded.problems:
        ctx.report.error(f"{where}: {len(ctx.loaded.problems)} problem(s)")
        return EXIT_CONFIG
    ctx.report.say(f"{where}: OK")
    return EXIT_OK


def marker_exists(ctx: Context) -> bool:
    return ctx.paths.marker.exists()


# -- plan and report -----------------------------------------------------------------


def plan_command(ctx: Context, which: str) -> int:
    """What stop or start would do to each guest right now; changes nothing."""
    if refuse_bad_config(ctx):
        return EXIT_CONFIG
    config = ctx.config
    uris = _unique(config.uris)
    entries: list[dict[str, Any]] = []
    if which == "stop":
        views = for_each_uri(uris, lambda uri: observe.view_running(
            ctx.virsh, uri, config, ctx.clock, ask_uri=policy.wants_canonical(ctx.policy, uri)))
        the_plan = plan.plan_stop(config, [views[u] for u in uris], {}, policy.resolving(
            ctx.policy, {u: views[u].canonical for u in uris}))
        for uri in uris:
            entries.append(_stop_entry(ctx, views[uri], the_plan))
    else:
        recorded, _ = _recorded_earlier(ctx, stale_warning=False)
        wanted = [u for u in uris if u in recorded]
        views = _start_views(ctx, recorded, wanted)
        start_plan = plan.plan_start(config, recorded, views, policy.resolving(
            ctx.policy, {u: v.canonical for u, v in views.items()}))
        for uri in wanted:
            entries.append(_start_entry(ctx, views[uri], start_plan))
    document = {"command": which, "uris": entries}
    if ctx.json:
        ctx.report.out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        _print_plan(ctx, document)
    return EXIT_FAIL if any(e["error"] for e in entries) else EXIT_OK


def _stop_entry(ctx: Context, view: UriView, the_plan: plan.StopPlan) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": view.uri, "error": view.error, "guests": []}
    item = next((i for i in the_plan.uris if i.uri == view.uri), None)
    if item is None:
        return entry
    planned = {s.guest.uuid: s for s in item.guests}
    for group in item.groups():
        for step in group:
            entry["guests"].append({
                "name": step.guest.name, "uuid": step.guest.uuid, "order": step.group,
                "actions": list(step.actions),
                "timeout": step.timeout if SHUTDOWN in step.actions else None,
                "commands": [format_argv(ctx.virsh.argv(view.uri, commands.stop_action(
                    a, step.guest.uuid, ctx.config))) for a in step.actions],
            })
    for guest in item.running:
        if guest.uuid not in planned:
            why = ("transient: not suspended" if guest in item.transient_skipped
                   else "left running by policy")
            entry["guests"].append({"name": guest.name, "uuid": guest.uuid, "order": None,
                                    "actions": [], "timeout": None, "commands": [],
                                    "note": why})
    return entry


def _start_entry(ctx: Context, view: UriView,
                 start_plan: plan.StartPlan) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": view.uri, "error": view.error, "guests": [],
                             "listed": view.listed}
    item = next((i for i in start_plan.uris if i.uri == view.uri), None)
    for guest in sorted(item.guests if item else (), key=lambda g: g.group):
        calls = []
        if guest.start:
            calls.append(format_argv(ctx.virsh.argv(view.uri,
                                                    commands.start(guest.uuid, ctx.config))))
        entry["guests"].append({
            "name": guest.name, "uuid": guest.uuid, "order": guest.group,
            "actions": ["start"] if guest.start else [], "note": guest.reason or None,
            "delay_after": guest.delay_after, "commands": calls})
    for uri, uuid in start_plan.missing:
        if uri == view.uri:
            entry["guests"].append({"name": None, "uuid": uuid, "order": None, "actions": [],
                                    "note": "recorded but no longer exists", "commands": []})
    return entry


def _print_plan(ctx: Context, document: dict[str, Any]) -> None:
    for entry in document["uris"]:
        ctx.report.say(f"{entry['uri']}:")
        if entry["error"]:
            ctx.report.say(f"  cannot list guests: {entry['error']}")
            continue
        if entry.get("listed") is False:
            ctx.report.say("  (not listed: names from the last stop; virsh start reports "
                           "guests already running)")
        rows = [("GUEST", "ORDER", "ACTIONS", "TIMEOUT", "COMMAND")]
        for guest in entry["guests"]:
            actions = " -> ".join(guest["actions"]) or guest.get("note") or "none"
            timeout = guest.get("timeout")
            rows.append((str(guest["name"] or guest["uuid"]),
                         "" if guest["order"] is None else str(guest["order"]),
                         actions, "" if timeout is None else f"{timeout}s",
                         guest["commands"][0] if guest["commands"] else ""))
        if len(rows) == 1:
            ctx.report.say("  no guests to act on")
            continue
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            ctx.report.say("  " + "  ".join([*cells, row[4]]).rstrip())


def _read_report(ctx: Context, say: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The last run's report, its valid parts; each problem with the file goes to *say*."""
    document, problems = state.read_report(ctx.paths.report)
    for problem in problems:
        say(str(problem))
    return document


def report_command(ctx: Context) -> int:
    """The last run's per-guest results, for people and for monitoring.

    A damaged report file: its problems (FILE:LINE: KEY), what is valid, exit 6.
    """
    document, problems = state.read_report(ctx.paths.report)
    for problem in problems:
        ctx.report.error(str(problem))
    if ctx.json:
        ctx.report.out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    elif not isinstance(document, dict):
        if not problems:
            ctx.report.say(f"no run recorded yet ({ctx.paths.report})")
        return EXIT_CONFIG if problems else EXIT_OK
    else:
        ctx.report.say(f"last run: {document.get('command')}, exit status "
                       f"{document.get('exit_status')}")
        rows = [("GUEST", "URI", "OUTCOME", "STEPS", "SECONDS")]
        for guest in document.get("guests", []):
            steps = " -> ".join(f"{s['action']}:{s['result']}" for s in guest.get("steps", []))
            seconds = sum(float(s.get("seconds", 0)) for s in guest.get("steps", []))
            rows.append((str(guest.get("name")), str(guest.get("uri")),
                         str(guest.get("outcome")), steps, f"{seconds:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            ctx.report.say("  ".join([*(row[i].ljust(widths[i]) for i in range(4)), row[4]]))
    if problems:
        return EXIT_CONFIG
    if not isinstance(document, dict):
        return EXIT_OK
    return EXIT_OK if document.get("exit_status") in (0, None) else EXIT_FAIL
