"""Every virsh command line, one builder at a time, and nobody else spelling one."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import virtguests
from virtguests import cli, commands, model, observe
from virtguests.config import Config
from virtguests.virsh import is_guest_call

U = "11111111-2222-3333-4444-555555555555"
PLAIN = Config()
BYPASS = replace(PLAIN, bypass_cache=True)


# -- listings -----------------------------------------------------------------------


def test_list_running_lists_active_guests_by_uuid_and_name() -> None:
    assert commands.list_running() == ["list", "--uuid", "--name"]


def test_list_running_persistent_adds_persistent() -> None:
    assert commands.list_running_persistent() == ["list", "--uuid", "--name", "--persistent"]


def test_list_all_lists_inactive_guests_too() -> None:
    assert commands.list_all() == ["list", "--all", "--uuid", "--name"]


def test_list_active_uuids_prints_uuids_only() -> None:
    assert commands.list_active_uuids() == ["list", "--uuid"]


def test_list_managed_save_names_guests_with_an_image() -> None:
    assert commands.list_managed_save() == [
        "list", "--all", "--uuid", "--name", "--with-managed-save"]


def test_list_managed_save_uuids_prints_uuids_only() -> None:
    assert commands.list_managed_save_uuids() == [
        "list", "--all", "--uuid", "--with-managed-save"]


def test_list_persistent_uuids_includes_inactive_guests() -> None:
    assert commands.list_persistent_uuids() == ["list", "--all", "--uuid", "--persistent"]


def test_list_table_is_plain_list() -> None:
    assert commands.list_table() == ["list"]


def test_uri_asks_what_the_uri_is() -> None:
    assert commands.uri() == ["uri"]


def test_liveness_is_the_uuid_listing() -> None:
    assert commands.liveness() == ["list", "--uuid"]


@pytest.mark.parametrize(("ask_uri", "expected"), [
    (False, [["list", "--uuid", "--name"], ["list", "--uuid", "--name", "--persistent"]]),
    (True, [["list", "--uuid", "--name"], ["list", "--uuid", "--name", "--persistent"],
            ["uri"]]),
])
def test_stop_listings(ask_uri: bool, expected: list[list[str]]) -> None:
    assert commands.stop_listings(ask_uri=ask_uri) == expected


@pytest.mark.parametrize(("managed_save", "ask_uri", "expected"), [
    (False, False, [["list", "--all", "--uuid", "--name"], ["list", "--uuid"]]),
    (True, False, [["list", "--all", "--uuid", "--name"], ["list", "--uuid"],
                   ["list", "--all", "--uuid", "--name", "--with-managed-save"]]),
    (False, True, [["list", "--all", "--uuid", "--name"], ["list", "--uuid"], ["uri"]]),
    (True, True, [["list", "--all", "--uuid", "--name"], ["list", "--uuid"],
                  ["list", "--all", "--uuid", "--name", "--with-managed-save"], ["uri"]]),
])
def test_start_listings(managed_save: bool, ask_uri: bool, expected: list[list[str]]) -> None:
    assert commands.start_listings(managed_save=managed_save, ask_uri=ask_uri) == expected


def test_batch_script_of_one_listing_has_no_mark() -> None:
    assert commands.batch_script([["list", "--uuid"]]) == "list --uuid"


def test_batch_script_echoes_the_mark_between_listings() -> None:
    assert commands.batch_script([["list", "--uuid"], ["uri"], ["list"]]) == (
        "list --uuid; echo virtguests-next; uri; echo virtguests-next; list")


def test_batch_is_one_argument() -> None:
    assert commands.batch(commands.stop_listings()) == [
        "list --uuid --name; echo virtguests-next; list --uuid --name --persistent"]


def test_observe_names_the_same_listings() -> None:
    """tools/record_fixtures.py records the listings under observe's names."""
    assert tuple(commands.stop_listings()) == observe.RUNNING
    assert tuple(commands.start_listings()) == observe.EVERY
    assert commands.list_managed_save() == observe.MANAGED_SAVE
    assert observe.batch(observe.RUNNING) == commands.batch(commands.stop_listings())[0]
    assert observe.BATCH_MARK == commands.BATCH_MARK == "virtguests-next"


# -- one guest ------------------------------------------------------------------------


def test_managedsave() -> None:
    assert commands.managedsave(U, PLAIN) == ["managedsave", U]


def test_managedsave_with_bypass_cache() -> None:
    assert commands.managedsave(U, BYPASS) == ["managedsave", "--bypass-cache", U]


