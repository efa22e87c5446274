"""What the capture kernel does, start to end, around the save.

As SUSE's kdump-save does: bring the network up when the target needs it;
then either run KDUMP_TRANSFER alone (it replaces the save, and
KDUMP_PRESCRIPT and KDUMP_POSTSCRIPT are not run), or run KDUMP_PRESCRIPT,
save, run KDUMP_POSTSCRIPT.  After an error a shell opens when
KDUMP_CONTINUE_ON_ERROR is false.  Then the machine reboots, in a way that
cannot hang; with KDUMP_IMMEDIATE_REBOOT=false a shell opens first and the
reboot follows when it exits.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from typing import List, Optional, Sequence, Tuple

from capture import __version__

from capture.config.options import Config
from capture.config.targeturl import TargetURL
from capture.errors import KdumpError
from capture.save import sequence

log = logging.getLogger(__name__)

SYSRQ = "/proc/sysrq-trigger"


def capture_boot(config: Config, vmcore: str = "/proc/vmcore", allow_reboot: bool = True) -> int:
    """Run the whole capture; return 0 when the dump (or KDUMP_TRANSFER) succeeded."""
    log.info("kdump-saver %s: saving the crashed kernel's memory", __version__)
    status = 1
    preparing: Optional[sequence.Preparation] = None
    try:
        urls = sequence.targets(config)
        # what needs only /proc/vmcore runs while the network comes up; so does the
        # collector's page scan, unless KDUMP_PRESCRIPT must run before it
        preparing = None if config.transfer else sequence.Preparation(config, vmcore,
                                                                      start_collector=not config.prescript)
        bring_up_network(config, urls)
        if config.transfer:
            skipped = [o for o, v in (("KDUMP_PRESCRIPT", config.prescript),
                                      ("KDUMP_POSTSCRIPT", config.postscript)) if v]
            if skipped:
                log.info("KDUMP_TRANSFER replaces the save; %s not run (as in SUSE's kdump)",
                         " and ".join(skipped) + (" are" if len(skipped) > 1 else " is"))
            status = 0 if run_script("KDUMP_TRANSFER", config.transfer) == 0 else 1
        else:
            notes = [script_note("KDUMP_PRESCRIPT", run_script("KDUMP_PRESCRIPT", config.prescript))] \
                if config.prescript else []
            prepared = preparing.result() if preparing else sequence.prepare(config, vmcore)
            failed: List[str] = []
            for url in urls:
                try:
                    with sequence.begin(config, vmcore, url, [*notes, *failed], prepared) as dump:
                        dump.save_files()
                        if config.postscript:
                            dump.notes.append(script_note("KDUMP_POSTSCRIPT",
                                                          run_script("KDUMP_POSTSCRIPT", config.postscript)))
                        dump.finish()
                    status = 0
                    break
                except KdumpError as exc:
                    failed.append(sequence.next_target(url, exc, urls, failed))
    except KdumpError as exc:
        log.error("error: %s", exc)
    except Exception:  # noqa: BLE001 - a bug must not keep the machine from rebooting
        log.exception("internal error in kdump-saver; please report it")
    if preparing is not None:
        preparing.discard()
    if status != 0 and not config.continue_on_error:
        emergency_shell("the save failed and KDUMP_CONTINUE_ON_ERROR is false")
    finish(config, vmcore, allow_reboot)
    return status


def bring_up_network(config: Config, urls: Sequence[TargetURL]) -> None:
    """Bring the network up when any target needs it (waiting for the first
    remote one's host).  When it fails and a local target is listed too, the
    save goes on: the remote targets then fail and the local one is used."""
    remote = [url for url in urls if url.is_remote]
    if not remote and not config.netconfig.force:
        log.info("network: not needed for the local target %s", urls[0].masked())
        return
    # imported only here: its imports cost a local save's one CPU about 0.2 s under emulation
    from capture.net import bringup

    try:
        bringup.prepare(config, remote[0] if remote else urls[0])
    except KdumpError as exc:
        if len(remote) == len(urls):
            raise
        log.error("network: %s; going on for the local target(s)", exc)


def run_script(option: str, command: str) -> int:
    """Run a configured command through /bin/sh; log and return its exit status."""
    log.info("running %s", option)
    try:
        status = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        log.error("%s could not run: %s", option, exc)
        return 127
    (log.info if status == 0 else log.error)("%s exited with status %d", option, status)
    return status


def script_note(option: str, status: int) -> str:
    return f"{option} exited with status {status}"


CONSOLE = "/dev/console"


def emergency_shell(why: str, then: str = "continue") -> None:
    """An interactive shell on the console (our own terminal if we have one, else
    /dev/console: a systemd unit's standard input is not a terminal); returns when it exits."""
    log.error("%s: starting a shell on the console; exit it to %s", why, then)
    try:
        if os.isatty(0):
            subprocess.run(["/bin/sh", "-i"])
            return
        with open(CONSOLE, "r+b", buffering=0) as console:
            subprocess.run(["/bin/sh", "-i"], stdin=console, stdout=console, stderr=console)
    except OSError as exc:
        log.error("no shell available: %s", exc)


def end_steps(config: Config, in_capture_kernel: bool) -> Tuple[str, ...]:
    """What happens after the save: ``("reboot",)``; ``("shell", "reboot")`` with
    KDUMP_IMMEDIATE_REBOOT=false (as SUSE's kdump-save: "Running a shell; exit will
    reboot"); nothing outside a capture kernel."""
    if not in_capture_kernel:
        return ()
    return ("reboot",) if config.immediate_reboot else ("shell", "reboot")


def finish(config: Config, vmcore: str, allow_reboot: bool) -> None:
    """Carry out :func:`end_steps`.  Only inside a capture kernel (``vmcore`` is
    /proc/vmcore and exists) is a shell opened or the machine rebooted."""
    in_capture_kernel = allow_reboot and vmcore == "/proc/vmcore" and os.path.exists(vmcore)
    steps = end_steps(config, in_capture_kernel)
    if not steps:
        log.info("not in a capture kernel: no %s",
                 "reboot" if config.immediate_reboot else "shell and no reboot")
    for step in steps:
        if step == "shell":
            emergency_shell("KDUMP_IMMEDIATE_REBOOT is false", "reboot")
        else:
            reboot()


def reboot(sync_timeout: float = 30.0) -> None:
    """Sync (at most ``sync_timeout`` seconds), then reboot at once through sysrq."""
    log.info("rebooting")
    syncer = threading.Thread(target=os.sync, daemon=True)
    syncer.start()
    syncer.join(sync_timeout)
    try:
        with open(SYSRQ, "w") as f:
            f.write("b")
    except OSError as exc:
        log.error("sysrq reboot failed (%s); trying reboot -f", exc)
        subprocess.run(["reboot", "-f"], timeout=30, check=False)
