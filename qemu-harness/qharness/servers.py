"""The servers the guest saves to, all on the host's 127.0.0.1.

Each server listens on a free unprivileged port of 127.0.0.1 and states which
ports the guest reaches it on (``forwards``: port on
:data:`qharness.guest.GUEST_SERVER` -> port on 127.0.0.1), the target URL the
guest's kdump configuration names (``url``), extra KDUMP_* settings it needs
(``settings``) and the host directory where the saved dumps land
(``export``).  Passwords are generated, reach the servers on stdin and appear
only in the kdump configuration that goes into the capture initrd.

Samba and vsftpd are the transport tests' own helpers (tests/servers); sshd
and nfs-ganesha are set up here for root logins and a private NFSv4 export.
"""
from __future__ import annotations

import abc
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from qharness.guest import GUEST_SERVER

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        first = secrets.randbelow(20000) + 30000
        socks: List[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def wait_listening(port: int, proc: subprocess.Popen, what: str, logfile: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(logfile)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s: {_tail(logfile)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Server(abc.ABC):
    """One service for the guest; a context manager."""

    scheme: str = ""
    guest_port: int = 0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    @abc.abstractmethod
    def forwards(self) -> Dict[int, int]:
        """Port on GUEST_SERVER -> port on 127.0.0.1."""

    @property
    @abc.abstractmethod
    def export(self) -> Path:
        """The host directory the target URL's path starts at."""

    @abc.abstractmethod
    def url(self, subdir: str) -> str:
        """The KDUMP_SAVEDIR for ``subdir`` of :attr:`export`, as the guest sees it."""

    def settings(self) -> Dict[str, str]:
        """Extra KDUMP_* options this server needs (host key, identity...)."""
        return {}

    def secrets(self) -> List[str]:
        """Values that must never appear in a console log."""
        return []

    @abc.abstractmethod
    def start(self) -> "Server":
        ...

    @abc.abstractmethod
    def stop(self) -> None:
        ...

    def log_text(self) -> str:
        return ""

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SshServer(Server):
    """OpenSSH's sshd for root, public-key login only; sftp and ssh targets."""

    guest_port = 22

    def __init__(self, workdir: Path, scheme: str = "sftp") -> None:
        super().__init__(workdir)
        self.scheme = scheme
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.dumps = self.workdir / "dumps"
        self.identity = self.workdir / "id_ed25519"
        self.host_key = ""
        self.logfile = self.workdir / "sshd.log"

    @property
    def forwards(self) -> Dict[int, int]:
        return {self.guest_port: self.port}

    @property
    def export(self) -> Path:
        return self.dumps

    def url(self, subdir: str) -> str:
        return f"{self.scheme}://root@{GUEST_SERVER}{self.dumps / subdir}"

    def settings(self) -> Dict[str, str]:
        return {"KDUMP_HOST_KEY": self.host_key, "KDUMP_SSH_IDENTITY": str(self.identity)}

    def start(self) -> "SshServer":
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.dumps.mkdir(mode=0o700, exist_ok=True)
        hostkey = self.workdir / "host_ed25519"
        for key in (hostkey, self.identity):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                               check=True, stdin=subprocess.DEVNULL)
        self.host_key = " ".join(Path(f"{hostkey}.pub").read_text().split()[:2])
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{self.identity}.pub").read_text())
        self.port = free_port()
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {hostkey}",
            f"PidFile {self.workdir / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password", "AllowUsers root",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "",
        ]))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.logfile, "ab"),
                                     start_new_session=True)
        wait_listening(self.port, self.proc, "sshd", self.logfile)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def log_text(self) -> str:
        return _tail(self.logfile)


