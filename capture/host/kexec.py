"""Loading the capture kernel: its command line and the ``kexec -p`` call.

The command line is built as SUSE's kdump builds it: the running kernel's
``/proc/cmdline`` without the arguments that must not reach a capture
kernel (the root file system, the crash reservation, hibernation resume,
CPU and memory limits, dracut ``rd.*`` switches, a previous network setup),
plus ``irqpoll reset_devices rootfstype=ramfs``, SUSE's memory-saving
arguments (:data:`MEMORY_SAVING`) and, on x86, ``disable_cpu_apicid=`` the
boot CPU's initial APIC ID (a capture kernel with KDUMP_CPUS > 1 that runs on
another CPU must not send INIT to the boot CPU), ``rd.shell=0
rd.emergency=reboot`` (unless KDUMP_CONTINUE_ON_ERROR or KDUMP_IMMEDIATE_REBOOT
is false: then the administrator wants a shell), ``nr_cpus=KDUMP_CPUS
panic=1`` and the network arguments.  KDUMP_COMMANDLINE replaces the whole
generated line; KDUMP_COMMANDLINE_APPEND is added at the end, and an argument
in it whose key the generated line also has replaces the generated one: an
``ip=`` replaces the network arguments, ``numa=on`` or ``cgroup_disable=``
(empty) turns a memory-saving argument off.
"""
from __future__ import annotations

import gzip
import logging
import os
import re
import shlex
import struct
import subprocess
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from capture.config import verbose
from capture.config.options import Config
from capture.config.targeturl import parse as parse_url
from capture.errors import ConfigError, KdumpError
from capture.net.plan import netconfig_applies, split_cmdline, to_cmdline

log = logging.getLogger(__name__)

#: arguments of the running kernel that the capture kernel must not get
DROPPED = frozenset({
    "root", "rootflags", "rootfstype", "rootwait", "rootdelay", "ro", "rw", "init", "rdinit",
    "resume", "resume_offset", "noresume", "hibernate",
    "crashkernel", "crashkernel_low", "initrd", "BOOT_IMAGE",
    "nr_cpus", "maxcpus", "possible_cpus", "mem", "memmap", "hugepages", "hugepagesz", "default_hugepagesz",
    "panic", "irqpoll", "reset_devices", "kexec_jump_back_entry",
    "splash", "showopts", "quiet", "systemd.unit", "single", "emergency",
    "ip", "ifname", "vlan", "bond", "bridge", "nameserver", "bootdev", "netroot", "rd.neednet", "rd.route",
    "cgroup_disable", "numa", "acpi_no_memhotplug", "disable_cpu_apicid",
})
#: dracut switches of the production initrd (rd.lvm.lv=, rd.luks.uuid=, rd.break, ...)
DROPPED_PREFIXES = ("rd.",)
#: what every capture kernel gets.  rootfstype=ramfs: without root= the
#: kernel unpacks the initramfs into a tmpfs limited to half of the memory,
#: so a 60 MB initrd would need a 250 MB reservation; a ramfs has no limit
#: (nothing mounts a root file system in the capture kernel)
ADDED = ("irqpoll", "reset_devices", "rootfstype=ramfs")
#: dracut failing before the saver runs reboots instead of waiting in an
#: emergency shell that nobody watches
REBOOT_ON_INITRD_FAILURE = ("rd.shell=0", "rd.emergency=reboot")
#: what openSUSE's kdump (init/load.sh) adds to save memory in the capture kernel: no memory
#: cgroup accounting, one NUMA node, no ACPI memory hotplug.  bench/crash_cycle.py (1 GiB guest,
#: one CPU, one node): the smallest crashkernel= stays 144M (file) and 176M (sftp) in 16 MB steps,
#: but at 128M the saver got 17.6 MB instead of 14.1 MB before the OOM killer struck; more on
#: machines with many CPUs and nodes.  SUSE's udev.children-max is left out (one worker gained
#: 0.8 MB there and serializes device probing)
MEMORY_SAVING: Tuple[str, ...] = ("cgroup_disable=memory", "numa=off", "acpi_no_memhotplug")
CPUINFO = "/proc/cpuinfo"
NETWORK_KEYS = ("ip", "ifname", "vlan", "bond", "bridge", "nameserver", "rd.route", "rd.neednet")
CRASH_SIZE = "/sys/kernel/kexec_crash_size"
CRASH_LOADED = "/sys/kernel/kexec_crash_loaded"
LOCKDOWN = "/sys/kernel/security/lockdown"


def _key(arg: str) -> str:
    return arg.split("=", 1)[0]


