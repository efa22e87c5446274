"""Arming the machine: ``kdump-saver start`` and ``stop``, as the
``kdump-saver.service`` unit runs them at boot, at shutdown and on CPU or
memory hotplug.

:func:`start` takes :data:`LOCK_PATH` (``flock``), so a boot-time start, a
hotplug reload and an administrator's command run one after the other:
whoever comes second waits and then finds the initrd current.  It rebuilds
the capture initrd when :func:`capture.host.initrd.freshness` says it is
missing or stale (naming each input that changed), with the same init flavour
and extra drivers as the initrd it replaces, and then loads the capture
kernel with ``kexec -p``, which replaces a loaded one in one step.
:func:`stop` unloads it under the same lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from capture.config import options as configuration
from capture.errors import KdumpError
from capture.host import initrd, install, kexec

log = logging.getLogger(__name__)

LOCK_PATH = "/run/kdump-saver.lock"
LOCK_TIMEOUT = 1800.0
"""Seconds a start waits for another one (which may be building an initrd)."""
_POLL = 0.2


class LockTimeout(KdumpError):
    """Another kdump-saver start or stop held the lock for too long."""


@contextlib.contextmanager
def locked(path: str = LOCK_PATH, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the
    block.  Waits up to ``timeout`` seconds, saying once who holds it (the
    holder writes its pid into the file); then raises :class:`LockTimeout`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise KdumpError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise KdumpError(f"cannot lock {path}: {exc.strerror}") from None
            if not said:
                log.info("waiting for %s (held by %s)", path, _holder(fd))
                said = True
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{path} is still held by {_holder(fd)} after {timeout:.0f} s")
            time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock


def _holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"process {pid}" if pid.isdigit() else "another process"


@dataclass(frozen=True)
class StartOptions:
    """What ``kdump-saver start`` was asked to do."""

    config: Optional[str] = None       # configuration file (None: the default)
    kernel: Optional[str] = None       # kernel release (None: KDUMP_KERNELVER, else the running one)
    initrd: Optional[str] = None       # capture initrd (None: /boot/initrd-VERSION-kdump)
    systemd: Optional[bool] = None     # initrd flavour for a rebuild (None: as the one replaced)
    rebuild: bool = False              # rebuild even when current
    dry_run: bool = False              # everything but the kexec call
    lock: str = LOCK_PATH
    lock_timeout: float = LOCK_TIMEOUT


@dataclass(frozen=True)
class StartResult:
    freshness: initrd.Freshness        # before the start
    built: bool
    command: kexec.LoadCommand
    loaded: bool                       # False under dry_run


def start(options: StartOptions) -> StartResult:
    """Rebuild the capture initrd when it is missing or stale, then load the
    capture kernel, all under the lock."""
    with locked(options.lock, options.lock_timeout):
        cfg = configuration.load(options.config)
        if install.network_ordering_missing(cfg):
            log.warning("KDUMP_SAVEDIR is remote but %s does not wait for network-online.target; "
                        "run 'kdump-saver enable' again", install.UNIT_PATH)
        kernel = initrd.kernel_release(cfg, options.kernel)
        path = options.initrd or initrd.default_output(kernel)
        if not options.dry_run and kexec.reserved_bytes() == 0:
            # nothing to build for: fail before spending a minute on dracut
            raise KdumpError("no memory is reserved for a capture kernel: add crashkernel=SIZE to the kernel "
                             "command line and reboot ('kdump-saver status' shows the change for the boot "
                             "loader)")
        # the command line first: a network that cannot be described fails before a build
        cmd = kexec.load_command(cfg, kernel, path, kexec.read_cmdline(), kexec.network_arguments(cfg))
        fresh = initrd.freshness(cfg, kernel, path)
        built = False
        if options.rebuild or not fresh.current:
            why = "asked to" if fresh.current else (fresh.describe() if fresh.state != "stale"
                                                   else "; ".join(fresh.reasons))
            log.info("building the capture initrd %s (%s)", path, why)
            _rebuild(cfg, kernel, path, fresh, options.systemd)
            built = True
        else:
            log.info("the capture initrd %s is current", path)
        if options.dry_run:
            return StartResult(fresh, built, cmd, loaded=False)
        kexec.load(cmd)
        log.info("capture kernel %s loaded with %s", cmd.kernel, cmd.initrd)
        return StartResult(fresh, built, cmd, loaded=True)


def _rebuild(cfg: configuration.Config, kernel: str, path: str, fresh: initrd.Freshness,
             systemd: Optional[bool]) -> str:
    old = fresh.stamp or {}
    if systemd is None:
        systemd = old.get("init") == "systemd"
    add_drivers: Tuple[str, ...] = tuple(str(d) for d in old.get("add_drivers") or ())
    plan = initrd.plan(cfg, kernel)
    return initrd.build(plan, initrd.BuildOptions(output=path, systemd=systemd, add_drivers=add_drivers))


UNLOAD = ("kexec", "-p", "-u")


def stop(dry_run: bool = False, lock: str = LOCK_PATH, lock_timeout: float = LOCK_TIMEOUT) -> Tuple[str, ...]:
    """Unload the capture kernel (:data:`UNLOAD`) under the lock; return the
    command (not run under ``dry_run``)."""
    with locked(lock, lock_timeout):
        if not dry_run:
            kexec.unload()
            log.info("capture kernel unloaded")
    return UNLOAD
