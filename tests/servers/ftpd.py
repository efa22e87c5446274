"""A real vsftpd on 127.0.0.1 for the ftp and ftps transport tests.

One server per :class:`FtpServer`, in the foreground, in its own process
group, with its configuration, logs and the users' directories under a
temporary folder and a free port chosen at start.

* The local user :data:`USER` (a system account created once, shell
  ``/bin/sh`` because Debian's PAM stack for vsftpd requires a listed shell)
  logs in with a random password, made once per boot and kept in a
  root-only file so concurrent test runs agree on it, set through
  ``chpasswd``'s stdin (never a command line).  The account exists only on
  test machines; its password is known to root alone.  Its login directory is :attr:`home`.
* Anonymous logins land in :attr:`anon_root` (read-only); its ``pub``
  directory allows uploads, directory creation and renames.
* With ``tls=True`` the server demands explicit TLS (AUTH TLS, PROT P) for
  logins and data, with a server certificate made by :class:`TestCA`.
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

USER = "kdftptest"
#: where the account's random password is kept (root only), so that test
#: processes running at the same time agree on it
SECRET = Path("/run/kdump-saver-tests") / f"{USER}.secret"


def account_password() -> str:
    """The test account's password: made once per boot, kept in :data:`SECRET`."""
    SECRET.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(SECRET, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SECRET.read_text().strip()
    password = "pw-" + secrets.token_hex(12)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password






class TestCA:
    """A throw-away CA and server certificates signed by it, made with ``openssl``."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path, name: str = "kdump-saver test CA") -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                 "-days", "2", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def server_cert(self, name: str, san: str) -> Path:
        """A PEM file with key and certificate for ``san`` (e.g. ``IP:127.0.0.1``)."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        crt = self.dir / f"{name}.crt"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                 "-out", crt, "-days", "2", "-extfile", ext)
        pem = self.dir / f"{name}.pem"
        pem.write_bytes(key.read_bytes() + crt.read_bytes())
        pem.chmod(0o600)
        return pem


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)




class FtpServer:
    """One vsftpd; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, workdir: Path, tls_pem: Optional[Path] = None, home: Optional[Path] = None,
                 host: str = "127.0.0.1", umask: str = "077") -> None:
        self.workdir = Path(workdir)
        #: the server's umask for new files and directories (022 is the common default elsewhere)
        self.umask = umask
        self.host = host
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = USER
        self.password = account_password()
        self.port = free_port(host)
        # the test user must reach its directories: pytest's own temporary
        # folders are private to root, so the served trees live elsewhere
        self.served = Path(tempfile.mkdtemp(prefix="kdump-saver-ftpd-"))
        self.served.chmod(0o755)
        self.home = Path(home) if home else self.served / "home"
        self.anon_root = self.served / "anon"
        self.tls_pem = tls_pem
        self.conf = self.workdir / "vsftpd.conf"
        self.log = self.workdir / "vsftpd.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def scheme(self) -> str:
        return "ftps" if self.tls_pem else "ftp"

    def url(self, path: str = "", password: Optional[str] = None, anonymous: bool = False) -> str:
        where = f"[{self.host}]" if ":" in self.host else self.host
        if anonymous:
            return f"{self.scheme}://{where}:{self.port}{path}"
        pw = self.password if password is None else password
        return f"{self.scheme}://{self.user}:{pw}@{where}:{self.port}{path}"

    def _write_conf(self) -> None:
        lines = [
            *(["listen=NO", "listen_ipv6=YES", f"listen_address6={self.host}"] if ":" in self.host else
              ["listen=YES", "listen_ipv6=NO", f"listen_address={self.host}", f"pasv_address={self.host}"]),
            f"listen_port={self.port}",
            "background=NO", "seccomp_sandbox=NO", "isolate=NO", "isolate_network=NO",
            "local_enable=YES", "write_enable=YES", f"local_umask={self.umask}", f"local_root={self.home}",
            "anonymous_enable=YES", "anon_upload_enable=YES", "anon_mkdir_write_enable=YES",
            "anon_other_write_enable=YES", f"anon_umask={self.umask}", "anon_world_readable_only=NO", f"anon_root={self.anon_root}",
            "no_anon_password=YES",
            "pasv_enable=YES", "port_enable=NO",
            "pam_service_name=vsftpd", "secure_chroot_dir=/var/run/vsftpd/empty",
            "dirmessage_enable=NO", "use_localtime=NO", "chmod_enable=YES",
            "xferlog_enable=YES", "vsftpd_log_file=" + str(self.log), "dual_log_enable=YES",
            "xferlog_file=" + str(self.workdir / "xferlog"),
            "idle_session_timeout=120", "data_connection_timeout=60",
        ]
        if self.tls_pem:
            lines += [
                "ssl_enable=YES", f"rsa_cert_file={self.tls_pem}", f"rsa_private_key_file={self.tls_pem}",
                "force_local_logins_ssl=YES", "force_local_data_ssl=YES", "allow_anon_ssl=YES",
                "force_anon_logins_ssl=YES", "force_anon_data_ssl=YES",
                # vsftpd's default require_ssl_reuse=YES is kept: data connections
                # must resume the control connection's TLS session
                "ssl_tlsv1=NO", "ssl_sslv2=NO", "ssl_sslv3=NO", "ssl_ciphers=HIGH",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> "FtpServer":
        vsftpd = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
        ensure_unix_user(self.user, shell="/bin/sh", home="/")
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}\n", text=True,
                       check=True, capture_output=True)
        subprocess.run(["usermod", "-U", self.user], capture_output=True)
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.home, self.user)
        # vsftpd refuses a writable anonymous root: uploads go to pub/
        self.anon_root.mkdir(parents=True, exist_ok=True)
        self.anon_root.chmod(0o755)
        (self.anon_root / "pub").mkdir(exist_ok=True)
        shutil.chown(self.anon_root / "pub", "ftp")
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        self._write_conf()
        with open(self.workdir / "vsftpd.stderr", "ab") as stderr:
            self.proc = subprocess.Popen([vsftpd, str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.workdir / "vsftpd.stderr").read_text(errors="replace")
                raise RuntimeError(f"vsftpd exited: {err[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"vsftpd did not answer on port {self.port}")

    def kill_sessions(self) -> int:
        """Kill the processes serving connected clients (connections drop)."""
        assert self.proc is not None
        killed = 0
        for pid in children_of(self.proc.pid):
            for p in [pid] + children_of(pid):
                try:
                    os.kill(p, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed

    def stop(self) -> None:
        if self.proc is not None:
            self.kill_sessions()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            self.proc = None

    def remove(self) -> None:
        """Stop and delete the served directories."""
        self.stop()
        shutil.rmtree(self.served, ignore_errors=True)

    def __enter__(self) -> "FtpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
