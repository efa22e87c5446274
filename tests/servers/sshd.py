"""A real OpenSSH sshd on 127.0.0.1 for tests, and the Unix users it serves.

:class:`SSHD` runs ``sshd -D -f CONFIG`` (as root) with its own host keys,
pid file, authorized_keys directory and an unprivileged port, optionally
without the sftp subsystem.  :class:`TestUsers` creates local accounts (a key
user and a password user) and removes them again.  Passwords are generated,
given to ``chpasswd`` on stdin and never printed.

The pytest fixtures at the end are session-scoped; import them into a test
module (``from servers.sshd import ssh_users, sshd_sftp, sshd_nosftp``).
"""
from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import require, require_program
from servers.common import parent_pids
from capture.config.options import Config
from transports.base import TransportOptions

#: client key types generated for the key user
CLIENT_KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the kernel's
    ephemeral range: a port we stop listening on is then not handed to some
    other program's client socket or passive FTP listener a moment later."""
    low, _high = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_range() -> Tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def ipv6_loopback_works() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def ssh_keygen(path: Path, key_type: str, bits: Optional[int] = None) -> str:
    """Make an unencrypted key pair; return the public key line ``TYPE BASE64``."""
    cmd = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f", str(path)]
    if bits:
        cmd[4:4] = ["-b", str(bits)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    fields = path.with_name(path.name + ".pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


@dataclass
class User:
    """A local account for the tests; ``password`` is empty for the key user."""

    name: str
    home: Path
    uid: int
    gid: int
    password: str = ""
    keys: Optional[Dict[str, Path]] = None

    def make_dir(self, parent: Path, name: str, mode: int = 0o755) -> Path:
        """A directory owned by this user (for the user's targets)."""
        path = parent / name
        path.mkdir(mode=mode)
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)
        return path


class TestUsers:
    """A key user and a password user, created with useradd, removed with userdel."""

    __test__ = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        suffix = secrets.token_hex(3)
        self.names = [f"kdk{suffix}", f"kdp{suffix}"]
        self.key_user: Optional[User] = None
        self.password_user: Optional[User] = None

    def create(self) -> None:
        require_program("useradd")
        key_name, pw_name = self.names
        self.key_user = self._add(key_name)
        # an account with "!" is locked for sshd without PAM: "*" means no password, keys only
        subprocess.run(["usermod", "-p", "*", key_name], check=True)
        keydir = self.workdir / "client-keys"
        keydir.mkdir(mode=0o700, exist_ok=True)
        self.key_user.keys = {}
        lines = []
        for key_type in CLIENT_KEY_TYPES:
            path = keydir / f"id_{key_type}"
            lines.append(ssh_keygen(path, key_type, 2048 if key_type == "rsa" else None))
            self.key_user.keys[key_type] = path
        authdir = self.workdir / "authorized_keys"
        authdir.mkdir(exist_ok=True)
        (authdir / key_name).write_text("\n".join(lines) + "\n")
        self.password_user = self._add(pw_name)
        self.password_user.password = secrets.token_urlsafe(18)
        subprocess.run(["chpasswd"], input=f"{pw_name}:{self.password_user.password}\n", text=True,
                       check=True)

    def _add(self, name: str) -> User:
        home = self.workdir / "home" / name
        home.parent.mkdir(exist_ok=True)
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], check=True)
        import pwd
        entry = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, entry.pw_uid, entry.pw_gid)
        return User(name, home, entry.pw_uid, entry.pw_gid)

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["userdel", "-f", name], stderr=subprocess.DEVNULL, check=False)


