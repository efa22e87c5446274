"""``kdump-saver enable`` and ``disable``: the production unit and udev rule.

:func:`enable` writes, under ``root`` (``/`` or a tree, as ``systemctl
--root`` takes it):

- :data:`UNIT_PATH`, ``kdump-saver.service`` from the template in
  ``capture/host/units/`` with ``@KDUMP_SAVER@`` replaced by the command
  that runs kdump-saver (:func:`service_command`);
- for a remote KDUMP_SAVEDIR, the drop-in :data:`NETWORK_DROPIN` that orders
  it after ``network-online.target``;
- :data:`UDEV_RULE`, which reloads the service on CPU and memory hotplug
  (SUSE's 70-kdump.rules is the model),

and enables the unit with ``systemctl [--root DIR] enable``.  On the running
system (no ``root``) it also reloads systemd and udev.  :func:`disable`
undoes exactly that: a tree enabled and then disabled is as it was.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from capture.config.options import Config
from capture.config.targeturl import parse_list
from capture.errors import KdumpError, URLError

log = logging.getLogger(__name__)

UNIT = "kdump-saver.service"
UNIT_DIR = "/etc/systemd/system"
UNIT_PATH = f"{UNIT_DIR}/{UNIT}"
DROPIN_DIR = f"{UNIT_DIR}/{UNIT}.d"
NETWORK_DROPIN = f"{DROPIN_DIR}/network-online.conf"
UDEV_RULE = "/etc/udev/rules.d/70-kdump-saver.rules"
WANTS_DIR = f"{UNIT_DIR}/multi-user.target.wants"
TEMPLATES = Path(__file__).resolve().parent / "units"


def service_command() -> str:
    """How the unit runs kdump-saver: the ``kdump-saver`` script installed
    next to this interpreter (a venv or a pip install), else the one on PATH,
    else this interpreter with ``-m capture.cli``."""
    beside = Path(sys.executable).parent / "kdump-saver"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kdump-saver")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m capture.cli"


def systemctl_path() -> str:
    return shutil.which("systemctl") or "/bin/systemctl"


def files_for(config: Config, command: str) -> Dict[str, str]:
    """Absolute path -> content of every file :func:`enable` writes."""
    unit = (TEMPLATES / UNIT).read_text().replace("@KDUMP_SAVER@", command)
    rule = (TEMPLATES / "70-kdump-saver.rules").read_text().replace("@SYSTEMCTL@", systemctl_path())
    files = {UNIT_PATH: unit, UDEV_RULE: rule}
    if _is_remote(config):
        files[NETWORK_DROPIN] = (TEMPLATES / "network-online.conf").read_text()
    return files


def _is_remote(config: Config) -> bool:
    try:
        return any(url.is_remote for url in parse_list(config.savedir))
    except URLError:
        return True   # the start will say what is wrong; waiting for the network does no harm


def enable(config: Config, root: Optional[str] = None, command: Optional[str] = None,
           now: bool = False) -> List[str]:
    """Install and enable the unit and the udev rule under ``root`` (None:
    this system); ``now`` also starts it (this system only).  Returns the
    files written."""
    if root is not None and now:
        raise KdumpError("--now starts the service on this system; it cannot be combined with --root")
    base = root or "/"
    written = []
    stale_dropin = _under(base, NETWORK_DROPIN)
    files = files_for(config, command or service_command())
    if NETWORK_DROPIN not in files and os.path.exists(stale_dropin):
        os.unlink(stale_dropin)   # the target became local
        _rmdir_if_empty(_under(base, DROPIN_DIR))
    for path, text in files.items():
        target = _under(base, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        written.append(target)
        log.debug("wrote %s", target)
    if root is None:
        _daemon_reload()
    _systemctl(root, "enable", *(["--now"] if now else []), UNIT)
    if root is None:
        _udev_reload()
    return written


def disable(root: Optional[str] = None, now: bool = False) -> List[str]:
    """Disable (``now``: also stop, which unloads) and remove the unit, its
    drop-in and the udev rule under ``root``.  Returns the files removed."""
    if root is not None and now:
        raise KdumpError("--now stops the service on this system; it cannot be combined with --root")
    base = root or "/"
    if os.path.exists(_under(base, UNIT_PATH)):
        _systemctl(root, "disable", *(["--now"] if now else []), UNIT)
    removed = []
    for path in (NETWORK_DROPIN, UNIT_PATH, UDEV_RULE):
        target = _under(base, path)
        try:
            os.unlink(target)
        except FileNotFoundError:
            continue
        removed.append(target)
        log.debug("removed %s", target)
    _rmdir_if_empty(_under(base, DROPIN_DIR))
    if root is None:
        _daemon_reload()
        _udev_reload()
    return removed


def network_ordering_missing(config: Config, root: Optional[str] = None) -> bool:
    """Whether the installed unit starts without waiting for the network
    although KDUMP_SAVEDIR is remote now (the configuration changed after
    ``enable``)."""
    base = root or "/"
    return (os.path.exists(_under(base, UNIT_PATH)) and _is_remote(config)
            and not os.path.exists(_under(base, NETWORK_DROPIN)))


def is_enabled(root: Optional[str] = None) -> bool:
    """Whether the unit is installed and wanted by multi-user.target."""
    return os.path.lexists(_under(root or "/", f"{WANTS_DIR}/{UNIT}"))


def _systemctl(root: Optional[str], *args: str) -> None:
    program = shutil.which("systemctl")
    if program is None:
        raise KdumpError("systemctl is not installed: kdump-saver.service needs systemd "
                         "(without it, run 'kdump-saver start' from the boot scripts)")
    argv = [program, *(["--root", root] if root is not None else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise KdumpError(f"systemctl {' '.join(args)} failed (exit status {proc.returncode})"
                         + (f": {detail[-1]}" if detail else ""))


def _daemon_reload() -> None:
    if not os.path.isdir("/run/systemd/system"):
        log.debug("systemd is not running: no daemon-reload")
        return
    proc = subprocess.run([systemctl_path(), "daemon-reload"], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("systemctl daemon-reload failed: %s", proc.stderr.strip())


def _udev_reload() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None or not os.path.exists("/run/udev/control"):
        log.debug("udev is not running: no rule reload")
        return
    proc = subprocess.run([udevadm, "control", "--reload"], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("udevadm control --reload failed: %s", proc.stderr.strip())


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))
