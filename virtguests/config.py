"""The configuration: libvirt-guests' variables, validated into a typed Config.

One validating parser turns the sysconfig file into an immutable ``Config``.
Every problem is collected (not just the first) and carries ``FILE:LINE``.
An invalid value falls back to its default, so ``stop`` can still protect
guests at host shutdown while reporting the typo.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional, TypeVar

from virtguests import files, shellvars
from virtguests.model import STOP_CHAIN, Action, Word

SEARCH_PATH = (
    Path("/etc/sysconfig/libvirt-guests"),
    Path("/etc/default/libvirt-guests"),
    Path("/etc/conf.d/libvirt-guests"),
    Path("/usr/local/etc/sysconfig/libvirt-guests"),
)

CHAIN_WORDS = ", ".join(STOP_CHAIN)


class OnBoot(Word):
    """ON_BOOT: what ``start`` does with the recorded guests."""

    START = "start"
    IGNORE = "ignore"


class PersistentOnly(Word):
    """PERSISTENT_ONLY: whether the stop chain acts on transient guests."""

    DEFAULT = "default"
    """As the reference: not when the chain is only ``suspend``."""
    TRUE = "true"
    FALSE = "false"


@dataclass(frozen=True)
class Config:
    """Every setting, with upstream libvirt-guests' defaults."""

    uris: tuple[str, ...] = ("default",)
    on_boot: OnBoot = OnBoot.START
    start_delay: int = 0
    on_shutdown: tuple[Action, ...] = (Action.SUSPEND,)
    parallel_shutdown: int = 0
    shutdown_timeout: int = 300
    bypass_cache: bool = False
    sync_time: bool = False
    persistent_only: PersistentOnly = PersistentOnly.DEFAULT
    parallel_suspend: int = 0
    parallel_start: int = 4
    query_timeout: int = 10
    save_timeout: int = 1800
    connect_retries: int = 10
    retries_sleep: float = 1.0
    stop_deadline: int = 0
    resume_orphans: bool = False
    guest_policy: Optional[str] = None
    metrics_file: Optional[str] = None
    migrate_uris: tuple[str, ...] = ()
    migrate_options: tuple[str, ...] = ("--live", "--persistent", "--undefinesource")
    migrate_timeout: int = 300
    parallel_migrate: int = 1
    migrate_return: bool = True
    migrate_reserve_mib: int = 256

    @property
    def suspending(self) -> bool:
        """True when the first action is a managed save (the reference's "suspend" mode);
        a chain's ``migrate`` does not count (``migrate suspend`` is still that mode)."""
        rest = [a for a in self.on_shutdown if a != Action.MIGRATE]
        return bool(rest) and rest[0] == Action.SUSPEND


@dataclass(frozen=True)
class Problem:
    """An invalid setting, located in its file."""

    path: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass(frozen=True)
class Loaded:
    """The result of reading a config: the Config plus everything wrong with the file."""

    config: Config
    path: Optional[Path]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    sources: Mapping[str, int] = field(default_factory=dict)
    salvaged_uris: Optional[tuple[str, ...]] = None
    """None when URIS was read as written.  When its line was refused or invalid (or the
    file could not be read at all): every URI that line still names (``default`` when it
    names none), so that ``stop`` never protects fewer hosts than the admin listed."""


# -- which settings each command uses -------------------------------------------------

POLICY_KEYS = ("match", "uri", "actions", "order", "shutdown_timeout", "start_delay",
               "skip_start", "migrate_to")
"""The keys of a guest policy rule (virtguests.policy reads them)."""