@pytest.mark.parametrize("cfg", [PLAIN, BYPASS])
def test_shutdown_has_no_options(cfg: Config) -> None:
    assert commands.stop_action(model.Action.SHUTDOWN, U, cfg) == commands.shutdown(U) == [
        "shutdown", U]


@pytest.mark.parametrize("cfg", [PLAIN, BYPASS])
def test_destroy_has_no_options(cfg: Config) -> None:
    assert commands.stop_action(model.Action.POWEROFF, U, cfg) == commands.destroy(U) == [
        "destroy", U]


@pytest.mark.parametrize(("cfg", "expected"), [
    (PLAIN, ["managedsave", U]), (BYPASS, ["managedsave", "--bypass-cache", U])])
def test_stop_action_suspend_is_managedsave(cfg: Config, expected: list[str]) -> None:
    assert commands.stop_action(model.Action.SUSPEND, U, cfg) == expected


def test_stop_action_refuses_an_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown action 'hibernate'"):
        commands.stop_action("hibernate", U, PLAIN)  # type: ignore[arg-type]


def test_start() -> None:
    assert commands.start(U, PLAIN) == ["start", U]


def test_start_with_bypass_cache() -> None:
    assert commands.start(U, BYPASS) == ["start", "--bypass-cache", U]


def test_sync_time() -> None:
    assert commands.sync_time(U) == ["domtime", "--sync", U]


def test_domstate_reason() -> None:
    assert commands.domstate_reason(U) == ["domstate", "--reason", U]


def test_domjobinfo() -> None:
    assert commands.domjobinfo(U) == ["domjobinfo", U]


def test_domjobabort() -> None:
    assert commands.domjobabort(U) == ["domjobabort", U]


def test_dominfo() -> None:
    assert commands.dominfo(U) == ["dominfo", U]


def test_nodememstats_and_capabilities_ask_the_host() -> None:
    assert commands.nodememstats() == ["nodememstats"]
    assert commands.capabilities() == ["capabilities"]


PEER = "qemu+ssh://peer/system?keyfile=/k&no_verify=1"


def test_migrate_puts_the_options_first_then_the_guest_then_the_peer() -> None:
    options = ("--live", "--persistent", "--undefinesource")
    assert commands.migrate(U, PEER, options) == ["migrate", *options, U, PEER]
    assert commands.migrate(U, PEER, ()) == ["migrate", U, PEER]
    extra = ["--live", "--migrateuri", "tcp://10.0.0.2", "--compressed"]
    assert commands.migrate(U, PEER, extra)[-2:] == [U, PEER]


def test_migrate_matches_its_recording() -> None:
    """The argv recorded from real virsh, with the home and peer daemons' URIs."""
    from virtguests.testing import fixtures_dir

    doc = yaml.safe_load((Path(fixtures_dir()) / "qemu-migrate-ok.yaml").read_text())
    *options, uuid, peer = doc["argv"][1:]
    assert commands.migrate(uuid, peer, options) == doc["argv"]
    assert doc["exit"] == 0


def test_migrate_is_a_slow_guest_call() -> None:
    """A migration takes minutes: a session of its own; its timeout is the guest's (or
    its peer's) fault and wedges no URI."""
    args = commands.migrate(U, PEER, ("--live",))
    assert is_guest_call(args) and args[0] in commands.SLOW_SUBCOMMANDS
    for args in (commands.domjobabort(U), commands.dominfo(U)):
        assert is_guest_call(args) and args[0] not in commands.SLOW_SUBCOMMANDS
    for args in (commands.nodememstats(), commands.capabilities()):
        assert not is_guest_call(args)


def test_lifecycle_events() -> None:
    assert commands.lifecycle_events() == ["event", "--loop", "--event", "lifecycle"]


GUEST_CALLS = [
    lambda uuid, cfg: commands.managedsave(uuid, cfg),
    lambda uuid, cfg: commands.shutdown(uuid),
    lambda uuid, cfg: commands.destroy(uuid),
    lambda uuid, cfg: commands.start(uuid, cfg),
    lambda uuid, cfg: commands.sync_time(uuid),
    lambda uuid, cfg: commands.domstate_reason(uuid),
    lambda uuid, cfg: commands.domjobinfo(uuid),
    lambda uuid, cfg: commands.domjobabort(uuid),
    lambda uuid, cfg: commands.dominfo(uuid),
]

