"""Per-guest policy: validation with FILE:LINE, matching, and its effect end to end."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtguests.model import Action, Guest, GuestPolicy
from virtguests.policy import EXAMPLE, load, parse, resolving, wants_canonical
from virtguests.testing import FakeHost, Run, run_inprocess

Make = Callable[..., FakeHost]
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def test_example_is_valid() -> None:
    policy, problems = parse(EXAMPLE, "guests.yaml")
    assert problems == []
    assert policy.lookup("qemu:///system", Guest(UUID, "db-main")) == GuestPolicy(
        actions=(Action.SHUTDOWN, Action.POWEROFF), order=10, shutdown_timeout=120, start_delay=30)
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
    assert policy.lookup("default", Guest("1" * 8 + UUID[8:], "web1")).order == 2
    assert policy.lookup("default", Guest("1" * 8 + UUID[8:], "web12")).order == 1


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
        "/etc/virtguests/guests.yaml:3: actions: invalid chain 'hibernate' (allowed: migrate, "
        "suspend, shutdown, poweroff in that order, or none)",
        "/etc/virtguests/guests.yaml:5: order: not an integer: 'high' (allowed: integers "
        "-1000000 to 1000000)",
        "/etc/virtguests/guests.yaml:6: colour: unknown key (allowed: match, uri, actions, "
        "order, shutdown_timeout, start_delay, skip_start, migrate_to)",
        "/etc/virtguests/guests.yaml:7: match: every rule needs 'match'",
        "/etc/virtguests/guests.yaml:9: skip_start: must be true or false, got 'maybe' "
        "(allowed: true, false; not yes/no, which YAML versions read differently)",
        "/etc/virtguests/guests.yaml:10: shutdown_timeout: must be equal or greater than 0, "
        "got -5 (allowed: integers 0 to 31536000 (one year))",
        "/etc/virtguests/guests.yaml:13: extra: unknown key (allowed: guests)",
    ]
    # a rule keeps its valid fields; only one without 'match' is left out
    assert [r.match for r in policy.rules] == ["a", "b", "c", "good"]
    assert all(r.policy == GuestPolicy() for r in policy.rules[:3])


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


def here(host: FakeHost, *args: str) -> Run:
    """One run of virtguests and the fake in this process, on virtual time."""
    return run_inprocess(host, *args)[0]


def test_order_groups_and_per_guest_actions_end_to_end(fake_host: Make, tmp_path: Path) -> None:
    """End to end: stop as a process, as systemd runs it; the rest of this file's
    commands run in-process."""
    host = host_with_policy(fake_host, tmp_path, RULES)
    run = host.run("stop")
    assert run.code == 0, run.err
    acted = [ln for ln in run.lines if ln.endswith(("done", "complete."))]
    assert acted == ["Suspending web: done", "Suspending app: done",
                     "Shutdown of guest db complete."]
    assert host.active() == {"pet"}
    assert host.list_file.read_text().split()[1:] == [host.uuid(n) for n in ("db", "app", "web")]
    run, clock = run_inprocess(host, "start")
    assert [ln for ln in run.lines if ln.endswith("done")] == [
        "Resuming guest db: done", "Resuming guest app: done", "Resuming guest web: done"]
    assert 3 in clock.slept
    assert host.active() == {"pet", "db", "app", "web"}


def test_plan_shows_each_guest_without_changing_anything(fake_host: Make,
                                                         tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, RULES)
    run = here(host, "plan")
    assert run.code == 0, run.err
    virsh = host.bin / "virsh"
    assert run.lines[0] == "default:"
    rows = [ln.split() for ln in run.lines[2:]]
    assert [r[0] for r in rows] == ["web", "app", "db", "pet"]
    assert run.lines[1].split() == ["GUEST", "ORDER", "ACTIONS", "TIMEOUT", "COMMAND"]
    assert f"{virsh} shutdown {host.uuid('db')}" in run.out
    assert "left running by policy" in run.out
    doc = json.loads(here(host, "--json", "plan", "stop").out)
    db = next(g for g in doc["uris"][0]["guests"] if g["name"] == "db")
    assert (db["actions"], db["order"], db["timeout"]) == (["shutdown"], 0, 30)
    assert host.active() == {"db", "app", "web", "pet"}
    assert set(host.verbs()) == {"list", "echo"}
    assert not host.list_file.exists()
    here(host, "stop")
    start = json.loads(here(host, "--json", "plan", "start").out)
    assert [g["name"] for g in start["uris"][0]["guests"]] == ["db", "app", "web"]


def test_report_after_a_run(fake_host: Make, tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, RULES)
    run = here(host, "report")
    assert run.code == 1 and run.out.startswith("no run recorded yet")
    here(host, "stop")
    run = here(host, "report")
    assert run.code == 0 and run.lines[0] == "last run: stop, exit status 0"
    table = {ln.split()[0]: ln.split() for ln in run.lines[2:]}
    assert table["db"][2:4] == ["shut", "off"] and table["web"][2] == "saved"
    doc = json.loads(here(host, "--json", "report").out)
    assert {g["name"]: g["outcome"] for g in doc["guests"]} == {
        "web": "saved", "app": "saved", "db": "shut off"}


def test_invalid_policy_refuses_start_but_stop_still_protects(fake_host: Make,
                                                              tmp_path: Path) -> None:
    host = host_with_policy(fake_host, tmp_path, "guests:\n  - match: web\n    order: x\n")
    run = here(host, "stop")
    assert run.code == 6 and "guests.yaml:3: order: not an integer: 'x'" in run.err
    assert host.managed_saved() == {"db", "app", "web", "pet"}
    assert here(host, "start").code == 6
    assert here(host, "check").code == 6


def test_missing_named_policy_file(fake_host: Make, tmp_path: Path) -> None:
    host = fake_host({"uris": {"default": {"guests": []}}},
                     f"GUEST_POLICY={tmp_path / 'nope.yaml'}\n")
    run = here(host, "check")
    assert run.code == 6 and "nope.yaml: GUEST_POLICY: policy file does not exist" in run.err


# -- bad files are refused, never followed (issue 10, item 4) ---------------------------


@pytest.fixture(params=["libyaml", "pure"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test below runs with LibYAML's parser and with PyYAML's own (the fallback)."""
    import yaml

    from virtguests import policy

    if request.param == "pure":
        monkeypatch.setattr(policy, "_loader", lambda: yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML was built without LibYAML")
    return str(request.param)



@pytest.mark.parametrize("value, why", [
    ("!foo x", "YAML tag !foo is not allowed"),
    ("!!int ten", "YAML tag !!int is not allowed"),
    ("!!str 10", "YAML tag !!str is not allowed"),
    ("!!python/object/apply:os.system [id]", "YAML tag !!python/object/apply:os.system"),
    ("&a 5", "YAML anchor &a is not allowed"),
    ("010", "octal"),
    ("1_000", "not an integer"),
    ("0x10", "not an integer"),
    ("+5", "not an integer"),
    ("1e3", "not an integer"),
    ('"10"', "not a quoted string"),
    ("31536001", "must be at most 31536000 (one year)"),
    ("[1]", "not a list or mapping"),
    ("", "not an integer"),
])
def test_start_delay_values_are_refused_with_line_and_key(value: str, why: str,
                                                         yaml_parser: str) -> None:
    text = f"guests:\n  - match: web\n    skip_start: true\n    start_delay: {value}\n"
    policy, problems = parse(text, "p.yaml")
    assert [(p.line, p.key) for p in problems] == [(4, "start_delay")], problems
    assert why in problems[0].message
    [rule] = policy.rules
    assert rule.policy == GuestPolicy(skip_start=True), "the rule keeps its valid fields"


@pytest.mark.parametrize("key, value, why", [
    ("skip_start", "yes", "must be true or false"),
    ("skip_start", "'true'", "must be true or false"),
    ("skip_start", "!!bool true", "YAML tag !!bool"),
    ("order", "1000001", "must be at most 1000000"),
    ("order", "-1000001", "must be equal or greater than -1000000"),
    ("shutdown_timeout", "-0", "not an integer"),
    ("actions", "{a: b}", "must be a word or a list"),
    ("actions", "[shutdown, !x poweroff]", "YAML tag !x"),
    ("actions", "[shutdown, [poweroff]]", "must be a word or a list of words"),
    ("actions", "hibernate", "invalid chain"),
])
def test_wrong_types_are_problems_and_the_rule_keeps_its_other_fields(
        yaml_parser: str, key: str, value: str, why: str) -> None:
    text = f"guests:\n  - match: web\n    order: 3\n    {key}: {value}\n" \
        if key != "order" else f"guests:\n  - match: web\n    start_delay: 3\n    {key}: {value}\n"
    policy, problems = parse(text, "p.yaml")
    assert [(p.line, p.key) for p in problems] == [(4, key)], problems
    assert why in problems[0].message
    [rule] = policy.rules
    assert rule.policy != GuestPolicy()


def test_a_rule_without_a_valid_match_or_uri_is_left_out(yaml_parser: str) -> None:
    policy, problems = parse("guests:\n  - match: [a]\n  - match: b\n    uri: ~\n"
                             "  - match: c\n    match: d\n  - match: e\n", "p.yaml")
    assert [(p.line, p.key) for p in problems] == [(2, "match"), (4, "uri"), (6, "match")]
    assert [r.match for r in policy.rules] == ["e"]


def test_aliases_are_never_expanded(yaml_parser: str) -> None:
    """A billion laughs: nine levels of ten aliases each would be 10**9 nodes."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    text = "\n".join(lines) + "\nguests:\n  - match: *a9\n  - match: web\n    order: 1\n"
    policy, problems = parse(text, "p.yaml")
    assert any(p.line == 12 and p.key == "match" and "alias *a9" in p.message
               for p in problems)
    assert [r.match for r in policy.rules] == ["web"]


def test_tags_anchors_and_aliases_on_structure_are_refused(yaml_parser: str) -> None:
    for text, line in [("!!map {guests: []}\n", 1), ("guests: !!seq []\n", 1),
                       ("guests:\n  - !r {match: a}\n", 2), ("guests:\n  - &r {match: a}\n", 2),
                       ("guests:\n  - {match: a}\n  - *r\n", 3), ("guests: &g []\n", 1)]:
        _, problems = parse(text, "p.yaml")
        assert problems and problems[0].line == line, (text, problems)
        assert "YAML" in problems[0].message, problems


def test_absurd_nesting_is_one_problem_not_a_recursion_error(yaml_parser: str) -> None:
    for text in ("guests: " + "[" * 100_000, "guests:\n  - match: " + "[" * 50 + "]" * 50,
                 "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 200))):
        _, problems = parse(text, "p.yaml")
        assert len(problems) == 1 and problems[0].line >= 1, problems[:3]


def test_more_than_one_document_is_refused(yaml_parser: str) -> None:
    _, problems = parse("guests: []\n---\nguests: []\n", "p.yaml")
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (2, "more than one YAML document")]


def test_special_characters_and_bad_utf8(tmp_path: Path, yaml_parser: str) -> None:
    _, problems = parse("guests:\n  - match: a\x00\n", "p.yaml")
    assert problems[0].line == 2 and "not valid YAML" in problems[0].message
    path = tmp_path / "guests.yaml"
    path.write_bytes(b"guests:\n  - match: caf\xe9\n")
    _, problems = load(str(path))
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(2, "not valid UTF-8")]


def test_a_fifo_or_directory_as_policy_file_is_refused(tmp_path: Path) -> None:
    from tests.test_files import within_deadline

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    policy, problems = within_deadline(lambda: load(str(fifo)))
    assert policy.rules == () and "FIFO" in str(problems[0])
    _, problems = load(str(tmp_path))
    assert "directory" in str(problems[0])


YAMLISH = st.lists(st.sampled_from([
    "guests:", "\n", "  ", "- ", "match: ", "uri: ", "order: ", "skip_start: ", "actions: ",
    "start_delay: ", "a", "db-*", "!foo ", "!!int ", "!!python/name:os.system ", "&x ", "*x",
    "[", "]", "{", "}", ":", ",", "'", '"', "010", "1_000", "yes", "true", "~", "\t", "#", "---",
    "? ", "|", ">", "%YAML 1.1\n", "\\", "\x00", "é", "10", "-5", "none", "shutdown poweroff",
]), max_size=40).map("".join)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(YAMLISH, st.text(max_size=200),
                 st.integers(30, 3000).map(lambda n: "guests: " + "[" * n + "]" * n),
                 st.integers(30, 300).map(lambda n: "g:\n" + "".join(
                     " " * i + "k:\n" for i in range(1, n)))))
def test_fuzz_parse_never_raises_and_every_problem_has_a_line(yaml_parser: str, text: str) -> None:
    policy, problems = parse(text, "p.yaml")
    for problem in problems:
        assert problem.line >= 1 and str(problem).startswith("p.yaml:"), problem
    for rule in policy.rules:
        assert isinstance(rule.match, str) and rule.match


# -- `default` is a real host (issue 10, item 13) ---------------------------------------


def test_a_uri_rule_matches_default_once_it_is_resolved() -> None:
    policy, _ = parse(EXAMPLE, "guests.yaml")
    lookup = policy.lookup
    db = Guest(UUID, "db-main")
    assert lookup("default", db) == GuestPolicy()
    assert wants_canonical(lookup, "default") and not wants_canonical(lookup, "qemu:///system")
    resolved = resolving(lookup, {"default": "qemu:///system", "test:///default": None})
    assert resolved("default", db).order == 10
    assert resolving(lookup, {"default": "qemu:///session"})("default", db) == GuestPolicy()
    plain, _ = parse("guests:\n  - match: db-*\n    order: 1\n", "p.yaml")
    assert not wants_canonical(plain.lookup, "default")


def test_virsh_uri_output_as_recorded_from_real_virsh() -> None:
    import yaml

    from virtguests import observe
    from virtguests.testing import fixtures_dir

    recorded = yaml.safe_load((Path(fixtures_dir()) / "test-custom-uri.yaml").read_text())
    assert recorded["argv"] == ["uri"]
    assert observe.parse_uri(recorded["stdout"]) == "test:///default"
    assert observe.parse_uri("") is None and observe.parse_uri("a\nb\n") is None


def test_migrate_to_one_uri_or_a_list_and_peers_not_in_migrate_uris_warn() -> None:
    from virtguests.policy import unknown_peers

    policy, problems = parse(
        'guests:\n'
        '  - match: web\n    actions: migrate suspend\n    migrate_to: qemu+ssh://b/system\n'
        '  - match: db\n    migrate_to: [qemu+ssh://b/system, qemu+ssh://c/system]\n'
        '  - match: "x*"\n    migrate_to: []\n'
        '  - match: "y*"\n    migrate_to: "-p2p"\n', "p.yaml")
    assert [str(p) for p in problems] == [
        "p.yaml:8: migrate_to: an empty list (allowed: a URI from MIGRATE_URIS, or a list of "
        "them)",
        "p.yaml:10: migrate_to: not a URI: '-p2p' (allowed: a URI from MIGRATE_URIS, or a "
        "list of them)"]
    web, db = policy.rules[0].policy, policy.rules[1].policy
    assert (web.actions, web.migrate_to) == ((Action.MIGRATE, Action.SUSPEND),
                                             ("qemu+ssh://b/system",))
    assert db.migrate_to == ("qemu+ssh://b/system", "qemu+ssh://c/system")
    assert unknown_peers(policy, ["qemu+ssh://b/system"]) == [
        "p.yaml:5: migrate_to: qemu+ssh://c/system is not in MIGRATE_URIS: never used"]
    assert unknown_peers(policy, []) == [
        "p.yaml:2: migrate_to: qemu+ssh://b/system is not in MIGRATE_URIS: never used",
        "p.yaml:2: actions: migrate needs peers, but MIGRATE_URIS is empty: the chain's next "
        "step is taken",
        "p.yaml:5: migrate_to: qemu+ssh://b/system is not in MIGRATE_URIS: never used",
        "p.yaml:5: migrate_to: qemu+ssh://c/system is not in MIGRATE_URIS: never used"]


def test_check_reports_the_migration_settings(fake_host: Make, tmp_path: Path) -> None:
    rules = ("guests:\n  - match: web\n    actions: migrate shutdown\n"
             "    migrate_to: [qemu:///peer, qemu:///elsewhere]\n")
    host = host_with_policy(fake_host, tmp_path, rules,
                            'MIGRATE_URIS="qemu:///peer default"\nMIGRATE_OPTIONS="--live '
                            '--timeout 60"\n')
    run = here(host, "check")
    assert run.code == 6
    assert run.err.splitlines() == [
        f"virtguests: warning: {host.config_file}:2: MIGRATE_URIS: default is also in URIS: "
        "a peer on this host is never a migration target",
        f"virtguests: warning: {tmp_path}/guests.yaml:2: migrate_to: qemu:///elsewhere is "
        "not in MIGRATE_URIS: never used",
        f"virtguests: error: {host.config_file}:3: MIGRATE_OPTIONS: --timeout is refused: "
        "MIGRATE_TIMEOUT bounds a migration; virsh's timeout would suspend the guest or "
        "switch to post-copy (allowed: virsh migrate options such as --live --persistent "
        "--undefinesource --compressed --auto-converge --copy-storage-all --migrateuri URI; "
        "not --timeout, --desturi, --suspend, --dname, --xml)",
        f"virtguests: error: {host.config_file}: 1 problem(s)"]
    assert host.verbs() == []  # check never runs virsh
