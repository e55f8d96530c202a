"""Fault injection: the ``faults:`` rules of the host YAML (see the package docstring).

Kept apart from the host simulation: a rule picks virsh calls and makes them misbehave;
the host itself behaves as described.
"""

from __future__ import annotations

import os
import time

from virtguests.testing.fakevirsh.commandline import COMMANDS
from virtguests.testing.fakevirsh.errors import Failure, bad_host
from virtguests.testing.fakevirsh.jsonfile import dumps
from virtguests.testing.fakevirsh.rendering import (
    ARG,
    CMD,
    NAME,
    SOCK,
    render_table,
    socket_of,
    template_from_recording,
)
from virtguests.testing.fakevirsh.state import find_guest, is_uuid, normalize_uuid
from virtguests.testing.recordings import load_yaml

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import Any, Optional

    from virtguests.testing.fakevirsh.commandline import VirshCall
    from virtguests.testing.fakevirsh.state import HostClock

FAULT_ACTIONS = ("fail", "hang", "slow", "garbage", "signal")
FAULT_SELECTORS = {"cmd", "options", "uri", "guest", "nth", "after", "p", "seed", "action"}
FAULT_PARAMS = {"fail": "error", "slow": "seconds", "garbage": "output", "signal": "signal"}
FAULT_ERRORS = {
    "connect": "nohost-connect",
    "internal": "test-shutdown-not-running",
    "invalid": "qemu-managedsave-not-running",
    "unsupported": "test-domjobinfo-running",
    "missing": "test-domid-missing-uuid",
}
GARBAGE = ("binary", "truncated", "not-uuid")
FAULT_SIGNALS = ("TERM", "INT")
BINARY_GARBAGE = b"\xff\xfe\x00\x80\xc0\x1b[2J\xef\xbf virsh \xff\n".decode(
    "utf-8", "surrogateescape")
_MASK64 = (1 << 64) - 1


def _string_list(rule: dict[str, Any], key: str, where: str) -> Optional[list[str]]:
    value = rule.get(key)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, (str, int)) for item in items):
        bad_host(f"{where}: {key} must be a string or a list of strings")
    return [str(item) for item in items]


def _integer(rule: dict[str, Any], key: str, where: str, least: int) -> Optional[int]:
    value = rule.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        bad_host(f"{where}: {key} must be an integer >= {least}")
    return value


def _recorded_error(name: str, fixtures: str, where: str) -> dict[str, Any]:
    """A recorded virsh failure, as a template (the way the host's messages are made)."""
    stem = FAULT_ERRORS.get(name, name)
    path = os.path.join(fixtures, stem + ".yaml")
    if "/" in stem or not os.path.exists(path):
        bad_host(f"{where}: error {name!r}: no recording {path} "
                 f"(or one of {sorted(FAULT_ERRORS)})")
    recording = load_yaml(path)
    if not recording.get("exit") or not recording.get("stderr"):
        bad_host(f"{where}: error {name!r}: the recording {stem} is not a failure")
    words = [arg for arg in recording["argv"] if not arg.startswith("-")]
    subjects = recording.get("subjects") or []
    return {
        "stem": stem,
        "stderr": template_from_recording(recording, "stderr"),
        "newline": recording.get("stdout") == "\n",
        "arg": words[1] if len(words) > 1 else "",
        "name": subjects[0]["name"] if len(subjects) == 1 else "",
    }


