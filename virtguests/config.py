"""The configuration: libvirt-guests' variables, validated into a typed Config.

One validating parser turns the sysconfig file into an immutable ``Config``.
Every problem is collected (not just the first) and carries ``FILE:LINE``.
An invalid value falls back to its default, so ``stop`` can still protect
guests at host shutdown while reporting the typo.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional

from virtguests import shellvars

SEARCH_PATH = (
    Path("/etc/sysconfig/libvirt-guests"),
    Path("/etc/default/libvirt-guests"),
    Path("/etc/conf.d/libvirt-guests"),
    Path("/usr/local/etc/sysconfig/libvirt-guests"),
)

ACTIONS = ("suspend", "shutdown", "poweroff")


@dataclass(frozen=True)
class Config:
    """Every setting, with upstream libvirt-guests' defaults."""

    uris: tuple[str, ...] = ("default",)
    on_boot: str = "start"
    start_delay: int = 0
    on_shutdown: tuple[str, ...] = ("suspend",)
    parallel_shutdown: int = 0
    shutdown_timeout: int = 300
    bypass_cache: bool = False
    sync_time: bool = False
    persistent_only: str = "default"
    parallel_suspend: int = 0
    parallel_start: int = 4
    query_timeout: int = 10
    save_timeout: int = 1800
    connect_retries: int = 10
    retries_sleep: float = 1.0
    stop_deadline: int = 0
    resume_orphans: bool = False
    guest_policy: Optional[str] = None

    @property
    def suspending(self) -> bool:
        """True when the first action is a managed save (the reference's "suspend" mode)."""
        return self.on_shutdown[0] == "suspend"


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


class _Invalid(Exception):
    pass


def _enum(*allowed: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if raw not in allowed:
            raise _Invalid(f"invalid value {raw!r} (allowed: {', '.join(allowed)})")
        return raw

    return convert


def _int(minimum: int = 0) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        text = raw.strip()
        try:
            value = int(text, 10)
        except ValueError:
            raise _Invalid(
                f"not an integer: {raw!r} (allowed: integers >= {minimum})"
            ) from None
        if value < minimum:
            raise _Invalid(
                f"must be equal or greater than {minimum}, got {value} "
                f"(allowed: integers >= {minimum})"
            )
        return value

    return convert


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid(f"not a number of seconds: {raw!r} (allowed: numbers >= 0)") from None
    if not value >= 0 or value == float("inf"):
        raise _Invalid(f"must be a finite number >= 0, got {raw!r} (allowed: numbers >= 0)")
    return value


def _flag(raw: str) -> bool:
    """The reference turns these on with any value but the exact string ``0``."""
    return raw != "0"


def _uris(raw: str) -> tuple[str, ...]:
    uris = tuple(raw.split())
    if not uris:
        raise _Invalid("empty (allowed: whitespace-separated libvirt URIs, or 'default')")
    return uris


def _chain(raw: str) -> tuple[str, ...]:
    words = tuple(raw.split())
    if not words:
        raise _Invalid(f"empty (allowed: {', '.join(ACTIONS)}, or a chain such as "
                       "'suspend shutdown poweroff')")
    for word in words:
        if word not in ACTIONS:
            raise _Invalid(
                f"invalid action {word!r} (allowed: {', '.join(ACTIONS)}, or a chain "
                "such as 'suspend shutdown poweroff')"
            )
    if len(set(words)) != len(words):
        raise _Invalid(f"an action is repeated in {raw!r} (allowed: each action at most once)")
    if list(words) != sorted(words, key=ACTIONS.index):
        raise _Invalid(f"actions out of order in {raw!r} (allowed: in the order "
                       f"{' -> '.join(ACTIONS)}, each optional)")
    return words


def _path(raw: str) -> Optional[str]:
    return raw or None


_CONVERTERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "URIS": ("uris", _uris),
    "ON_BOOT": ("on_boot", _enum("start", "ignore")),
    "START_DELAY": ("start_delay", _int()),
    "ON_SHUTDOWN": ("on_shutdown", _chain),
    "PARALLEL_SHUTDOWN": ("parallel_shutdown", _int()),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _int()),
    "BYPASS_CACHE": ("bypass_cache", _flag),
    "SYNC_TIME": ("sync_time", _flag),
    "PERSISTENT_ONLY": ("persistent_only", _enum("default", "true", "false")),
    "PARALLEL_SUSPEND": ("parallel_suspend", _int()),
    "PARALLEL_START": ("parallel_start", _int(1)),
    "QUERY_TIMEOUT": ("query_timeout", _int(1)),
    "SAVE_TIMEOUT": ("save_timeout", _int(1)),
    "CONNECT_RETRIES": ("connect_retries", _int()),
    "RETRIES_SLEEP": ("retries_sleep", _seconds),
    "STOP_DEADLINE": ("stop_deadline", _int()),
    "RESUME_ORPHANS": ("resume_orphans", _flag),
    "GUEST_POLICY": ("guest_policy", _path),
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
    """Find and read the config; never raises for bad content, only reports it."""
    env = os.environ if environ is None else environ
    path, named = find_config(explicit, env)
    if path is None:
        return Loaded(Config(), None)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        problem = Problem(str(path), 0, "", "config file does not exist")
        return Loaded(Config(), path, problems=(problem,) if named else ())
    except OSError as err:
        return Loaded(Config(), path, problems=(Problem(str(path), 0, "", f"cannot read: {err}"),))
    warnings = _permission_warnings(path)
    loaded = parse_text(text, str(path), env)
    return replace(loaded, path=path, warnings=warnings + loaded.warnings)


def parse_text(text: str, path: str, environ: Mapping[str, str]) -> Loaded:
    """Validate every known variable in *text*; unknown keys only warn."""
    assignments, syntax = shellvars.parse(text, environ)
    problems = [Problem(path, s.line, "", s.message) for s in syntax]
    warnings: list[str] = []
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
            values[attr] = convert(item.value)
        except _Invalid as err:
            problems.append(Problem(path, item.line, item.key, str(err)))
            values.pop(attr, None)
        sources[item.key] = item.line
    config = Config(**values)  # type: ignore[arg-type]
    return Loaded(config, None, tuple(problems), tuple(warnings), sources)


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
