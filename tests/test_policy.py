"""Per-guest policy: validation with FILE:LINE, matching, and its effect end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.fakehost import FakeHost
from virtguests.plan import Guest, GuestPolicy
from virtguests.policy import EXAMPLE, parse

Make = Callable[..., FakeHost]
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def test_example_is_valid() -> None:
    policy, problems = parse(EXAMPLE, "guests.yaml")
    assert problems == []
    assert policy.lookup("qemu:///system", Guest(UUID, "db-main")) == GuestPolicy(
        actions=("shutdown", "poweroff"), group=10, shutdown_timeout=120, start_delay=30)
    assert policy.lookup("qemu:///other", Guest(UUID, "db-main")) == GuestPolicy()


def test_match_by_uuid_name_and_glob_first_wins() -> None:
    policy, problems = parse(f"""
guests:
  - match: {UUID.upper()}
    actions: none
  - match: "web?"
    order: 2
  - match: "*"
    order: 1
""", "p.yaml")
    assert problems == []
    assert policy.lookup("default", Guest(UUID, "anything")).actions == ()
    assert policy.lookup("default", Guest("1" * 8 + UUID[8:], "web1")).group == 2
    assert policy.lookup("default", Guest("1" * 8 + UUID[8:], "web12")).group == 1


def test_every_problem_has_file_line_and_key() -> None:
    text = """guests:
  - match: a
    actions: hibernate
  - match: b
    order: high
    colour: blue
  - actions: shutdown
  - match: c
    skip_start: maybe
    shutdown_timeout: -5
  - match: good
    order: -1
extra: 1
"""
    policy, problems = parse(text, "/etc/virtguests/guests.yaml")
    assert [str(p) for p in problems] == [
        "/etc/virtguests/guests.yaml:13: extra: unknown key (allowed: guests)",
        "/etc/virtguests/guests.yaml:3: actions: invalid chain 'hibernate' (allowed: suspend, "
        "shutdown, poweroff in that order, or none)",
        "/etc/virtguests/guests.yaml:5: order: invalid value 'high' (allowed: integers)",
        "/etc/virtguests/guests.yaml:6: colour: unknown key (allowed: match, uri, actions, "
        "order, shutdown_timeout, start_delay, skip_start)",
        "/etc/virtguests/guests.yaml:7: match: every rule needs 'match'",
        "/etc/virtguests/guests.yaml:9: skip_start: must be true or false",
        "/etc/virtguests/guests.yaml:10: shutdown_timeout: invalid value -5 "
        "(allowed: integers >= 0)",
    ]
    assert [r.match for r in policy.rules] == ["good"]


def test_broken_yaml_is_one_located_problem() -> None:
    _, problems = parse("guests:\n  - match: [unclosed\n", "p.yaml")
    assert len(problems) == 1 and str(problems[0]).startswith("p.yaml:")


def host_with_policy(fake_host: Make, tmp_path: Path, rules: str, config: str = "") -> FakeHost:
    policy_file = tmp_path / "guests.yaml"
    policy_file.write_text(rules)
    return fake_host({"uris": {"default": {"guests": [
        {"name": "db", "shutdown_seconds": 0.2}, {"name": "app"}, {"name": "web"},
        {"name": "pet", "shutdown_seconds": 0.1}]}}},
        f"GUEST_POLICY={policy_file}\n{config}")


RULES = """guests:
  - match: db
    order: 0
    actions: shutdown
    shutdown_timeout: 30
  - match: app
    order: 1
    start_delay: 3
  - match: web
    order: 2
  - match: pet
    actions: none
    skip_start: true
"""


def test_order_groups_and_per_guest_actions_end_to_end(fake_host: Make, tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, RULES)
    run = host.run("stop")
    assert run.code == 0, run.err
    acted = [ln for ln in run.lines if ln.endswith(("done", "complete."))]
    assert acted == ["Suspending web: done", "Suspending app: done",
                     "Shutdown of guest db complete."]
    assert host.active() == {"pet"}
    assert host.list_file.read_text().split()[1:] == [host.uuid(n) for n in ("db", "app", "web")]
    run, clock = host.run_virtual("start")
    assert [ln for ln in run.lines if ln.endswith("done")] == [
        "Resuming guest db: done", "Resuming guest app: done", "Resuming guest web: done"]
    assert 3 in clock.slept
    assert host.active() == {"pet", "db", "app", "web"}


def test_plan_shows_each_guest_without_changing_anything(fake_host: Make,
                                                         tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, RULES)
    run = host.run("plan")
    assert run.code == 0, run.err
    virsh = host.bin / "virsh"
    assert run.lines[0] == "default:"
    rows = [ln.split() for ln in run.lines[2:]]
    assert [r[0] for r in rows] == ["web", "app", "db", "pet"]
    assert run.lines[1].split() == ["GUEST", "ORDER", "ACTIONS", "TIMEOUT", "COMMAND"]
    assert f"{virsh} shutdown {host.uuid('db')}" in run.out
    assert "left running by policy" in run.out
    doc = json.loads(host.run("--json", "plan", "stop").out)
    db = next(g for g in doc["uris"][0]["guests"] if g["name"] == "db")
    assert (db["actions"], db["order"], db["timeout"]) == (["shutdown"], 0, 30)
    assert host.active() == {"db", "app", "web", "pet"}
    assert set(host.verbs()) == {"list", "echo"}
    assert not host.list_file.exists()
    host.run("stop")
    start = json.loads(host.run("--json", "plan", "start").out)
    assert [g["name"] for g in start["uris"][0]["guests"]] == ["db", "app", "web"]


def test_report_after_a_run(fake_host: Make, tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, RULES)
    assert host.run("report").out.startswith("no run recorded yet")
    host.run("stop")
    run = host.run("report")
    assert run.code == 0 and run.lines[0] == "last run: stop, exit status 0"
    table = {ln.split()[0]: ln.split() for ln in run.lines[2:]}
    assert table["db"][2:4] == ["shut", "off"] and table["web"][2] == "saved"
    doc = json.loads(host.run("--json", "report").out)
    assert {g["name"]: g["outcome"] for g in doc["guests"]} == {
        "web": "saved", "app": "saved", "db": "shut off"}


def test_invalid_policy_refuses_start_but_stop_still_protects(fake_host: Make,
                                                              tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, "guests:\n  - match: web\n    order: x\n")
    run = host.run("stop")
    assert run.code == 6 and "guests.yaml:3: order: invalid value 'x'" in run.err
    assert host.managed_saved() == {"db", "app", "web", "pet"}
    assert host.run("start").code == 6
    assert host.run("check").code == 6


def test_missing_named_policy_file(fake_host: Make, tmp_path: Path) -> None:
    host = fake_host({"uris": {"default": {"guests": []}}},
                     f"GUEST_POLICY={tmp_path / 'nope.yaml'}\n")
    run = host.run("check")
    assert run.code == 6 and "nope.yaml: GUEST_POLICY: policy file does not exist" in run.err
