"""Building the capture initrd: what goes in, checked before dracut runs.

:func:`plan` turns a configuration into a :class:`Plan`: the traced Python
closure (see :mod:`capture.host.closure`), the programs, kernel modules and files
the configured target needs, the normalized configuration with the
production facts recorded (KDUMP_HOSTNAME, KDUMP_KNOWN_HOSTS, where a local
KDUMP_SAVEDIR lives, KDUMP_CA_FILE naming the carried system CA bundle of an
ftps target without one), and a build stamp.  Anything that would only fail at
crash time (no host key, an unusable identity, an unresolvable host, a
missing program, a local target on a file system the capture kernel cannot
mount) is refused here with a :class:`~capture.errors.ConfigError` listing
every problem.

:func:`build` writes the plan to a staging directory and runs dracut with the
``kdump-saver`` module of ``dracut-module/`` (through a private dracut base
directory, so nothing is installed into /usr/lib/dracut) and only the dracut
modules it needs.

Freshness: the build stamp records everything the initrd was built from
(:func:`build_inputs`: our version, the configuration, the kernel release and
the hash of its image, the hostname, the target's host keys, the content of
every file carried such as identities, the driver set, and the storage stack
of local targets: LVM, MD RAID, LUKS, multipath) plus whether it
was built in a chroot.  :func:`freshness` compares it with what a build would
record now and names each input that changed; ``status``, ``load`` and
``start`` all use it.  An initrd built in a chroot (an image being prepared)
describes the image builder's machine (its hardware, network, running
kernel), so it is never called current: ``start`` on the booted machine
rebuilds it.  In a chroot the hostname recorded is the tree's /etc/hostname,
not the build machine's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import transports
from capture import __version__, codecache
from capture.config import options as configuration
from capture.config.options import Config
from capture.config.targeturl import TargetURL, parse_list as parse_targets
from capture.errors import ConfigError, KdumpError, URLError
from capture.host import closure, drivers, netdetect, storage
from capture.net.plan import DHCP_CLIENTS, DHCP_NETCONFIG_MODES, netconfig_applies
from transports.base import TransportOptions

log = logging.getLogger(__name__)

MODULE_NAME = "kdump-saver"
#: dracut-module/ of the source tree through the capture/host/dracut link, or the
#: copy an installed wheel carries there as package data
MODULE_DIR = (Path(__file__).resolve().parent / "dracut").resolve()
DRACUT_BASEDIR = "/usr/lib/dracut"
STAMP_PATH = "/etc/kdump-saver/build-stamp"
KNOWN_HOSTS_PATH = "/etc/kdump-saver/known_hosts"
#: the Debian package of a program a transport runs
PROGRAM_PACKAGES = {"ssh": "openssh-client"}
CA_BUNDLE_PATH = "/etc/kdump-saver/ca-bundle.pem"
"""The host's system CA bundle in the initrd (ftps without KDUMP_CA_FILE)."""
FSTAB_PATH = "/etc/kdump-saver/fstab"
MOUNT_ROOT = "/kdump/mnt"
"""Where the file system of a local KDUMP_SAVEDIR is mounted in the capture kernel."""

#: /bin/sh of a capture initrd that saves from its own /init (dracut's "dash" module)
DASH = "/bin/dash"
#: dracut modules of a capture initrd (plus ours); "systemd" is added on request
BASE_DRACUT_MODULES = ("base",)
#: a systemd initrd: systemd itself, initrd.target and friends, dracut's hooks as units
SYSTEMD_DRACUT_MODULES = ("systemd", "systemd-initrd", "dracut-systemd")
#: file systems that cannot carry a dump across the reboot, or that the
#: capture kernel cannot mount as a local target
NOT_LOCAL_FSTYPES = {
    "tmpfs": "it is in memory and lost at the reboot",
    "ramfs": "it is in memory and lost at the reboot",
    "overlay": "an overlay cannot be mounted from the capture initrd; put KDUMP_SAVEDIR on a disk file system",
    "nfs": "use an nfs:// URL for KDUMP_SAVEDIR",
    "nfs4": "use an nfs:// URL for KDUMP_SAVEDIR",
    "cifs": "use a cifs:// URL for KDUMP_SAVEDIR",
    "smb3": "use a cifs:// URL for KDUMP_SAVEDIR",
    "fuse": "FUSE file systems cannot be mounted from the capture initrd",
    "squashfs": "it is read-only",
    "iso9660": "it is read-only",
}
#: the package that runs only on the production system (this module's own):
#: neither carried into the capture initrd nor imported by the tracer
HOST_PACKAGE = __package__ or "capture.host"
HOST_DIR = Path(__file__).resolve().parent
#: the capture kernel unpacks a zstd initrd about 7 times faster than an xz one (0.08 against 0.55 s
#: natively for the sftp initrd; seconds of downtime under emulation) for 4 % more reserved memory.
#: lz4 (-l -9) unpacks faster still (0.74 against 1.03 s under emulation) but is 17 MB against 12 MB
#: compressed, and the compressed image and the unpacked files share the reservation while the
#: kernel unpacks: at crashkernel=128M the sftp initrd's lz4 unpack ran out of memory.
#: A 1 MiB window (as dracut's xz dictionary): the kernel's decompressor allocates the window while it
#: unpacks, in the reserved memory; level 19's own 8 MiB window saves 4 % of the compressed size
ZSTD_COMPRESS = "zstd -19 -q -T0 --zstd=wlog=20"
FALLBACK_COMPRESS = "xz"


def default_compress() -> str:
    """dracut's ``--compress``: zstd where it is installed, else xz."""
    return ZSTD_COMPRESS if shutil.which("zstd") else FALLBACK_COMPRESS


@dataclass(frozen=True)
class MountRecord:
    """The file system holding a local KDUMP_SAVEDIR, as recorded at build time."""

    source: str        # UUID=..., LABEL=... or a device path
    fstype: str
    options: str
    host_target: str   # its mount point on the production system
    initrd_target: str  # where the capture initrd mounts it

    def fstab_line(self) -> str:
        return f"{self.source} {self.initrd_target} {self.fstype} {self.options} 0 0\n"


