"""Build a tiny bootable Linux guest (kernel + busybox initramfs) from Debian packages.

Why: end-to-end tests need real guests that react to ACPI power-button presses
(``virsh shutdown``) and survive ``virsh managedsave``/restore, but must boot in
about two seconds without disks, network or downloads at test time beyond the
first (cached) build.  The kernel and busybox come from ``apt-get download`` +
``dpkg -x`` into a cache directory; nothing is installed on the host.

The guest's ``/init`` understands two kernel command line options:

``vg.delay=N``
    wait N seconds after a power-button press before ``poweroff -f``.
``vg.ignore=1``
    log power-button presses but never power off (a "stuck" guest).

It prints ``vg: ready`` on the serial console once it waits for presses.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid as uuidlib
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

READY_LINE = "vg: ready"

# Kernel modules the init script needs, relative to lib/modules/<kver>/kernel.
_WANTED_MODULES = ("evdev", "button")

# The guest's /init.  Busybox sh; this is guest code, not a virsh call.
INIT_SCRIPT = r"""#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
[ -e /dev/null ] || mknod /dev/null c 1 3
mkdir -p /dev/input

delay=0
ignore=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vg.delay=*) delay="${arg#vg.delay=}" ;;
        vg.ignore=*) ignore="${arg#vg.ignore=}" ;;
    esac
done

for mod in $(cat /lib/modules/order); do
    insmod "/lib/modules/$mod.ko" || echo "vg: insmod $mod failed"
done

# Event devices whose name is "Power Button" (ACPI fixed button and/or PNP0C0C).
find_buttons() {
    awk '
        /^N: Name=/ { pb = ($0 ~ /"Power Button"/) }
        /^H: Handlers=/ && pb {
            for (i = 2; i <= NF; i++) if ($i ~ /^event[0-9]+$/) print $i
        }
        /^$/ { pb = 0 }
    ' /proc/bus/input/devices
}

buttons=""
tries=0
while [ -z "$buttons" ] && [ "$tries" -lt 50 ]; do
    buttons=$(find_buttons)
    [ -n "$buttons" ] || { sleep 0.1; tries=$((tries + 1)); }
done
if [ -z "$buttons" ]; then
    echo "vg: no power button found"
    cat /proc/bus/input/devices
fi

watch_button() {
    dev="/dev/input/$1"
    if [ ! -c "$dev" ]; then
        # devtmpfs missing: create the node from sysfs major:minor.
        mm=$(cat "/sys/class/input/$1/dev")
        mknod "$dev" c "${mm%%:*}" "${mm##*:}"
    fi
    while :; do
        # One read returns all queued input_event records (24 bytes each on
        # x86_64): press+release+syn of one button press usually arrive together.
        if ! dd if="$dev" of=/dev/null bs=4096 count=1 2>/dev/null; then
            sleep 1
            continue
        fi
        if [ "$ignore" = 1 ]; then
            echo "vg: power button pressed, ignoring"
            continue
        fi
        echo "vg: power button pressed, powering off in ${delay}s"
        sleep "$delay"
        echo "vg: poweroff"
        sync
        poweroff -f
    done
}

for b in $buttons; do
    watch_button "$b" &
done
echo "vg: buttons=$buttons delay=$delay ignore=$ignore"
echo "vg: ready"
# PID 1 must never exit.
while :; do
    sleep 3600
