"""Config validation: every problem at once, with FILE:LINE: KEY and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtguests import config
from virtguests.config import Config, load, parse_text


def test_defaults_are_upstreams() -> None:
    c = Config()
    assert c.uris == ("default",)
    assert c.on_boot == "start"
    assert c.on_shutdown == ("suspend",)
    assert (c.start_delay, c.parallel_shutdown, c.shutdown_timeout) == (0, 0, 300)
    assert (c.bypass_cache, c.sync_time, c.persistent_only) == (False, False, "default")


def test_every_variable_is_read() -> None:
    text = """
URIS="default qemu:///system"
ON_BOOT=ignore
START_DELAY=5
ON_SHUTDOWN=shutdown
PARALLEL_SHUTDOWN=4
SHUTDOWN_TIMEOUT=120
BYPASS_CACHE=1
SYNC_TIME=yes
PERSISTENT_ONLY=false
PARALLEL_SUSPEND=3
PARALLEL_START=2
QUERY_TIMEOUT=7
SAVE_TIMEOUT=600
CONNECT_RETRIES=2
RETRIES_SLEEP=0.5
STOP_DEADLINE=900
RESUME_ORPHANS=1
GUEST_POLICY=/etc/virtguests/guests.yaml
"""
    loaded = parse_text(text, "f", {})
    assert loaded.problems == () and loaded.warnings == ()
    c = loaded.config
    assert c.uris == ("default", "qemu:///system")
    assert c.on_boot == "ignore" and c.start_delay == 5
    assert c.on_shutdown == ("shutdown",) and c.parallel_shutdown == 4
    assert c.shutdown_timeout == 120 and c.bypass_cache and c.sync_time
    assert c.persistent_only == "false"
    assert (c.parallel_suspend, c.parallel_start, c.query_timeout, c.save_timeout) == (3, 2, 7,
                                                                                      600)
    assert (c.connect_retries, c.retries_sleep, c.stop_deadline) == (2, 0.5, 900)
    assert c.resume_orphans and c.guest_policy == "/etc/virtguests/guests.yaml"


@pytest.mark.parametrize("raw, expected", [("0", False), ("1", True), ("", True), ("no", True)])
def test_flags_are_on_for_anything_but_zero(raw: str, expected: bool) -> None:
    assert parse_text(f"BYPASS_CACHE='{raw}'\n", "f", {}).config.bypass_cache is expected


def test_all_problems_listed_with_file_line_key_and_allowed_values() -> None:
    text = "ON_BOOT=sometimes\nSTART_DELAY=soon\nSHUTDOWN_TIMEOUT=-1\nON_SHUTDOWN=hibernate\n" \
           "PERSISTENT_ONLY=maybe\nURIS=''\n"
    loaded = parse_text(text, "/etc/default/libvirt-guests", {})
    lines = [str(p) for p in loaded.problems]
    assert lines == [
        "/etc/default/libvirt-guests:1: ON_BOOT: invalid value 'sometimes' "
        "(allowed: start, ignore)",
        "/etc/default/libvirt-guests:2: START_DELAY: not an integer: 'soon' "
        "(allowed: integers 0 to 31536000 (one year))",
        "/etc/default/libvirt-guests:3: SHUTDOWN_TIMEOUT: must be equal or greater than 0, "
        "got -1 (allowed: integers 0 to 31536000 (one year))",
        "/etc/default/libvirt-guests:4: ON_SHUTDOWN: invalid action 'hibernate' "
        "(allowed: migrate, suspend, shutdown, poweroff, or a chain such as "
        "'suspend shutdown poweroff')",
        "/etc/default/libvirt-guests:5: PERSISTENT_ONLY: invalid value 'maybe' "
        "(allowed: default, true, false)",
        "/etc/default/libvirt-guests:6: URIS: empty (allowed: whitespace-separated libvirt "
        "URIs, or 'default')",
    ]
    # invalid values fall back to the defaults, so `stop` can still act
    assert loaded.config == Config()


def test_a_later_valid_assignment_wins_and_an_invalid_one_resets_to_default() -> None:
    assert parse_text("START_DELAY=3\nSTART_DELAY=4\n", "f", {}).config.start_delay == 4
    assert parse_text("START_DELAY=3\nSTART_DELAY=x\n", "f", {}).config.start_delay == 0


def test_chains() -> None:
    c = parse_text('ON_SHUTDOWN="suspend shutdown poweroff"\n', "f", {}).config
    assert c.on_shutdown == ("suspend", "shutdown", "poweroff") and c.suspending
    problems = parse_text('ON_SHUTDOWN="shutdown shutdown"\n', "f", {}).problems
    assert "repeated" in str(problems[0])
    problems = parse_text('ON_SHUTDOWN="poweroff suspend"\n', "f", {}).problems
    assert "out of order" in str(problems[0])


def test_unknown_keys_warn_once_each() -> None:
    loaded = parse_text("FOO=1\nFOO=2\nBAR=3\n", "f", {})
    assert loaded.warnings == ("f:1: FOO: unknown variable, ignored",
                               "f:3: BAR: unknown variable, ignored")
    assert loaded.problems == ()


def test_syntax_errors_are_problems_with_lines() -> None:
    loaded = parse_text("URIS=$(hostname)\nON_BOOT=ignore\n", "f", {})
    assert [str(p) for p in loaded.problems] == [
        "f:1: URIS: command substitution $(...) is not allowed"]
    assert loaded.config.on_boot == "ignore"


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    loaded = load(str(tmp_path / "nope"), {})
    assert [str(p) for p in loaded.problems] == [f"{tmp_path / 'nope'}: config file does not exist"]


def test_env_var_names_the_config(tmp_path: Path) -> None:
    path = tmp_path / "guests"
    path.write_text("ON_BOOT=ignore\n")
    loaded = load(None, {"VIRTGUESTS_CONFIG": str(path)})
    assert loaded.path == path and loaded.config.on_boot == "ignore"


def test_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "sysconfig", tmp_path / "default"
    second.write_text("START_DELAY=2\n")
    monkeypatch.setattr(config, "SEARCH_PATH", (first, second))
    assert load(None, {}).config.start_delay == 2
    first.write_text("START_DELAY=1\n")
    assert load(None, {}).config.start_delay == 1


def test_no_config_anywhere_means_defaults(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SEARCH_PATH", (tmp_path / "x",))
    loaded = load(None, {})
    assert loaded.path is None and loaded.config == Config() and loaded.problems == ()


def test_world_writable_config_warns(tmp_path: Path) -> None:
    path = tmp_path / "guests"
    path.write_text("ON_BOOT=start\n")
    os.chmod(path, 0o666)
    assert any("world-writable" in w for w in load(str(path), {}).warnings)


@given(st.text(max_size=300))
def test_fuzz_parse_text_only_reports(text: str) -> None:
    loaded = parse_text(text, "fuzz", {})
    assert isinstance(loaded.config, Config)
    for problem in loaded.problems:
        assert str(problem).startswith("fuzz")


# -- numbers have sane bounds (issue 10, item 5) --------------------------------------

NUMERIC = {
    "START_DELAY": (0, config.YEAR), "PARALLEL_SHUTDOWN": (0, 1000),
    "SHUTDOWN_TIMEOUT": (0, config.YEAR), "PARALLEL_SUSPEND": (0, 1000),
    "PARALLEL_START": (1, 1000), "QUERY_TIMEOUT": (1, config.YEAR),
    "SAVE_TIMEOUT": (1, config.YEAR), "CONNECT_RETRIES": (0, 1000),
    "STOP_DEADLINE": (0, config.YEAR),
}


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("raw", ["1_000", "+5", "-0", "\u0663", "0x10", "010", "00", " 5", "5 ",
                                 "1e3", "5.0", "99999999999999999999999999", "", "5m"])
def test_integers_are_strict_ascii_decimal(key: str, raw: str) -> None:
    loaded = parse_text(f"{key}='{raw}'\n", "f", {})
    assert len(loaded.problems) == 1, loaded
    low, high = NUMERIC[key]
    assert f"(allowed: integers {low} to {high}" in loaded.problems[0].message
    assert loaded.config == Config()


def test_leading_zero_message_says_octal() -> None:
    problem = parse_text("SHUTDOWN_TIMEOUT=010\n", "f", {}).problems[0]
    assert "octal" in problem.message and problem.line == 1


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_every_integer_has_its_documented_range(key: str) -> None:
    low, high = NUMERIC[key]
    attr = config._CONVERTERS[key][0]
    assert getattr(parse_text(f"{key}={low}\n", "f", {}).config, attr) == low
    assert getattr(parse_text(f"{key}={high}\n", "f", {}).config, attr) == high
    for outside in (low - 1, high + 1):
        loaded = parse_text(f"{key}={outside}\n", "f", {})
        assert [p.key for p in loaded.problems] == [key]


@given(st.integers(min_value=-10**30, max_value=10**30))
def test_every_decimal_integer_in_range_is_accepted(n: int) -> None:
    try:
        value = config.strict_int(str(n), -5, 10**12)
    except config.Invalid:
        assert not -5 <= n <= 10**12
    else:
        assert value == n


@given(st.text(max_size=30))
def test_whatever_is_accepted_is_the_plain_decimal_spelling_of_its_value(raw: str) -> None:
    """With the test above: exactly the canonical decimal strings in range are integers."""
    try:
        value = config.strict_int(raw, 0, config.YEAR)
    except config.Invalid as err:
        assert "(allowed: integers 0 to 31536000 (one year))" in str(err)
    else:
        assert str(value) == raw and 0 <= value <= config.YEAR


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e9", "1_0", "-1", ".5", "1.", "0x1",
                                 "31536001", "1.5.5", " 1", "\u0661", "+1", "01"])
def test_retries_sleep_is_a_plain_decimal(raw: str) -> None:
    loaded = parse_text(f"RETRIES_SLEEP='{raw}'\n", "f", {})
    assert [p.key for p in loaded.problems] == ["RETRIES_SLEEP"], raw
    assert "(allowed: decimal seconds 0 to 31536000 (one year)" in loaded.problems[0].message
    assert loaded.config.retries_sleep == 1.0


@pytest.mark.parametrize("raw, value", [("0", 0.0), ("0.25", 0.25), ("3", 3.0),
                                        ("31536000", 31536000.0)])
def test_retries_sleep_accepts_decimals(raw: str, value: float) -> None:
    assert parse_text(f"RETRIES_SLEEP={raw}\n", "f", {}).config.retries_sleep == value


# -- bash reads it the same (issue 10, item 6) ----------------------------------------


def test_crlf_is_read_as_plain_line_ends_with_a_warning_naming_the_file() -> None:
    loaded = parse_text("# c\r\nBYPASS_CACHE=0\r\nURIS='a b'\r\n", "/etc/default/lg", {})
    assert loaded.problems == ()
    assert loaded.config.bypass_cache is False and loaded.config.uris == ("a", "b")
    [warning] = loaded.warnings
    assert warning.startswith("/etc/default/lg:1: DOS (CRLF) line endings")
    assert "carriage return" in warning and "BYPASS_CACHE=0" in warning


def test_a_utf8_bom_is_dropped_with_a_warning() -> None:
    loaded = parse_text("\ufeffON_BOOT=ignore\n", "f", {})
    assert loaded.problems == () and loaded.config.on_boot == "ignore"
    assert loaded.warnings[0].startswith("f:1: starts with a UTF-8 byte-order mark")


def test_bom_and_crlf_through_load(tmp_path: Path) -> None:
    path = tmp_path / "guests"
    path.write_bytes(b"\xef\xbb\xbfSHUTDOWN_TIMEOUT=20\r\nON_BOOT=ignore\r\n")
    loaded = load(str(path), {})
    assert (loaded.config.shutdown_timeout, loaded.config.on_boot) == (20, "ignore")
    assert len(loaded.warnings) == 2 and all(str(path) in w for w in loaded.warnings)


def test_uris_split_like_bash_ifs_only() -> None:
    """bash splits $URIS on space, tab and newline; a no-break space is part of a URI."""
    c = parse_text("URIS='a\u00a0b\tc\nd'\n", "f", {}).config
    assert c.uris == ("a\u00a0b", "c", "d")


def test_bytes_that_are_not_utf8_in_a_value_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "guests"
    path.write_bytes(b"# caf\xe9 comment is fine\nGUEST_POLICY=/etc/\xff.yaml\nON_BOOT=ignore\n")
    loaded = load(str(path), {})
    assert [(p.line, p.key) for p in loaded.problems] == [(2, "GUEST_POLICY")]
    assert "not valid UTF-8" in loaded.problems[0].message
    assert loaded.config.on_boot == "ignore" and loaded.config.guest_policy is None


def test_deep_nesting_is_a_problem_with_its_line() -> None:
    text = "ON_BOOT=ignore\nSTART_DELAY=" + "${X:-" * 100_000 + "1" + "}" * 100_000 + "\n"
    loaded = parse_text(text, "f", {})
    assert [(p.line, p.key) for p in loaded.problems] == [(2, "START_DELAY")]
    assert "nested" in loaded.problems[0].message and loaded.config.on_boot == "ignore"


# -- a broken URIS line never shrinks the hosts protected ------------------------------


@pytest.mark.parametrize("text, salvaged", [
    ('URIS="qemu:///system qemu+ssh://h/system $(hostname)"\n',
     ("qemu:///system", "qemu+ssh://h/system")),
    ("export URIS=qemu:///system\\ `id` default\n", ("qemu:///system", "default")),
    ("URIS='qemu:///system\n", ("qemu:///system",)),
    ("URIS=''\n", ("default",)),
    ("URIS=$(cat /etc/uris)\n", ("default",)),
    ("URIS=qemu:///a\nURIS=\"$(x) xen:///b\"\n", ("xen:///b", "qemu:///a")),
    ("URIS=lxc:/// ; B=$(x)\n", ("lxc:///",)),
    ("URIS=lxc:///\nB=$(x)\n", None),
])
def test_uris_salvaged_from_a_broken_line(text: str, salvaged: tuple[str, ...] | None) -> None:
    loaded = parse_text(text, "f", {})
    assert loaded.salvaged_uris == salvaged
    if salvaged is not None:
        assert any(p.line for p in loaded.problems)


def test_uris_salvage_takes_only_uri_shaped_tokens() -> None:
    assert config.salvage_uris('URIS="qemu+ssh://$(id)/x test:///default a b;c default"') == [
        "test:///default", "default"]


def test_an_unreadable_config_leaves_uris_unknown(tmp_path: Path) -> None:
    loaded = load(str(tmp_path), {})
    assert loaded.salvaged_uris == ("default",)
    assert "cannot read: a directory" in str(loaded.problems[0])
    assert load(str(tmp_path / "missing"), {}).salvaged_uris == ("default",)


def test_a_fifo_config_is_refused_quickly(tmp_path: Path) -> None:
    from tests.test_files import within_deadline

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loaded = within_deadline(lambda: load(str(fifo), {}))
    assert "FIFO" in str(loaded.problems[0]) and loaded.config == Config()


# -- each command refuses only what it uses (issue 10, item 12) ------------------------


@pytest.mark.parametrize("key, start_blocks", [
    ("SHUTDOWN_TIMEOUT", False), ("ON_SHUTDOWN", False), ("PARALLEL_SHUTDOWN", False),
    ("PARALLEL_SUSPEND", False), ("PERSISTENT_ONLY", False), ("STOP_DEADLINE", False),
    ("actions", False), ("shutdown_timeout", False),
    ("URIS", True), ("ON_BOOT", True), ("START_DELAY", True), ("BYPASS_CACHE", True),
    ("SYNC_TIME", True), ("PARALLEL_START", True), ("QUERY_TIMEOUT", True),
    ("SAVE_TIMEOUT", True), ("CONNECT_RETRIES", True), ("RETRIES_SLEEP", True),
    ("RESUME_ORPHANS", True), ("GUEST_POLICY", True), ("order", True), ("start_delay", True),
    ("skip_start", True), ("match", True), ("uri", True),
    ("", True), ("FOO", True), ("guests", True), ("colour", True),
])
def test_which_problems_block_which_command(key: str, start_blocks: bool) -> None:
    problem = config.Problem("f", 1, key, "bad")
    assert config.blocks("start", problem) is start_blocks
    assert config.blocks("status", problem) is False
    for command in ("stop", "check", "plan", "gueststatus", "reload", None):
        assert config.blocks(command, problem) is True


def test_the_table_knows_every_variable_and_policy_key() -> None:
    from virtguests import policy

    assert set(config.POLICY_KEYS) == set(policy._KEYS)
    assert config.USED_BY["start"] <= set(config.KNOWN_KEYS) | set(config.POLICY_KEYS)


@given(st.text(max_size=300))
def test_fuzz_every_problem_has_a_line(text: str) -> None:
    loaded = parse_text(text, "fuzz", {})
    for problem in loaded.problems:
        assert problem.line >= 1


@given(st.binary(max_size=400))
def test_any_bytes_as_a_config_file_are_read_or_refused(tmp_path_factory: pytest.TempPathFactory,
                                                        data: bytes) -> None:
    path = tmp_path_factory.mktemp("c") / "libvirt-guests"
    path.write_bytes(data)
    loaded = load(str(path), {})
    assert isinstance(loaded.config, Config)
    for problem in loaded.problems:
        assert problem.line >= 1 and str(problem).startswith(f"{path}:{problem.line}: ")
    for text in [*map(str, loaded.problems), *loaded.warnings]:
        text.encode("utf-8")  # printable: undecodable bytes are never echoed raw


def test_readme_and_man_page_state_the_same_ranges() -> None:
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    man = " ".join((repo / "doc" / "virtguests.8.md").read_text().split())
    ranges = {**NUMERIC, "RETRIES_SLEEP": (0, config.YEAR)}
    for key, (low, high) in ranges.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{key}` |"))
        kind = "decimal seconds" if key == "RETRIES_SLEEP" else "integer"
        assert f"{kind} {low} to {high}" in row, row
        definition = man.split(f"`{key}` (default", 1)[1][:80]
        assert f"{kind.capitalize()} {low} to {high}" in definition, (key, definition)
        problem = parse_text(f"{key}=x\n", "f", {}).problems[0]
        assert f"{low} to {high}" in problem.message


# -- migration settings (issue 14) ------------------------------------------------------


def test_migrate_without_peers_is_a_problem_at_on_shutdown() -> None:
    loaded = parse_text('URIS=default\nON_SHUTDOWN="migrate suspend"\n', "f", {})
    assert [str(p) for p in loaded.problems] == [
        "f:2: ON_SHUTDOWN: migrate needs peers, but MIGRATE_URIS is empty (allowed: set "
        "MIGRATE_URIS, or take migrate out of the chain)"]
    peered = parse_text('ON_SHUTDOWN="migrate suspend"\nMIGRATE_URIS="qemu+ssh://b/system '
                        'qemu+ssh://c/system qemu+ssh://b/system"\n', "f", {})
    assert (peered.problems, peered.warnings) == ((), ())
    assert peered.config.migrate_uris == ("qemu+ssh://b/system", "qemu+ssh://c/system")
    assert peered.config.on_shutdown == ("migrate", "suspend")
    assert peered.config.suspending  # the mode of the chain's step after migrate


def test_a_peer_that_is_in_uris_is_a_warning_and_an_option_word_is_refused() -> None:
    loaded = parse_text('URIS="default qemu:///system"\nMIGRATE_URIS="qemu:///system '
                        'qemu+ssh://b/system"\n', "f", {})
    assert loaded.warnings == ("f:2: MIGRATE_URIS: qemu:///system is also in URIS: a peer on "
                               "this host is never a migration target",)
    bad = parse_text('MIGRATE_URIS="qemu+ssh://b/system --p2p"\n', "f", {})
    assert [(p.line, p.key) for p in bad.problems] == [(1, "MIGRATE_URIS")]
    assert "'--p2p' is not a URI" in bad.problems[0].message
    assert bad.config.migrate_uris == ()


@pytest.mark.parametrize("options", [
    "", "--live", "--live --persistent --undefinesource --compressed --auto-converge",
    "--copy-storage-all --migrateuri tcp://10.0.0.2:49152 --bandwidth 100",
    "--p2p --tunnelled --unsafe --verbose --postcopy --tls",
    "--some-future-option=value --disks-port=5000",
    "--migrate-disks vda,vdb --comp-methods mt,xbzrle",
])
def test_migrate_options_accepted(options: str) -> None:
    loaded = parse_text(f'MIGRATE_OPTIONS="{options}"\n', "f", {})
    assert loaded.problems == ()
    assert loaded.config.migrate_options == tuple(options.split())


@pytest.mark.parametrize(("options", "why"), [
    ("--live guest2", "'guest2' is not an option"),
    ("--live qemu+ssh://x/system", "is not an option"),
    ("-v", "'-v' is not an option"),
    ("--live --", "'--' is not an option"),
    ("--domain web", "--domain is refused: virtguests names the guest"),
    ("--desturi=qemu:///x", "--desturi is refused"),
    ("--timeout 30", "--timeout is refused: MIGRATE_TIMEOUT"),
    ("--timeout-suspend", "--timeout-suspend is refused"),
    ("--timeout-postcopy", "--timeout-postcopy is refused"),
    ("--postcopy-after-precopy", "post-copy cannot be aborted"),
    ("--postcopy-resume", "--postcopy-resume is refused"),
    ("--offline --persistent", "leaves the guest running here"),
    ("--suspend", "left paused on the peer"),
    ("--dname new", "one name for every guest"),
    ("--xml /tmp/x.xml", "one file for every guest"),
    ("--persistent-xml=/tmp/x.xml", "one file for every guest"),
    ("--live --migrateuri", "--migrateuri needs a value"),
])
def test_migrate_options_refused(options: str, why: str) -> None:
    loaded = parse_text(f'MIGRATE_OPTIONS="{options}"\n', "f", {})
    assert [(p.line, p.key) for p in loaded.problems] == [(1, "MIGRATE_OPTIONS")]
    assert why in loaded.problems[0].message
    assert "(allowed: virsh migrate options" in loaded.problems[0].message
    assert loaded.config.migrate_options == Config().migrate_options


def test_an_option_naming_one_address_is_a_warning() -> None:
    loaded = parse_text('MIGRATE_OPTIONS="--live --migrateuri=tcp://10.0.0.2"\n', "f", {})
    assert loaded.problems == ()
    assert loaded.warnings == (
        "f:1: MIGRATE_OPTIONS: --migrateuri names one address, but every peer in "
        "MIGRATE_URIS and start's migration home get the same options",)


_WORDS = st.one_of(
    st.sampled_from(sorted(config.MIGRATE_VALUE_OPTIONS | set(config.MIGRATE_REFUSED)
                           | {"--live", "--p2p", "--", "-x", "--x=y"})),
    st.text(st.characters(codec="ascii", exclude_characters=" \t\n"), min_size=1,
            max_size=8))


@given(st.lists(_WORDS, max_size=8))
def test_accepted_options_never_name_a_guest_or_a_peer(words: list[str]) -> None:
    """Whatever MIGRATE_OPTIONS holds, once accepted, virsh reads every word as an option
    or an option's value: the guest and the peer virtguests appends are its only
    positional arguments, and nothing virtguests controls is in it."""
    try:
        options = config._migrate_options(" ".join(words))
    except config.Invalid:
        return
    value_next = False
    for word in options:
        if value_next:
            value_next = False
            continue
        assert word.startswith("--") and word != "--"
        name = word.split("=", 1)[0]
        assert name not in config.MIGRATE_REFUSED
        value_next = name in config.MIGRATE_VALUE_OPTIONS and "=" not in word
    assert not value_next


def test_start_uses_the_return_settings_not_the_stop_ones() -> None:
    used = config.USED_BY["start"]
    assert {"MIGRATE_OPTIONS", "MIGRATE_TIMEOUT", "PARALLEL_MIGRATE", "MIGRATE_RETURN"} <= used
    assert not {"MIGRATE_URIS", "MIGRATE_RESERVE", "migrate_to", "ON_SHUTDOWN"} & used