def filter_cmdline(cmdline: str) -> List[str]:
    """The running kernel's arguments that a capture kernel may keep."""
    kept: List[str] = []
    for arg in split_cmdline(cmdline):
        if arg == "--":
            break   # the rest is for the production system's init
        key = _key(arg)
        if key in DROPPED or key.startswith(DROPPED_PREFIXES):
            continue
        kept.append(arg)
    return kept


def join(args: Sequence[str]) -> str:
    out = []
    for a in args:
        if any(c.isspace() for c in a):
            key, eq, value = a.partition("=")
            a = f'{key}="{value}"' if eq else f'"{a}"'
        out.append(a)
    return " ".join(out)


def capture_cmdline(config: Config, running: str, network: Sequence[str] = (),
                    boot_apicid: Optional[int] = None) -> str:
    """The capture kernel's command line for ``config``, given the running
    kernel's (``running``, as in /proc/cmdline), the network arguments and the
    boot CPU's initial APIC ID (x86; None elsewhere)."""
    append = split_cmdline(config.commandline_append)
    if config.commandline.strip():
        args = split_cmdline(config.commandline)
    else:
        args = filter_cmdline(running) + list(ADDED) + list(MEMORY_SAVING)
        if boot_apicid is not None:
            args.append(f"disable_cpu_apicid={boot_apicid}")
        if config.continue_on_error and config.immediate_reboot:
            args.extend(REBOOT_ON_INITRD_FAILURE)
        if config.cpus > 0:
            args.append(f"nr_cpus={config.cpus}")
        args.append("panic=1")
        overridden = {_key(a) for a in append}
        args = [a for a in args if _key(a) not in overridden]
        if "ip" not in overridden:
            args.extend(network)
    args.extend(append)
    return join(args)


def boot_apicid(cpuinfo: str = CPUINFO) -> Optional[int]:
    """The ``initial apicid`` of the first processor in /proc/cpuinfo (x86 only), as SUSE's load.sh reads it."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "initial apicid" and value.strip().isdigit():
                    return int(value.strip())
    except OSError:
        pass
    return None


def network_arguments(config: Config) -> List[str]:
    """The dracut network arguments describing the production network for
    the target (:mod:`capture.host.netdetect`), or none when the target is local
    and the network is not forced."""
    from capture.host import netdetect

    url = next((u for u in config.targets if u.is_remote), config.targets[0])  # the first remote target
    if not netconfig_applies(url, config.netconfig):
        return []
    plan = netdetect.resolve_netconfig(config.netconfig, url.host or None)
    return list(to_cmdline(plan))


@dataclass(frozen=True)
class LoadCommand:
    kernel: str
    initrd: str
    cmdline: str
    extra: Sequence[str] = ()

    def argv(self) -> List[str]:
        return ["kexec", "-p", self.kernel, f"--initrd={self.initrd}", f"--append={self.cmdline}", *self.extra]

    def __str__(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv())


#: kernel image names, in the order SUSE's mkdumprd tries them
IMAGE_NAMES = ("vmlinuz", "image", "Image", "vmlinux")
MODULES_DIR = "/usr/lib/modules"
BOOT_DIR = "/boot"


def kernel_image(version: str, requested: str = "", modules_dir: str = MODULES_DIR,
                 boot_dir: str = BOOT_DIR) -> str:
    """The image of the capture kernel ``version`` (a release, see
    :func:`capture.host.initrd.kernel_release`).

    ``requested`` is what the administrator asked for (``--kernel`` or
    KDUMP_KERNELVER): an absolute path is the image itself.  Otherwise, as
    SUSE's mkdumprd does, the first existing file of ``MODULES_DIR/VERSION/NAME``
    and ``/boot/NAME-VERSION`` for NAME in vmlinuz, image, Image, vmlinux;
    ``/boot/vmlinuz-VERSION`` when none exists (loading then says it is missing)."""
    if requested.startswith("/"):
        return requested
    for name in IMAGE_NAMES:
        for path in (os.path.join(modules_dir, version, name), os.path.join(boot_dir, f"{name}-{version}")):
            if os.path.isfile(path):
                return path
    return os.path.join(boot_dir, f"vmlinuz-{version}")


_BANNER = re.compile(rb"Linux version (\S+) \(")
_NAMED = re.compile(r"^(?:%s)-(.+?)(?:\.gz)?$" % "|".join(IMAGE_NAMES))
#: how much of an uncompressed image (or of a gzip-compressed one, once inflated) is searched for the banner
BANNER_SEARCH_BYTES = 512 << 20


def image_release(path: str) -> str:
    """The kernel release an image file holds, read as SUSE's get_kernel_version does: from
    the x86 boot header (bzImage), else from the ``Linux version RELEASE (...)`` banner of an
    uncompressed (vmlinux, arm64 Image) or gzip-compressed image, else from the file's name
    (``vmlinuz-RELEASE``, ``/usr/lib/modules/RELEASE/vmlinuz``).  Raises :class:`ConfigError`
    when the file is missing or tells nothing."""
    if not os.path.isfile(path):
        raise ConfigError(f"KDUMP_KERNELVER: the kernel image {path} does not exist")
    try:
        release = _release_from_content(path)
    except OSError as exc:
        raise ConfigError(f"KDUMP_KERNELVER: cannot read the kernel image {path}: {exc.strerror or exc}") from None
    if release:
        return release
    name = os.path.basename(os.path.realpath(path))
    match = _NAMED.match(name)
    if match:
        return match.group(1)
    parent = os.path.basename(os.path.dirname(os.path.realpath(path)))
    if name in IMAGE_NAMES and os.path.dirname(os.path.dirname(os.path.realpath(path))) == MODULES_DIR:
        return parent
    raise ConfigError(f"KDUMP_KERNELVER: cannot tell the kernel release of {path}: it is not a bzImage, "
                      "holds no 'Linux version' banner and its name is not vmlinuz-RELEASE; give the release "
                      "instead (like 6.1.0-28-amd64)")


def _release_from_content(path: str) -> Optional[str]:
    with open(path, "rb") as f:
        head = f.read(0x400)
        release = _bzimage_release(f, head)
        if release:
            return release
        f.seek(0)
        if head[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=f) as inflated:
                try:
                    return _banner_release(inflated)
                except (OSError, EOFError, zlib.error):
                    return None
        return _banner_release(f)


def _bzimage_release(f, head: bytes) -> Optional[str]:
    """The release in an x86 boot header: ``HdrS`` at 0x202, the version string at
    0x200 + the 16-bit ``kernel_version`` field at 0x20e."""
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    if offset == 0:
        return None
    f.seek(0x200 + offset)
    text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace").split()
    return text[0] if text else None


def _banner_release(stream) -> Optional[str]:
    tail = b""
    seen = 0
    while seen < BANNER_SEARCH_BYTES:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        seen += len(chunk)
        window = tail + chunk
        match = _BANNER.search(window)
        if match:
            return match.group(1).decode("ascii", "replace")
        tail = window[-256:]
    return None


def load_command(config: Config, kernel: str, initrd: str, running_cmdline: str,
                 network: Sequence[str] = (), requested: str = "") -> LoadCommand:
    """The ``kexec -p`` call for release ``kernel``; ``requested`` is ``--kernel`` as given
    (default KDUMP_KERNELVER), which may be the image's path."""
    extra = split_cmdline(config.kexec_options)
    if config.verbose & verbose.LOAD_DEBUG and not {"-d", "--debug"} & set(extra):
        extra.insert(0, "-d")   # KDUMP_VERBOSE 16: kexec explains what it loads where
    if lockdown_active() and "-s" not in extra and "--kexec-file-syscall" not in extra:
        extra.insert(0, "-s")   # kexec_load is refused under lockdown; kexec_file_load is not
    return LoadCommand(kernel=kernel_image(kernel, requested or config.kernelver), initrd=initrd,
                       cmdline=capture_cmdline(config, running_cmdline, network, boot_apicid()),
                       extra=tuple(extra))


