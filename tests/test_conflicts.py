"""Warn when libvirt-guests or libvirt's own auto-shutdown would fight over the guests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from virtguests import conflicts
from virtguests.testing import run_inprocess


def test_auto_shutdown_settings(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text(
        '#auto_shutdown_try_save = "all"\n'
        'auto_shutdown_try_shutdown = "none"\n'
        'auto_shutdown_poweroff = "persistent"\n'
        "  auto_shutdown_try_save = 'all'\n"
    )
    assert conflicts.auto_shutdown(conf) == ['auto_shutdown_poweroff = "persistent"']
    assert conflicts.auto_shutdown(tmp_path / "missing") == []


def test_reference_service_enabled(tmp_path: Path) -> None:
    wants = tmp_path / "systemd" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    rc0 = tmp_path / "rc0.d"
    rc0.mkdir()
    assert conflicts.reference_enabled([tmp_path / "systemd"], [rc0]) == []
    (wants / "libvirt-guests.service").symlink_to("/lib/systemd/system/libvirt-guests.service")
    (rc0 / "K01libvirt-guests").symlink_to("../init.d/libvirt-guests")
    assert conflicts.reference_enabled([tmp_path / "systemd"], [rc0]) == [
        str(wants / "libvirt-guests.service"), str(rc0 / "K01libvirt-guests")]


def test_warnings_name_the_files(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('auto_shutdown_try_save = "all"\n')
    wants = tmp_path / "systemd" / "shutdown.target.wants"
    wants.mkdir(parents=True)
    (wants / "libvirt-guests.service").touch()
    out = conflicts.warnings(conf, [tmp_path / "systemd"], [])
    assert len(out) == 2
    assert str(conf) in out[0] and 'auto_shutdown_try_save = "all"' in out[0]
    assert "libvirt-guests is also enabled" in out[1]
    assert conflicts.warnings(tmp_path / "none", [tmp_path / "nothing"], []) == []


def test_a_qemu_conf_that_is_not_a_regular_file_is_a_warning_not_a_hang(tmp_path: Path) -> None:
    import os

    from tests.test_files import within_deadline

    fifo = tmp_path / "qemu.conf"
    os.mkfifo(fifo)
    out = within_deadline(lambda: conflicts.warnings(fifo, [], []))
    assert out == [f"cannot check {fifo} for libvirt's own auto-shutdown: a FIFO (named pipe), "
                   "not a regular file: refused"]
    assert within_deadline(lambda: conflicts.auto_shutdown(Path("/dev/zero"))) == []


def _host_with_conflicts(fake_host: Any) -> Any:
    """A host whose /etc (the harness' host_root) enables libvirt-guests and libvirt's
    auto-shutdown, and one running guest."""
    host = fake_host({"uris": {"default": {"guests": [{"name": "web", "state": "running"}]}}})
    etc = host.host_root / "etc"
    (etc / "libvirt").mkdir(parents=True)
    (etc / "libvirt" / "qemu.conf").write_text('auto_shutdown_try_save = "all"\n')
    (etc / "rc0.d").mkdir()
    (etc / "rc0.d" / "K01libvirt-guests").symlink_to("../init.d/libvirt-guests")
    return host


def _expected(host: Any) -> list[str]:
    etc = host.host_root / "etc"
    return [f"virtguests: warning: libvirt's own auto-shutdown is enabled in "
            f"{etc / 'libvirt' / 'qemu.conf'} (auto_shutdown_try_save = \"all\"): it acts on "
            "the same guests at host shutdown; disable it or virtguests",
            f"virtguests: warning: libvirt-guests is also enabled ({etc / 'rc0.d'}"
            "/K01libvirt-guests): both would save or shut down the same guests; disable one "
            "of them"]


def test_stop_warns_of_the_hosts_conflicts_and_goes_on(fake_host: Any) -> None:
    """$VIRTGUESTS_HOST_ROOT is where the checks look; the machine running the tests
    never shows (a developer's host with libvirt-daemon-system would fail every
    transcript otherwise)."""
    host = _host_with_conflicts(fake_host)
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0, run
    assert run.err.splitlines()[:2] == _expected(host)
    assert host.list_file.read_text().split() == ["default", host.uuid("web")]


def test_the_check_reads_the_host_root_of_a_process_run(fake_host: Any) -> None:
    host = _host_with_conflicts(fake_host)
    run = host.run("check")
    assert run.code == 0, run
    assert [line for line in run.err.splitlines() if "enabled" in line] == _expected(host)


def test_an_empty_host_root_gives_no_warning(fake_host: Any) -> None:
    host = fake_host({"uris": {"default": {"guests": []}}})
    run, _ = run_inprocess(host, "stop")
    assert (run.code, run.err) == (0, "")
    assert conflicts.on_host(host.host_root) == []
