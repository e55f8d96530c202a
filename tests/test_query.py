"""virtguests.query's small types: what ``virsh domstate --reason`` says."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from virtguests import commands, query, virshout
from virtguests.config import Config
from virtguests.query import DomState
from virtguests.testing import FakeHost
from virtguests.virsh import Virsh, VirshError

Make = Callable[..., FakeHost]


@pytest.mark.parametrize(("state", "shut_off", "paused", "saving", "saved"), [
    (DomState("paused", "saving"), False, True, True, False),
    (DomState("paused", "user"), False, True, False, False),
    (DomState("shut off", "saved"), True, False, False, True),
    (DomState("shut off", "shutdown"), True, False, False, False),
    (DomState("running", "booted"), False, False, False, False),
])
def test_domstate_words(state: DomState, shut_off: bool, paused: bool, saving: bool,
                        saved: bool) -> None:
    assert (state.shut_off, state.paused, state.saving, state.saved) == (
        shut_off, paused, saving, saved)
    assert str(state) == f"{state.state} ({state.reason})"


# -- migration questions, asked of the fake virsh (which answers as recorded) -----------

HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"
HOST_UUID = "0f1e7a5e-0000-4000-8000-0000000000a1"


def _migration_host() -> dict[str, Any]:
    return {"uris": {
        HOME: {"host_uuid": HOST_UUID.upper(), "free_mib": 1000,
               "guests": [{"name": "g", "memory_mib": 768, "migrate_seconds": 600},
                          {"name": "saver", "saving_seconds": 600, "memory_mib": 100}]},
        PEER: {"free_mib": 4096, "guests": []},
        "qemu+ssh://gone/system": {"unreachable": True},
    }}


def _virsh(host: FakeHost, **kwargs: Any) -> Virsh:
    return Virsh(str(host.bin / "virsh"), environ=host.env(), **kwargs)


@pytest.mark.parametrize("sessions", [False, True])
def test_host_uuid_free_memory_and_a_guests_memory(fake_host: Make, sessions: bool) -> None:
    host = fake_host(_migration_host())
    virsh, config = _virsh(host, sessions=sessions), Config()
    try:
        assert query.host_uuid(virsh, HOME, config) == HOST_UUID
        peer_uuid = query.host_uuid(virsh, PEER, config)
        assert peer_uuid != HOST_UUID
        assert query.free_kib(virsh, HOME, config) == 1000 * 1024
        assert query.memory_kib(virsh, HOME, host.uuid("g", HOME), config) == 768 * 1024
        with pytest.raises(VirshError) as failed:
            query.free_kib(virsh, "qemu+ssh://gone/system", config)
        assert not isinstance(failed.value, virshout.OutputError)
    finally:
        virsh.close()


def test_job_percent_of_a_save_and_of_no_job(fake_host: Make) -> None:
    host = fake_host(_migration_host())
    virsh, config = _virsh(host), Config()
    percent = query.job_percent(virsh, HOME, host.uuid("saver", HOME), config)
    assert percent is not None and 0 <= percent < 100
    assert query.job_percent(virsh, HOME, host.uuid("g", HOME), config) is None


def test_abort_job_ends_a_migration_and_says_when_there_was_none(fake_host: Make) -> None:
    host = fake_host(_migration_host())
    virsh, config = _virsh(host), Config()
    uuid = host.uuid("g", HOME)
    assert query.abort_job(virsh, HOME, uuid, config) is False  # no job
    assert query.abort_job(virsh, HOME, "99999999-8888-7777-6666-555555555555", config) \
        is False  # no such guest here (it may have arrived at its peer)
    argv = [str(host.bin / "virsh"), "-c", HOME,
            *commands.migrate(uuid, PEER, ("--live", "--undefinesource"))]
    proc = subprocess.Popen(argv, env=host.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while host.virsh("-c", PEER, "-q", "list", "--name").stdout != "g\n":
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.02)
        percent = query.job_percent(virsh, HOME, uuid, config)
        assert percent is not None and 0 <= percent < 100
        assert query.abort_job(virsh, HOME, uuid, config) is True
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert (proc.returncode, err) == (1, "error: operation aborted: job 'migration out' "
                                         "canceled by client\n")
    assert host.virsh("-c", HOME, "-q", "domstate", "--reason", "g").stdout \
        == "running (booted)\n"
    with pytest.raises(VirshError, match="failed to connect"):
        query.abort_job(virsh, "qemu+ssh://gone/system", uuid, config)


def test_garbage_is_an_output_error_naming_the_call(fake_host: Make) -> None:
    spec = _migration_host()
    spec["faults"] = [{"cmd": ["capabilities", "nodememstats", "dominfo"],
                       "action": "garbage", "output": "truncated"}]
    host = fake_host(spec)
    virsh, config = _virsh(host), Config()
    for ask, name in ((lambda: query.host_uuid(virsh, HOME, config), "capabilities"),
                      (lambda: query.free_kib(virsh, HOME, config), "nodememstats"),
                      (lambda: query.memory_kib(virsh, HOME, host.uuid("g", HOME), config),
                       "dominfo")):
        with pytest.raises(virshout.OutputError, match=name):
            ask()
