"""What a migration needs to know, asked of the fake virsh (issue 14): the peers'
views, the homes' host UUIDs and the guests' memory, asked only when a chain has
migrate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from virtguests import observe
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.model import Action, PeerView
from virtguests.testing import FakeHost, run_inprocess
from virtguests.virsh import Virsh

Make = Callable[..., FakeHost]
HOME_UUID = "abcdef00-1111-4222-8333-444455556666"
PEER, TWIN, GONE = "qemu:///peer", "qemu:///twin", "qemu:///gone"
QUERIES = {"capabilities", "nodememstats", "dominfo"}


def _host() -> dict[str, Any]:
    return {"uris": {
        "default": {"host_uuid": HOME_UUID, "guests": [
            {"name": "web", "memory_mib": 2048}, {"name": "db", "memory_mib": 512},
            {"name": "off", "state": "shutoff"}]},
        PEER: {"free_mib": 4096, "guests": []},
        TWIN: {"host_uuid": HOME_UUID, "guests": []},
        GONE: {"unreachable": True},
    }}


def test_peer_views_home_uuid_and_memory(fake_host: Make) -> None:
    host = fake_host(_host())
    virsh = Virsh(str(host.bin / "virsh"), environ=host.env(), sessions=False)
    config = Config(migrate_uris=(PEER, TWIN, GONE), on_shutdown=(Action.MIGRATE,))
    try:
        view = observe.view_running(virsh, "default", config, Clock())
        web = host.uuid("web")
        views, peers, homes = observe.for_migration(virsh, config, {"default": view},
                                                    {"default": [web]})
    finally:
        virsh.close()
    assert homes == {"default": HOME_UUID}
    assert {g.name: g.memory_kib for g in views["default"].guests} == {
        "web": 2048 * 1024, "db": None}  # only the guests that migrate are asked
    assert [p.uri for p in peers] == [PEER, TWIN, GONE]
    assert peers[0].free_kib == 4096 * 1024 and peers[0].host_uuid not in (None, HOME_UUID)
    assert peers[1] == PeerView(TWIN, HOME_UUID, peers[1].free_kib)
    assert not peers[2].reachable and "failed to connect" in (peers[2].error or "")
    assert peers[2].host_uuid is None


def test_no_migrate_in_any_chain_asks_nothing_more(fake_host: Make) -> None:
    host = fake_host(_host(), f'MIGRATE_URIS="{PEER}"\nON_SHUTDOWN="suspend"\n')
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0
    assert not QUERIES & set(host.verbs())
    assert "migrate" not in host.verbs()


def test_stop_with_migrate_asks_and_says_which_guest_has_no_target(fake_host: Make) -> None:
    host = fake_host(_host(), f'MIGRATE_URIS="{TWIN} {GONE}"\n'
                              'ON_SHUTDOWN="migrate suspend"\n')
    run, _ = run_inprocess(host, "--dry-run", "stop")
    assert run.code == 0
    assert set(host.verbs()) >= QUERIES
    lines = [line for line in run.out.splitlines() if line.startswith("Not migrating web")]
    assert lines == [
        f"Not migrating web: no target: {TWIN}: the same host as the guest's; {GONE}: "
        "unreachable (error: failed to connect to the hypervisor; error: Failed to connect "
        "socket to '/var/run/libvirt/libvirt-sock': No such file or directory)"]
