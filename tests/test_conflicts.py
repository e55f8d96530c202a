"""Warn when libvirt-guests or libvirt's own auto-shutdown would fight over the guests."""

from __future__ import annotations

from pathlib import Path

from virtguests import conflicts


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