def lockdown_active() -> bool:
    try:
        with open(LOCKDOWN) as f:
            return "[none]" not in f.read()
    except OSError:
        return False


def read_cmdline(path: str = "/proc/cmdline") -> str:
    with open(path) as f:
        return f.read().strip()


def reserved_bytes() -> int:
    """Bytes reserved for the capture kernel (crashkernel=), 0 if none."""
    try:
        with open(CRASH_SIZE) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def is_loaded() -> Optional[bool]:
    """Whether a capture kernel is loaded; None when the kernel cannot tell."""
    try:
        with open(CRASH_LOADED) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def run(argv: Sequence[str]) -> None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True)
    except FileNotFoundError:
        raise KdumpError("kexec is not installed (install kexec-tools)") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise KdumpError(f"{argv[0]} {argv[1]} failed (exit status {proc.returncode})"
                         + (f": {detail[-1]}" if detail else ""))


def load(cmd: LoadCommand) -> None:
    """Load the capture kernel; checks the reservation and files first."""
    if reserved_bytes() == 0:
        raise KdumpError("no memory is reserved for a capture kernel: add crashkernel=SIZE to the kernel "
                         "command line and reboot ('kdump-saver calibrate' suggests a size)")
    for what, path in (("kernel", cmd.kernel), ("initrd", cmd.initrd)):
        if not os.path.isfile(path):
            hint = " (run 'kdump-saver build-initrd')" if what == "initrd" else " (set KDUMP_KERNELVER)"
            raise KdumpError(f"the capture {what} {path} does not exist{hint}")
    run(cmd.argv())


def unload() -> None:
    run(["kexec", "-p", "-u"])