@dataclass(frozen=True)
class Plan:
    """Everything the capture initrd will contain, decided before dracut runs."""

    config: Config                      # as read by the administrator
    initrd_config: Config               # as written into the initrd
    kernel: str
    closure: closure.Closure
    programs: Tuple[str, ...]           # must be installed
    optional_programs: Tuple[str, ...]  # installed when present
    kernel_modules: Tuple[str, ...]
    files: Tuple[str, ...]              # identities, CA bundle, scripts: same path in the initrd
    known_hosts: str = ""
    mount: Optional[MountRecord] = None
    """The file system of the first local target (all of them: ``mounts``)."""
    stamp: Dict[str, Any] = field(default_factory=dict)
    mounts: Tuple[MountRecord, ...] = ()
    """The file systems of every local target, each mounted once."""
    storage: storage.Needs = storage.Needs()
    """What assembles the devices under those file systems (dracut modules, rd.* arguments, crypttab)."""
    ca_bundle: str = ""
    """The host's CA bundle, carried to :data:`CA_BUNDLE_PATH` (``""``: none)."""

    @property
    def target(self) -> TargetURL:
        """The first target (the one tried first)."""
        return self.targets[0]

    @property
    def targets(self) -> Tuple[TargetURL, ...]:
        return parse_targets(self.config.savedir)


@dataclass(frozen=True)
class BuildOptions:
    """How to run dracut."""

    output: str
    systemd: bool = False
    compress: str = field(default_factory=default_compress)
    add_drivers: Tuple[str, ...] = ()
    dracut: str = "dracut"
    tmpdir: Optional[str] = None


def default_output(kernel: str) -> str:
    """Where the capture initrd of ``kernel`` goes by default."""
    return f"/boot/initrd-{kernel}-kdump"


def running_kernel() -> str:
    return os.uname().release


def kernel_release(config: Config, requested: Optional[str] = None) -> str:
    """The capture kernel's release: ``requested`` (``--kernel``), else
    KDUMP_KERNELVER, else the running kernel's.  Either may be, as in SUSE's
    kdump, the absolute path of a kernel image: its release is read from the
    image (:func:`capture.host.kexec.image_release`), and
    :func:`capture.host.kexec.kernel_image` loads that very file.  In a
    chroot (an image being prepared) the default is the newest kernel
    installed in the tree, since the running kernel is the build machine's."""
    from capture.host import kexec

    wanted = (requested or config.kernelver).strip()
    if wanted.startswith("/"):
        return kexec.image_release(wanted)
    if wanted:
        return wanted
    if in_chroot():
        installed = installed_kernels()
        if installed:
            log.info("in a chroot: using the newest kernel of the tree, %s (set KDUMP_KERNELVER or --kernel "
                     "for another)", installed[-1])
            return installed[-1]
    return running_kernel()


def installed_kernels(modules_dir: str = "/lib/modules") -> List[str]:
    """Releases with modules installed, oldest first (in version order)."""
    try:
        names = [n for n in os.listdir(modules_dir) if os.path.isfile(os.path.join(modules_dir, n, "modules.dep"))]
    except OSError:
        return []
    return sorted(names, key=_version_key)


def _version_key(release: str) -> Tuple[Tuple[int, object], ...]:
    parts = re.split(r"[.\-+~]", release)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def config_digest(config: Config) -> str:
    """The hash recorded in the build stamp: the normalized configuration
    plus our version.  ``status`` recomputes it to tell a stale initrd."""
    text = configuration.serialize(dataclasses.replace(config, source=None))
    return hashlib.sha256(f"kdump-saver {__version__}\n{text}".encode()).hexdigest()


# --- planning ----------------------------------------------------------------------------------