USED_BY: Mapping[str, frozenset[str]] = {
    "status": frozenset(),
    "start": frozenset({
        "URIS", "ON_BOOT", "START_DELAY", "BYPASS_CACHE", "SYNC_TIME", "PARALLEL_START",
        "QUERY_TIMEOUT", "SAVE_TIMEOUT", "CONNECT_RETRIES", "RETRIES_SLEEP", "RESUME_ORPHANS",
        "GUEST_POLICY", "MIGRATE_OPTIONS", "MIGRATE_TIMEOUT", "PARALLEL_MIGRATE",
        "MIGRATE_RETURN", "order", "start_delay", "skip_start", "match", "uri"}),
}
"""The settings (config variables and policy keys) a command acts on.  A problem with a
setting the command does not use is only a warning for it; commands not listed here use
everything.  A problem whose key is unknown or could not be identified (a refused line)
counts as used, except by `status`, which uses nothing."""


def blocks(command: Optional[str], problem: Problem) -> bool:
    """Whether *problem* must stop *command* from acting (see USED_BY)."""
    used = USED_BY.get(command or "")
    if used is None:
        return True
    if not used:
        return False
    known = problem.key in _CONVERTERS or problem.key in POLICY_KEYS
    return not known or problem.key in used


class Invalid(Exception):
    """A value a converter refuses; the message ends with ``(allowed: ...)``."""


W = TypeVar("W", bound=Word)


def _enum(kind: type[W]) -> Callable[[str], W]:
    words = [str(member) for member in kind]

    def convert(raw: str) -> W:
        if raw not in words:
            raise Invalid(f"invalid value {raw!r} (allowed: {', '.join(words)})")
        return kind(raw)

    return convert


YEAR = 31_536_000
"""No timeout or delay may exceed one year (365 days) of seconds."""
MAX_PARALLEL = 1000
MAX_RETRIES = 1000

_DECIMAL = re.compile(r"(-?)([0-9]+)")


def strict_int(raw: str, minimum: int, maximum: int) -> int:
    """An ASCII decimal integer within [minimum, maximum], as bash arithmetic reads it.

    Refused: signs other than one leading minus, ``-0``, underscores, spaces, other
    bases, non-ASCII digits, and leading zeros (bash reads ``010`` as octal 8).
    """
    allowed = f"(allowed: integers {minimum} to {maximum}{_unit(maximum)})"
    match = _DECIMAL.fullmatch(raw)
    if match is None:
        raise Invalid(f"not an integer: {raw!r} {allowed}")
    sign, digits = match.groups()
    if len(digits) > 1 and digits.startswith("0"):
        plain = sign + (digits.lstrip("0") or "0")
        raise Invalid(f"leading zero in {raw!r} (bash arithmetic reads it as octal: 010 is "
                      f"8); write {plain} {allowed}")
    if sign and digits == "0":
        raise Invalid(f"not an integer: {raw!r} {allowed}")
    if len(digits) > 18:
        raise Invalid(f"out of range: {raw[:40]!r}{'...' if len(raw) > 40 else ''} {allowed}")
    value = int(raw, 10)
    if value < minimum:
        raise Invalid(f"must be equal or greater than {minimum}, got {value} {allowed}")
    if value > maximum:
        raise Invalid(f"must be at most {maximum}{_unit(maximum)}, got {value} {allowed}")
    return value


def _unit(maximum: int) -> str:
    return " (one year)" if maximum == YEAR else ""


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        return strict_int(raw, minimum, maximum)

    return convert


_SECONDS = re.compile(r"(0|[1-9][0-9]{0,7})(\.[0-9]{1,6})?")


def _seconds(raw: str) -> float:
    """A plain decimal number of seconds: ``1``, ``0.5``; never nan, inf, 1e9 or 1_0."""
    allowed = f"(allowed: decimal seconds 0 to {YEAR} (one year), e.g. 0.5)"
    if _SECONDS.fullmatch(raw) is None:
        raise Invalid(f"not a number of seconds: {raw[:40]!r} {allowed}")
    value = float(raw)
    if value > YEAR:
        raise Invalid(f"must be at most {YEAR} (one year), got {raw} {allowed}")
    return value


def _flag(raw: str) -> bool:
    """The reference turns these on with any value but the exact string ``0``."""
    return raw != "0"


