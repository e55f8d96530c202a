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

    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    START = "start"
    NONE = "none"


STOP_CHAIN = (Action.SUSPEND, Action.SHUTDOWN, Action.POWEROFF)
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


PROTECTED = frozenset({Outcome.SAVED, Outcome.SHUT_OFF, Outcome.POWERED_OFF})
"""Stop outcomes after which the guest cannot lose anything at power-off."""

SETTLED = frozenset({Outcome.RESUMED, Outcome.ALREADY_ACTIVE, Outcome.GONE,
                     Outcome.SKIPPED_BY_POLICY})
"""Start outcomes that end a guest's record; every other outcome keeps it for the next start."""


class PlanNote(Word):
    """Why ``plan`` lists a guest with no action (its ``note``); on ``plan start`` a
    guest the plan already decided has that outcome for its note."""

    TRANSIENT = "transient: not suspended"
    LEFT_RUNNING = "left running by policy"
    GONE = "recorded but no longer exists"

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
class GuestPolicy:
    """Per-guest overrides (from the policy file); None means "use the config"."""

    actions: Optional[tuple[Action, ...]] = None
    order: int = 0
    shutdown_timeout: Optional[int] = None
    start_delay: Optional[int] = None
    skip_start: bool = False


PolicyLookup = Callable[[str, Guest], GuestPolicy]


def no_policy(uri: str, guest: Guest) -> GuestPolicy:
    return GuestPolicy()
