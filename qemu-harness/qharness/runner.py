"""One case of the matrix from start to verdict.

For each case: start the server on 127.0.0.1 (or make the ext4 disk of a file
target and mount it on the host, so that ``kdump-saver build-initrd`` records
its UUID), write the kdump configuration, build the capture initrd with
``kdump-saver build-initrd``, build the production initramfs, boot it under
QEMU; the production system runs ``kdump-saver load`` and crashes; wait for
the capture kernel to save and reboot (``-no-reboot`` ends QEMU), then verify
on the host.  Every console log is kept in the case's directory.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from qharness import guest, production, servers, verify
from qharness.cases import STATIC_ADDRESS, Case
from qharness.kernel import GuestKernel, discover

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CAPTURE_DRIVERS = ("virtio_pci", "virtio_net", "virtio_blk")
"""What the production system loads from the capture initrd's tree (those it has)."""
DISK_BUS = "nvme"
"""How a disk case's image reaches the guest.  The initrd is built on this
machine, where the image is a loop device: no driver of the guest's disk can
be found here, and the harness passes no --add-drivers.  Debian's cloud kernel
has its NVMe driver built in, as a machine whose disks are NVMe needs none in
the initrd."""
SAVED_LINE = r"kdump-saver: dump saved"
GUEST_TIMEOUT = 420.0
REBOOT_ON_INITRD_FAILURE = ("rd.shell=0", "rd.emergency=reboot")
"""What ``kdump-saver load`` must put on the capture command line (the matrix keeps the defaults)."""


class HarnessError(RuntimeError):
    """The harness itself could not set a case up (not a verdict on kdump-saver)."""


@dataclass
class Crash:
    """One crash of a case: its console log and what was measured."""

    index: int
    marker: str
    run: guest.GuestRun
    panic_at: Optional[float] = None
    saved_at: Optional[float] = None
    ended_at: Optional[float] = None
    verdict: Optional[verify.Verdict] = None
    problems: List[str] = field(default_factory=list)

    @property
    def panic_to_saved(self) -> Optional[float]:
        end = self.saved_at if self.saved_at is not None else self.ended_at
        return None if self.panic_at is None or end is None else end - self.panic_at


