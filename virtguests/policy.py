"""Per-guest policy: a YAML file of rules matched by name, UUID or glob.

Like Proxmox's ``startup: order=,up=,down=`` or ESXi's per-VM start/stop
settings: a rule can change a guest's shutdown action chain, its order group
(stopped highest first, started lowest first), its shutdown timeout, a delay
after starting it, or skip it at start.  The first matching rule wins; guests
no rule matches follow the sysconfig.  Errors carry ``FILE:LINE``.

The file is read as data, strictly: YAML tags, anchors and aliases are
refused (no ``!!python/...``, no billion laughs), nesting is bounded, and
every value is converted here by rules written for it, never by a YAML
resolver (``010``, ``1_000``, ``yes`` and ``!!int ten`` are not integers or
booleans).  A rule keeps its valid fields when one is invalid, so a typo in
``actions`` never makes ``start`` forget that rule's ``skip_start``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from virtguests import files
from virtguests.config import (
    CHAIN_WORDS,
    POLICY_KEYS,
    YEAR,
    Invalid,
    Problem,
    ifs_split,
    strict_int,
)
from virtguests.model import STOP_CHAIN, Action, Guest, GuestPolicy, PolicyLookup

DEFAULT_PATH = Path("/etc/virtguests/guests.yaml")

EXAMPLE = """\
guests:
  - match: "db-*"            # guest name glob, exact name, or UUID
    uri: qemu:///system      # optional: only on this URI
    actions: shutdown poweroff   # or: migrate | suspend | shutdown | poweroff | none, a list
    order: 10                # stop highest first, start lowest first (default 0)
    shutdown_timeout: 120
    start_delay: 30          # seconds to wait after starting this guest
    skip_start: false
  - match: "web-*"
    actions: migrate suspend     # live-migrate to a peer (MIGRATE_URIS); else save
    migrate_to: qemu+ssh://peer1/system   # optional: only these peers, or a list