def plan(config: Config, kernel: str, executable: Optional[str] = None) -> Plan:
    """Check ``config`` for everything that would fail at crash time and
    decide the initrd's content.  Raises :class:`ConfigError` naming every
    problem found."""
    urls = _targets(config)
    found = gather(config, kernel, urls, check_host=True)
    if found.problems:
        raise ConfigError("the capture initrd would not work:\n  " + "\n  ".join(found.problems))
    for line in found.storage.messages():
        log.info("%s", line)
    for line in found.storage.warnings:
        log.warning("%s", line)

    known_hosts = found.known_hosts
    # the initrd has only its own copy of the entries (none when KDUMP_HOST_KEY decides);
    # local targets are where the capture initrd mounts their file systems
    words = config.savedir.split()
    for index, url in enumerate(urls):
        mount = found.mount_of.get(index)
        if mount is not None:
            rel = os.path.relpath(url.path, mount.host_target)
            words[index] = os.path.normpath(os.path.join(mount.initrd_target, rel))
    initrd_config = dataclasses.replace(config, savedir=" ".join(words),
                                        known_hosts=KNOWN_HOSTS_PATH if known_hosts else "",
                                        ca_file=CA_BUNDLE_PATH if found.ca_bundle else config.ca_file)

    trace = trace_closure(config, urls, executable)
    initrd_config = dataclasses.replace(initrd_config, hostname=recorded_hostname(config), source=None)
    # the serialized form must read back unchanged, or the saver would see another config
    configuration.serialize(initrd_config)
    stamp: Dict[str, Any] = build_inputs(config, kernel, found)
    stamp.update({
        "built_in_chroot": in_chroot(),
        "target": " ".join(url.masked() for url in urls),
        "python": trace.interpreter,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return Plan(config=config, initrd_config=initrd_config, kernel=kernel, closure=trace,
                programs=found.programs, optional_programs=found.optional_programs,
                kernel_modules=found.kernel_modules, files=found.files,
                known_hosts=known_hosts, mount=found.mounts[0] if found.mounts else None, stamp=stamp,
                mounts=found.mounts, storage=found.storage, ca_bundle=found.ca_bundle)


def _targets(config: Config) -> Tuple[TargetURL, ...]:
    try:
        return parse_targets(config.savedir)
    except URLError as exc:
        raise ConfigError(f"KDUMP_SAVEDIR: {exc}") from None


@dataclass(frozen=True)
class Gathered:
    """What the system says about a configuration: read by :func:`plan` for
    a build and by :func:`freshness` to compare with a built initrd."""

    known_hosts: str
    """known_hosts lines of every target."""
    mounts: Tuple[MountRecord, ...]
    """The file systems of the local targets, each once."""
    mount_of: Dict[int, MountRecord]
    """Which of those holds target number N."""
    programs: Tuple[str, ...]
    optional_programs: Tuple[str, ...]
    files: Tuple[str, ...]              # identities, CA bundle, scripts: same path in the initrd
    kernel_modules: Tuple[str, ...]
    problems: Tuple[str, ...]
    storage: storage.Needs = storage.Needs()
    ca_bundle: str = ""
    """The host's CA bundle an ftps target without KDUMP_CA_FILE needs."""


def gather(config: Config, kernel: str, urls: "Targets", check_host: bool = False) -> Gathered:
    """Read the host keys, identities, programs, the local targets' file
    systems and the drivers for ``config`` and every target of ``urls``;
    collect every problem instead of raising.  ``check_host`` also resolves
    remote targets' host names."""
    problems: List[str] = []
    if not os.path.isdir(f"/lib/modules/{kernel}"):
        problems.append(f"kernel {kernel}: /lib/modules/{kernel} does not exist "
                        "(set KDUMP_KERNELVER or --kernel to an installed kernel)")
    files: List[str] = []
    ca_bundle = ""
    known_hosts: List[str] = []
    mounts: List[MountRecord] = []
    mount_of: Dict[int, MountRecord] = {}
    for index, url in enumerate(_listed(urls)):
        if check_host and url.is_remote:
            problems.extend(_check_host(url))
        material = transports.initrd_material(url, TransportOptions.from_config(config))
        files.extend(material.files)
        problems.extend(material.problems)
        ca_bundle = ca_bundle or material.ca_bundle
        if material.known_hosts and material.known_hosts not in known_hosts:
            known_hosts.append(material.known_hosts)
        if url.scheme == "file":
            try:
                mount = savedir_mount(url.path)
            except ConfigError as exc:
                problems.append(str(exc))
            else:
                mount_of[index] = mount
                if mount.initrd_target not in [m.initrd_target for m in mounts]:
                    mounts.append(mount)
    programs, optional_programs, prog_files, prog_problems = _programs(config, urls)
    files.extend(prog_files)
    problems.extend(prog_problems)
    stacks = storage_needs(config, urls, mount_of, verify_keys=check_host)
    files.extend(stacks.files)
    problems.extend(stacks.problems)
    mods = kernel_modules(config, urls, mounts, kernel) + list(stacks.kernel_modules)
    return Gathered(known_hosts="".join(known_hosts), mounts=tuple(mounts), mount_of=mount_of,
                    programs=tuple(programs), optional_programs=tuple(optional_programs),
                    files=tuple(dict.fromkeys(files)),
                    kernel_modules=tuple(dict.fromkeys(mods)),
                    problems=tuple(problems), storage=stacks, ca_bundle=ca_bundle)


def storage_needs(config: Config, urls: "Targets", mount_of: Dict[int, MountRecord],
                  verify_keys: bool = True) -> storage.Needs:
    """The storage stack under each local target's file system (see
    :mod:`capture.host.storage`) and what assembles it in the capture kernel
    (``verify_keys``: see :func:`capture.host.storage.needs`)."""
    pairs: List[Tuple[storage.Stack, str]] = []
    done: List[str] = []
    listed = _listed(urls)
    for index, mount in sorted(mount_of.items()):
        if mount.initrd_target in done:
            continue
        done.append(mount.initrd_target)
        stack = mount_stack(mount, listed[index].path)
        if stack is not None:
            top = stack.top
            wait = (f"/dev/mapper/{top.name}" if top is not None and top.kind in ("lvm", "crypt", "multipath")
                    else _source_path(mount))
            pairs.append((stack, wait))
    return storage.needs(pairs, verify_keys=verify_keys)


def local_storage(config: Config) -> storage.Needs:
    """The storage stacks of the local targets that can be found now, for
    ``check-config`` (a target whose file system cannot be found is left out:
    ``build-initrd`` reports it)."""
    urls = _targets(config)
    mount_of: Dict[int, MountRecord] = {}
    for index, url in enumerate(urls):
        if url.scheme == "file":
            try:
                mount_of[index] = savedir_mount(url.path, warn=False)
            except ConfigError as exc:
                log.debug("%s", exc)
    return storage_needs(config, urls, mount_of)


def mount_stack(mount: MountRecord, path: str = "") -> Optional[storage.Stack]:
    """The block device stack under ``mount`` (None: not found in sysfs)."""
    kname = storage.kname_of(mount.host_target, _mount_device(mount))
    return storage.detect(kname, path or mount.host_target) if kname else None


def _source_path(mount: MountRecord) -> str:
    """The device path of a fstab source (``UUID=x`` -> ``/dev/disk/by-uuid/x``)."""
    if mount.source.startswith("/"):
        return mount.source
    tag, _, value = mount.source.partition("=")
    return f"/dev/disk/by-{tag.lower()}/{value}"


Targets = Union[TargetURL, Sequence[TargetURL]]
"""One target or the list of KDUMP_SAVEDIR."""


def _listed(urls: Targets) -> Tuple[TargetURL, ...]:
    return (urls,) if isinstance(urls, TargetURL) else tuple(urls)


def _network_target(urls: Targets) -> TargetURL:
    """The target that decides about the network: the first remote one, else the first."""
    listed = _listed(urls)
    return next((url for url in listed if url.is_remote), listed[0])


# --- freshness -----------------------------------------------------------------------------------

#: the inputs of a build, in the order :func:`freshness` reports changes
INPUT_KEYS = ("version", "config_sha256", "kernel", "kernel_image_sha256", "hostname",
              "known_hosts_sha256", "files_sha256", "drivers", "storage")
#: inputs added later, with the value a stamp without them stands for (a plain disk has no storage stack)
INPUT_DEFAULTS: Dict[str, Any] = {"storage": []}


def build_inputs(config: Config, kernel: str, found: Gathered) -> Dict[str, Any]:
    """What an initrd built now from ``config`` for ``kernel`` would be made
    of, as recorded in its build stamp (the keys of :data:`INPUT_KEYS`)."""
    known_hosts = found.known_hosts
    return {
        "version": __version__,
        "config_sha256": config_digest(config),
        "kernel": kernel,
        "kernel_image_sha256": file_sha256(kernel_image_path(kernel)),
        "hostname": recorded_hostname(config),
        "known_hosts_sha256": hashlib.sha256(known_hosts.encode()).hexdigest() if known_hosts else "",
        "files_sha256": {path: file_sha256(path) for path in found.files + (found.ca_bundle,) if path},
        "drivers": sorted(found.kernel_modules),
        "storage": found.storage.identities,
    }


def current_inputs(config: Config, kernel: str) -> Dict[str, Any]:
    """:func:`build_inputs` for the system as it is now (no name resolution).
    Raises :class:`ConfigError` when KDUMP_SAVEDIR is not a URL."""
    return build_inputs(config, kernel, gather(config, kernel, _targets(config)))


def kernel_image_path(kernel: str) -> str:
    return f"/boot/vmlinuz-{kernel}"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's content; ``""`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def changed_inputs(stamp: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Each input of ``current`` that differs from the build ``stamp``, in words."""
    changes: List[str] = []
    built_by = stamp.get("version", "?")
    for key in INPUT_KEYS:
        if key not in stamp and key in INPUT_DEFAULTS and INPUT_DEFAULTS[key] == current.get(key):
            continue
        if key not in stamp:
            changes.append(f"{_INPUT_LABELS[key]}: not recorded (built by kdump-saver {built_by})")
            continue
        old, new = stamp[key], current.get(key)
        if old != new:
            changes.extend(_describe_change(key, old, new, current))
    return changes


_INPUT_LABELS = {
    "version": "kdump-saver version", "config_sha256": "configuration", "kernel": "kernel",
    "kernel_image_sha256": "kernel image", "hostname": "hostname", "known_hosts_sha256": "known host keys",
    "files_sha256": "files carried", "drivers": "drivers", "storage": "storage stack",
}


def _describe_change(key: str, old: Any, new: Any, current: Dict[str, Any]) -> List[str]:
    if key == "version":
        return [f"kdump-saver version {old} -> {new}"]
    if key == "config_sha256":
        return ["the configuration changed"]
    if key == "kernel":
        return [f"kernel {old} -> {new}"]
    if key == "kernel_image_sha256":
        path = kernel_image_path(str(current.get("kernel")))
        return [f"kernel image {path} is missing" if not new else f"kernel image {path} changed"]
    if key == "hostname":
        return [f"hostname {old} -> {new}"]
    if key == "known_hosts_sha256":
        return ["the target's known host keys changed"]
    if key == "files_sha256":
        old_files = old if isinstance(old, dict) else {}
        new_files = new if isinstance(new, dict) else {}
        changes = []
        for path in sorted(set(old_files) | set(new_files)):
            if path not in new_files:
                changes.append(f"{path} is no longer needed")
            elif path not in old_files:
                changes.append(f"{path} is new")
            elif old_files[path] != new_files[path]:
                changes.append(f"{path} changed" if new_files[path] else f"{path} cannot be read")
        return changes or ["files carried changed"]
    if key == "drivers":
        old_set, new_set = set(old or ()), set(new or ())
        diff = [f"+{m}" for m in sorted(new_set - old_set)] + [f"-{m}" for m in sorted(old_set - new_set)]
        return [f"drivers {' '.join(diff) or 'changed'}"]
    if key == "storage":
        return [f"storage stack {' + '.join(old or ()) or 'plain disk'} -> {' + '.join(new or ()) or 'plain disk'}"]
    return [f"{key} changed"]


@dataclass(frozen=True)
class Freshness:
    """Whether the capture initrd at ``path`` matches what a build would make now.

    ``state`` is ``current``, ``stale`` (``reasons`` names each input that
    changed), ``missing`` or ``unknown`` (no stamp inside; ``reasons`` says why)."""

    path: str
    state: str
    reasons: Tuple[str, ...] = ()
    stamp: Optional[Dict[str, Any]] = None

    @property
    def current(self) -> bool:
        return self.state == "current"

    def describe(self) -> str:
        """One line for ``status``: ``current (built ...)``, ``stale: why; why (built ...)``, ..."""
        built = ""
        if self.stamp:
            built = f"built {self.stamp.get('built', '?')} by kdump-saver {self.stamp.get('version', '?')}"
            if self.stamp.get("kernel"):
                built += f" for {self.stamp['kernel']}"
        if self.state == "current":
            return f"current ({built})"
        if self.state == "stale":
            return f"stale: {'; '.join(self.reasons)} ({built})"
        if self.state == "unknown":
            return f"unknown ({'; '.join(self.reasons)})"
        return self.state


#: why an initrd built in a chroot is never current
CHROOT_REASON = ("built in a chroot (an image being prepared): its drivers and host facts are the "
                 "build machine's; 'kdump-saver start' rebuilds it on the booted system")


def judge(path: str, stamp: Optional[Dict[str, Any]], current: Dict[str, Any]) -> Freshness:
    """Compare a build ``stamp`` (None: none found) with ``current`` inputs."""
    if stamp is None:
        return Freshness(path, "unknown", ("no kdump-saver build stamp inside",))
    reasons = changed_inputs(stamp, current)
    if stamp.get("built_in_chroot"):
        reasons.insert(0, CHROOT_REASON)
    return Freshness(path, "stale" if reasons else "current", tuple(reasons), stamp)


def freshness(config: Config, kernel: str, path: str) -> Freshness:
    """Whether the capture initrd at ``path`` is what a build from ``config``
    for ``kernel`` would make now, and if not, which inputs changed."""
    if not os.path.exists(path):
        return Freshness(path, "missing")
    stamp = read_stamp(path)
    if stamp is None:
        return judge(path, None, {})
    try:
        current = current_inputs(config, kernel)
    except (KdumpError, OSError) as exc:
        return Freshness(path, "unknown", (f"cannot tell what a build would use now: {exc}",), stamp)
    return judge(path, stamp, current)


def recorded_hostname(config: Config) -> str:
    """The hostname the capture kernel names dumps with: KDUMP_HOSTNAME, else
    this system's short hostname (in a chroot: the tree's /etc/hostname)."""
    return config.hostname or system_hostname()


def system_hostname(proc_root: str = "/proc/1/root") -> str:
    if in_chroot(proc_root):
        try:
            with open("/etc/hostname") as f:
                name = f.read().split()
        except OSError:
            name = []
        return name[0].split(".")[0] if name and name[0].split(".")[0] else "localhost"
    return _short_hostname()


def in_chroot(proc_root: str = "/proc/1/root", init_mountinfo: str = "/proc/1/mountinfo") -> bool:
    """Whether this process runs in a chroot: its root directory is not
    init's (``proc_root``).  Without /proc (a bare chroot) that is assumed.
    When init's root cannot be examined, the file system mounted at "/"
    (device and directory, from mountinfo) is compared with init's: none
    at all means a chroot into a plain directory; init's mountinfo
    unreadable too means not a chroot."""
    try:
        ours = os.stat("/")
        inits = os.stat(proc_root)
    except PermissionError:
        init_root = _root_mount(init_mountinfo)
        return init_root is not None and _root_mount("/proc/self/mountinfo") != init_root
    except OSError:
        return True
    return (ours.st_dev, ours.st_ino) != (inits.st_dev, inits.st_ino)


def _root_mount(mountinfo: str) -> Optional[Tuple[str, str]]:
    """(device, directory of that file system) of the mount at "/" in a
    mountinfo file, or None (no such mount, or unreadable)."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:   # the last mount at "/" is the one on top
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            found = (fields[2], fields[3])
    return found


def allowed_roots(config: Config, urls: Targets) -> List[str]:
    """The optional third-party packages the configured targets need."""
    roots = list(dict.fromkeys(p for url in _listed(urls) for p in transports.initrd_profile(url).packages))
    if config.dumpformat == "raw":
        roots.append("lz4")
    elif config.dumpformat != "none":
        roots.append("lzo")  # kdump-saver's own collector, when makedumpfile cannot be used
    return roots


def trace_closure(config: Config, urls: Targets, executable: Optional[str] = None) -> closure.Closure:
    """Trace the saver's imports for these targets (see :mod:`capture.host.closure`)."""
    from transports import module_for

    capture_dir = HOST_DIR.parent
    root = str(capture_dir.parent)
    transports_dir = capture_dir.parent / "transports"
    modules = list(dict.fromkeys(module_for(url.scheme) for url in _listed(urls)))
    ours = [f for f in closure.python_sources(str(capture_dir)) if not Path(f).is_relative_to(HOST_DIR)]
    ours += [str(transports_dir / "__init__.py"), str(transports_dir / "base.py")]
    own_transports = [str(transports_dir / (m.rpartition(".")[2] + ".py")) for m in modules]
    ours += own_transports
    ours = [f for f in ours if os.path.isfile(f)]
    # the transport modules' siblings they import (e.g. sftp -> sshauth)
    for name in sorted(closure.static_imports([f for f in own_transports if os.path.isfile(f)])):
        if name.startswith("transports.") and name.count(".") == 1:
            extra = transports_dir / (name.partition(".")[2] + ".py")
            if extra.is_file() and str(extra) not in ours:
                ours.append(str(extra))
    required = ["capture.cli", "capture.save.sequence", "transports", *modules]
    from capture.cli import COMMANDS
    required += [f"capture.commands.{name}" for name in COMMANDS]
    roots = allowed_roots(config, urls)
    for url in _listed(urls):
        required.extend(transports.initrd_profile(url).imports)
    if config.dumpformat == "raw":
        required.append("lz4.frame")
    elif config.dumpformat != "none":
        required += ["capture.save.pycollector", "lzo"]
    own_modules = sorted({_module_of(f, root) for f in ours})
    optional = [m for m in own_modules + sorted(closure.static_imports(ours)) + list(closure.RUNTIME_STDLIB)
                if not is_host_module(m)]
    path = [root] + _dependency_path(roots, root)
    own_files = ours + [p for p in (importlib.util.cache_from_source(f) for f in ours)
                        if os.path.isfile(p)]
    return closure.trace(list(dict.fromkeys(required)), optional, roots, path,
                         executable=executable, always=own_files)


def is_host_module(name: str) -> bool:
    """Whether the module ``name`` belongs to the production side (never in the initrd)."""
    return name == HOST_PACKAGE or name.startswith(HOST_PACKAGE + ".")


def _module_of(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _dependency_path(roots: Sequence[str], own_root: str) -> List[str]:
    """sys.path entries holding the dependencies (the running environment's
    site directories: the one that holds paramiko etc.)."""
    entries: List[str] = []
    import sysconfig
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and os.path.isdir(p) and p not in entries and p != own_root:
            entries.append(p)
    for name in roots:
        try:
            p = closure.package_root(name)
        except KdumpError:
            continue
        if p not in entries and p != own_root:
            entries.append(p)
    return entries


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def _check_host(url: TargetURL) -> List[str]:
    try:
        socket.getaddrinfo(url.host, url.effective_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return [f"KDUMP_SAVEDIR: cannot resolve the host {url.host!r} of {url.masked()}: "
                f"{getattr(exc, 'strerror', None) or exc}"]
    return []


def savedir_mount(path: str, warn: bool = True) -> MountRecord:
    """Find the file system that holds ``path`` (or its nearest existing
    parent) and how the capture kernel mounts it: by UUID, else LABEL, else
    the device path (``warn``: say that a device path may differ there)."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    try:
        out = subprocess.run(["findmnt", "-J", "-T", probe, "-o", "SOURCE,TARGET,FSTYPE,OPTIONS,UUID,LABEL"],
                             capture_output=True, text=True, check=True).stdout
        fs = json.loads(out)["filesystems"][0]
    except FileNotFoundError:
        raise ConfigError("findmnt (util-linux) is needed to find the file system of KDUMP_SAVEDIR") from None
    except (subprocess.CalledProcessError, ValueError, KeyError, IndexError):
        raise ConfigError(f"KDUMP_SAVEDIR={path}: cannot find the file system that holds it") from None
    fstype = fs.get("fstype") or ""
    why = NOT_LOCAL_FSTYPES.get(fstype) or NOT_LOCAL_FSTYPES.get(fstype.partition(".")[0])
    if why:
        raise ConfigError(f"KDUMP_SAVEDIR={path} is on a {fstype} file system ({fs.get('target')}): {why}")
    source = fs.get("source") or ""
    uuid, label = fs.get("uuid"), fs.get("label")
    if not uuid and source.startswith("/dev/"):
        uuid = _blkid(source, "UUID")
        label = label or _blkid(source, "LABEL")
    if uuid:
        spec = f"UUID={uuid}"
    elif label:
        spec = f"LABEL={label}"
    elif source.startswith("/dev/"):
        spec = source.split("[", 1)[0]
        log.log(logging.WARNING if warn else logging.DEBUG, "the file system of %s has no UUID or label; the "
                "capture kernel mounts %s by its device name, which may differ there", path, spec)
    else:
        raise ConfigError(f"KDUMP_SAVEDIR={path}: its file system {source!r} ({fstype}) is not on a block device")
    host_target = fs.get("target") or "/"
    initrd_target = os.path.normpath(MOUNT_ROOT + (host_target if host_target != "/" else ""))
    return MountRecord(source=spec, fstype=fstype, options=_mount_options(host_target, fs.get("options") or ""),
                       host_target=host_target, initrd_target=initrd_target)


#: mount options of the running system worth keeping in the capture kernel:
#: the ones that select what is mounted (btrfs subvolumes), not how
KEPT_MOUNT_OPTIONS = ("subvol=", "subvolid=")


def _mount_options(target: str, options: str) -> str:
    """Mount options for the capture kernel: /etc/fstab's for that mount
    point when it has an entry, else ``rw`` plus :data:`KEPT_MOUNT_OPTIONS`
    from the options the kernel shows (many of those, like ``seclabel``,
    cannot be given back to mount)."""
    fstab = subprocess.run(["findmnt", "-s", "-n", "-o", "OPTIONS", "--mountpoint", target],
                           capture_output=True, text=True)
    chosen = fstab.stdout.strip().splitlines()[0].split(",") if fstab.returncode == 0 and fstab.stdout.strip() \
        else [o for o in options.split(",") if o.startswith(KEPT_MOUNT_OPTIONS)]
    keep = [o for o in chosen if o and o not in ("ro", "rw", "defaults", "noauto", "nofail", "auto")
            and not o.startswith(("x-", "context=", "fscontext=", "defcontext=", "rootcontext=", "comment="))]
    return ",".join(["rw"] + keep)


def _blkid(device: str, tag: str) -> Optional[str]:
    try:
        out = subprocess.run(["blkid", "-o", "value", "-s", tag, device], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    value = out.stdout.strip()
    return value or None


def _which(name: str) -> Optional[str]:
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")


def _programs(config: Config, urls: Targets) -> Tuple[List[str], List[str], List[str], List[str]]:
    """(programs, optional programs, script files, problems)."""
    problems: List[str] = []
    programs: List[str] = []
    # reboot through systemctl would bring libsystemd-shared (about 6 MB): the
    # saver and boot.sh reboot through sysrq, "reboot -f" is only their fallback
    optional = ["sync", "blkid"] + [n for n in ("reboot", "poweroff") if not _is_systemctl(n)]
    files: List[str] = []
    for name in ("makedumpfile", "ip", "mount", "umount"):
        path = _which(name)
        if path is None:
            what = "iproute2" if name == "ip" else name
            problems.append(f"{name} is not installed (install {what}); the capture initrd needs it")
        else:
            programs.append(path)
    if netconfig_applies(_network_target(urls), config.netconfig) and config.netconfig.mode in DHCP_NETCONFIG_MODES:
        client = dhcp_client()
        if client is None:
            problems.append(f"KDUMP_NETCONFIG={config.netconfig.mode or 'auto'} may need DHCP, but no DHCP "
                            f"client is installed (one of {', '.join(DHCP_CLIENTS[4])})")
        else:
            programs.append(client)
            if config.netconfig.mode in ("auto", "dhcp6", "auto6"):
                client6 = dhcp_client(6)
                if client6:
                    optional.append(client6)
    for url in _listed(urls):
        profile = transports.initrd_profile(url)
        optional.extend(profile.optional_programs)
        for name in profile.programs:
            path = _which(name)
            if path is None:
                problems.append(f"{name} is not installed; the {url.scheme}:// target needs it in the capture "
                                f"initrd (install {PROGRAM_PACKAGES.get(name, name)})")
            else:
                programs.append(path)
    for name in config.required_programs:
        path = _which(name)
        if path is None:
            problems.append(f"KDUMP_REQUIRED_PROGRAMS: {name} is not installed or not executable")
        else:
            programs.append(path)
    for option, command in (("KDUMP_PRESCRIPT", config.prescript), ("KDUMP_POSTSCRIPT", config.postscript),
                            ("KDUMP_TRANSFER", config.transfer)):
        words = shlex.split(command) if command.strip() else []
        if not words:
            continue
        path = _which(words[0])
        if path is None:
            problems.append(f"{option}: {words[0]} is not an executable program on this system")
        elif os.path.isabs(words[0]):
            files.append(path)
        else:
            programs.append(path)
    return list(dict.fromkeys(programs)), list(dict.fromkeys(optional)), files, problems


def _is_systemctl(name: str) -> bool:
    """Whether the program ``name`` is systemctl under another name."""
    path = _which(name)
    return path is not None and os.path.basename(os.path.realpath(path)) == "systemctl"


def dhcp_client(version: int = 4) -> Optional[str]:
    """The DHCP client the capture kernel will pick for IPv``version``: the
    first installed in its order of preference."""
    for name in DHCP_CLIENTS[version]:
        path = _which(name)
        if path:
            return path
    return None


def kernel_modules(config: Config, urls: Targets,
                   mounts: Union[Optional[MountRecord], Sequence[MountRecord]],
                   kernel: Optional[str] = None) -> List[str]:
    """Kernel modules the capture kernel needs: the NIC driver(s) when a
    target is remote, the block driver and file system of each local one, nfs.
    Device drivers are the running kernel's plus those ``kernel`` (the
    target, default the running one) has as modules for the devices'
    modaliases (see :mod:`capture.host.drivers`)."""
    mods: List[str] = []
    index = _module_index(kernel or running_kernel())
    network = _network_target(urls)
    if netconfig_applies(network, config.netconfig):
        for iface in _physical_interfaces():
            mods.extend(_device_modules(f"/sys/class/net/{iface}/device", index))
        mods.extend(_netplan_modules(config, network))
        mods.append("af_packet")
    for url in _listed(urls):
        mods.extend(transports.initrd_profile(url).kernel_modules)
    for mount in ([] if mounts is None else [mounts] if isinstance(mounts, MountRecord) else mounts):
        mods.append(mount.fstype)
        dev = _mount_device(mount)
        if dev:
            mods.extend(_device_modules(f"/sys/class/block/{os.path.basename(dev)}", index))
        stack = mount_stack(mount)
        if stack is not None and stack.stacked:
            # LVM, MD, LUKS are virtual devices: the drivers are those of the disks under them
            for leaf in stack.leaves():
                mods.extend(_device_modules(f"/sys/class/block/{leaf.kname}", index))
    return list(dict.fromkeys(m for m in mods if m))


def _module_index(kernel: str) -> "Optional[drivers.ModuleIndex]":
    try:
        return drivers.ModuleIndex.load(kernel)
    except KdumpError as exc:
        log.warning("only the running kernel's drivers go into the initrd: %s", exc)
        return None


def _physical_interfaces() -> List[str]:
    """Every interface backed by a device: their drivers are small, and the
    capture kernel may name or order them differently."""
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if os.path.exists(f"/sys/class/net/{n}/device"))
    except OSError:
        return []


def _netplan_modules(config: Config, url: TargetURL) -> List[str]:
    """bonding, 8021q, bridge when the network plan of the target needs them."""
    try:
        plan = netdetect.resolve_netconfig(config.netconfig, url.host or None)
    except (KdumpError, OSError) as exc:
        log.debug("no network plan for the kernel modules: %s", exc)
        return []
    return ((["bonding"] if plan.bonds else []) + (["8021q"] if plan.vlans else [])
            + (["bridge"] if plan.bridges else []))


def _mount_device(mount: MountRecord) -> Optional[str]:
    if mount.source.startswith("/dev/"):
        return os.path.realpath(mount.source)
    tag, _, value = mount.source.partition("=")
    link = f"/dev/disk/by-{tag.lower()}/{value}"
    return os.path.realpath(link) if os.path.exists(link) else None


def _device_modules(sys_path: str, index: "Optional[drivers.ModuleIndex]" = None) -> List[str]:
    """The driver modules of a device and its parents (sysfs walk), plus
    the modules ``index``'s kernel has for their modaliases."""
    mods: List[str] = drivers.device_modules(sys_path, index) if index is not None else []
    try:
        here = Path(os.path.realpath(sys_path))
    except OSError:
        return mods
    while str(here).startswith("/sys/devices") and here != Path("/sys/devices"):
        module = here / "driver" / "module"
        if module.exists():
            mods.append(os.path.basename(os.path.realpath(module)))
        here = here.parent
    return mods


# --- building ----------------------------------------------------------------------------------

def early_modules(p: Plan) -> Optional[List[str]]:
    """The drivers the capture initrd's own /init loads by name before it saves (those
    carried plus ``--add-drivers``; udev would load the same ones, found by the devices'
    aliases, after handling every device), or None when dracut's init and udev must run:
    a local target's file system not found by UUID, LABEL or a plain /dev node, an LVM,
    MD RAID, LUKS or multipath stack to assemble, or a KDUMP_PRESCRIPT, KDUMP_POSTSCRIPT
    or KDUMP_TRANSFER (an administrator's script may expect udev's /dev/disk links)."""
    c, s = p.config, p.storage
    mounts = p.mounts or ((p.mount,) if p.mount is not None else ())
    plain = all(m.source.startswith(("UUID=", "LABEL=")) or
                (m.source.startswith("/dev/") and not m.source.startswith(_ASSEMBLED_DEVICES))
                for m in mounts)
    stacked = any(stack.stacked for stack in s.stacks) or s.dracut_modules or s.cmdline or s.wait_devices \
        or s.crypttab
    if not plain or stacked or c.prescript or c.postscript or c.transfer:
        return None
    return [*p.kernel_modules, *p.stamp.get("add_drivers", ())]


def saves_before_udev(p: Plan) -> bool:
    """Whether the capture initrd saves from its own /init, before udev (:func:`early_modules`)."""
    return early_modules(p) is not None


#: device nodes that only exist once something (udev rules, dracut modules) assembled them
_ASSEMBLED_DEVICES = ("/dev/disk/", "/dev/mapper/", "/dev/md", "/dev/dm-", "/dev/mpath")


def write_stage(p: Plan, stage: Path) -> None:
    """Write the staging directory module-setup.sh reads."""
    stage.mkdir(parents=True, exist_ok=True)

    def lines(name: str, items: Sequence[str]) -> None:
        (stage / name).write_text("".join(f"{i}\n" for i in items))

    lines("python-files", p.closure.carried_files)
    # byte code only: <path>.pyc staged under bytecode/, installed at <path>.pyc
    lines("python-bytecode", closure.compile_sources(p.closure.interpreter, p.closure.sources,
                                                      str(stage / "bytecode")))
    lines("python-dirs", p.closure.directories)
    recorded = codecache.record(p.closure.interpreter, p.closure.python_path, sorted(p.closure.modules),
                                str(stage / "dataclass-code"))
    log.debug("%d dataclass methods compiled for the capture kernel", recorded)
    lines("programs", p.programs)
    lines("programs-optional", p.optional_programs)
    lines("kernel-modules", p.kernel_modules)
    early = early_modules(p)
    if early is not None:
        lines("early-modules", early)
    lines("files", p.files)
    conf = stage / "kdump.conf"
    conf.touch(mode=0o600)
    conf.write_text(configuration.serialize(p.initrd_config))
    (stage / "build-stamp").write_text(json.dumps(p.stamp, indent=1, sort_keys=True) + "\n")
    if p.known_hosts:
        (stage / "known_hosts").write_text(p.known_hosts)
    if p.ca_bundle:
        shutil.copyfile(p.ca_bundle, stage / "ca-bundle.pem")
    mounts = p.mounts or ((p.mount,) if p.mount is not None else ())
    if mounts:
        (stage / "fstab").write_text("".join(m.fstab_line() for m in mounts))
    if p.storage.cmdline:
        lines("storage-cmdline", [" ".join(p.storage.cmdline)])
    if p.storage.wait_devices:
        lines("wait-devices", p.storage.wait_devices)
    if p.storage.crypttab:
        tab = stage / "crypttab"
        tab.touch(mode=0o600)
        lines("crypttab", p.storage.crypttab)
    python_path = ":".join(p.closure.python_path)
    launcher = (
        "#!/bin/sh\n"
        "# kdump-saver in the capture initrd: the traced interpreter and closure\n"
        f"PYTHONPATH={shlex.quote(python_path)}\n"
        "PYTHONDONTWRITEBYTECODE=1\n"
        f"{codecache.ENVIRONMENT}={codecache.INITRD_PATH}\n"
        f"export PYTHONPATH PYTHONDONTWRITEBYTECODE {codecache.ENVIRONMENT}\n"
        f"exec {shlex.quote(p.closure.interpreter)} -S -s -m capture.cli \"$@\"\n")
    (stage / "kdump-saver").write_text(launcher)
    (stage / "kdump-saver").chmod(0o755)


def private_basedir(parent: Path, module_dir: Path = MODULE_DIR,
                    system_basedir: str = DRACUT_BASEDIR) -> Path:
    """A dracut base directory that is the system one plus our module, made
    of symlinks (dracut reads modules only from ``$dracutbasedir/modules.d``)."""
    if not os.path.isfile(os.path.join(system_basedir, "dracut-init.sh")):
        raise KdumpError(f"dracut is not installed ({system_basedir}/dracut-init.sh is missing); "
                         "install dracut-core (and dracut-network)")
    base = parent / "dracut"
    base.mkdir()
    for entry in os.listdir(system_basedir):
        if entry != "modules.d":
            os.symlink(os.path.join(system_basedir, entry), base / entry)
    mods = base / "modules.d"
    mods.mkdir()
    for entry in os.listdir(os.path.join(system_basedir, "modules.d")):
        if not entry[2:] == MODULE_NAME:
            os.symlink(os.path.join(system_basedir, "modules.d", entry), mods / entry)
    os.symlink(module_dir, mods / f"99{MODULE_NAME}")
    return base


def dracut_command(p: Plan, options: BuildOptions, basedir: Path) -> List[str]:
    modules = (list(BASE_DRACUT_MODULES) + (list(SYSTEMD_DRACUT_MODULES) if options.systemd else [])
               + list(p.storage.dracut_modules) + [MODULE_NAME])
    if not options.systemd and saves_before_udev(p) and os.path.exists(DASH):
        # /bin/sh runs only our own /init, boot.sh and the DHCP hook (no administrator's
        # script): dash instead of bash (1.5 MB less of the reservation with its libtinfo)
        modules.insert(0, "dash")
    cmd = [options.dracut, "--force", "--quiet", "--no-hostonly", "--no-hostonly-cmdline",
           "--no-early-microcode", "--conf", "/dev/null", "--confdir", str(basedir / "no-conf.d"),
           "--modules", " ".join(modules), "--compress", options.compress,
           "--kver", p.kernel]
    if options.add_drivers:
        cmd += ["--add-drivers", " ".join(options.add_drivers)]
    if options.tmpdir:
        cmd += ["--tmpdir", options.tmpdir]
    cmd.append(options.output)
    return cmd


def build(p: Plan, options: BuildOptions) -> str:
    """Run dracut for ``p``; return the initrd path."""
    if shutil.which(options.dracut) is None and not os.path.exists(options.dracut):
        raise KdumpError("dracut is not installed; install dracut-core (Debian: apt-get install dracut-core "
                         "dracut-network)")
    out_dir = os.path.dirname(os.path.abspath(options.output))
    if not os.path.isdir(out_dir):
        raise KdumpError(f"--output {options.output}: the directory {out_dir} does not exist")
    # what start reuses when it rebuilds this initrd
    p = dataclasses.replace(p, stamp=dict(p.stamp, init="systemd" if options.systemd else "shell",
                                          add_drivers=list(options.add_drivers)))
    with tempfile.TemporaryDirectory(prefix="kdump-saver-initrd.") as tmp:
        work = Path(tmp)
        stage = work / "stage"
        write_stage(p, stage)
        basedir = private_basedir(work)
        (basedir / "no-conf.d").mkdir()
        env = dict(os.environ, KDUMP_SAVER_STAGE=str(stage), dracutbasedir=str(basedir))
        partial = options.output + ".new"
        cmd = dracut_command(p, dataclasses.replace(options, output=partial), basedir)
        log.info("building %s for kernel %s (%s target)", options.output, p.kernel, p.target.scheme)
        early = early_modules(p)
        if early is not None and not options.systemd:
            log.info("the capture initrd saves before udev starts (no storage stack to assemble, no scripts); "
                     "it loads these drivers by name: %s", " ".join(early) or "none")
        log.debug("running %s", " ".join(shlex.quote(c) for c in cmd))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise KdumpError(f"dracut failed (exit status {proc.returncode}):\n{tail}")
        for line in proc.stderr.splitlines():
            if "kdump-saver" in line or "ERROR" in line or "FAILED" in line:
                log.warning("dracut: %s", line)
        os.chmod(partial, 0o600)
        os.replace(partial, options.output)
    return options.output


def read_stamp(initrd: str) -> Optional[Dict[str, Any]]:
    """The build stamp inside ``initrd`` (via lsinitrd), or None."""
    if not os.path.exists(initrd):
        return None
    try:
        out = subprocess.run(["lsinitrd", "-f", STAMP_PATH.lstrip("/"), initrd],
                             capture_output=True, text=True, errors="replace", timeout=120)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    try:
        data = json.loads(out.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