@dataclass
class CaseResult:
    """Everything a case produced; ``problems`` empty means it passed."""

    case: Case
    workdir: Path
    crashes: List[Crash] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    dumps: List[str] = field(default_factory=list)
    build_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"case {self.case.name}: {'PASS' if self.ok else 'FAIL'} ({self.case.description})"]
        for c in self.crashes:
            t = c.panic_to_saved
            span = "panic to saved dump" if c.saved_at is not None else "panic to the end of QEMU"
            lines.append(f"  crash {c.index}: console log {c.run.log_path}"
                         + (f", {span} {t:.1f} s" if t is not None else ""))
        for d in self.dumps:
            lines.append(f"  dump: {d}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def console_logs(self) -> str:
        return "\n".join(f"===== console log of crash {c.index} ({c.run.log_path}) =====\n{c.run.text}"
                         for c in self.crashes)


def kdump_saver_command() -> List[str]:
    """The kdump-saver of the environment running the harness."""
    script = Path(sys.executable).with_name("kdump-saver")
    return [str(script)] if script.exists() else [sys.executable, "-m", "capture.cli"]


def run_case(case: Case, workdir: Path, kernel: Optional[GuestKernel] = None,
             crashkernel: Optional[str] = None) -> CaseResult:
    """Run ``case`` in ``workdir`` (created, kept afterwards for inspection)."""
    with Session(case, workdir, kernel) as session:
        for index in range(1, case.crashes + 1):
            crash = session.crash(index, crashkernel)
            if crash.run.timed_out and session.result.problems:
                break
        return session.result


class Session:
    """A case's target and capture initrd, ready for one or more crashes.

    Entering starts the server (or makes and mounts the disk), writes the
    kdump configuration and builds the capture initrd with ``kdump-saver
    build-initrd``; :meth:`crash` boots, crashes and checks, as often as asked.
    """

    def __init__(self, case: Case, workdir: Path, kernel: Optional[GuestKernel] = None) -> None:
        self.case = case
        self.workdir = workdir
        self.kernel = kernel or discover()
        self.result = CaseResult(case, workdir)
        self.guest_initrd = f"/boot/initrd-{self.kernel.version}-kdump"
        self.initrd = workdir / f"initrd-{self.kernel.version}-kdump"
        self.load: List[str] = []
        self.config_text = ""
        self.start_time = datetime.now(timezone.utc).replace(microsecond=0)
        self._stack = contextlib.ExitStack()
        self.target: _Target

    def __enter__(self) -> "Session":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)       # the FTP and Samba users must reach their directories below
        try:
            self.target = self._stack.enter_context(_target(self.case, self.workdir))
            settings = _settings(self.case, self.kernel, self.target)
            conf = self.workdir / "kdump.conf"
            conf.touch(mode=0o600)
            conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
            started = time.monotonic()
            # The NIC driver is found by build-initrd itself (this machine's NIC, resolved against
            # the guest kernel's modules.alias); a disk case's disk is NVMe (see DISK_BUS).
            _kdump_saver("build-initrd", "--config", str(conf), "--kernel", self.kernel.version,
                         "--output", str(self.initrd))
            self.result.build_seconds = time.monotonic() - started
            self.target.detach()
            self.config_text = conf.read_text()
            self.load = load_commands()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def crash(self, index: int, crashkernel: Optional[str] = None) -> Crash:
        """Boot, crash, let the capture kernel save, and check the result."""
        case, kernel, target = self.case, self.kernel, self.target
        marker = f"qharness-marker-{case.name}-{index}-{secrets.token_hex(6)}"
        prod = production.build(production.ProductionSpec(
            kernel=kernel, capture_initrd=self.initrd, capture_initrd_guest_path=self.guest_initrd,
            load_commands=self.load, marker=marker, hostname=f"qharness-{case.name}",
            base_image=self.initrd, modules=list(CAPTURE_DRIVERS),
            network=production_network(case, target),
            extra_text={"/etc/sysconfig/kdump": self.config_text}),
            self.workdir / "production.cpio")
        clock = self.start_time + timedelta(days=index - 1)
        spec = guest.GuestSpec(
            kernel=kernel, initrd=prod, memory_mb=case.memory_mb, timeout=GUEST_TIMEOUT,
            append=f"console=ttyS0 crashkernel={crashkernel or case.crashkernel} panic=1 loglevel=6",
            disks=target.disks, disk_bus=DISK_BUS, forwards=target.forwards, network=bool(target.forwards),
            rtc_base=clock.strftime("%Y-%m-%dT%H:%M:%S"))
        with target.attached():
            before = set(target.dumps())
        console = self.workdir / f"console-{index}.log"
        restarter = _Restarter(case, target) if case.restart_after_mb is not None else None
        try:
            run = guest.boot(spec, console)
        finally:
            if restarter is not None:
                restarter.finish()
        crash = Crash(index, marker, run)
        self.result.crashes.append(crash)
        _timings(crash)
        problems = _check_console(case, run, target.secrets())
        if restarter is not None:
            problems += restarter.problems()
            restarter.log_outage(run)
        with target.attached():
            new = [d for d in target.dumps() if d not in before]
            problems += _check_dumps(case, kernel, crash, new, target)
            if restarter is not None and crash.verdict is not None and crash.verdict.vmcore is not None:
                problems += restarter.check_middle(crash.verdict.vmcore.stat().st_size)
            self.result.dumps = [target.describe(d) for d in target.dumps()]
            if case.foreign_entries and index == case.crashes:
                problems += target.check_foreign()
            if case.name == "keep-old" and index == case.crashes:
                problems += _check_retention(case, target.dumps(), case.extra_settings)
        crash.problems = problems
        self.result.problems += [f"crash {index}: {p}" for p in problems]
        return crash