class SSHD:
    """An OpenSSH server on 127.0.0.1 (and ::1 where possible) with its own configuration.

    ``host_keys`` maps key type (``ed25519``, ``rsa``) to the public line
    ``TYPE BASE64``.  ``sftp=False`` leaves out the sftp subsystem,
    ``sftp_args`` are options for internal-sftp, ``extra`` configuration lines
    take precedence over the defaults, ``match`` lines (Match blocks) go last.
    """

    def __init__(self, workdir: Path, users: List[str], sftp: bool = True, sftp_args: str = "",
                 extra: Tuple[str, ...] = (), match: Tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.extra = extra
        self.match = match
        self.users = users
        self.sftp = sftp
        self.sftp_args = sftp_args
        self.ipv6 = False
        self._held: Optional[socket.socket] = None
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.host_keys: Dict[str, str] = {}
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"

    def start(self, port: int = 0) -> "SSHD":
        sshd = require_program("sshd")
        if self._held is not None:
            self._held.close()
            self._held = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_keys:
            for key_type in ("ed25519", "rsa"):
                self.host_keys[key_type] = ssh_keygen(self.workdir / f"host_{key_type}", key_type,
                                                      2048 if key_type == "rsa" else None)
        self.port = port or free_port()
        self.ipv6 = ipv6_loopback_works()
        lines = [
            *self.extra,  # first: for most keywords sshd keeps the first value it reads
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            *(["ListenAddress [::1]"] if self.ipv6 else []),
            *(f"HostKey {self.workdir / f'host_{t}'}" for t in self.host_keys),
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir.parent / 'authorized_keys'}/%u",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {' '.join(self.users)}",
            "MaxStartups 50",
            "MaxSessions 50",
            "LogLevel VERBOSE",
        ]
        if self.sftp:
            lines.append(f"Subsystem sftp internal-sftp {self.sftp_args}".rstrip())
        lines.extend(self.match)  # Match blocks last: they run to the end of the file
        self.config.write_text("\n".join(lines) + "\n")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self, hold_port: bool = False) -> None:
        """Stop the server; ``hold_port`` keeps its port bound but not listening
        (connections are refused, and no other program can take the port)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill_sessions()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if hold_port and self.port:
            # without SO_REUSEADDR nobody else can bind the port while we hold it;
            # with it, at least no listener without SO_REUSEADDR can
            for reuse in (False, True):
                held = socket.socket()
                if reuse:
                    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    held.bind(("127.0.0.1", self.port))
                    self._held = held
                    break
                except OSError:
                    held.close()
        elif self._held is not None:
            self._held.close()
            self._held = None

    def session_pids(self) -> List[int]:
        """The sshd processes serving connections: every descendant of the listener."""
        if self.proc is None:
            return []
        parent_of = parent_pids()
        found: List[int] = []
        wanted = {self.proc.pid}
        while True:
            new = [pid for pid, ppid in parent_of.items() if ppid in wanted and pid not in found]
            if not new:
                return found
            found.extend(new)
            wanted.update(new)

    def kill_sessions(self) -> int:
        """Cut every open connection by killing its sshd process; how many."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def known_hosts_line(self, key_type: str = "ed25519", host: str = "127.0.0.1") -> str:
        return f"[{host}]:{self.port} {self.host_keys[key_type]}"

    def write_known_hosts(self, path: Path, key_types: tuple = ("ed25519",)) -> Path:
        path.write_text("".join(self.known_hosts_line(t) + "\n" for t in key_types))
        return path

    def url(self, scheme: str, user: str, path: str, password: str = "", host: str = "127.0.0.1") -> str:
        """A target URL for this server (password percent-encoded)."""
        from urllib.parse import quote
        userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{userinfo}@{host}:{self.port}{quote(path)}"