done
"""


class GuestImageError(RuntimeError):
    """Building the guest image failed (apt, dpkg or missing files)."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """Paths of a built guest: kernel and initramfs."""

    kernel: Path
    initrd: Path
    kernel_version: str


def cache_dir() -> Path:
    """Where built images live; reused across runs so only the first run downloads."""
    env = os.environ.get("VIRTGUESTS_REALHOST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtguests-realhost"


def _run(argv: list[str], *, cwd: Optional[Path] = None, timeout: float = 600) -> str:
    """Run a build command; raise GuestImageError with its output on failure."""
    try:
        proc = subprocess.run(
            argv,
            cwd=str(cwd) if cwd else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestImageError(f"{argv!r} failed: {exc}") from exc
    if proc.returncode != 0:
        raise GuestImageError(f"{argv!r} exited {proc.returncode}:\n{proc.stdout}")
    return proc.stdout


def _resolve_kernel_package() -> str:
    """Name of the concrete linux-image package behind the linux-image-amd64 metapackage."""
    override = os.environ.get("VIRTGUESTS_REALHOST_KERNEL_PKG")
    if override:
        return override
    out = _run(["apt-cache", "depends", "--important", "linux-image-amd64"], timeout=60)
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+-amd64)\s*$", line)
        if m:
            return m.group(1)
    raise GuestImageError(
        "cannot resolve linux-image-amd64 (run `apt-get update`?):\n" + out
    )


def _download_and_extract(package: str, dest: Path, workdir: Path) -> None:
    """apt-get download a .deb and unpack it with dpkg -x (no installation on the host)."""
    dl = workdir / ("dl-" + package)
    dl.mkdir(parents=True, exist_ok=True)
    # apt drops privileges to _apt for downloads; a world-writable dir avoids a warning.
    dl.chmod(0o777)
    try:
        _run(["apt-get", "download", "-q", package], cwd=dl, timeout=900)
    except GuestImageError as exc:
        raise GuestImageError(
            f"{exc}\n(hint: `apt-get update` may be needed, see .ci/install-realhost-deps)"
        ) from exc
    debs = sorted(dl.glob("*.deb"))
    if len(debs) != 1:
        raise GuestImageError(f"expected one .deb for {package}, got {debs}")
    _run(["dpkg", "-x", str(debs[0]), str(dest)], timeout=600)
    shutil.rmtree(dl, ignore_errors=True)


def _extract_vmlinux(bzimage: Path, config: Optional[Path]) -> Optional[bytes]:
    """Uncompressed ELF kernel from a bzImage, or None if it cannot be used.

    Why: under TCG, SeaBIOS loading plus in-guest xz decompression of the
    bzImage takes ~3 s; QEMU boots an ELF vmlinux with a PVH note directly,
    which cuts boot-to-ready from ~5 s to ~2 s.
    """
    if config is None or "CONFIG_PVH=y" not in config.read_text(errors="replace"):
        return None
    import lzma

    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start >= 0:
        try:
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = dec.decompress(data[start:])
        except lzma.LZMAError:
            return None
        if out[:4] == b"\x7fELF":
            return out
    start = data.find(b"\x1f\x8b\x08\x00")
    if start >= 0:
        import zlib

        try:
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[start:])
        except zlib.error:
            return None
        if out[:4] == b"\x7fELF":
            return out
    return None


def _module_depends(ko: Path) -> list[str]:
    """Read ``depends=`` from a module's .modinfo strings (no kmod needed on the host)."""
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def _decompress_module(src: Path) -> bytes:
    """Return the module bytes, decompressing .ko.xz/.ko.zst/.ko.gz at build time."""
    if src.suffix == ".ko":
        return src.read_bytes()
    if src.suffix == ".xz":
        import lzma

        return lzma.decompress(src.read_bytes())
    if src.suffix == ".gz":
        return gzip.decompress(src.read_bytes())
    if src.suffix == ".zst":
        return subprocess.run(
            ["zstd", "-dc", str(src)], stdout=subprocess.PIPE, check=True, timeout=60
        ).stdout
    raise GuestImageError(f"unknown module compression: {src}")


def _collect_modules(modroot: Path) -> list[tuple[str, bytes]]:
    """Wanted modules plus their dependencies, in load order, as (name, bytes)."""
    index: dict[str, Path] = {}
    for p in modroot.rglob("*.ko*"):
        name = p.name.split(".ko")[0].replace("-", "_")
        index.setdefault(name, p)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        if key not in index:
            raise GuestImageError(f"module {name} not found under {modroot}")
        data = _decompress_module(index[key])
        tmp = modroot.parent / f".{key}.ko.tmp"
        tmp.write_bytes(data)
        try:
            deps = _module_depends(tmp)
        finally:
            tmp.unlink()
        for dep in deps:
            visit(dep)
        order.append((key, data))

    for wanted in _WANTED_MODULES:
        visit(wanted)
    return order


