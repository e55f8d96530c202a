"""The values passed along the flow: what a host looks like, and what a policy says.

``observe`` produces these, ``policy`` and ``plan`` consume them, and ``state``
checks UUIDs with them; this module imports nothing else from virtguests, so
every module may depend on it without the flow turning back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional


class Word(str, Enum):
    """A word users read (messages, JSON, config): an enum member that is its own value.

    The ``str`` mixin keeps it equal to the plain string read back from a file or
    config, and ``json.dumps`` writes the value; ``str()`` and f-strings give the value
    too (Python 3.11 would print ``Action.SUSPEND``).
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Action(Word):
    """What is done to a guest: the stop chain's steps (ON_SHUTDOWN, policy ``actions``),
    ``start``, and ``none`` for a step that never began (the run report's ``action``)."""

    MIGRATE = "migrate"
    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    START = "start"
    NONE = "none"


STOP_CHAIN = (Action.MIGRATE, Action.SUSPEND, Action.SHUTDOWN, Action.POWEROFF)
"""The stop chain's actions, in the only order a chain may take them."""


class Outcome(Word):
    """What one step did to a guest: the words of the run report (``report``, ``--json``),
    so the executor and the bookkeeping that reads outcomes back compare names, not text.
    """

    PENDING = "pending"
    """No step yet."""
    SAVED = "saved"
    SHUT_OFF = "shut off"
    POWERED_OFF = "powered off"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"
    GIVEN_UP = "given up"
    """Not tried: the URI stopped answering (a call there timed out)."""
    SAVE_IN_PROGRESS = "save in progress"
    """Another job was still saving the guest when our time ran out: left alone."""
    INTERNAL_ERROR = "internal error"
    RESUMED = "resumed"
    ALREADY_ACTIVE = "already active"
    GONE = "no longer exists"
    """The recorded guest is not defined any more."""
    SKIPPED_BY_POLICY = "skipped by policy"
    MIGRATED = "migrated"
    """Stop: live-migrated to a peer, running there (the migrated record names it)."""
    RETURNED = "returned home"
    """Start: migrated back from its peer and running at home."""
    AWAY = "left on peer"
    """Start with MIGRATE_RETURN=0: still running on its peer, still recorded."""


PROTECTED = frozenset({Outcome.SAVED, Outcome.SHUT_OFF, Outcome.POWERED_OFF,
                       Outcome.MIGRATED})
"""Stop outcomes after which the guest cannot lose anything at power-off."""

SETTLED = frozenset({Outcome.RESUMED, Outcome.ALREADY_ACTIVE, Outcome.GONE,
                     Outcome.SKIPPED_BY_POLICY, Outcome.RETURNED, Outcome.AWAY})
"""Start outcomes that end a guest's record; every other outcome keeps it for the next start."""


class PlanNote(Word):
    """Why ``plan`` lists a guest with no action (its ``note``); on ``plan start`` a
    guest the plan already decided has that outcome for its note."""

    TRANSIENT = "transient: not suspended"
    LEFT_RUNNING = "left running by policy"
    GONE = "recorded but no longer exists"

class PeerWhy(Word):
    """Why a peer is not a guest's migration target: the words of a ``no target`` note
    (``no target: PEER: WHY; PEER: WHY``), in ``plan stop``, stop's report and the man
    page.  ``{...}`` fields are filled by ``plan.choose_targets``."""

    NO_TARGET = "no target"
    NO_PEERS = "no peers (MIGRATE_URIS is empty)"
    MEMORY_UNKNOWN = "the guest's memory is unknown"
    NOT_ALLOWED = "not in its migrate_to"
    UNREACHABLE = "unreachable ({error})"
    HOST_UNKNOWN = "its host UUID is unknown"
    SAME_HOST = "the same host as the guest's"
    FREE_UNKNOWN = "its free memory is unknown"
    TOO_LITTLE = "{free} MiB free, needs {need} MiB"
    """*free*: after what this run already sends there; *need*: memory + MIGRATE_RESERVE."""


def no_target(parts: list[tuple[str, str]]) -> str:
    """``no target: PEER: WHY; PEER: WHY`` (or ``no target: WHY`` for the guest itself)."""
    reasons = "; ".join(f"{peer}: {why}" if peer else why for peer, why in parts)
    return f"{PeerWhy.NO_TARGET}: {reasons}"


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(text: str) -> bool:
    """Whether *text* is a UUID as libvirt prints it (either case)."""
    return bool(_UUID.match(text))


@dataclass(frozen=True)
class Guest:
    """One guest as seen on a URI."""

    uuid: str
    name: str
    active: bool = True
    persistent: bool = True
    managed_save: bool = False
    memory_kib: Optional[int] = None
    """What it needs on a migration target (``dominfo``'s Max memory); asked only when
    a chain has ``migrate``."""


@dataclass(frozen=True)
class UriView:
    """What one URI looked like, or why it could not be seen."""

    uri: str
    guests: tuple[Guest, ...] = ()
    error: Optional[str] = None
    listed: bool = True
    """False for guests known by name from our own records, not listed now:
    whether each is active (or still exists) is unknown until virsh start says."""
    canonical: Optional[str] = None
    """What ``virsh uri`` says this URI is (``default`` -> ``qemu:///system``), when asked."""

    @property
    def reachable(self) -> bool:
        return self.error is None

    def find(self, uuid: str) -> Optional[Guest]:
        for guest in self.guests:
            if guest.uuid == uuid:
                return guest
        return None


@dataclass(frozen=True)
class PeerView:
    """One MIGRATE_URIS peer as seen before a migration, or why it could not be seen."""

    uri: str
    host_uuid: Optional[str] = None
    """``capabilities``' host UUID: a peer that is this host is never a target."""
    free_kib: Optional[int] = None
    """``nodememstats``: free + buffers + cached."""
    error: Optional[str] = None

    @property
    def reachable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Departure:
    """A guest that was live-migrated away at stop: the migrated record's entry."""

    uuid: str
    name: str
    home: str
    """The URIS entry it left (``start`` brings it back there)."""
    peer: str
    """The MIGRATE_URIS entry it runs on now."""


@dataclass(frozen=True)
class GuestPolicy:
    """Per-guest overrides (from the policy file); None means "use the config"."""

    actions: Optional[tuple[Action, ...]] = None
    order: int = 0
    shutdown_timeout: Optional[int] = None
    start_delay: Optional[int] = None
    skip_start: bool = False
    migrate_to: Optional[tuple[str, ...]] = None
    """The peers this guest may go to (policy ``migrate_to``); None: MIGRATE_URIS."""


PolicyLookup = Callable[[str, Guest], GuestPolicy]


def no_policy(uri: str, guest: Guest) -> GuestPolicy:
    return GuestPolicy()
