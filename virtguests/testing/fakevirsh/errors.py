"""How a fake virsh call ends early: unsupported argv, a virsh error, a lock wait."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import NoReturn


class Unsupported(Exception):
    """The fake does not implement this argv (or the host file is wrong): exit 2, loudly."""


class LockWait(Exception):
    """The guest's state-change lock is held by a job: wait for it, outside the state lock."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


class Failure(Exception):
    """A virsh error: exit 1 with this stderr text."""

    def __init__(self, stderr: str, extra_newline: bool = True) -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.extra_newline = extra_newline


def bad_host(message: str) -> NoReturn:
    raise Unsupported(f"host file: {message}")