URI_CALLS: list[Callable[[], list[str]]] = [
    commands.list_running, commands.list_running_persistent, commands.list_all,
    commands.list_active_uuids, commands.list_managed_save,
    commands.list_managed_save_uuids, commands.list_persistent_uuids,
    commands.list_table, commands.uri, commands.liveness,
    commands.lifecycle_events, lambda: commands.batch(commands.start_listings()),
    commands.nodememstats, commands.capabilities]


@given(uuid=st.uuids().map(str), bypass=st.booleans(), which=st.integers(0, len(GUEST_CALLS) - 1))
def test_a_guest_call_names_its_guest_last_and_only_there(uuid: str, bypass: bool,
                                                          which: int) -> None:
    args = GUEST_CALLS[which](uuid, replace(PLAIN, bypass_cache=bypass))
    assert args[-1] == uuid and uuid not in args[:-1]
    assert is_guest_call(args)  # a timeout there costs that guest's step, not the URI


def test_uri_level_calls_are_not_guest_calls() -> None:
    """A timeout of one of these wedges the URI at once (virsh.Virsh)."""
    for build in URI_CALLS:
        assert not is_guest_call(build())


def test_each_call_is_a_new_list() -> None:
    """A caller appending to its argv never changes the next call."""
    first = commands.start(U, PLAIN)
    first.append("--paused")
    assert commands.start(U, PLAIN) == ["start", U]
    listing = commands.list_all()
    listing.clear()
    assert commands.list_all() == ["list", "--all", "--uuid", "--name"]


# -- nobody else spells a virsh subcommand ----------------------------------------------

VIRSH_HELP = """
attach-device attach-disk attach-interface autostart blkdeviotune blkiotune blockcommit
blockcopy blockjob blockpull blockresize change-media console cpu-stats create define
desc destroy detach-device detach-device-alias detach-disk detach-interface domdisplay
domfsfreeze domfsthaw domfsinfo domfstrim domhostname domid domif-setlink domiftune
domjobabort domjobinfo domlaunchsecinfo domsetlaunchsecstate domname domrename
dompmsuspend dompmwakeup domuuid domxml-from-native domxml-to-native dump dumpxml edit
get-user-sshkeys inject-nmi iothreadinfo iothreadpin iothreadadd iothreadset iothreaddel
send-key send-process-signal lxc-enter-namespace managedsave managedsave-remove
managedsave-edit managedsave-dumpxml managedsave-define memtune perf metadata migrate
migrate-setmaxdowntime migrate-getmaxdowntime migrate-compcache migrate-setspeed
migrate-getspeed migrate-postcopy numatune qemu-attach qemu-monitor-command
qemu-monitor-event qemu-agent-command guest-agent-timeout reboot reset restore resume
save save-image-define save-image-dumpxml save-image-edit schedinfo screenshot
set-lifecycle-action set-user-sshkeys set-user-password setmaxmem setmem setvcpus
shutdown start suspend ttyconsole undefine update-device update-memory-device vcpucount
vcpuinfo vcpupin emulatorpin vncdisplay guestvcpus setvcpu domblkthreshold guestinfo
domdirtyrate-calc dom-fd-associate domblkerror domblkinfo domblklist domblkstat
domcontrol domif-getlink domifaddr domiflist domifstat dominfo dommemstat domstate
domstats domtime list event allocpages capabilities cpu-baseline cpu-compare cpu-models
domcapabilities freecell freepages hostname hypervisor-cpu-baseline
hypervisor-cpu-compare maxvcpus node-memory-tune nodecpumap nodecpustats nodeinfo
nodememstats nodesevinfo nodesuspend sysinfo uri version checkpoint-create
checkpoint-create-as checkpoint-delete checkpoint-dumpxml checkpoint-edit checkpoint-info
checkpoint-list checkpoint-parent iface-begin iface-bridge iface-commit iface-define
iface-destroy iface-dumpxml iface-edit iface-list iface-mac iface-name iface-rollback
iface-start iface-unbridge iface-undefine nwfilter-define nwfilter-dumpxml nwfilter-edit
nwfilter-list nwfilter-undefine nwfilter-binding-create nwfilter-binding-delete
nwfilter-binding-dumpxml nwfilter-binding-list net-autostart net-create net-define
net-destroy net-dhcp-leases net-dumpxml net-edit net-event net-info net-list net-name
net-start net-undefine net-update net-uuid net-port-list net-port-create net-port-dumpxml
net-port-delete nodedev-create nodedev-destroy nodedev-detach nodedev-dumpxml
nodedev-list nodedev-reattach nodedev-reset nodedev-event nodedev-define nodedev-undefine
nodedev-start nodedev-autostart nodedev-info secret-define secret-dumpxml secret-event
secret-get-value secret-list secret-set-value secret-undefine snapshot-create
snapshot-create-as snapshot-current snapshot-delete snapshot-dumpxml snapshot-edit
snapshot-info snapshot-list snapshot-parent snapshot-revert backup-begin backup-dumpxml
find-storage-pool-sources-as find-storage-pool-sources pool-autostart pool-build
pool-create-as pool-create pool-define-as pool-define pool-delete pool-destroy
pool-dumpxml pool-edit pool-info pool-list pool-name pool-refresh pool-start
pool-undefine pool-uuid pool-event pool-capabilities vol-clone vol-create-as vol-create
vol-create-from vol-delete vol-download vol-dumpxml vol-info vol-key vol-list vol-name
vol-path vol-pool vol-resize vol-upload vol-wipe cd echo exit help pwd quit connect
"""
"""The command names ``virsh help`` prints (libvirt 9.0.0)."""