class _Restarter:
    """Watches the target's export while the guest runs and restarts the
    case's server once an unfinished file holds ``case.restart_after_mb``."""

    def __init__(self, case: Case, target: "_Target") -> None:
        self.case = case
        self.target = target
        self.at: Optional[int] = None
        self.stopped_at: Optional[float] = None
        """time.monotonic() when the server was stopped"""
        self.error = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        sizes = [0]
        for path in self.target.export.rglob("*.incomplete"):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                pass
        return max(sizes)

    def _watch(self) -> None:
        assert self.case.restart_after_mb is not None
        while not self._done.wait(0.2):
            size = self._size()
            if size >= self.case.restart_after_mb << 20:
                self.at = size
                log.info("stopping the %s server for %.0f s: an unfinished file holds %d bytes", self.case.scheme,
                         self.case.restart_pause, size)
                try:
                    self.target.stop_server()
                    self.stopped_at = time.monotonic()
                    self._done.wait(self.case.restart_pause)   # cut short when the guest has ended
                    self.target.start_server()
                except Exception as exc:  # noqa: BLE001 - reported as a problem of the case
                    self.error = f"restarting the server failed: {exc}"
                return

    def finish(self) -> None:
        self._done.set()
        self._thread.join(60)

    def log_outage(self, run: guest.GuestRun) -> None:
        if self.stopped_at is None:
            return
        stopped = self.stopped_at - run.started
        error = run.first(r"kdump-saver: .*(error|cannot|failed)")
        saved = run.first(SAVED_LINE)
        end = run.lines[-1][0] - run.started if run.lines else None
        log.info("server stopped at %.1f s of the guest run; first error %s, dump saved %s, last console "
                 "line %s", stopped, *(f"+{t - stopped:.1f} s" if t is not None else "never"
                                       for t in (error, saved, end)))

    def check_middle(self, final_size: int) -> List[str]:
        """The restart must have come in the middle of the transfer."""
        if self.at is None:
            return []
        log.info("the server was restarted at %.0f %% of the final vmcore (%d bytes)",
                 100 * self.at / final_size, final_size)
        if not 0.1 <= self.at / final_size <= 0.9:
            return [f"the server was restarted at {self.at} of {final_size} bytes, not in the middle"]
        return []

    def problems(self) -> List[str]:
        if self.error:
            return [self.error]
        if self.at is None:
            return [f"no unfinished file on the target reached {self.case.restart_after_mb} MB: the server "
                    "was not restarted"]
        return []


def _timings(crash: Crash) -> None:
    run = crash.run
    crash.panic_at = run.first(r"Kernel panic - not syncing")
    crash.saved_at = run.first(SAVED_LINE)
    if run.returncode is not None and run.lines:
        crash.ended_at = run.lines[-1][0] - run.started


def _check_console(case: Case, run: guest.GuestRun, hidden: List[str]) -> List[str]:
    problems = []
    if run.has(production.LOAD_FAILED_LINE):
        problems.append("the production system could not load the capture kernel")
    elif not run.has(production.LOADED_LINE):
        problems.append("the production system never reported the capture kernel as loaded")
    if not run.has(verify.PANIC):
        problems.append("no panic on the console")
    boots = [line for _, line in run.lines if "Linux version" in line]
    if len(boots) < 2:
        problems.append("the capture kernel did not boot")
    capture_cmdline = [line for _, line in run.lines if "Kernel command line:" in line][1:]
    if case.static_ip and not any(f"ip={STATIC_ADDRESS}:" in line for line in capture_cmdline):
        problems.append(f"the capture kernel's command line has no static ip={STATIC_ADDRESS}:...")
    if capture_cmdline and not all(a in capture_cmdline[0].split() for a in REBOOT_ON_INITRD_FAILURE):
        problems.append(f"the capture kernel's command line lacks {' '.join(REBOOT_ON_INITRD_FAILURE)}: "
                        "a failing initrd would wait in a shell instead of rebooting")
    if run.timed_out:
        problems.append(f"the capture kernel did not reboot ({run.ending})")
    if case.expect_saved and not run.has(SAVED_LINE):
        problems.append("the console never said 'kdump-saver: dump saved'")
    for secret in hidden:
        if secret and secret in run.text:
            problems.append("a password appears on the console")
    return problems


