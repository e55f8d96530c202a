"""On-disk state: the list file (shared with libvirt-guests), marker, pending file, lock.

The list file keeps the reference's format and place, so either tool can
resume what the other saved: one line per URI, ``URI UUID UUID ...``.
Everything is written atomically (temp file, fsync, rename), so a power cut
leaves either the old or the new file, never half of one.  Everything is read
through ``files.read`` (regular files only, never through a link, at most
``files.STATE_CAP`` bytes), in time linear in the file, and damage is
reported with its line and skipped: the valid parts are always kept.  A UUID is
recognised with ``model.is_uuid``: nothing here reads virsh's output.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import json.decoder
import json.scanner
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from virtguests import files, render
from virtguests.config import Problem
from virtguests.model import Departure, is_uuid

DEFAULT_LIST = Path("/var/lib/libvirt/libvirt-guests")


@dataclass(frozen=True)
class Paths:
    list_file: Path
    marker: Path
    pending: Path
    run_report: Path
    lock: Path
    seen: Path
    migrated: Path
    """virtguests-migrated: the guests that left for a peer (``Departure``)."""

    @classmethod
    def default(cls) -> Paths:
        subsys = Path("/var/lock/subsys")
        marker = subsys / "libvirt-guests" if subsys.is_dir() else Path("/var/lock/libvirt-guests")
        return cls._beside(DEFAULT_LIST, marker)

    @classmethod
    def in_dir(cls, state_dir: Path) -> Paths:
        return cls._beside(state_dir / "libvirt-guests", state_dir / "libvirt-guests.started")

    @classmethod
    def _beside(cls, list_file: Path, marker: Path) -> Paths:
        """virtguests' own files live next to the list file."""
        base = list_file.parent
        return cls(list_file, marker, base / "virtguests-pending",
                   base / "virtguests-last-run.json", base / "virtguests.lock",
                   base / "virtguests-seen.json", base / "virtguests-migrated")


@dataclass(frozen=True)
class BadLine:
    path: Path
    line: int
    message: str

    @property
    def unreadable(self) -> bool:
        """The whole file was refused (line 0): what it records is unknown, not empty."""
        return self.line == 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


Entries = dict[str, list[str]]
"""URI (as written in the file) -> UUIDs, in file order."""


MAX_REPORTED = 10
"""Damaged list-file lines quoted one by one; the rest are counted in one more line."""

_BLANKS = re.compile(r"[ \t]+")


def read_list(path: Path) -> tuple[Entries, list[BadLine]]:
    """Parse a list file; bad lines or tokens are reported and skipped, never fatal."""
    try:
        data = files.read(path, cap=files.STATE_CAP, nofollow=True)
    except FileNotFoundError:
        return {}, []
    except files.Unreadable as err:
        return {}, [BadLine(path, 0, f"cannot read: {err}")]
    return parse_list(data.decode("utf-8", errors="replace"), path)


def parse_list(text: str, path: Path) -> tuple[Entries, list[BadLine]]:
    """``URI UUID UUID ...`` lines, split as libvirt-guests' ``read uri list`` splits them.

    Linear in the file.  The first MAX_REPORTED problems are quoted, then one
    line counts the rest, so a binary file costs a dozen lines of output, and
    every valid line is kept.
    """
    entries: Entries = {}
    known: dict[str, set[str]] = {}
    bad: list[BadLine] = []
    more_lines: set[int] = set()
    more = 0

    def damaged(number: int, message: str) -> None:
        nonlocal more
        if len(bad) < MAX_REPORTED:
            bad.append(BadLine(path, number, message))
        else:
            more += 1
            more_lines.add(number)

    for number, line in enumerate(text.split("\n"), 1):
        tokens = [t for t in _BLANKS.split(line) if t]
        if not tokens:
            continue
        uri, *ids = tokens
        if is_uuid(uri):
            damaged(number, f"line starts with a UUID, not a URI: {line[:80]!r}")
            continue
        if "\ufffd" in uri or not uri.isprintable():
            damaged(number, f"not a URI (not printable UTF-8), line skipped: {uri[:80]!r}")
            continue
        good: list[str] = []
        for token in ids:
            if is_uuid(token):
                good.append(token.lower())
            else:
                damaged(number, f"not a UUID, skipped: {token[:80]!r}")
        if good:
            merged = entries.setdefault(uri, [])
            have = known.setdefault(uri, set())
            for uuid in good:
                if uuid not in have:
                    have.add(uuid)
                    merged.append(uuid)
        elif not ids:
            damaged(number, f"no guests listed for URI {uri!r}")
    if more:
        bad.append(BadLine(path, min(more_lines), f"and {more} more problem(s) on "
                                                  f"{len(more_lines)} more line(s), not "
                                                  "shown; the valid lines are kept"))
    return entries, bad


