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
        "(allowed: integers >= 0)",
        "/etc/default/libvirt-guests:3: SHUTDOWN_TIMEOUT: must be equal or greater than 0, "
        "got -1 (allowed: integers >= 0)",
        "/etc/default/libvirt-guests:4: ON_SHUTDOWN: invalid action 'hibernate' "
        "(allowed: suspend, shutdown, poweroff, or a chain such as "
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
        "f:1: command substitution $(...) is not allowed"]
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