def _check_dumps(case: Case, kernel: GuestKernel, crash: Crash, new: List[Path],
                 target: "_Target") -> List[str]:
    if case.expect_failure:
        return _check_lost(crash, new)
    if not case.expect_saved:
        return _check_refused(case, crash, new, target)
    if len(new) != 1:
        return [f"expected one new dump directory, found {[p.name for p in new]}"]
    crash.verdict = verify.check_saved(new[0], kernel.debug_vmlinux, crash.marker, kernel.version,
                                       check_modes=target.checks_modes)
    name = new[0].name
    if target.remote and not name.startswith(f"qharness-{case.name}-"):
        crash.verdict.problems.append(f"{name}: a remote dump directory starts with the host name")
    readme = new[0] / verify.README
    if readme.exists() and any(s and s in readme.read_text(errors="replace") for s in target.secrets()):
        crash.verdict.problems.append(f"{readme} contains a password")
    return crash.verdict.problems


def _check_refused(case: Case, crash: Crash, new: List[Path], target: "_Target") -> List[str]:
    """KDUMP_FREE_DISK_SIZE: the save must stop, say why, and leave the limit free."""
    problems = []
    limit_mb = int(target.settings["KDUMP_FREE_DISK_SIZE"])
    free_mb = target.free_bytes() >> 20
    if free_mb < limit_mb:
        problems.append(f"only {free_mb} MB are free after the save, KDUMP_FREE_DISK_SIZE={limit_mb}")
    if not crash.run.has("KDUMP_FREE_DISK_SIZE"):
        problems.append("the console does not name KDUMP_FREE_DISK_SIZE")
    if crash.run.has(SAVED_LINE):
        problems.append("the console claims the dump was saved")
    for d in new:
        if (d / "vmcore").exists() or (d / "vmcore.flat").exists():
            problems.append(f"{d} holds a vmcore although it cannot fit")
        readme = verify.parse_readme((d / verify.README).read_text(errors="replace")) \
            if (d / verify.README).exists() else {}
        status = readme.get("vmcore status", "")
        if not status.startswith("INCOMPLETE") or "KDUMP_FREE_DISK_SIZE" not in status:
            problems.append(f"{d / verify.README}: status {status!r} does not report KDUMP_FREE_DISK_SIZE")
    return problems


def _check_lost(crash: Crash, new: List[Path]) -> List[str]:
    """The server went away for good: an error on the console, no finished vmcore."""
    problems = []
    if crash.run.has(SAVED_LINE):
        problems.append("the console claims the dump was saved although the server was gone")
    if crash.run.first(r"kdump-saver: .*(error|cannot|failed)") is None:
        problems.append("the console shows no error from kdump-saver")
    for d in new:
        if (d / "vmcore").exists() or (d / "vmcore.flat").exists():
            problems.append(f"{d} holds a finished vmcore although the server was gone")
        readme = d / verify.README
        if readme.exists() and "INCOMPLETE" not in readme.read_text(errors="replace"):
            problems.append(f"{readme} does not say INCOMPLETE")
    return problems


def _check_retention(case: Case, dumps: List[Path], settings: Dict[str, str]) -> List[str]:
    keep = int(settings["KDUMP_KEEP_OLD_DUMPS"])
    expected = min(case.crashes, keep + 1)
    if len(dumps) != expected:
        return [f"KDUMP_KEEP_OLD_DUMPS={keep} after {case.crashes} crashes: expected {expected} dump "
                f"directories, found {[d.name for d in dumps]}"]
    return []


def _settings(case: Case, kernel: GuestKernel, target: "_Target") -> Dict[str, str]:
    values = {
        "KDUMP_SAVEDIR": target.url,
        "KDUMP_KERNELVER": kernel.version,
        "KDUMP_HOSTNAME": f"qharness-{case.name}",
        "KDUMP_NET_TIMEOUT": "60",
        "KDUMP_VERBOSE": "2",
    }
    if target.remote:
        values["KDUMP_NETCONFIG"] = "eth0:static" if case.static_ip else "eth0:dhcp"
    values.update(target.settings)
    values.update(case.extra_settings)
    return values