def ifs_split(raw: str) -> list[str]:
    """Split as bash splits an unquoted ``$VAR`` (default IFS: space, tab, newline only)."""
    return [word for word in re.split(r"[ \t\n]+", raw) if word]


def _uris(raw: str) -> tuple[str, ...]:
    uris = tuple(ifs_split(raw))
    if not uris:
        raise Invalid("empty (allowed: whitespace-separated libvirt URIs, or 'default')")
    return uris


def _chain(raw: str) -> tuple[Action, ...]:
    words = tuple(ifs_split(raw))
    if not words:
        raise Invalid(f"empty (allowed: {CHAIN_WORDS}, or a chain such as "
                       "'suspend shutdown poweroff')")
    for word in words:
        if word not in STOP_CHAIN:
            raise Invalid(
                f"invalid action {word!r} (allowed: {CHAIN_WORDS}, or a chain "
                "such as 'suspend shutdown poweroff')"
            )
    if len(set(words)) != len(words):
        raise Invalid(f"an action is repeated in {raw!r} (allowed: each action at most once)")
    actions = tuple(Action(word) for word in words)
    if list(actions) != sorted(actions, key=STOP_CHAIN.index):
        raise Invalid(f"actions out of order in {raw!r} (allowed: in the order "
                       f"{' -> '.join(STOP_CHAIN)}, each optional)")
    return actions


def _peer_uris(raw: str) -> tuple[str, ...]:
    """MIGRATE_URIS: may be empty (no peers: ``migrate`` in ON_SHUTDOWN is then a
    problem).  A word starting with ``-`` is refused: it would reach ``virsh migrate``
    as an option, not as the destination."""
    for word in ifs_split(raw):
        if word.startswith("-"):
            raise Invalid(f"{word[:80]!r} is not a URI (allowed: whitespace-separated "
                          "libvirt URIs, or empty for none)")
    return tuple(dict.fromkeys(ifs_split(raw)))


MIGRATE_VALUE_OPTIONS = frozenset({
    "--migrateuri", "--graphicsuri", "--listen-address", "--migrate-disks", "--disks-port",
    "--disks-uri", "--comp-methods", "--comp-mt-level", "--comp-mt-threads",
    "--comp-mt-dthreads", "--comp-xbzrle-cache", "--auto-converge-initial",
    "--auto-converge-increment", "--postcopy-bandwidth", "--parallel-connections",
    "--bandwidth", "--tls-destination"})
"""``virsh migrate`` options (libvirt 9.0) that take the next word as their value."""

MIGRATE_REFUSED: Mapping[str, str] = {
    "--domain": "virtguests names the guest",
    "--desturi": "virtguests names the peer (MIGRATE_URIS)",
    "--timeout": "MIGRATE_TIMEOUT bounds a migration; virsh's timeout would suspend the "
                 "guest or switch to post-copy",
    "--timeout-suspend": "MIGRATE_TIMEOUT bounds a migration; this would suspend the guest",
    "--timeout-postcopy": "MIGRATE_TIMEOUT bounds a migration; post-copy cannot be aborted",
    "--postcopy-after-precopy": "a guest in post-copy cannot be aborted and is lost if its "
                                "peer fails",
    "--postcopy-resume": "only for a failed post-copy migration",
    "--offline": "an offline migration leaves the guest running here",
    "--suspend": "the guest would be left paused on the peer",
    "--dname": "one name for every guest",
    "--xml": "one file for every guest",
    "--persistent-xml": "one file for every guest",
}
"""Options that would take the call out of virtguests' hands, and why."""

MIGRATE_ONE_ADDRESS = ("--migrateuri", "--listen-address", "--graphicsuri", "--disks-uri",
                       "--tls-destination")
"""Options that name one host's address: ``check`` warns that every peer and start's
migration home get the same value."""