class SSHLab:
    """The users and servers of a test session, with helpers to build targets."""

    __test__ = False

    def __init__(self, workdir: Path, users: TestUsers) -> None:
        self.workdir = workdir
        self.users = users
        self._count = 0
        self._mounts: List[Path] = []

    @property
    def key_user(self) -> User:
        assert self.users.key_user is not None
        return self.users.key_user

    @property
    def password_user(self) -> User:
        assert self.users.password_user is not None
        return self.users.password_user

    def fresh_dir(self, user: User, mode: int = 0o755) -> Path:
        """A new empty directory owned by ``user``."""
        self._count += 1
        return user.make_dir(self.workdir, f"t{self._count:03d}", mode)

    def root_dir(self) -> Path:
        """A new directory owned by root that the test users cannot write to."""
        self._count += 1
        path = self.workdir / f"t{self._count:03d}-ro"
        path.mkdir(mode=0o755)
        return path

    def small_fs(self, user: User, size_kib: int) -> Path:
        """A tmpfs of ``size_kib`` KiB owned by ``user``, unmounted at the end."""
        self._count += 1
        path = self.workdir / f"t{self._count:03d}-fs"
        path.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        require(mounted.returncode == 0, f"cannot mount a tmpfs for the full-disk test: {mounted.stderr.strip()}")
        self._mounts.append(path)
        os.chown(path, user.uid, user.gid)
        return path

    def known_hosts(self, server: SSHD, key_types: tuple = ("ed25519",)) -> Path:
        self._count += 1
        return server.write_known_hosts(self.workdir / f"known_hosts.{self._count}", key_types)

    def key_options(self, server: SSHD, key_type: str = "ed25519", **changes: object) -> TransportOptions:
        """Options for the key user: the server's known_hosts entry and one client key."""
        values: Dict[str, object] = dict(known_hosts=str(self.known_hosts(server)),
                                         ssh_identity=(str(self.key_user.keys[key_type]),), net_timeout=0)
        values.update(changes)
        return TransportOptions(**values)  # type: ignore[arg-type]

    def password_options(self, server: SSHD, **changes: object) -> TransportOptions:
        """Options for the password user: no usable key file, so the URL's password is used."""
        values: Dict[str, object] = dict(known_hosts=str(self.known_hosts(server)),
                                         ssh_identity=(), net_timeout=0)
        values.update(changes)
        return TransportOptions(**values)  # type: ignore[arg-type]

    def saver_config(self, server: SSHD, **changes: object) -> Config:
        """A configuration saving the fixture as lzo -d 31 with the key user's options."""
        options = self.key_options(server)
        values: Dict[str, object] = dict(dumpformat="lzo", dumplevel=31, net_timeout=0,
                                         known_hosts=options.known_hosts or "",
                                         ssh_identity=options.ssh_identity, free_disk_size=1)
        values.update(changes)
        return Config(**values)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for path in self._mounts:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="session")
def ssh_workdir() -> Iterator[Path]:
    """A directory every test user can traverse (pytest's own is 0700)."""
    require(os.geteuid() == 0, "the sshd tests create Unix users and run sshd: they need root")
    path = Path(tempfile.mkdtemp(prefix="kdump-sshd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_users(ssh_workdir: Path) -> Iterator[TestUsers]:
    users = TestUsers(ssh_workdir)
    try:
        users.create()
        yield users
    finally:
        users.remove()


@pytest.fixture(scope="session")
def ssh_lab(ssh_workdir: Path, ssh_users: TestUsers) -> Iterator[SSHLab]:
    lab = SSHLab(ssh_workdir, ssh_users)
    yield lab
    lab.cleanup()


@pytest.fixture(scope="session")
def sshd_sftp(ssh_workdir: Path, ssh_users: TestUsers) -> Iterator[SSHD]:
    server = SSHD(ssh_workdir / "sshd-sftp", ssh_users.names, sftp=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd_nosftp(ssh_workdir: Path, ssh_users: TestUsers) -> Iterator[SSHD]:
    server = SSHD(ssh_workdir / "sshd-nosftp", ssh_users.names, sftp=False).start()
    yield server
    server.stop()


@dataclass
class ChrootServer:
    """An sshd where the key user is an sftp-only account (ForceCommand
    internal-sftp) locked into ``chroot``; ``dumps`` is the user's directory
    in it, ``/dumps`` as seen through sftp."""

    server: SSHD
    chroot: Path
    dumps: Path


@pytest.fixture(scope="session")
def sshd_sftp_only(ssh_workdir: Path, ssh_users: TestUsers) -> Iterator[ChrootServer]:
    # sshd wants every component of a chroot owned by root and not writable by others: /tmp is not
    chroot = Path(tempfile.mkdtemp(prefix="kdump-sshd-chroot-", dir="/run"))
    chroot.chmod(0o755)
    assert ssh_users.key_user is not None
    dumps = ssh_users.key_user.make_dir(chroot, "dumps")
    server = SSHD(ssh_workdir / "sshd-sftp-only", ssh_users.names,
                  match=(f"Match User {ssh_users.key_user.name}", f"  ChrootDirectory {chroot}",
                         "  ForceCommand internal-sftp")).start()
    yield ChrootServer(server, chroot, dumps)
    server.stop()
    shutil.rmtree(chroot, ignore_errors=True)