def build_faults(raw: Any, fixtures: str, uris: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Validate the ``faults:`` rules; compile each ``fail`` error from its recording."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        bad_host("faults: expected a list of rules")
    rules = []
    for index, rule in enumerate(raw):
        where = f"faults rule {index + 1}"
        if not isinstance(rule, dict):
            bad_host(f"{where}: expected a mapping")
        action = rule.get("action")
        if action not in FAULT_ACTIONS:
            bad_host(f"{where}: action must be one of {list(FAULT_ACTIONS)}")
        allowed = FAULT_SELECTORS | ({FAULT_PARAMS[action]} if action in FAULT_PARAMS else set())
        unknown = set(rule) - allowed
        if unknown:
            bad_host(f"{where}: unknown keys for action {action!r}: {sorted(map(str, unknown))}")
        commands = _string_list(rule, "cmd", where)
        if commands == ["*"]:
            commands = None
        for command in commands or []:
            if command not in COMMANDS and command != "echo":
                bad_host(f"{where}: cmd {command!r} is not a simulated subcommand")
        for uri in _string_list(rule, "uri", where) or []:
            if uri not in uris:
                bad_host(f"{where}: uri {uri!r} is not in the host file")
        options = _string_list(rule, "options", where)
        guests = _string_list(rule, "guest", where)
        probability = rule.get("p")
        if probability is not None and (
                isinstance(probability, bool) or not isinstance(probability, (int, float))
                or not 0 <= probability <= 1):
            bad_host(f"{where}: p must be a number from 0 to 1")
        compiled: dict[str, Any] = {
            "index": index,
            "action": action,
            "cmd": commands,
            "options": (sorted(option.lstrip("-") for option in options)
                        if options is not None else None),
            "uri": _string_list(rule, "uri", where),
            "guest": ([normalize_uuid(name) if is_uuid(name) else name for name in guests]
                      if guests else None),
            "nth": _integer(rule, "nth", where, 1),
            "after": _integer(rule, "after", where, 0),
            "p": None if probability is None else float(probability),
            "seed": _integer(rule, "seed", where, 0) or 0,
        }
        if action == "fail":
            compiled["error"] = _recorded_error(str(rule.get("error", "connect")), fixtures,
                                                where)
        elif action == "slow":
            seconds = rule.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                    or seconds < 0:
                bad_host(f"{where}: slow needs seconds >= 0")
            compiled["seconds"] = float(seconds)
        elif action == "garbage":
            compiled["output"] = rule.get("output", "binary")
            if compiled["output"] not in GARBAGE:
                bad_host(f"{where}: output must be one of {list(GARBAGE)}")
        elif action == "signal":
            compiled["signal"] = str(rule.get("signal", "TERM")).upper().removeprefix("SIG")
            if compiled["signal"] not in FAULT_SIGNALS:
                bad_host(f"{where}: signal must be one of {list(FAULT_SIGNALS)}")
        rules.append(compiled)
    return {"rules": rules, "counts": {}}


def _chance(*parts: object) -> float:
    """A number in [0, 1) fixed by *parts*: the same in every process (no hash seed)."""
    hashed = 0xCBF29CE484222325  # FNV-1a, then the splitmix64 finaliser
    for byte in "|".join(map(str, parts)).encode("utf-8", "surrogateescape"):
        hashed = ((hashed ^ byte) * 0x100000001B3) & _MASK64
    hashed ^= hashed >> 30
    hashed = (hashed * 0xBF58476D1CE4E5B9) & _MASK64
    hashed ^= hashed >> 27
    hashed = (hashed * 0x94D049BB133111EB) & _MASK64
    hashed ^= hashed >> 31
    return hashed / 2.0**64


def _subject(uri_state: dict[str, Any], call: VirshCall) -> Optional[dict[str, Any]]:
    if call.domain is None or not call.lookup:
        return None
    return find_guest(uri_state, call.domain, call.lookup)


def _rule_matches(rule: dict[str, Any], call: VirshCall, uri_key: str,
                  guest: Optional[dict[str, Any]]) -> bool:
    if rule["cmd"] is not None and call.command not in rule["cmd"]:
        return False
    if rule["options"] is not None and sorted(call.options) != rule["options"]:
        return False
    if rule["uri"] is not None and uri_key not in rule["uri"]:
        return False
    if rule["guest"] is not None:
        if call.domain is None:
            return False
        named = {call.domain} if guest is None else {call.domain, guest["name"], guest["uuid"]}
        if not named & set(rule["guest"]):
            return False
    return True


class Injected:
    """The fault chosen for one command (or none), applied at each stage of the call."""

    def __init__(self, rule: Optional[dict[str, Any]] = None,
                 guest: Optional[dict[str, Any]] = None, counted: bool = False,
                 dispatched: float = 0.0) -> None:
        self.rule = rule
        self.dispatched = dispatched
        """The fake's time at dispatch (the journal's ``now``)."""
        self.action: Optional[str] = rule["action"] if rule else None
        self.guest = guest
        self.counted = counted  # counters changed: the state must be saved

    @property
    def hang(self) -> bool:
        return self.action == "hang"

    def act(self, call: VirshCall, uri_state: dict[str, Any]) -> None:
        """At dispatch: ``fail`` raises the recorded error, ``signal`` is sent now."""
        if self.rule is None:
            return
        if self.action == "fail":
            error = self.rule["error"]
            # a migrate's connection errors are its destination's
            uri = call.values.get("desturi") or uri_state["uri"]
            text = (error["stderr"].replace(ARG, call.domain or error["arg"])
                    .replace(NAME, self.guest["name"] if self.guest else error["name"])
                    .replace(SOCK, socket_of(uri)).replace(CMD, call.command))
            raise Failure(text, extra_newline=error["newline"])
        if self.action == "signal":
            call.process.signal_parent(self.rule["signal"])

    def wait(self, clock: HostClock) -> None:
        """``slow``: the answer comes this many (virtual) seconds after the dispatch
        (not after the clock is read again: a test moves a virtual clock once the
        journal shows the dispatch)."""
        if self.rule is not None and self.action == "slow":
            clock.wait_until(self.dispatched + self.rule["seconds"])

    def output(self, text: str, uri_state: dict[str, Any]) -> str:
        """``garbage``: what the command prints instead of *text* (exit status 0)."""
        if self.rule is None or self.action != "garbage":
            return text
        kind = self.rule["output"]
        if kind == "binary":
            return BINARY_GARBAGE
        if kind == "not-uuid":  # the header of the recorded table form, then the output
            return render_table(["Id", "Name", "State"], [], False).splitlines(True)[0] + text
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        if not line:
            guests = uri_state["guests"]
            line = guests[0]["uuid"] if guests else normalize_uuid("0" * 32)
        return line[: max(1, min(len(line) // 2, 18))]


NO_FAULT = Injected()


def inject(state: dict[str, Any], call: VirshCall, uri_key: str, uri_state: dict[str, Any],
           now: float) -> Injected:
    """The fault layer's one hook, under the state lock as a command is dispatched:
    journal it, count it against every rule it matches, pick the fault."""
    faults = state.get("faults")
    environ = call.process.environ
    journal = environ.get("VIRTGUESTS_FAKE_JOURNAL")
    if not faults and not journal:
        return NO_FAULT
    guest = _subject(uri_state, call)
    chosen: Optional[dict[str, Any]] = None
    counted = False
    if faults and environ.get("VIRTGUESTS_FAKE_FAULTS", "").lower() != "off":
        counts = faults["counts"]
        for rule in faults["rules"]:
            index = rule["index"]
            if index in call.counted_rules or not _rule_matches(rule, call, uri_key, guest):
                continue
            call.counted_rules.add(index)
            counted = True
            matched = counts[str(index)] = counts.get(str(index), 0) + 1
            subject = guest["uuid"] if guest is not None else call.domain or ""
            per_key = f"{index}|{call.command}|{uri_key}|{subject}"
            matched_here = counts[per_key] = counts.get(per_key, 0) + 1
            if chosen is not None:
                continue
            if rule["nth"] is not None and matched != rule["nth"]:
                continue
            if rule["after"] is not None and matched <= rule["after"]:
                continue
            if rule["p"] is not None and _chance(
                    rule["seed"], index, call.command, uri_key, subject, matched_here
            ) >= rule["p"]:
                continue
            chosen = rule
    injected = (Injected(chosen, guest, counted, now) if chosen is not None or counted
                else NO_FAULT)
    if journal:
        job = guest["job"]["op"] if guest is not None and guest["job"] is not None else None
        line = dumps({"t": time.time(), "spawned": call.process.spawned(), "now": now,
                      "pid": os.getpid(), "call": call.process.call_id(), "uri": uri_key,
                      "cmd": call.command, "argv": call.argv,
                      "guest": guest["uuid"] if guest is not None else None,
                      "state": guest["state"] if guest is not None else None, "job": job,
                      "fault": injected.action})
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    return injected
