"""A real Samba smbd on 127.0.0.1 for the cifs transport tests.

The server runs in the foreground as its own process group, with every
directory (private, lock, state, cache, pid) under one temporary folder and a
free port chosen at start.  It offers two shares:

* ``dumps``: writable by :attr:`SambaServer.user`;
* ``ro``: read-only for the same user.

The Unix account the share user maps to is created once (a system account
without a login shell or home); its Samba password is random per server and
given to ``smbpasswd`` on stdin, never on a command line.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from servers.common import children_of, ensure_unix_user, free_port

USER = "kdsmbtest"








class SambaServer:
    """One smbd; use as a context manager or call :meth:`start` / :meth:`stop`."""

    share = "dumps"
    ro_share = "ro"

    def __init__(self, workdir: Path, share_dir: Optional[Path] = None, signing: bool = False,
                 host: str = "127.0.0.1", encrypt: str = "") -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.signing = signing
        #: "" (Samba's default), "server" (``server smb encrypt = required``
        #: for every share) or "share" (``smb encrypt = required`` on ``dumps`` only)
        self.encrypt = encrypt
        self.user = USER
        self.password = "pw-" + secrets.token_hex(8)
        self.port = free_port(host)
        # the share user must reach the shared directories: pytest's own
        # temporary folders are private to root, so they live elsewhere
        self.served = Path(tempfile.mkdtemp(prefix="kdump-saver-smbd-"))
        self.served.chmod(0o755)
        self.share_dir = Path(share_dir) if share_dir else self.served / "share"
        self.ro_dir = self.served / "ro"
        self.conf = self.workdir / "smb.conf"
        self.proc: Optional[subprocess.Popen] = None

    def url(self, path: str = "", password: Optional[str] = None, share: Optional[str] = None) -> str:
        pw = self.password if password is None else password
        where = f"[{self.host}]" if ":" in self.host else self.host
        return f"cifs://{self.user}:{pw}@{where}:{self.port}/{share or self.share}{path}"

    def _write_conf(self) -> None:
        w = self.workdir
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""[global]
  server role = standalone server
  workgroup = KDTEST
  netbios name = KDTESTSRV
  smb ports = {self.port}
  interfaces = {self.host}
  bind interfaces only = yes
  disable netbios = yes
  server min protocol = SMB2_02
  map to guest = never
  passdb backend = tdbsam:{w}/private/passdb.tdb
  private dir = {w}/private
  lock directory = {w}/lock
  state directory = {w}/state
  cache directory = {w}/cache
  pid directory = {w}/pid
  ncalrpc dir = {w}/ncalrpc
  log file = {w}/log/log.%m
  log level = 1
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  usershare max shares = 0
  server signing = {"mandatory" if self.signing else "default"}
{"  server smb encrypt = required" if self.encrypt == "server" else ""}

[{self.share}]
  path = {self.share_dir}
  valid users = {self.user}
  read only = no
  create mask = 0600
  directory mask = 0700
{"  smb encrypt = required" if self.encrypt == "share" else ""}

[{self.ro_share}]
  path = {self.ro_dir}
  valid users = {self.user}
  read only = yes
""")

    def start(self) -> "SambaServer":
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        ensure_unix_user(self.user)
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.ro_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.share_dir, self.user)
        self._write_conf()
        if not (self.workdir / "private" / "passdb.tdb").exists():
            subprocess.run(["smbpasswd", "-c", str(self.conf), "-s", "-a", self.user],
                           input=f"{self.password}\n{self.password}\n", text=True,
                           check=True, capture_output=True)
        with open(self.workdir / "log" / "smbd.stderr", "ab") as stderr:
            self.proc = subprocess.Popen(
                [smbd, "--foreground", "--no-process-group", "-s", str(self.conf)],
                # a foreground smbd ends when its stdin closes: keep a pipe open
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smbd exited: {self.log_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"smbd did not listen on {self.port}: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        parts = []
        for p in sorted(q for q in (self.workdir / "log").glob("*") if q.is_file()):
            parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def kill_sessions(self) -> int:
        """Kill the smbd processes serving clients (the connection drops); returns how many."""
        assert self.proc is not None
        killed = 0
        for pid in children_of(self.proc.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            # per-client processes are called "smbd"; the helpers (smbd-notifyd,
            # cleanupd) are children too but are not connections
            if comm != "smbd":
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # children of a killed smbd may linger for a moment
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc = None

    def remove(self) -> None:
        """Stop and delete the shared directories."""
        self.stop()
        shutil.rmtree(self.served, ignore_errors=True)

    def __enter__(self) -> "SambaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
