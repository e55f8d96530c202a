"""Every virsh command line virtguests runs, built in one place.

Pure functions return the arguments after ``virsh [-c URI]`` (``Virsh.argv``
adds those); ``observe``, ``query``, ``executor``, ``plan`` (for ``--dry-run``
and ``plan``) and ``virsh`` itself only ask here, so the exact calls can be
read, and tested, one by one (tests/test_commands.py, which also checks that
no other module spells a virsh subcommand).  Guests are always named by UUID:
a name is chosen by the tenant.
"""

from __future__ import annotations

from collections.abc import Sequence

from virtguests.config import Config
from virtguests.model import Action

GUEST_SUBCOMMANDS = frozenset({
    "managedsave", "start", "shutdown", "destroy", "domjobinfo", "domstate", "domtime",
    "dominfo", "domname", "domid", "domuuid", "managedsave-remove", "suspend", "resume",
    "migrate", "domjobabort"})
"""Subcommands about one guest (see ``virsh.is_guest_call``): a migrate that times out
may be that guest's (a busy guest that never converges) or its peer's fault, not the
home URI's."""

SLOW_SUBCOMMANDS = frozenset({"managedsave", "start", "migrate"})
"""Subcommands that can take minutes (a save, a restore, a migration): run in a session
of their own from a pool (``virtguests.session``), never holding up the quick calls of
their URI."""

BATCH_MARK = "virtguests-next"
"""Printed between two listings of a batch; no guest line can be exactly this."""


def _bypass_cache(config: Config) -> list[str]:
    return ["--bypass-cache"] if config.bypass_cache else []


# -- listings ---------------------------------------------------------------------


def list_running() -> list[str]:
    """Active guests: ``UUID NAME`` lines."""
    return ["list", "--uuid", "--name"]


def list_running_persistent() -> list[str]:
    """Active persistent guests: ``UUID NAME`` lines."""
    return ["list", "--uuid", "--name", "--persistent"]


def list_all() -> list[str]:
    """Every guest, active or not: ``UUID NAME`` lines."""
    return ["list", "--all", "--uuid", "--name"]


def list_active_uuids() -> list[str]:
    """Active guests' UUIDs: the shutdown wait's poll, and the URI's liveness check."""
    return ["list", "--uuid"]


def list_managed_save() -> list[str]:
    """Guests with a managed-save image: ``UUID NAME`` lines."""
    return ["list", "--all", "--uuid", "--name", "--with-managed-save"]


def list_managed_save_uuids() -> list[str]:
    """Guests with a managed-save image: UUIDs only."""
    return ["list", "--all", "--uuid", "--with-managed-save"]


def list_persistent_uuids() -> list[str]:
    """Persistent guests, active or not: UUIDs only (``gueststatus --json``)."""
    return ["list", "--all", "--uuid", "--persistent"]


def list_table() -> list[str]:
    """The table ``gueststatus`` prints, as the reference does."""
    return ["list"]


def uri() -> list[str]:
    """What ``default`` (or an alias) really is, for policy rules that name a URI; asked
    in the batch with the listings (``ask_uri``), so it costs no extra process."""
    return ["uri"]


def liveness() -> list[str]:
    """The cheapest call that needs libvirtd and no guest."""
    return list_active_uuids()


def stop_listings(*, ask_uri: bool = False) -> list[list[str]]:
    """What stop needs: running guests, which of them are persistent, [``uri``]."""
    return [list_running(), list_running_persistent(), *([uri()] if ask_uri else [])]


def start_listings(*, managed_save: bool = False, ask_uri: bool = False) -> list[list[str]]:
    """What start and status need: every guest, which are active, [which have a
    managed-save image], [``uri``]."""
    return [list_all(), list_active_uuids(), *([list_managed_save()] if managed_save else []),
            *([uri()] if ask_uri else [])]


def batch_script(forms: Sequence[Sequence[str]]) -> str:
    """Several listings as one virsh command string (virsh runs ``a; b`` itself), with
    ``echo BATCH_MARK`` between two listings so their outputs can be told apart."""
    return f"; echo {BATCH_MARK}; ".join(" ".join(form) for form in forms)


def batch(forms: Sequence[Sequence[str]]) -> list[str]:
    """The one-process call running *forms* (``batch_script``)."""
    return [batch_script(forms)]


# -- one guest ----------------------------------------------------------------------


def managedsave(uuid: str, config: Config) -> list[str]:
    return ["managedsave", *_bypass_cache(config), uuid]


def shutdown(uuid: str) -> list[str]:
    """No ``--mode``: libvirt tries the guest agent, then ACPI (execution.AGENT_SHUTDOWN_WAIT)."""
    return ["shutdown", uuid]


def destroy(uuid: str) -> list[str]:
    return ["destroy", uuid]


def stop_action(action: Action, uuid: str, config: Config) -> list[str]:
    """The call for one step (suspend, shutdown, poweroff) of a guest's stop chain."""
    if action == Action.SUSPEND:
        return managedsave(uuid, config)
    if action == Action.SHUTDOWN:
        return shutdown(uuid)
    if action == Action.POWEROFF:
        return destroy(uuid)
    raise ValueError(f"unknown action {action!r}")


def start(uuid: str, config: Config) -> list[str]:
    """Start or resume (from its managed-save image) one guest."""
    return ["start", *_bypass_cache(config), uuid]


def sync_time(uuid: str) -> list[str]:
    """Set a resumed guest's clock from the host (SYNC_TIME; needs its guest agent)."""
    return ["domtime", "--sync", uuid]


def domstate_reason(uuid: str) -> list[str]:
    """``STATE (REASON)``; answers while a save holds the guest's state-change lock."""
    return ["domstate", "--reason", uuid]


def domjobinfo(uuid: str) -> list[str]:
    """The guest's current job: a save or an outgoing migration in progress and its
    ``Data processed`` (fixtures/qemu-domjobinfo-saving, qemu-domjobinfo-migrating)."""
    return ["domjobinfo", uuid]


def domjobabort(uuid: str) -> list[str]:
    """Abort the guest's job: a migration that took too long (fixtures/
    qemu-domjobabort-migrating; the migrate call then fails, qemu-migrate-aborted)."""
    return ["domjobabort", uuid]


def dominfo(uuid: str) -> list[str]:
    """``Max memory: N KiB``: what the guest needs free on a peer."""
    return ["dominfo", uuid]


def migrate(uuid: str, peer: str, options: Sequence[str]) -> list[str]:
    """Live-migrate one guest to the URI *peer*, with MIGRATE_OPTIONS' words *options*.

    Client-driven (unless the options say ``--p2p``): virsh on this host opens both
    URIs, so a home URI such as ``qemu:///system`` is right in both directions.  The
    peer is named after the guest, so the guest is not the last word.
    """
    return ["migrate", *options, uuid, peer]


# -- a URI's host -------------------------------------------------------------------


def nodememstats() -> list[str]:
    """The host's memory in KiB (``free`` + ``buffers`` + ``cached``: what a peer has
    for guests that migrate there)."""
    return ["nodememstats"]


def capabilities() -> list[str]:
    """The host's capabilities XML: its host UUID (``/capabilities/host/uuid``, from
    libvirtd.conf ``host_uuid`` or SMBIOS), which tells two URIs of one host apart.
    Not ``sysinfo``: its SMBIOS UUID is the same for every daemon of one machine."""
    return ["capabilities"]


# -- a URI's events -------------------------------------------------------------------


def lifecycle_events() -> list[str]:
    """Runs until killed, printing a line per guest lifecycle event."""
    return ["event", "--loop", "--event", "lifecycle"]
