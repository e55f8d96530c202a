"""Single questions to virsh, each one call and its parsed answer.

``observe`` (before planning) and ``executor`` (while waiting on guests) both
ask these, so the executor never reaches back into ``observe``: the flow
stays observe -> plan -> execute, with this module beneath both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

from virtguests import commands, virshout
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.virsh import Result, Virsh, VirshError


def run_with_retries(virsh: Virsh, uri: str, args: Sequence[str], config: Config,
                     clock: Clock, *, timeout: Optional[float] = None,
                     retry_if: Callable[[VirshError], bool] = lambda err: True) -> Result:
    """The first call to a URI, retried while libvirtd may still be starting (boot).

    A failure *retry_if* accepts is retried CONNECT_RETRIES times, RETRIES_SLEEP
    apart; a timed-out call is not (nor any call on a URI given up after a
    timeout), and a stop request ends the waiting with the last error.
    """
    attempt = 0
    while True:
        try:
            return virsh.run(uri, args, ignore_interrupt=True,
                             timeout=config.query_timeout if timeout is None else timeout)
        except VirshError as err:
            if err.timed_out or err.given_up or attempt >= config.connect_retries \
                    or not retry_if(err):
                raise
            attempt += 1
            if not clock.sleep(config.retries_sleep):
                raise


def active_uuids(virsh: Virsh, uri: str, config: Config) -> set[str]:
    """One call answers "which of them are still running?" for a whole URI."""
    result = virsh.run(uri, commands.list_active_uuids(), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return set(virshout.uuids(result.argv, result.stdout))


DOMSTATE = re.compile(r"^(?P<state>[^()]+?) \((?P<reason>[^()]+)\)$")


class DomState(NamedTuple):
    """``virsh domstate --reason``: a state and its reason, as virsh words them."""

    state: str
    reason: str

    @property
    def shut_off(self) -> bool:
        return self.state == "shut off"

    @property
    def paused(self) -> bool:
        return self.state == "paused"

    @property
    def saving(self) -> bool:
        """A managedsave of a guest that was running is in progress
        (fixtures/qemu-domstate-reason-saving); a guest paused before keeps its reason."""
        return self.paused and self.reason == "saving"

    @property
    def saved(self) -> bool:
        """Shut off by a managed save: it has an image."""
        return self.shut_off and self.reason == "saved"

    def __str__(self) -> str:
        return f"{self.state} ({self.reason})"


def domain_state(virsh: Virsh, uri: str, uuid: str, config: Config) -> DomState:
    """``virsh domstate --reason UUID``: e.g. ``("paused", "saving")`` during a managedsave.

    It needs no job on the guest, so it answers while another save holds the
    guest's state-change lock (recorded: fixtures/qemu-domstate-reason-saving.yaml).
    """
    result = virsh.run(uri, commands.domstate_reason(uuid), timeout=config.query_timeout,
                       ignore_interrupt=True)
    lines = [ln.strip() for ln in virshout.lines(result.stdout) if ln.strip()]
    match = DOMSTATE.match(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise virshout.OutputError(result.argv, f"unexpected output {result.stdout[:120]!r} "
                                   "(expected 'STATE (REASON)')")
    return DomState(match.group("state"), match.group("reason"))


def save_job_running(virsh: Virsh, uri: str, uuid: str, config: Config) -> bool:
    """``virsh domjobinfo UUID`` shows a save job (fixtures/qemu-domjobinfo-saving.yaml).

    It answers while the save holds the guest's state-change lock, and is the only
    sign of a save of a guest that was paused already (its reason stays e.g. ``user``).
    """
    result = virsh.run(uri, commands.domjobinfo(uuid), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return virshout.save_job(result.stdout)


def has_managed_save(virsh: Virsh, uri: str, uuid: str, config: Config) -> bool:
    """Whether the guest has a managed-save image (one listing of the URI)."""
    result = virsh.run(uri, commands.list_managed_save_uuids(), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return uuid in virshout.uuids(result.argv, result.stdout)


# -- migration ----------------------------------------------------------------------

NO_JOB = ("error: Requested operation is not valid: no job is active on the domain",
          "error: failed to get domain ")
"""``virsh domjobabort``'s answers when there is nothing to abort (recorded:
fixtures/qemu-domjobabort-none; qemu-domjobinfo-migrated-away for a guest gone)."""


def host_uuid(virsh: Virsh, uri: str, config: Config) -> str:
    """The host UUID of *uri* (``virsh capabilities``): URIs with the same one are one
    host, which libvirt refuses to migrate to (fixtures/qemu-migrate-same-host)."""
    result = virsh.run(uri, commands.capabilities(), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return virshout.host_uuid(result.argv, result.stdout)


def free_kib(virsh: Virsh, uri: str, config: Config) -> int:
    """What *uri*'s host has free for guests, in KiB (``virsh nodememstats``)."""
    result = virsh.run(uri, commands.nodememstats(), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return virshout.free_kib(result.argv, result.stdout)


def memory_kib(virsh: Virsh, uri: str, uuid: str, config: Config) -> int:
    """The guest's memory in KiB (``Max memory`` of ``virsh dominfo``)."""
    result = virsh.run(uri, commands.dominfo(uuid), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return virshout.max_memory_kib(result.argv, result.stdout)


def job_percent(virsh: Virsh, uri: str, uuid: str, config: Config) -> Optional[int]:
    """How far the guest's job (an outgoing migration, a save) is, 0-100; None while it
    has no figures yet, or no job.  Only the migration's source has them: on the
    peer ``domjobinfo`` fails (fixtures/qemu-domjobinfo-incoming)."""
    result = virsh.run(uri, commands.domjobinfo(uuid), timeout=config.query_timeout,
                       ignore_interrupt=True)
    return virshout.job_percent(result.stdout, result.argv)


def abort_job(virsh: Virsh, uri: str, uuid: str, config: Config) -> bool:
    """``virsh domjobabort UUID``: True if libvirt took the abort (the job's own call,
    e.g. the migrate, then fails: fixtures/qemu-migrate-aborted), False if there was
    nothing to abort (no job, or the guest is no longer on *uri*: it may have arrived
    on the peer after all).  Any other failure raises VirshError."""
    result = virsh.run(uri, commands.domjobabort(uuid), timeout=config.query_timeout,
                       ignore_interrupt=True, check=False)
    if result.exit_code == 0:
        return True
    if any(line.startswith(NO_JOB) for line in virshout.lines(result.stderr)):
        return False
    raise VirshError(result.argv, f"exit status {result.exit_code}",
                     exit_code=result.exit_code, stderr=result.stderr)
