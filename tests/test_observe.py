"""Looking at a URI: one virsh process per URI, and a safe fallback when that is not trusted."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from virtguests import observe
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.model import Guest
from virtguests.testing import FakeHost
from virtguests.virsh import Virsh

Make = Callable[..., FakeHost]

HOST = {"uris": {"default": {"guests": [
    {"name": "web"},
    {"name": "scratch", "persistent": False},
    {"name": "saved", "state": "shutoff", "managed_save": True},
    {"name": "off", "state": "shutoff"},
]}}}


def virsh_for(host: FakeHost, path: Path | None = None) -> Virsh:
    return Virsh(str(path or host.bin / "virsh"), environ=host.env())


def test_stop_sees_running_guests_and_their_persistence_with_one_virsh_process(
        fake_host: Make) -> None:
    host = fake_host(HOST)
    view = observe.view_running(virsh_for(host), "default", Config(), Clock())
    assert view.reachable
    assert set(view.guests) == {Guest(host.uuid("web"), "web", persistent=True),
                                Guest(host.uuid("scratch"), "scratch", persistent=False)}
    assert host.commands() == [[observe.batch(observe.RUNNING)]]


def test_start_sees_every_guest_state_and_managed_save_with_one_virsh_process(
        fake_host: Make) -> None:
    host = fake_host(HOST)
    view = observe.view_all(virsh_for(host), "default", Config(), Clock(), managed_save=True)
    facts = {g.name: (g.active, g.managed_save) for g in view.guests}
    assert facts == {"web": (True, False), "scratch": (True, False),
                     "saved": (False, True), "off": (False, False)}
    assert host.commands() == [[observe.batch([*observe.EVERY, observe.MANAGED_SAVE])]]


def wrapped_virsh(host: FakeHost, path: Path, before: str) -> Path:
    """A virsh at *path* that runs the shell lines *before*, then the host's fake virsh."""
    path.write_text(f'#!/bin/sh\n{before}exec "{host.bin / "virsh"}" "$@"\n')
    os.chmod(path, 0o755)
    return path


def test_a_combined_listing_that_printed_an_error_is_redone_one_listing_at_a_time(
        fake_host: Make, tmp_path: Path) -> None:
    """virsh exits 0 when an earlier command of a command string failed: never trust that."""
    host = fake_host(HOST)
    wrapper = wrapped_virsh(host, tmp_path / "picky-virsh",
                            'for a in "$@"; do case "$a" in *\\;*) echo "error: unsupported '
                            'flags" >&2; exit 0;; esac; done\n')
    view = observe.view_running(virsh_for(host, wrapper), "default", Config(), Clock())
    assert {g.name: g.persistent for g in view.guests} == {"web": True, "scratch": False}
    assert host.commands() == [list(form) for form in observe.RUNNING]


def test_a_banner_on_stderr_is_not_a_failed_listing(fake_host: Make, tmp_path: Path) -> None:
    """ssh prints banners and warnings on stderr; only virsh's ``error:`` lines count."""
    host = fake_host(HOST)
    wrapper = wrapped_virsh(host, tmp_path / "chatty-virsh",
                            "echo 'Warning: Permanently added 127.0.0.1 (ED25519) to the list "
                            "of known hosts.' >&2\n")
    view = observe.view_running(virsh_for(host, wrapper), "default", Config(), Clock())
    assert {g.name: g.persistent for g in view.guests} == {"web": True, "scratch": False}
    assert host.commands() == [[observe.batch(observe.RUNNING)]]


def test_an_unreachable_uri_is_retried_then_reported(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"unreachable": True}}})
    config = dataclasses.replace(Config(), connect_retries=2, retries_sleep=0)
    view = observe.view_all(virsh_for(host), "default", config, Clock())
    assert not view.reachable
    assert "failed to connect to the hypervisor" in str(view.error)
    assert host.commands() == [[observe.batch(observe.EVERY)]] * 3


def test_garbage_in_a_combined_listing_is_an_error_not_a_guest(fake_host: Make) -> None:
    host = fake_host(HOST)
    wrapper = host.root / "noisy-virsh"
    wrapper.write_text("#!/bin/sh\nprintf 'not a guest line\\n\\nvirtguests-next\\n\\n'\n")
    os.chmod(wrapper, 0o755)
    view = observe.view_running(virsh_for(host, wrapper), "default", Config(), Clock())
    assert not view.reachable and "unexpected output line 1" in str(view.error)


