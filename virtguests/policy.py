"""Per-guest policy: a YAML file of rules matched by name, UUID or glob.

Like Proxmox's ``startup: order=,up=,down=`` or ESXi's per-VM start/stop
settings: a rule can change a guest's shutdown action chain, its order group
(stopped highest first, started lowest first), its shutdown timeout, a delay
after starting it, or skip it at start.  The first matching rule wins; guests
no rule matches follow the sysconfig.  Errors carry ``FILE:LINE``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from virtguests.config import ACTIONS, Problem
from virtguests.plan import Guest, GuestPolicy

DEFAULT_PATH = Path("/etc/virtguests/guests.yaml")

EXAMPLE = """\
guests:
  - match: "db-*"            # guest name glob, exact name, or UUID
    uri: qemu:///system      # optional: only on this URI
    actions: shutdown poweroff   # or: suspend | shutdown | poweroff | none, or a list
    order: 10                # stop highest first, start lowest first (default 0)
    shutdown_timeout: 120
    start_delay: 30          # seconds to wait after starting this guest
    skip_start: false
"""

_KEYS = ("match", "uri", "actions", "order", "shutdown_timeout", "start_delay", "skip_start")


@dataclass(frozen=True)
class Rule:
    match: str
    uri: Optional[str]
    policy: GuestPolicy
    line: int

    def matches(self, uri: str, guest: Guest) -> bool:
        if self.uri is not None and self.uri != uri:
            return False
        if self.match.lower() == guest.uuid:
            return True
        return fnmatch.fnmatchcase(guest.name, self.match)


@dataclass(frozen=True)
class Policy:
    path: Optional[Path]
    rules: tuple[Rule, ...] = ()

    def lookup(self, uri: str, guest: Guest) -> GuestPolicy:
        for rule in self.rules:
            if rule.matches(uri, guest):
                return rule.policy
        return GuestPolicy()

    def rule_for(self, uri: str, guest: Guest) -> Optional[Rule]:
        return next((r for r in self.rules if r.matches(uri, guest)), None)


def load(explicit: Optional[str]) -> tuple[Policy, list[Problem]]:
    """Read the policy file; invalid rules are reported and left out, valid ones kept."""
    path = Path(explicit) if explicit else DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if explicit:
            return Policy(None), [Problem(str(path), 0, "GUEST_POLICY",
                                          "policy file does not exist")]
        return Policy(None), []
    except OSError as err:
        return Policy(None), [Problem(str(path), 0, "", f"cannot read: {err}")]
    return parse(text, str(path))


def parse(text: str, path: str) -> tuple[Policy, list[Problem]]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        return Policy(Path(path)), [Problem(path, line, "", f"not valid YAML: {err}")]
    if root is None:
        return Policy(Path(path)), []
    problems: list[Problem] = []
    items = _guest_list(root, path, problems)
    rules = [rule for node in items if (rule := _rule(node, path, problems)) is not None]
    return Policy(Path(path), tuple(rules)), problems


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _guest_list(root: Any, path: str, problems: list[Problem]) -> Sequence[Any]:
    import yaml

    if not isinstance(root, yaml.MappingNode):
        problems.append(Problem(path, _line(root), "", "expected a mapping with a 'guests' list"))
        return []
    found: Sequence[Any] = []
    for key, value in root.value:
        if key.value != "guests":
            problems.append(Problem(path, _line(key), str(key.value),
                                    "unknown key (allowed: guests)"))
        elif not isinstance(value, yaml.SequenceNode):
            problems.append(Problem(path, _line(value), "guests", "expected a list of rules"))
        else:
            found = value.value
    return found


def _rule(node: Any, path: str, problems: list[Problem]) -> Optional[Rule]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(path, _line(node), "", "a rule must be a mapping"))
        return None
    fields: dict[str, Any] = {}
    ok = True

    def bad(key_node: Any, key: str, message: str) -> None:
        nonlocal ok
        ok = False
        problems.append(Problem(path, _line(key_node), key, message))

    for key_node, value in node.value:
        key = str(key_node.value)
        if key not in _KEYS:
            bad(key_node, key, f"unknown key (allowed: {', '.join(_KEYS)})")
            continue
        scalar = yaml.safe_load(yaml.serialize(value))
        if key in ("match", "uri"):
            if not isinstance(scalar, str) or not scalar:
                bad(value, key, "must be a non-empty string")
            else:
                fields[key] = scalar
        elif key == "actions":
            words = scalar.split() if isinstance(scalar, str) else scalar
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words) \
                    or not words:
                bad(value, key, "must be a word or a list (allowed: "
                    f"{', '.join(ACTIONS)}, none)")
            elif words == ["none"]:
                fields[key] = ()
            elif any(w not in ACTIONS for w in words) or len(set(words)) != len(words) \
                    or words != sorted(words, key=ACTIONS.index):
                bad(value, key, f"invalid chain {' '.join(words)!r} (allowed: "
                    f"{', '.join(ACTIONS)} in that order, or none)")
            else:
                fields[key] = tuple(words)
        elif key == "skip_start":
            if not isinstance(scalar, bool):
                bad(value, key, "must be true or false")
            else:
                fields[key] = scalar
        else:
            minimum = -1_000_000 if key == "order" else 0
            if not isinstance(scalar, int) or isinstance(scalar, bool) or scalar < minimum:
                allowed = "integers" if key == "order" else "integers >= 0"
                bad(value, key, f"invalid value {scalar!r} (allowed: {allowed})")
            else:
                fields[key] = scalar
    if "match" not in fields:
        if ok:
            problems.append(Problem(path, _line(node), "match", "every rule needs 'match'"))
        return None
    if not ok:
        return None
    return Rule(
        fields["match"], fields.get("uri"),
        GuestPolicy(actions=fields.get("actions"), group=fields.get("order", 0),
                    shutdown_timeout=fields.get("shutdown_timeout"),
                    start_delay=fields.get("start_delay"),
                    skip_start=fields.get("skip_start", False)),
        _line(node))