VIRSH_SUBCOMMANDS = frozenset(VIRSH_HELP.split())

OUR_WORDS = frozenset([*model.STOP_CHAIN, *cli.COMMANDS, *cli.EXTRA_COMMANDS])
"""Our own commands and actions; some are virsh subcommands too (start, shutdown, suspend)."""

ALLOWED = {"commands.py"}
"""The builders.  The test tooling (``virtguests/testing``: the fake virsh parses
command lines, it does not build them) is not scanned."""


def spelled_command_lines(source: str) -> list[tuple[int, str]]:
    """Line and text of each list, tuple or set display that reads as a virsh command line.

    That is: its first element is a string naming a virsh subcommand, each other
    element could be an argument (a string without spaces, or an expression such as a
    UUID or ``*options``), and it is not made only of our own command and action words
    (``("suspend", "shutdown")`` is an ON_SHUTDOWN chain; ``["start", uuid]`` and
    ``["list"]`` are virsh calls).  Messages, docstrings and f-strings are no displays.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)) or not node.elts:
            continue
        first = node.elts[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)
                and first.value in VIRSH_SUBCOMMANDS):
            continue
        if not all(_could_be_argument(e) for e in node.elts[1:]):
            continue
        if all(isinstance(e, ast.Constant) and e.value in OUR_WORDS for e in node.elts):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def _could_be_argument(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and bool(node.value) and " " not in node.value
    return True


@pytest.mark.parametrize("source", [
    'ARGS = ["list", "--all"]',
    'virsh.run(uri, ["start", *extra, uuid])',
    'x = ("domtime", "--sync", guest.uuid)',
    'LIVENESS = ("list", "--uuid")',
    'GUEST = frozenset({"managedsave", "start"})',
    'TABLE = ["list"]',
    'ASK = ["uri"]',
    'run(["shutdown", uuid])',
    'run(["event", "--loop"])',
])
def test_the_scan_finds_a_command_line(source: str) -> None:
    assert len(spelled_command_lines(source)) == 1


@pytest.mark.parametrize("source", [
    'ACTIONS = ("suspend", "shutdown", "poweroff")',
    'chain = ("shutdown",)',
    'COMMANDS = ("start", "stop", "status")',
    'entry = {"actions": ["start"]}',
    'say(f"virsh list --all failed on {uri}")',
    'log("list", "--all")',
    'MESSAGES = ["list of guests", "start failed"]',
    'KEYS = ("name", "uri")',
    'FIELDS = (("uri", _is_text, "a string", True),)',
    'ROW = ("list", count, None)',
    '"""virsh ``domtime --sync UUID``: ["domtime", "--sync"]"""',
])
def test_the_scan_ignores_what_is_not_a_command_line(source: str) -> None:
    assert spelled_command_lines(source) == []


def test_only_commands_builds_virsh_command_lines() -> None:
    package = Path(virtguests.__file__).resolve().parent
    modules = sorted(p for p in package.rglob("*.py") if p.name not in ALLOWED
                     and "testing" not in p.relative_to(package).parts)
    assert len(modules) > 10  # the package was found
    found = [f"{path.relative_to(package)}:{line}: {text}"
             for path in modules
             for line, text in spelled_command_lines(path.read_text(encoding="utf-8"))]
    assert found == []