def format_list(entries: Mapping[str, Iterable[str]]) -> str:
    return "".join(
        f"{uri} {' '.join(ids)}\n" for uri, ids in entries.items() if list(ids)
    )


def merge(*parts: Mapping[str, Iterable[str]]) -> Entries:
    """URI -> UUIDs of every part, in first-seen order, each once (linear)."""
    out: Entries = {}
    known: dict[str, set[str]] = {}
    for part in parts:
        for uri, ids in part.items():
            merged = out.setdefault(uri, [])
            have = known.setdefault(uri, set())
            for uuid in ids:
                if uuid not in have:
                    have.add(uuid)
                    merged.append(uuid)
    return {uri: ids for uri, ids in out.items() if ids}


def write_list(path: Path, entries: Mapping[str, Iterable[str]]) -> None:
    """Replace the list file atomically; an empty list removes it."""
    text = format_list(entries)
    if text:
        write_atomic(path, text.encode())
    else:
        remove(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, then rename over *path*.

    rename() replaces a symlink at *path* instead of following it.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def set_aside(path: Path) -> Path:
    """Move a record we could not read out of the way, so writing a new one loses nothing.

    Renamed, never opened or followed: ``NAME.unreadable-YYYYmmddTHHMMSS``.
    """
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    _fsync_dir(path.parent)
    return aside


def remove(path: Path) -> None:
    with _ignore_missing():
        os.unlink(path)
        _fsync_dir(path.parent)


def touch(path: Path) -> None:
    """Create the marker; a FIFO, device or link planted there is refused, never opened
    in a way that waits (opening a FIFO for writing blocks until a reader comes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
    finally:
        os.close(fd)


def write_json(path: Path, document: Any) -> None:
    write_atomic(path, render.json_text(document).encode())


def read_json(path: Path) -> Optional[Any]:
    """The document, or None when it is missing or damaged in any way."""
    document, problems = read_json_checked(path, lambda doc, where, out: doc)
    return None if problems else document


Check = Callable[[Any, "_Where", list[Problem]], Any]
"""Validate a parsed document: return its valid parts, append a Problem for the rest."""


def read_json_checked(path: Path, check: Check) -> tuple[Optional[Any], list[Problem]]:
    """A JSON state file, its valid parts, and a ``FILE:LINE: KEY: problem`` for the rest.

    Missing: (None, []).  Unreadable, not JSON, or nested absurdly: (None, [one
    problem]).  Otherwise *check* keeps what is valid; only when it finds a
    problem is the file parsed again, slowly, to learn the line of each object.
    """
    name = str(path)
    try:
        data = files.read(path, cap=files.STATE_CAP, nofollow=True)
    except FileNotFoundError:
        return None, []
    except files.Unreadable as err:
        return None, [Problem(name, 0, "", f"cannot read: {err}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, [Problem(name, data.count(b"\n", 0, err.start) + 1, "",
                              "not valid UTF-8")]
    try:
        document = json.loads(text, parse_int=_Int, parse_constant=_Constant)
    except json.JSONDecodeError as err:
        return None, [Problem(name, err.lineno, "", f"not valid JSON: {err.msg} "
                                                    f"(column {err.colno})")]
    except RecursionError:
        return None, [Problem(name, 1, "", "not valid JSON: nested too deeply")]
    problems: list[Problem] = []
    first = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
    valid = check(document, _Where(name, line=first), problems)
    if problems:
        lined = _lined(text)
        if lined is not None:
            again: list[Problem] = []
            check(lined, _Where(name, line=first), again)
            if len(again) == len(problems):
                problems = again
    return valid, problems


class _Int(int):
    """An integer from a JSON state file; absurd lengths become a schema problem."""

    def __new__(cls, text: str) -> Any:
        if len(text) > 30:
            return _Constant(text[:20] + "...")
        return super().__new__(cls, text)


class _Constant:
    """NaN, Infinity or an absurd number: not a value any state file holds."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Object(dict):  # type: ignore[type-arg]
    line = 0


def _lined(text: str) -> Optional[Any]:
    """The document again, each object knowing the line where it starts (pure Python)."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    decoder = json.JSONDecoder(object_pairs_hook=_Object, parse_int=_Int,
                               parse_constant=_Constant)

    def parse_object(s_and_end: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        obj, end = json.decoder.JSONObject(s_and_end, *args, **kwargs)  # type: ignore[attr-defined]
        if isinstance(obj, _Object):
            obj.line = bisect.bisect_right(starts, s_and_end[1] - 1)
        return obj, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except (ValueError, RecursionError):
        return None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Where:
    """A place in a JSON document: the key path (``guests[3].outcome``) and its line."""

    def __init__(self, path: str, key: str = "", line: int = 0) -> None:
        self.path = path
        self.key = key
        self.line = line

    def at(self, step: Union[str, int], container: Any = None) -> _Where:
        if isinstance(step, int):
            key = f"{self.key}[{step}]"
        elif _IDENTIFIER.match(step):
            key = f"{self.key}.{step}" if self.key else step
        else:
            key = f"{self.key}[{json.dumps(step)}]"
        line = getattr(container, "line", 0) or self.line
        return _Where(self.path, key, line)

    def inside(self, container: Any) -> _Where:
        return _Where(self.path, self.key, getattr(container, "line", 0) or self.line)

    def problem(self, message: str) -> Problem:
        return Problem(self.path, self.line, self.key, message)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _type_name(value: Any) -> str:
    if isinstance(value, _Constant):
        return f"the number {value!r}"
    return {dict: "an object", _Object: "an object", list: "a list", str: "a string",
            bool: "true/false", type(None): "null"}.get(type(value), "a number")


def _object(value: Any, where: _Where, problems: list[Problem]) -> Optional[dict[str, Any]]:
    if isinstance(value, dict):
        return value
    problems.append(where.problem(f"expected an object, got {_type_name(value)}"))
    return None


def _fields(document: dict[str, Any], where: _Where, problems: list[Problem],
            spec: Sequence[tuple[str, Callable[[Any], bool], str, bool]]) -> dict[str, Any]:
    """Keep the fields of *document* that pass their test; report the others."""
    kept: dict[str, Any] = {}
    inner = where.inside(document)
    for key, test, what, required in spec:
        if key not in document:
            if required:
                problems.append(inner.at(key).problem(f"missing (expected {what})"))
            continue
        value = document[key]
        if test(value):
            kept[key] = value
        else:
            problems.append(inner.at(key).problem(f"expected {what}, got {_type_name(value)}"))
    return kept


def check_seen(document: Any, where: _Where, problems: list[Problem]) -> dict[str, dict[str, str]]:
    """virtguests-seen.json: ``{URI: {UUID: NAME}}``."""
    root = _object(document, where, problems)
    if root is None:
        return {}
    inner = where.inside(root)
    seen: dict[str, dict[str, str]] = {}
    for uri, guests in root.items():
        at = inner.at(uri)
        found = _object(guests, at, problems)
        if found is None:
            continue
        kept: dict[str, str] = {}
        for uuid, name in found.items():
            here = at.inside(found).at(uuid)
            if not is_uuid(uuid):
                problems.append(here.problem("not a UUID"))
            elif not isinstance(name, str):
                problems.append(here.problem(f"expected a name, got {_type_name(name)}"))
            else:
                kept[uuid.lower()] = name
        seen[uri] = kept
    return seen


_STEP = (("action", _is_text, "a string", True), ("result", _is_text, "a string", True),
         ("seconds", _is_number, "a number", True), ("detail", _is_text, "a string", False))
_GUEST = (("uri", _is_text, "a string", True), ("uuid", _is_text, "a string", True),
          ("name", _is_text, "a string", True), ("outcome", _is_text, "a string", True))
_RUN = (("command", _is_text, "a string", True), ("exit_status", _is_int, "an integer", True),
        ("started", _is_number, "a number", False), ("finished", _is_number, "a number", False))
_VIRSH = (("uri", _is_text, "a string", True), ("processes", _is_count, "a count", True),
          ("connections", _is_count, "a count", True))


def check_run_report(document: Any, where: _Where, problems: list[Problem]
                     ) -> Optional[dict[str, Any]]:
    """virtguests-last-run.json, as ``RunReport.document`` writes it."""
    root = _object(document, where, problems)
    if root is None:
        return None
    kept = _fields(root, where, problems, _RUN)
    inner = where.inside(root)
    guests = root.get("guests")
    if not isinstance(guests, list):
        problems.append(inner.at("guests").problem(
            "missing (expected a list)" if guests is None else
            f"expected a list, got {_type_name(guests)}"))
        guests = []
    kept["guests"] = []
    for index, entry in enumerate(guests):
        at = inner.at("guests").at(index)
        guest = _object(entry, at, problems)
        if guest is None:
            continue
        before = len(problems)
        fields = _fields(guest, at, problems, _GUEST)
        if len(problems) != before:
            continue  # a guest we cannot name is not shown
        steps = guest.get("steps", [])
        if not isinstance(steps, list):
            problems.append(at.inside(guest).at("steps").problem(
                f"expected a list, got {_type_name(steps)}"))
            steps = []
        fields["steps"] = []
        for number, item in enumerate(steps):
            step_at = at.inside(guest).at("steps").at(number)
            step = _object(item, step_at, problems)
            if step is None:
                continue
            before = len(problems)
            step_fields = _fields(step, step_at, problems, _STEP)
            if len(problems) == before:
                fields["steps"].append(step_fields)
        kept["guests"].append(fields)
    if "virsh" in root:  # written since issue 13; older reports have none
        kept["virsh"] = _virsh_counts(root["virsh"], inner.at("virsh"), problems)
    return kept


def _virsh_counts(value: Any, where: _Where, problems: list[Problem]) -> list[dict[str, Any]]:
    """The run report's ``virsh``: per URI, the processes and connections started."""
    if not isinstance(value, list):
        problems.append(where.problem(f"expected a list, got {_type_name(value)}"))
        return []
    kept = []
    for index, item in enumerate(value):
        entry = _object(item, where.at(index), problems)
        if entry is None:
            continue
        before = len(problems)
        fields = _fields(entry, where.at(index), problems, _VIRSH)
        if len(problems) == before:
            kept.append(fields)
    return kept


def read_seen(path: Path) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    document, problems = read_json_checked(path, check_seen)
    return document or {}, problems


MIGRATED_FORMAT = 1


def check_migrated(document: Any, where: _Where, problems: list[Problem]) -> list[Departure]:
    """virtguests-migrated: ``{"format_version": 1, "guests": [{uuid, name, home, peer}]}``.

    A later entry for the same guest and home replaces an earlier one (the latest
    departure is where the guest is).  Another format version keeps nothing: its
    entries may mean something else.
    """
    root = _object(document, where, problems)
    if root is None:
        return []
    inner = where.inside(root)
    version = root.get("format_version")
    if not (_is_int(version) and version == MIGRATED_FORMAT):
        problems.append(inner.at("format_version").problem(
            f"expected {MIGRATED_FORMAT}, got "
            f"{'nothing' if 'format_version' not in root else repr(version)}"))
        return []
    guests = root.get("guests")
    if not isinstance(guests, list):
        problems.append(inner.at("guests").problem(f"expected a list, got "
                                                   f"{_type_name(guests)}"))
        return []
    kept: dict[tuple[str, str], Departure] = {}
    for index, entry in enumerate(guests):
        at = inner.at("guests", root).at(index, guests)
        found = _object(entry, at, problems)
        if found is None:
            continue
        before = len(problems)
        fields = _fields(found, at, problems, _DEPARTURE)
        if len(problems) != before:
            continue
        if not is_uuid(fields["uuid"]):
            problems.append(at.inside(found).at("uuid").problem("not a UUID"))
            continue
        empty = [key for key in ("home", "peer") if not fields[key]]
        if empty:
            problems.append(at.inside(found).at(empty[0]).problem("empty"))
            continue
        departure = Departure(fields["uuid"].lower(), fields["name"], fields["home"],
                              fields["peer"])
        kept.pop((departure.home, departure.uuid), None)
        kept[(departure.home, departure.uuid)] = departure
    return list(kept.values())


_DEPARTURE = (("uuid", _is_text, "a string", True), ("name", _is_text, "a string", True),
              ("home", _is_text, "a string", True), ("peer", _is_text, "a string", True))


def read_migrated(path: Path) -> tuple[list[Departure], list[Problem]]:
    """The guests the migrated record says are away, and what is wrong with the file.

    Missing: nothing away.  With problems the valid entries are still returned; the
    caller sets the file aside (``set_aside``) before writing a new one, so a damaged
    entry is reported and kept on disk, never silently dropped.
    """
    departures, problems = read_json_checked(path, check_migrated)
    return departures or [], problems


def write_migrated(path: Path, departures: Sequence[Departure]) -> None:
    """Write the migrated record atomically; with nobody away the file goes."""
    if not departures:
        remove(path)
        return
    write_json(path, {"format_version": MIGRATED_FORMAT,
                      "guests": [{"uuid": d.uuid, "name": d.name, "home": d.home,
                                  "peer": d.peer} for d in departures]})


def read_run_report(path: Path) -> tuple[Optional[dict[str, Any]], list[Problem]]:
    """The last run report (its valid parts), and what is wrong with the file."""
    return read_json_checked(path, check_run_report)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _ignore_missing() -> Iterator[None]:
    with suppress(FileNotFoundError):
        yield


class LockBusy(Exception):
    """Another virtguests held the lock for longer than we may wait."""


class LockInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT) while waiting for the lock."""


LOCK_POLL = 0.2


@contextmanager
def exclusive(
    path: Path,
    *,
    wait: float,
    on_wait: Callable[[str], None],
    sleep: Callable[[float], bool],
) -> Iterator[None]:
    """Hold an flock on *path*; another virtguests run waits up to *wait* seconds.

    *sleep* returns False when a stop was requested: then we give up at once
    (LockInterrupted), so a queued run never outlives its SIGTERM.  The lock
    file is opened without blocking and must be a regular file: a FIFO or a
    device planted there is refused (OSError), never waited on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        waited = 0.0
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if waited >= wait:
                raise LockBusy(
                    f"another virtguests (pid {holder}) holds {path}; gave up after {wait:g}s"
                )
            if not told:
                on_wait(f"waiting for another virtguests (pid {holder}) to finish ({path})")
                told = True
            if not sleep(LOCK_POLL):
                raise LockInterrupted(f"stop requested while waiting for another virtguests "
                                      f"(pid {holder}) to release {path}")
            waited += LOCK_POLL
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
