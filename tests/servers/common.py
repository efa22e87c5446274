"""Helpers every test server needs: ports, processes, Unix accounts."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from conftest import require


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parent_pids() -> Dict[int, int]:
    """Every process's parent, from /proc."""
    parent_of: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(entry)] = int(fields[1])
    return parent_of


def children_of(pid: int) -> List[int]:
    """Direct child processes of ``pid``."""
    return [child for child, parent in parent_pids().items() if parent == pid]


def ensure_unix_user(name: str, shell: str = "/usr/sbin/nologin", home: Optional[str] = None) -> None:
    """Create a system account ``name`` without a home directory if it is missing."""
    if subprocess.run(["id", "-u", name], capture_output=True).returncode == 0:
        return
    argv = ["useradd", "--system", "--no-create-home", "--shell", shell, name]
    if home is not None:
        argv[3:3] = ["--home-dir", home]
    subprocess.run(argv, check=True, capture_output=True)


def established(port: int) -> int:
    """Established TCP connections whose server side is 127.0.0.1:``port``."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                count += 1
    return count


@contextlib.contextmanager
def tmpfs(path: Path, size: str, owner: Optional[str] = None) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax, ``4m``) on ``path``, owned by
    ``owner`` when given, lazily unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True)
    require(r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        if owner is not None:
            shutil.chown(path, owner)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