def _migrate_options(raw: str) -> tuple[str, ...]:
    """MIGRATE_OPTIONS: ``--option`` words (``--option value`` for those taking a value,
    or ``--option=value``); never run by a shell.  Refused: what virtguests itself
    controls (see MIGRATE_REFUSED) and any other word, which virsh would read as the
    guest or the peer."""
    allowed = ("(allowed: virsh migrate options such as --live --persistent "
               "--undefinesource --compressed --auto-converge --copy-storage-all "
               "--migrateuri URI; not --timeout, --desturi, --suspend, --dname, --xml)")
    words = tuple(ifs_split(raw))
    expect_value: Optional[str] = None
    for word in words:
        if expect_value is not None:
            expect_value = None
            continue
        name = word.split("=", 1)[0]
        if not word.startswith("--") or name == "--":
            raise Invalid(f"{word[:80]!r} is not an option: virsh would read it as the guest "
                          f"or the peer; write --option=value for an option virtguests does "
                          f"not know to take a value {allowed}")
        if name in MIGRATE_REFUSED:
            raise Invalid(f"{name} is refused: {MIGRATE_REFUSED[name]} {allowed}")
        if name in MIGRATE_VALUE_OPTIONS and "=" not in word:
            expect_value = name
    if expect_value is not None:
        raise Invalid(f"{expect_value} needs a value {allowed}")
    return words


def _path(raw: str) -> Optional[str]:
    return raw or None


def _metrics_path(raw: str) -> Optional[str]:
    """Off when empty; else where node_exporter's textfile collector looks: an absolute
    path whose name ends in ``.prom`` (the collector reads no other file)."""
    if not raw:
        return None
    allowed = "(allowed: an absolute path ending in .prom, or empty for none)"
    if not raw.startswith("/"):
        raise Invalid(f"not an absolute path: {raw[:80]!r} {allowed}")
    name = raw.rsplit("/", 1)[1]
    if not name.endswith(".prom") or name == ".prom":
        raise Invalid(f"the file name must end in .prom: {name[:80]!r} {allowed}")
    return raw


_CONVERTERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "URIS": ("uris", _uris),
    "ON_BOOT": ("on_boot", _enum(OnBoot)),
    "START_DELAY": ("start_delay", _int(0, YEAR)),
    "ON_SHUTDOWN": ("on_shutdown", _chain),
    "PARALLEL_SHUTDOWN": ("parallel_shutdown", _int(0, MAX_PARALLEL)),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _int(0, YEAR)),
    "BYPASS_CACHE": ("bypass_cache", _flag),
    "SYNC_TIME": ("sync_time", _flag),
    "PERSISTENT_ONLY": ("persistent_only", _enum(PersistentOnly)),
    "PARALLEL_SUSPEND": ("parallel_suspend", _int(0, MAX_PARALLEL)),
    "PARALLEL_START": ("parallel_start", _int(1, MAX_PARALLEL)),
    "QUERY_TIMEOUT": ("query_timeout", _int(1, YEAR)),
    "SAVE_TIMEOUT": ("save_timeout", _int(1, YEAR)),
    "CONNECT_RETRIES": ("connect_retries", _int(0, MAX_RETRIES)),
    "RETRIES_SLEEP": ("retries_sleep", _seconds),
    "STOP_DEADLINE": ("stop_deadline", _int(0, YEAR)),
    "RESUME_ORPHANS": ("resume_orphans", _flag),
    "GUEST_POLICY": ("guest_policy", _path),
    "METRICS_FILE": ("metrics_file", _metrics_path),
    "MIGRATE_URIS": ("migrate_uris", _peer_uris),
    "MIGRATE_OPTIONS": ("migrate_options", _migrate_options),
    "MIGRATE_TIMEOUT": ("migrate_timeout", _int(1, YEAR)),
    "PARALLEL_MIGRATE": ("parallel_migrate", _int(1, MAX_PARALLEL)),
    "MIGRATE_RETURN": ("migrate_return", _flag),
    "MIGRATE_RESERVE": ("migrate_reserve_mib", _int(0, 1 << 30)),
}