"""

_KEYS = POLICY_KEYS
MAX_DEPTH = 32
"""YAML nested deeper than this is refused (a policy file needs four levels)."""
ORDER_LIMIT = 1_000_000


@dataclass(frozen=True)
class Rule:
    match: str
    uri: Optional[str]
    policy: GuestPolicy
    line: int

    def matches(self, uri: str, guest: Guest, also: Optional[str] = None) -> bool:
        """*also*: the canonical form of *uri* (``default`` resolved), if known."""
        if self.uri is not None and self.uri != uri and (also is None or self.uri != also):
            return False
        if self.match.lower() == guest.uuid:
            return True
        return fnmatch.fnmatchcase(guest.name, self.match)


@dataclass(frozen=True)
class Policy:
    path: Optional[Path]
    rules: tuple[Rule, ...] = ()
    canonical: Mapping[str, str] = field(default_factory=dict)
    """URI as configured -> what ``virsh uri`` says it is (``default`` -> ``qemu:///system``),
    so that a rule's ``uri:`` matches guests listed through ``default``."""

    def rule_for(self, uri: str, guest: Guest) -> Optional[Rule]:
        also = self.canonical.get(uri)
        return next((r for r in self.rules if r.matches(uri, guest, also)), None)

    def find(self, uri: str, guest: Guest) -> GuestPolicy:
        rule = self.rule_for(uri, guest)
        return rule.policy if rule is not None else GuestPolicy()

    @property
    def lookup(self) -> Lookup:
        """This policy as a ``model.PolicyLookup``."""
        return Lookup(self)

    @property
    def has_uri_rules(self) -> bool:
        return any(rule.uri is not None for rule in self.rules)

    def resolved(self, canonical: Mapping[str, str]) -> Policy:
        return replace(self, canonical={**self.canonical, **canonical})


class Lookup:
    """A PolicyLookup that knows its Policy, so `default` can be resolved once known."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, uri: str, guest: Guest) -> GuestPolicy:
        return self.policy.find(uri, guest)


def wants_canonical(lookup: PolicyLookup, uri: str) -> bool:
    """Whether knowing what *uri* really is could change a rule's match.

    Only ``default`` needs it, and only when some rule names a ``uri:``; then
    ``virsh uri`` joins the listing that is run anyway.
    """
    return uri == "default" and isinstance(lookup, Lookup) and lookup.policy.has_uri_rules


def resolving(lookup: PolicyLookup, canonical: Mapping[str, Optional[str]]) -> PolicyLookup:
    """*lookup*, with rules that name a URI also matching the URIs that resolve to it."""
    known = {uri: real for uri, real in canonical.items() if real and real != uri}
    if not known or not isinstance(lookup, Lookup):
        return lookup
    return Lookup(lookup.policy.resolved(known))


def load(explicit: Optional[str]) -> tuple[Policy, list[Problem]]:
    """Read the policy file; invalid rules are reported and left out, valid ones kept."""
    path = Path(explicit) if explicit else DEFAULT_PATH
    try:
        data = files.read(path, cap=files.CONFIG_CAP)
    except FileNotFoundError:
        if explicit:
            return Policy(None), [Problem(str(path), 0, "GUEST_POLICY",
                                          "policy file does not exist")]
        return Policy(None), []
    except files.Unreadable as err:
        return Policy(None), [Problem(str(path), 0, "", f"cannot read: {err}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return Policy(None), [Problem(str(path), line, "", "not valid UTF-8 (allowed: UTF-8 "
                                                            "text)")]
    return parse(text, str(path))


# -- YAML, read as plain data ---------------------------------------------------------


@dataclass
class _Node:
    kind: str  # "scalar", "seq", "map" or "alias"
    line: int
    tag: Optional[str] = None
    anchor: Optional[str] = None
    text: str = ""
    plain: bool = False
    children: list[_Node] = field(default_factory=list)
    """A sequence's items; a mapping's keys and values, alternating."""

    def pairs(self) -> list[tuple[_Node, _Node]]:
        return list(zip(self.children[0::2], self.children[1::2]))

    @property
    def null(self) -> bool:
        return self.kind == "scalar" and self.plain and self.text in ("", "~", "null", "Null",
                                                                       "NULL")


def _tree(text: str, path: str, problems: list[Problem]) -> Optional[_Node]:
    """The document as plain nodes, built from parser events without recursion.

    Aliases stay leaves (never expanded), so no alias bomb can grow here; the
    depth is checked as the events come, so no nesting can exhaust the stack.
    LibYAML's parser when PyYAML has it (25 times faster on a large file).
    """
    import yaml

    stack: list[_Node] = []
    root: Optional[_Node] = None
    documents = 0
    try:
        for event in yaml.parse(text, Loader=_loader()):
            mark = event.start_mark
            line = int(mark.line) + 1 if mark is not None else 1
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    problems.append(Problem(path, line, "", "more than one YAML document "
                                                            "(allowed: one)"))
                    return None
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                stack.pop()
                continue
            if isinstance(event, yaml.AliasEvent):
                node = _Node("alias", line, anchor=event.anchor)
            elif isinstance(event, yaml.ScalarEvent):
                node = _Node("scalar", line, event.tag, event.anchor, event.value,
                             plain=not event.style)  # LibYAML says "", PyYAML None
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
                node = _Node(kind, line, event.tag, event.anchor)
            else:
                continue
            if stack:
                stack[-1].children.append(node)
            else:
                root = node
            if node.kind in ("seq", "map"):
                stack.append(node)
                if len(stack) > MAX_DEPTH:
                    problems.append(Problem(path, line, "", f"nested more than {MAX_DEPTH} "
                                                            "levels deep (allowed: a list of "
                                                            "rules)"))
                    return None
    except yaml.YAMLError as err:
        problems.append(Problem(path, _error_line(err, text), "", f"not valid YAML: {err}"))
        return None
    return root


def _loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _error_line(err: Exception, text: str) -> int:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(err, "position", None)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 0


def _tag_text(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") \
        else tag


def _plain_data(node: _Node) -> Optional[str]:
    """Why *node* is not plain data (a tag, an anchor, an alias), or None."""
    if node.kind == "alias":
        return f"YAML alias *{node.anchor} is not allowed (write the value out)"
    if node.tag is not None:
        return f"YAML tag {_tag_text(node.tag)} is not allowed (write the plain value)"
    if node.anchor is not None:
        return f"YAML anchor &{node.anchor} is not allowed (write the value out)"
    return None


# -- rules ----------------------------------------------------------------------------


def parse(text: str, path: str) -> tuple[Policy, list[Problem]]:
    problems: list[Problem] = []
    root = _tree(text, path, problems)
    if root is None or root.null:
        return Policy(Path(path)), problems
    items = _guest_list(root, path, problems)
    rules = [rule for node in items if (rule := _rule(node, path, problems)) is not None]
    problems.sort(key=lambda p: p.line)
    return Policy(Path(path), tuple(rules)), problems


def _guest_list(root: _Node, path: str, problems: list[Problem]) -> Sequence[_Node]:
    why = _plain_data(root)
    if why is not None or root.kind != "map":
        problems.append(Problem(path, root.line, "", why or "expected a mapping with a "
                                                            "'guests' list"))
        return []
    found: Sequence[_Node] = []
    seen: set[str] = set()
    for key, value in root.pairs():
        name = key.text if key.kind == "scalar" else ""
        why = _plain_data(key) or _plain_data(value)
        if key.kind != "scalar" or name != "guests":
            problems.append(Problem(path, key.line, name, "unknown key (allowed: guests)"))
        elif name in seen:
            problems.append(Problem(path, key.line, name, "given twice (allowed: once)"))
            found = []
        elif why is not None:
            problems.append(Problem(path, value.line, name, why))
        elif value.kind != "seq":
            problems.append(Problem(path, value.line, "guests", "expected a list of rules"))
        else:
            found = value.children
        seen.add(name)
    return found


def _string(node: _Node) -> str:
    if node.kind != "scalar" or node.null or not node.text:
        raise Invalid("must be a non-empty string")
    return node.text


def _integer(node: _Node, minimum: int, maximum: int) -> int:
    if node.kind != "scalar" or not node.plain:
        allowed = f"integers {minimum} to {maximum}" + (" (one year)" if maximum == YEAR else "")
        what = "a quoted string" if node.kind == "scalar" else "a list or mapping"
        raise Invalid(f"must be a plain integer, not {what} (allowed: {allowed})")
    return strict_int(node.text, minimum, maximum)


_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")


def _boolean(node: _Node) -> bool:
    if node.kind == "scalar" and node.plain and node.text in _TRUE + _FALSE:
        return node.text in _TRUE
    shown = repr(node.text) if node.kind == "scalar" else "a list or mapping"
    raise Invalid(f"must be true or false, got {shown} (allowed: true, false; not yes/no, "
                  "which YAML versions read differently)")


def _actions(node: _Node) -> tuple[Action, ...]:
    allowed = f"{CHAIN_WORDS} in that order, or none"
    if node.kind == "scalar" and not node.null:
        words = ifs_split(node.text)
    elif node.kind == "seq":
        words = []
        for item in node.children:
            why = _plain_data(item)
            if why is not None:
                raise Invalid(why)
            if item.kind != "scalar" or item.null:
                raise Invalid(f"must be a word or a list of words (allowed: {allowed})")
            words.append(item.text)
    else:
        raise Invalid(f"must be a word or a list (allowed: {CHAIN_WORDS}, none)")
    if not words:
        raise Invalid(f"must be a word or a list (allowed: {CHAIN_WORDS}, none)")
    if words == [Action.NONE]:
        return ()
    if any(w not in STOP_CHAIN for w in words) or len(set(words)) != len(words) \
            or words != sorted(words, key=STOP_CHAIN.index):
        raise Invalid(f"invalid chain {' '.join(words)!r} (allowed: {allowed})")
    return tuple(Action(word) for word in words)


_CONVERT: dict[str, Any] = {
    "match": _string,
    "uri": _string,
    "actions": _actions,
    "order": lambda node: _integer(node, -ORDER_LIMIT, ORDER_LIMIT),
    "shutdown_timeout": lambda node: _integer(node, 0, YEAR),
    "start_delay": lambda node: _integer(node, 0, YEAR),
    "skip_start": _boolean,
    "migrate_to": lambda node: _peers(node),
}


def _peers(node: _Node) -> tuple[str, ...]:
    """``migrate_to``: one URI or a list of URIs (each also in MIGRATE_URIS, or never
    used: see ``unknown_peers``)."""
    allowed = "(allowed: a URI from MIGRATE_URIS, or a list of them)"
    items = node.children if node.kind == "seq" else [node]
    peers: list[str] = []
    for item in items:
        why = _plain_data(item)
        if why is not None:
            raise Invalid(why)
        if item.kind != "scalar" or item.null or not item.text.strip():
            raise Invalid(f"must be a URI or a list of URIs {allowed}")
        if item.text.startswith("-") or len(ifs_split(item.text)) != 1:
            raise Invalid(f"not a URI: {item.text[:80]!r} {allowed}")
        peers.append(item.text.strip())
    if not peers:
        raise Invalid(f"an empty list {allowed}")
    return tuple(dict.fromkeys(peers))


def unknown_peers(policy: Policy, migrate_uris: Sequence[str]) -> list[str]:
    """Warnings for rules that name peers MIGRATE_URIS does not list, or a ``migrate``
    action with no peers at all: MIGRATE_URIS is the admin's list of hosts guests may
    go to, so such a peer is never used (a guest with none left stays on its chain's
    next step)."""
    path = str(policy.path or DEFAULT_PATH)
    warnings: list[str] = []
    for rule in policy.rules:
        if rule.policy.migrate_to:
            for peer in rule.policy.migrate_to:
                if peer not in migrate_uris:
                    warnings.append(str(Problem(path, rule.line, "migrate_to",
                                                f"{peer} is not in MIGRATE_URIS: never used")))
        if rule.policy.actions and Action.MIGRATE in rule.policy.actions \
                and not migrate_uris:
            warnings.append(str(Problem(path, rule.line, "actions", "migrate needs peers, but "
                                        "MIGRATE_URIS is empty: the chain's next step is "
                                        "taken")))
    return warnings


def _rule(node: _Node, path: str, problems: list[Problem]) -> Optional[Rule]:
    """One rule; an invalid field is reported and left to the config, the rest is kept.

    Without a valid ``match`` or with an invalid ``uri``, the rule cannot say
    which guests it is about: it is left out whole.
    """
    why = _plain_data(node)
    if why is not None or node.kind != "map":
        problems.append(Problem(path, node.line, "", why or "a rule must be a mapping"))
        return None
    fields: dict[str, Any] = {}
    failed: set[str] = set()
    given: set[str] = set()
    for key_node, value in node.pairs():
        key = key_node.text if key_node.kind == "scalar" else ""
        why = _plain_data(key_node)
        if key_node.kind != "scalar" or why is not None:
            problems.append(Problem(path, key_node.line, "", why or "a key must be a word"))
            failed.add(key)
            continue
        if key not in _CONVERT:
            problems.append(Problem(path, key_node.line, key,
                                    f"unknown key (allowed: {', '.join(_KEYS)})"))
            continue
        if key in given:
            problems.append(Problem(path, key_node.line, key, "given twice in one rule "
                                                              "(allowed: once)"))
            fields.pop(key, None)
            failed.add(key)
            continue
        given.add(key)
        try:
            why = _plain_data(value)
            if why is not None:
                raise Invalid(why)
            fields[key] = _CONVERT[key](value)
        except Invalid as err:
            problems.append(Problem(path, value.line, key, str(err)))
            failed.add(key)
    if "match" not in fields:
        if "match" not in failed:
            problems.append(Problem(path, node.line, "match", "every rule needs 'match'"))
        return None
    if "uri" in failed:
        return None
    return Rule(
        fields["match"], fields.get("uri"),
        GuestPolicy(actions=fields.get("actions"), order=fields.get("order", 0),
                    shutdown_timeout=fields.get("shutdown_timeout"),
                    start_delay=fields.get("start_delay"),
                    skip_start=fields.get("skip_start", False),
                    migrate_to=fields.get("migrate_to")),
        node.line)