class _CpioWriter:
    """Minimal cpio "newc" writer (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        namez = name.encode() + b"\x00"
        fields = [
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0,
        ]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(namez)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\x00" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _build_initrd(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """gzip'd newc cpio with busybox, /init and the modules."""
    w = _CpioWriter()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
              "lib", "lib/modules"):
        w.dir(d)
    # The kernel opens /dev/console before running /init; it must exist in the archive.
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3)
    w.file("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    for name, data in modules:
        w.file(f"lib/modules/{name}.ko", data)
    w.file("lib/modules/order", "".join(f"{n}\n" for n, _ in modules).encode())
    return gzip.compress(w.finish(), compresslevel=6, mtime=0)


def _recipe_hash() -> str:
    """Changes to the init script or module list invalidate the cached initramfs."""
    h = hashlib.sha256(INIT_SCRIPT.encode())
    h.update(repr(_WANTED_MODULES).encode())
    h.update(b"v2-pvh")
    return h.hexdigest()[:16]


def build_guest_image(cache: Optional[Path] = None) -> GuestImage:
    """Return the cached guest image, building it first if needed.

    A cached build is reused without asking apt anything, so an offline CI job
    with a restored cache works; delete the cache dir to pick up a newer kernel.
    """
    cache = Path(cache) if cache else cache_dir()
    image_dir = cache / "image"
    meta_path = image_dir / "meta.json"
    recipe = _recipe_hash()
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        img = GuestImage(
            kernel=image_dir / "vmlinuz",
            initrd=image_dir / "initrd.img",
            kernel_version=meta.get("kernel_version", "?"),
        )
        if meta.get("recipe") == recipe and img.kernel.exists() and img.initrd.exists():
            return img

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=str(cache)) as tmp_s:
        tmp = Path(tmp_s)
        tmp.chmod(0o755)
        kpkg = _resolve_kernel_package()
        _download_and_extract(kpkg, tmp / "kernel", tmp)
        _download_and_extract("busybox-static", tmp / "busybox", tmp)

        vmlinuz = sorted((tmp / "kernel" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise GuestImageError(f"no vmlinuz in {kpkg}")
        kver = vmlinuz[0].name[len("vmlinuz-"):]
        modroot = tmp / "kernel" / "lib" / "modules" / kver / "kernel"
        modules = _collect_modules(modroot)
        busybox = (tmp / "busybox" / "bin" / "busybox").read_bytes()
        initrd = _build_initrd(busybox, modules)

        # Publish atomically so concurrent builders never see half an image.
        out = tmp / "image"
        out.mkdir()
        configs = sorted((tmp / "kernel" / "boot").glob("config-*"))
        vmlinux = _extract_vmlinux(vmlinuz[0], configs[0] if configs else None)
        if vmlinux is not None:
            (out / "vmlinuz").write_bytes(vmlinux)
        else:
            shutil.copyfile(vmlinuz[0], out / "vmlinuz")
        (out / "initrd.img").write_bytes(initrd)
        (out / "meta.json").write_text(
            json.dumps({"kernel_version": kver, "kernel_package": kpkg, "recipe": recipe})
        )
        out.chmod(0o755)
        old = cache / f"image.old.{os.getpid()}"
        if image_dir.exists():
            image_dir.rename(old)
        out.rename(image_dir)
        shutil.rmtree(old, ignore_errors=True)
    return GuestImage(image_dir / "vmlinuz", image_dir / "initrd.img", kver)


def kvm_usable() -> bool:
    """True if /dev/kvm can be opened and answers KVM_GET_API_VERSION (12)."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def default_domain_type() -> str:
    """``qemu`` (TCG) unless VIRTGUESTS_REALHOST_ACCEL is ``kvm`` or ``auto`` with usable KVM.

    TCG is the default so that CI runners without nested virtualisation behave
    the same as developer machines.
    """
    accel = os.environ.get("VIRTGUESTS_REALHOST_ACCEL", "tcg").lower()
    if accel == "kvm" or (accel == "auto" and kvm_usable()):
        return "kvm"
    return "qemu"


def domain_xml(
    name: str,
    *,
    console_log: Path,
    image: Optional[GuestImage] = None,
    delay: int = 0,
    ignore: bool = False,
    uuid: Optional[str] = None,
    memory_mib: int = 96,
    domain_type: Optional[str] = None,
    disks: tuple[str, ...] = (),
) -> str:
    """Libvirt domain XML for a tiny guest.

    No disks, no network, no USB/balloon so managedsave works; the serial
    console appends to ``console_log`` (append so a restore does not truncate it).
    ``disks``: raw image files attached as virtio disks (vda, vdb, ...), which the
    guest never uses (it runs from its initramfs): e.g. a file only one daemon's
    mount namespace has, which no peer can open (a guest that cannot migrate).
    """
    image = image or build_guest_image()
    dtype = domain_type or default_domain_type()
    cmdline = f"console=ttyS0 quiet panic=-1 mitigations=off vg.delay={int(delay)}"
    if ignore:
        cmdline += " vg.ignore=1"
    uuid_s = uuid or str(uuidlib.uuid4())
    disk_xml = "".join(
        f"""    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={quoteattr(path)}/>
      <target dev='vd{chr(ord("a") + index)}' bus='virtio'/>
    </disk>
""" for index, path in enumerate(disks))
    return f"""<domain type={quoteattr(dtype)}>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid_s)}</uuid>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
{disk_xml}    <serial type='file'>
      <source path={quoteattr(str(console_log))} append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(str(console_log))} append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
"""