KNOWN_KEYS = frozenset(_CONVERTERS)


def find_config(explicit: Optional[str], environ: Mapping[str, str]) -> tuple[Optional[Path], bool]:
    """Which file to read, and whether the admin named it (so a missing one is an error)."""
    if explicit:
        return Path(explicit), True
    from_env = environ.get("VIRTGUESTS_CONFIG")
    if from_env:
        return Path(from_env), True
    for candidate in SEARCH_PATH:
        if candidate.is_file():
            return candidate, False
    return None, False


def load(
    explicit: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Loaded:
    """Find and read the config; never raises for bad content, only reports it.

    A file that cannot be read (a FIFO, a device, a directory, over
    files.CONFIG_CAP, no permission) is one problem: the defaults apply, and
    URIS counts as unknown (see Loaded.salvaged_uris).
    """
    env = os.environ if environ is None else environ
    path, named = find_config(explicit, env)
    if path is None:
        return Loaded(Config(), None)
    try:
        data = files.read(path, cap=files.CONFIG_CAP)
    except FileNotFoundError:
        if not named:
            return Loaded(Config(), path)
        problem = Problem(str(path), 0, "", "config file does not exist")
        return Loaded(Config(), path, problems=(problem,), salvaged_uris=("default",))
    except files.Unreadable as err:
        problem = Problem(str(path), 0, "", f"cannot read: {err}")
        return Loaded(Config(), path, problems=(problem,), salvaged_uris=("default",))
    warnings = _permission_warnings(path)
    loaded = parse_text(data.decode("utf-8", errors="surrogateescape"), str(path), env)
    return replace(loaded, path=path, warnings=warnings + loaded.warnings)


def normalize(text: str, path: str) -> tuple[str, list[str]]:
    """Read a UTF-8 byte-order mark and CRLF line ends as the admin meant: drop them.

    libvirt-guests sources the file with bash, which keeps both: the BOM makes
    the first line a command (its assignment is lost) and every value ends in
    a carriage return (``BYPASS_CACHE=0\\r`` turns --bypass-cache on there).
    """
    warnings: list[str] = []
    if text.startswith("\ufeff"):
        text = text[1:]
        warnings.append(f"{path}:1: starts with a UTF-8 byte-order mark: ignored here, but "
                        "libvirt-guests (sourcing the file with bash) would take the first "
                        "line for a command and lose its setting; remove the mark")
    if "\r\n" in text:
        first = text.count("\n", 0, text.index("\r\n")) + 1
        text = text.replace("\r\n", "\n")
        warnings.append(f"{path}:{first}: DOS (CRLF) line endings: read here as plain line "
                        "ends, but libvirt-guests (sourcing the file with bash) would read "
                        "every value with a trailing carriage return (BYPASS_CACHE=0 would "
                        "turn --bypass-cache on there); convert the file (dos2unix)")
    return text, warnings


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:/?#\[\]@!&*+,=%-]*")
_PREFIX = re.compile(r"(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=")


def salvage_uris(raw: str) -> list[str]:
    """The URIs a broken ``URIS=`` line still names: each whitespace token (quotes and a
    leading ``KEY=`` taken off) that is ``default`` or looks like ``scheme:...``."""
    found: list[str] = []
    for token in re.split(r"[\s'\";\\`]+", raw):
        word = _PREFIX.sub("", token) if _PREFIX.match(token) else token
        if word == "default" or _URI.fullmatch(word):
            found.append(word)
    return found


def _has_undecodable(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def parse_text(text: str, path: str, environ: Mapping[str, str]) -> Loaded:
    """Validate every known variable in *text*; unknown keys only warn."""
    text, warnings = normalize(text, path)
    assignments, syntax = shellvars.parse(text, environ)
    problems: list[tuple[int, Problem]] = []
    broken_uris: list[str] = []
    uris_broken = False
    for s in syntax:
        key = s.keys[0] if len(s.keys) == 1 else ""
        problems.append((s.line, Problem(path, s.line, key, s.message)))
        if "URIS" in s.keys:
            uris_broken = True
            broken_uris.extend(salvage_uris(s.text))
    values: dict[str, object] = {}
    sources: dict[str, int] = {}
    seen_unknown: set[str] = set()
    for item in assignments:
        spec = _CONVERTERS.get(item.key)
        if spec is None:
            if item.key not in seen_unknown:
                seen_unknown.add(item.key)
                warnings.append(f"{path}:{item.line}: {item.key}: unknown variable, ignored")
            continue
        attr, convert = spec
        try:
            if _has_undecodable(item.value):
                raise Invalid("not valid UTF-8 (allowed: UTF-8 text)")
            values[attr] = convert(item.value)
        except Invalid as err:
            problems.append((item.line, Problem(path, item.line, item.key, str(err))))
            values.pop(attr, None)
            if item.key == "URIS":
                uris_broken = True
                broken_uris.extend(salvage_uris(_physical_line(text, item.line)))
        sources[item.key] = item.line
    config = Config(**values)  # type: ignore[arg-type]
    more_problems, more_warnings = _migration_checks(config, sources, path)
    problems.extend((p.line, p) for p in more_problems)
    warnings.extend(more_warnings)
    salvaged = None
    if uris_broken:
        kept = list(config.uris) if "uris" in values else []
        salvaged = tuple(dict.fromkeys([*broken_uris, *kept])) or ("default",)
    problems.sort(key=lambda item: item[0])
    return Loaded(config, None, tuple(p for _, p in problems), tuple(warnings), sources,
                  salvaged)


def _migration_checks(config: Config, sources: Mapping[str, int],
                      path: str) -> tuple[list[Problem], list[str]]:
    """What only the migration settings together can tell: ``migrate`` without peers (a
    problem at ON_SHUTDOWN's line), a peer that is one of this host's URIS, and options
    naming one address for every peer (warnings)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    if Action.MIGRATE in config.on_shutdown and not config.migrate_uris:
        line = sources.get("ON_SHUTDOWN", 0)
        problems.append(Problem(path, line, "ON_SHUTDOWN", "migrate needs peers, but "
                                "MIGRATE_URIS is empty (allowed: set MIGRATE_URIS, or take "
                                "migrate out of the chain)"))
    line = sources.get("MIGRATE_URIS", 0)
    for peer in config.migrate_uris:
        if peer in config.uris:
            warnings.append(str(Problem(path, line, "MIGRATE_URIS", f"{peer} is also in URIS: "
                                        "a peer on this host is never a migration target")))
    line = sources.get("MIGRATE_OPTIONS", 0)
    for word in config.migrate_options:
        name = word.split("=", 1)[0]
        if name in MIGRATE_ONE_ADDRESS:
            warnings.append(str(Problem(path, line, "MIGRATE_OPTIONS", f"{name} names one "
                                        "address, but every peer in MIGRATE_URIS and start's "
                                        "migration home get the same options")))
    return problems, warnings


def _physical_line(text: str, number: int) -> str:
    start = 0
    for _ in range(number - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return ""
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _permission_warnings(path: Path) -> tuple[str, ...]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return ()
    if stat.S_ISREG(mode) and mode & stat.S_IWOTH:
        return (f"{path}: warning: world-writable config file: anyone on this host can "
                "change what happens to every guest",)
    return ()


def variable_names() -> Sequence[str]:
    """Every variable we read, in documentation order."""
    return list(_CONVERTERS)


def default_of(key: str) -> object:
    """The default for *key*, as the documentation shows it."""
    attr = _CONVERTERS[key][0]
    for f in fields(Config):
        if f.name == attr:
            return f.default
    raise KeyError(key)
