"""`make demo`: stop, status and start on a simulated host, no libvirt needed.

The fake virsh (virtguests-fake-virsh) plays a small host from
examples/demo-host.yaml; everything runs in a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from virtguests.testing import write_shim  # noqa: E402

CONFIG = """\
# the same variables as /etc/default/libvirt-guests
URIS=default
ON_BOOT=start
ON_SHUTDOWN=suspend
SYNC_TIME=1
"""


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="virtguests-demo-"))
    try:
        host = work / "host.yaml"
        shutil.copy(REPO / "examples" / "demo-host.yaml", host)
        (work / "libvirt-guests").write_text(CONFIG)
        bin_dir = work / "bin"
        write_shim(bin_dir)
        env = dict(os.environ)
        env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                   VIRTGUESTS_FAKE_HOST=str(host),
                   VIRTGUESTS_FAKE_LOG=str(work / "calls.jsonl"),
                   PYTHONPATH=str(REPO))
        base = [sys.executable, "-m", "virtguests", "--config", str(work / "libvirt-guests"),
                "--state-dir", str(work / "state")]

        def show(*args: str) -> None:
            print(f"\n$ virtguests {' '.join(args)}", flush=True)
            proc = subprocess.run([*base, *args], env=env, stdin=subprocess.DEVNULL)
            print(f"(exit status {proc.returncode})", flush=True)

        def virsh(*args: str) -> None:
            print(f"\n$ virsh {' '.join(args)}", flush=True)
            clean = {k: v for k, v in env.items() if k != "VIRTGUESTS_FAKE_LOG"}
            subprocess.run([str(bin_dir / "virsh"), *args], env=clean, check=False)

        print(f"Simulated host: {REPO / 'examples' / 'demo-host.yaml'}")
        print(f"Config:\n{CONFIG}")
        virsh("list", "--all")
        show("--dry-run", "stop")
        show("stop")
        print(f"\nList file {work / 'state' / 'libvirt-guests'}:")
        print((work / "state" / "libvirt-guests").read_text(), end="")
        show("status")
        virsh("list", "--all")
        show("start")
        show("status")
        virsh("list", "--all")
        calls = [json.loads(line) for line in (work / "calls.jsonl").read_text().splitlines()]
        print(f"\nvirsh processes started by virtguests: {len(calls)}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