class FtpServer(Server):
    """vsftpd (tests/servers/ftpd.py) with a small passive port range forwarded 1:1.

    With ``tls`` it is an ftps server (AUTH TLS, PROT P) whose certificate,
    for the address the guest uses, comes from a test CA made here; the
    guest trusts that CA through KDUMP_CA_FILE (the host's system store is
    never touched)."""

    scheme = "ftp"
    guest_port = 21
    passive_ports = 6

    def __init__(self, workdir: Path, tls: bool = False) -> None:
        super().__init__(workdir)
        from servers.ftpd import FtpServer as Vsftpd, TestCA

        self.ca: Optional[TestCA] = None
        pem: Optional[Path] = None
        if tls:
            self.scheme = "ftps"
            self.ca = TestCA(self.workdir / "ca", name="qharness test CA")
            pem = self.ca.server_cert("server", f"IP:{GUEST_SERVER}")

        first = free_port_range(self.passive_ports)
        self.pasv = range(first, first + self.passive_ports)

        class Forwarded(Vsftpd):  # type: ignore[misc, valid-type]
            def _write_conf(inner) -> None:
                super()._write_conf()
                with open(inner.conf, "a") as conf:
                    conf.write(f"pasv_min_port={first}\npasv_max_port={first + self.passive_ports - 1}\n"
                               f"pasv_address={GUEST_SERVER}\npasv_addr_resolve=NO\n")

        # the FTP user must reach its home: the harness keeps every parent 0755
        self.server = Forwarded(self.workdir / "vsftpd", home=self.workdir / "home", tls_pem=pem)

    @property
    def forwards(self) -> Dict[int, int]:
        ports = {self.guest_port: self.server.port}
        ports.update({p: p for p in self.pasv})
        return ports

    @property
    def export(self) -> Path:
        return self.server.home

    def url(self, subdir: str) -> str:
        # an ftp URL's path is relative to the login directory (vsftpd's local_root)
        return f"{self.scheme}://{self.server.user}:{self.server.password}@{GUEST_SERVER}/{subdir}"

    def settings(self) -> Dict[str, str]:
        return {"KDUMP_CA_FILE": str(self.ca.cert)} if self.ca else {}

    def secrets(self) -> List[str]:
        return [self.server.password]

    def start(self) -> "FtpServer":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        served = getattr(self.server, "served", None)      # the helper's anonymous tree, unused here
        if served is not None:
            shutil.rmtree(served, ignore_errors=True)

    def log_text(self) -> str:
        return _tail(self.server.log)


class CifsServer(Server):
    """Samba's smbd (tests/servers/smbd.py), share ``dumps``."""

    scheme = "cifs"
    guest_port = 445

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        from servers.smbd import SambaServer

        self.server = SambaServer(self.workdir / "samba")

    @property
    def forwards(self) -> Dict[int, int]:
        return {self.guest_port: self.server.port}

    @property
    def export(self) -> Path:
        return self.server.share_dir

    def url(self, subdir: str) -> str:
        return f"cifs://{self.server.user}:{self.server.password}@{GUEST_SERVER}/{self.server.share}/{subdir}"

    def secrets(self) -> List[str]:
        return [self.server.password]

    def start(self) -> "CifsServer":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def log_text(self) -> str:
        return self.server.log_text()[-2000:]


class NfsServer(Server):
    """nfs-ganesha (userspace NFSv4 over TCP, no rpcbind), export ``/dumps``."""

    scheme = "nfs"
    guest_port = 2049
    pseudo = "/dumps"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.dumps = self.workdir / "export"
        self.logfile = self.workdir / "ganesha.log"

    @property
    def forwards(self) -> Dict[int, int]:
        return {self.guest_port: self.port}

    @property
    def export(self) -> Path:
        return self.dumps

    def url(self, subdir: str) -> str:
        return f"nfs://{GUEST_SERVER}{self.pseudo}/{subdir}"

    def start(self) -> "NfsServer":
        self.dumps.mkdir(mode=0o755, exist_ok=True)
        recovery = self.workdir / "recovery"
        recovery.mkdir(exist_ok=True)
        self.port = self.port or free_port()   # a restart keeps the port the guest is forwarded to
        conf = self.workdir / "ganesha.conf"
        conf.write_text(f"""
NFS_CORE_PARAM {{
    NFS_Port = {self.port};
    Bind_addr = 127.0.0.1;
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{self.dumps}";
    Pseudo = "{self.pseudo}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
""")
        ganesha = shutil.which("ganesha.nfsd") or "/usr/bin/ganesha.nfsd"
        self.proc = subprocess.Popen(
            [ganesha, "-F", "-f", str(conf), "-L", str(self.logfile), "-p", str(self.workdir / "ganesha.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "stderr", "ab"),
            start_new_session=True)
        wait_listening(self.port, self.proc, "ganesha.nfsd", self.logfile, timeout=30)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def log_text(self) -> str:
        return _tail(self.logfile)


def make(scheme: str, workdir: Path) -> Server:
    """The server for a target scheme (``sftp``, ``ssh``, ``ftp``, ``ftps``, ``cifs``, ``nfs``)."""
    if scheme in ("sftp", "ssh"):
        return SshServer(workdir, scheme)
    if scheme in ("ftp", "ftps"):
        return FtpServer(workdir, tls=scheme == "ftps")
    if scheme == "cifs":
        return CifsServer(workdir)
    if scheme == "nfs":
        return NfsServer(workdir)
    raise ValueError(f"no server for scheme {scheme!r}")