def _kdump_saver(*args: str) -> str:
    cmd = kdump_saver_command() + list(args)
    log.info("running %s", " ".join(shlex.quote(a) for a in cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise HarnessError(f"kdump-saver {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def load_commands() -> List[str]:
    """What the production system runs to load the capture kernel: kdump-saver
    itself, reading /etc/sysconfig/kdump, the guest's /proc/cmdline and network."""
    return ["kdump-saver load"]


def production_network(case: Case, target: "_Target") -> List[str]:
    if not target.remote:
        return []
    return production.static_lines(STATIC_ADDRESS) if case.static_ip else list(production.DHCP_LINES)


# --- targets ------------------------------------------------------------------------------------

class _Target:
    """Where a case saves: a server, or a disk image mounted on the host around the guest runs."""

    remote = True
    checks_modes = True

    def __init__(self) -> None:
        self.url = ""
        self.settings: Dict[str, str] = {}
        self.forwards: Dict[int, int] = {}
        self.disks: List[Path] = []
        self.export = Path("/nonexistent")

    def dumps(self) -> List[Path]:
        return verify.dump_dirs(self.export)

    def secrets(self) -> List[str]:
        return []

    def detach(self) -> None:
        """Before the guest runs."""

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """While the host looks at the result."""
        yield

    def free_bytes(self) -> int:
        st = os.statvfs(self.export)
        return st.f_bavail * st.f_frsize

    def check_foreign(self) -> List[str]:
        return []

    def describe(self, dump: Path) -> str:
        """Where an administrator finds ``dump``."""
        return str(dump)


class _ServerTarget(_Target):
    def __init__(self, server: servers.Server) -> None:
        super().__init__()
        self.server = server
        self.export = server.export / "crash"
        self.url = server.url("crash")
        self.settings = server.settings()
        self.forwards = server.forwards

    def secrets(self) -> List[str]:
        return self.server.secrets()

    def stop_server(self) -> None:
        self.server.stop()

    def start_server(self) -> None:
        self.server.start()


FOREIGN = ("unrelated", "app-dump", "2020-01-01-00-00", "notes.txt")


class _DiskTarget(_Target):
    """An ext4 image: loop-mounted on the host to build and to verify, a virtio disk in the guest."""

    remote = False

    def __init__(self, case: Case, workdir: Path) -> None:
        super().__init__()
        self.image = workdir / "disk.img"
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir(exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(case.disk_mb << 20)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
        self.disks = [self.image]
        self.export = self.mountpoint / "var" / "crash"
        self.url = str(self.export)
        self._mount()
        self.export.mkdir(parents=True, exist_ok=True)
        if case.foreign_entries:
            for name in FOREIGN:
                p = self.export / name
                if "." in name:
                    p.write_text("not a dump\n")
                else:
                    p.mkdir()
                    (p / "keep-me").write_text("not a dump\n")
        if case.free_disk_margin_mb is not None:
            free_mb = self.free_bytes() >> 20
            self.settings["KDUMP_FREE_DISK_SIZE"] = str(free_mb - case.free_disk_margin_mb)

    def _mount(self) -> None:
        _run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])

    def detach(self) -> None:
        _run(["umount", str(self.mountpoint)])

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        self._mount()
        try:
            yield
        finally:
            self.detach()

    def describe(self, dump: Path) -> str:
        return f"/{dump.relative_to(self.mountpoint)} on the ext4 image {self.image}"

    def check_foreign(self) -> List[str]:
        missing = [n for n in FOREIGN if not (self.export / n).exists()]
        return [f"retention deleted foreign entries {missing}"] if missing else []


@contextlib.contextmanager
def _target(case: Case, workdir: Path) -> Iterator[_Target]:
    if case.scheme == "file":
        disk = _DiskTarget(case, workdir)
        try:
            yield disk
        finally:
            subprocess.run(["umount", str(disk.mountpoint)], capture_output=True)
        return
    server = servers.make(case.scheme, workdir / "server")
    with server:
        target = _ServerTarget(server)
        target.export.mkdir(mode=0o700, exist_ok=True)
        _own_like(target.export, server.export)
        try:
            yield target
        except BaseException:
            log.error("server log of %s:\n%s", case.scheme, server.log_text())
            raise


def _own_like(path: Path, reference: Path) -> None:
    st = reference.stat()
    os.chown(path, st.st_uid, st.st_gid)


def _run(cmd: List[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
