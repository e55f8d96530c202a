"""Look at a URI: a couple of ``virsh list`` calls give every guest's facts.

One listing per question per URI (names, UUIDs, persistence, managed save),
never one virsh process per guest.  Connection failures are retried a
bounded number of times (libvirtd may still be starting at boot); a call that
*timed out* is not retried, so a wedged URI is given up quickly.
"""

from __future__ import annotations

from collections.abc import Sequence

from virtguests import virshout
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.plan import Guest, UriView
from virtguests.virsh import Interrupted, Result, Virsh, VirshError


def list_with_retries(virsh: Virsh, uri: str, args: Sequence[str], config: Config,
                      clock: Clock) -> Result:
    attempt = 0
    while True:
        try:
            return virsh.run(uri, args, timeout=config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            if err.timed_out or attempt >= config.connect_retries:
                raise
        attempt += 1
        if not clock.sleep(config.retries_sleep):
            raise Interrupted(f"connecting to {uri}")


def _listing(virsh: Virsh, uri: str, args: list[str], config: Config) -> list[virshout.Listed]:
    result = virsh.run(uri, args, timeout=config.query_timeout, ignore_interrupt=True)
    return virshout.uuid_names(result.argv, result.stdout)


def view_running(virsh: Virsh, uri: str, config: Config, clock: Clock) -> UriView:
    """Active guests with names and persistence (for stop)."""
    try:
        first = list_with_retries(virsh, uri, ["list", "--uuid", "--name"], config, clock)
        active = virshout.uuid_names(first.argv, first.stdout)
        persistent: set[str] = set()
        if active:
            persistent = {g.uuid for g in _listing(
                virsh, uri, ["list", "--uuid", "--name", "--persistent"], config)}
    except (VirshError, Interrupted) as err:
        return UriView(uri, error=str(err))
    return UriView(uri, tuple(
        Guest(g.uuid, g.name, active=True, persistent=g.uuid in persistent) for g in active))


def view_all(virsh: Virsh, uri: str, config: Config, clock: Clock,
             *, managed_save: bool = False) -> UriView:
    """Every guest, active or not (for start)."""
    try:
        first = list_with_retries(virsh, uri, ["list", "--all", "--uuid", "--name"], config,
                                  clock)
        every = virshout.uuid_names(first.argv, first.stdout)
        active: set[str] = set()
        saved: set[str] = set()
        if every:
            result = virsh.run(uri, ["list", "--uuid"], timeout=config.query_timeout,
                               ignore_interrupt=True)
            active = set(virshout.uuids(result.argv, result.stdout))
            if managed_save:
                saved = {g.uuid for g in _listing(
                    virsh, uri, ["list", "--all", "--uuid", "--name", "--with-managed-save"],
                    config)}
    except (VirshError, Interrupted) as err:
        return UriView(uri, error=str(err))
    return UriView(uri, tuple(
        Guest(g.uuid, g.name, active=g.uuid in active, managed_save=g.uuid in saved)
        for g in every))


def active_uuids(virsh: Virsh, uri: str, config: Config) -> set[str]:
    """One call answers "which of them are still running?" for a whole URI."""
    result = virsh.run(uri, ["list", "--uuid"], timeout=config.query_timeout,
                       ignore_interrupt=True)
    return set(virshout.uuids(result.argv, result.stdout))
