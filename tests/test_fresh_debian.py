"""tools/fresh_debian.py's pieces that need no root: the chroot wrapper's argument
passing and mounts (with logging stand-ins for unshare, mount and chroot on PATH), and
the refusal to remove a tree with something mounted under it. The whole script runs as
root with ``make fresh-debian-check`` (packaging/README.md)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.fresh_debian import FreshDebianError, mounts_under, remove_tree, run, write_wrapper

LOGGER = """#!/bin/sh
# logs its name and arguments, NUL-terminated, in the next numbered file in $FAKE_LOG
n=$(ls "$FAKE_LOG" | wc -l)
printf '%s\\0' "{name}" "$@" > "$FAKE_LOG/$n"
{tail}
"""

FAKES = {
    # unshare -m --propagation private -- CMD...: runs CMD
    "unshare": 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
    "mount": "exit 0",
    "chroot": "exit 0",
}


def fake_bin(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose unshare, mount and chroot log their argv; the log file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, tail in FAKES.items():
        fake = bin_dir / name
        fake.write_text(LOGGER.format(name=name, tail=tail))
        fake.chmod(0o755)
    log = tmp_path / "calls"
    log.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log)}
    return env, log


def calls(log: Path) -> list[list[str]]:
    files = sorted(log.iterdir(), key=lambda path: int(path.name))
    return [path.read_bytes().decode().split("\0")[:-1] for path in files]


ARGS = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12),
                max_size=4)
"""What a command line can carry: any text but NUL (guest names, paths, options)."""


@settings(max_examples=25, deadline=None)
@given(args=ARGS)
def test_the_wrapper_passes_every_argument_to_the_chroots_virtguests(
    tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> None:
    tmp = tmp_path_factory.mktemp("wrap")
    root = tmp / "a root 'with' $(quotes)\nand a line"
    wrapper = tmp / "virtguests-in-chroot"
    write_wrapper(root, wrapper)
    env, log = fake_bin(tmp)
    run = subprocess.run([str(wrapper), *args], env=env, capture_output=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run
    made = calls(log)
    assert made[0] == ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c",
                       made[0][7], "sh", str(root), *args]
    assert [c[0] for c in made] == ["unshare", "mount", "mount", "mount", "chroot"]
    assert made[1] == ["mount", "-t", "proc", "proc", f"{root}/proc"]
    assert made[2] == ["mount", "--rbind", "/dev", f"{root}/dev"]
    assert made[3] == ["mount", "--rbind", "/tmp", f"{root}/tmp"]
    assert made[4][:3] == ["chroot", str(root), "/usr/bin/env"]
    assert made[4][3].startswith("PATH=/usr/local/sbin:")
    assert made[4][4:] == ["/usr/bin/virtguests", *args]


def test_the_wrapper_stops_at_a_failed_mount(tmp_path: Path) -> None:
    wrapper = tmp_path / "virtguests-in-chroot"
    write_wrapper(tmp_path / "root", wrapper)
    env, log = fake_bin(tmp_path)
    (tmp_path / "bin" / "mount").write_text(LOGGER.format(name="mount", tail="exit 32"))
    run = subprocess.run([str(wrapper), "stop"], env=env, capture_output=True, timeout=60,
                         check=False)
    assert run.returncode == 32, run
    assert [c[0] for c in calls(log)] == ["unshare", "mount"]


def test_mounts_under_sees_proc_and_nothing_in_a_new_directory(tmp_path: Path) -> None:
    assert mounts_under(Path("/proc"))[0] == "/proc"
    assert mounts_under(tmp_path) == []


def test_a_tree_with_a_mount_under_it_is_not_removed(tmp_path: Path) -> None:
    """/proc is always a mount point: removing it is refused before rm starts."""
    with pytest.raises(FreshDebianError, match="still mounted"):
        remove_tree(Path("/proc"))
    assert Path("/proc/self").exists()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    remove_tree(tree)
    remove_tree(tree)
    assert not tree.exists() and os.path.isdir(tmp_path)


def test_a_step_past_its_timeout_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    """A stalled mirror fails the check instead of hanging CI: the step's whole process
    group goes, a child it left in the background included."""
    pid_file = tmp_path / "child"
    with pytest.raises(FreshDebianError, match="did not finish within"):
        run(["sh", "-c", f'sleep 600 & echo $! > {pid_file}; wait'], timeout=3)
    child = int(pid_file.read_text())
    for _ in range(600):  # the kill is asynchronous: up to 60 s for the child to go
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as stat:
            if stat.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} outlived its timeout")


def test_a_failing_step_names_its_exit_status() -> None:
    with pytest.raises(FreshDebianError, match="exited 3"):
        run(["sh", "-c", "exit 3"])
