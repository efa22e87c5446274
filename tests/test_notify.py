"""``kdump-saver notify`` against a real SMTP server (aiosmtpd) on 127.0.0.1.

The dumps are made by the saver itself from the fixture vmcore, on a local
directory and through a real sftp server; what arrived is read from the SMTP
server's side (envelope, headers, body, whether the session was encrypted
and logged in).  The STARTTLS server has a self-signed certificate made with
openssl; the client trusts it only through OpenSSL's SSL_CERT_FILE.
"""
from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from capture.config.options import Config
from capture.formats import INCOMPLETE
from capture.save.dumpdir import MARKER, README, DumpFacts, incomplete_readme, marker_bytes
from capture.errors import KdumpError
from capture.host.notify import (CONNECT_TIMEOUT, DIALOGUE_TIMEOUT, NOTIFIED, SMTPS_PORT, NotifyError, notify,
                                 parse_server)
from capture.save.sequence import save
from conftest import REPO, require, require_program
from servers.common import free_port
from servers.sshd import SSHD, SSHLab

#: the session-scoped sshd fixtures (ssh_lab, ssh_users, sshd_sftp)
pytest_plugins = ["servers.sshd"]

HOST = "kdtest-host"
TO = ("admin@example.org", "ops@example.org")
CC = ("cc@example.org",)


def aiosmtpd_controller():
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        require(False, "aiosmtpd is not installed (pip install -e '.[test]')")
    return Controller


@dataclass
class Received:
    """One mail as the server got it."""

    mail_from: str
    rcpt_tos: List[str]
    message: EmailMessage
    tls: bool
    authenticated: bool


def encrypted(server, session) -> bool:
    """Whether an aiosmtpd session runs over TLS: after STARTTLS, or from the first byte."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


@dataclass
class Inbox:
    """The aiosmtpd handler: keeps every mail and every AUTH attempt."""

    credentials: Optional[Tuple[str, str]] = None
    mails: List[Received] = field(default_factory=list)
    logins: List[Tuple[str, bool]] = field(default_factory=list)
    """(user, whether the session was encrypted at the time)"""

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message,
                                   encrypted(server, session), bool(session.authenticated)))
        return "250 Message accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((user, encrypted(server, session)))
        ok = (user, password) == self.credentials
        return AuthResult(success=ok, handled=False)   # handled=False: the server answers 535 itself


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@contextlib.contextmanager
def mail_server(port: int = 0, tls: Optional[Cert] = None, credentials: Optional[Tuple[str, str]] = None,
                implicit_tls: bool = False) -> Iterator[Tuple[Inbox, int]]:
    """An SMTP server on 127.0.0.1: STARTTLS with ``tls`` (TLS from the first
    byte with ``implicit_tls``), AUTH with ``credentials`` (offered on plain
    connections too: refusing to log in unencrypted is the client's job)."""
    controller_class = aiosmtpd_controller()
    inbox = Inbox(credentials)
    kwargs = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        kwargs["ssl_context" if implicit_tls else "tls_context"] = context
    if credentials is not None:
        kwargs.update(authenticator=inbox.authenticate, auth_require_tls=False)
    controller = controller_class(inbox, hostname="127.0.0.1", port=port or free_port(), **kwargs)
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1."""
    openssl = require_program("openssl")
    d = tmp_path_factory.mktemp("smtp-cert")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return Cert(cert, key)


@pytest.fixture
def trusted(certificate: Cert, monkeypatch: pytest.MonkeyPatch) -> Cert:
    """The test certificate as the client's only CA (OpenSSL's SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return certificate


def mail_config(port: int, **changes: object) -> Config:
    values = dict(dumpformat="lzo", dumplevel=31, free_disk_size=1, net_timeout=0, hostname=HOST,
                  notification_to=" ".join(TO), notification_cc=" ".join(CC), smtp_server=f"127.0.0.1:{port}")
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def save_dump(config: Config, vmcore: Path, savedir: str) -> str:
    return save(config, vmcore=str(vmcore), savedir=savedir).directory


def crash_time_of(dump_dir: Path) -> str:
    """The crash time row of a dump's README."""
    readme = (dump_dir / README).read_text()
    return next(line.split(": ", 1)[1] for line in readme.splitlines() if line.startswith("crash time: "))


def body(received: Received) -> str:
    """The text of the mail with the wire's CRLF line ends as LF."""
    return received.message.get_content().replace("\r\n", "\n")


def assert_mail_for(received: Received, dump_dir: Path) -> None:
    """The mail announces the dump in ``dump_dir``: host and crash time in the
    subject, its README as the body, every recipient reached."""
    readme = (dump_dir / README).read_text()
    message = received.message
    assert message["Subject"].strip() == f"kdump: {HOST} crashed {crash_time_of(dump_dir)}, dump saved"
    assert body(received) == readme
    assert sorted(received.rcpt_tos) == sorted(TO + CC)
    assert message["To"] == ", ".join(TO) and message["Cc"] == ", ".join(CC)
    assert received.mail_from == f"root@{HOST}"


def test_one_mail_per_new_dump_on_a_file_target(tmp_path, fixture_vmcore, makedumpfile, trusted) -> None:
    target = tmp_path / "crash"
    with mail_server(tls=trusted, credentials=("kdump", "pw-" + secrets.token_hex(8))) as (inbox, port):
        config = mail_config(port, smtp_user="kdump", smtp_password=inbox.credentials[1])
        first = save_dump(config, fixture_vmcore, str(target))
        second = save_dump(config, fixture_vmcore, str(target))   # same crash minute: "<stamp>.2"
        other = save_dump(replace(config, hostname="other-host"), fixture_vmcore, str(target))

        result = notify(config, savedir=str(target))
        assert result.announced == [first, second]
        assert len(inbox.mails) == 2
        for received, name in zip(inbox.mails, (first, second)):
            assert_mail_for(received, target / name)
            assert received.tls and received.authenticated
            assert name in body(received)
            mark = json.loads((target / name / NOTIFIED).read_text())
            assert mark["to"] == list(TO) and mark["cc"] == list(CC)
        assert inbox.logins == [("kdump", True)]
        assert not (target / other / NOTIFIED).exists(), "another host's dump is not ours to announce"

        assert notify(config, savedir=str(target)).announced == []
        assert len(inbox.mails) == 2, "a dump is announced once"

        third = save_dump(config, fixture_vmcore, str(target))
        assert notify(config, savedir=str(target)).announced == [third]
        assert len(inbox.mails) == 3
        assert_mail_for(inbox.mails[2], target / third)


def test_one_mail_per_new_dump_on_an_sftp_target(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore,
                                                 makedumpfile) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base))
    with mail_server() as (inbox, port):   # plain SMTP, no AUTH
        config = ssh_lab.saver_config(sshd_sftp, hostname=HOST, notification_to=" ".join(TO),
                                      notification_cc=" ".join(CC), smtp_server=f"127.0.0.1:{port}")
        name = save_dump(config, fixture_vmcore, url)
        assert name.startswith(f"{HOST}-"), "a remote dump directory carries the host name"

        assert notify(config, savedir=url).announced == [name]
        assert len(inbox.mails) == 1
        assert_mail_for(inbox.mails[0], base / name)
        assert not inbox.mails[0].tls and not inbox.mails[0].authenticated
        mark = base / name / NOTIFIED
        assert mark.stat().st_uid == ssh_lab.key_user.uid, "the mark was written through sftp"

        assert notify(config, savedir=url).announced == []
        assert len(inbox.mails) == 1


def test_no_mail_and_no_mark_without_recipients(tmp_path, fixture_vmcore, makedumpfile) -> None:
    with mail_server() as (inbox, port):
        config = mail_config(port, notification_to="")
        name = save_dump(config, fixture_vmcore, str(tmp_path))
        assert notify(config, savedir=str(tmp_path)).announced == []
        assert inbox.mails == []
        assert not (tmp_path / name / NOTIFIED).exists()
        # CC alone is no recipient either
        assert notify(replace(config, notification_to="  "), savedir=str(tmp_path)).announced == []
        assert inbox.mails == []


@pytest.mark.parametrize("starttls,auth", [(False, False), (True, False), (True, True)])
def test_session_encrypted_when_offered_and_logged_in_when_a_user_is_set(tmp_path, fixture_vmcore, makedumpfile,
                                                                         trusted, starttls, auth) -> None:
    credentials = ("kdump", "pw-" + secrets.token_hex(8)) if auth else None
    with mail_server(tls=trusted if starttls else None, credentials=credentials) as (inbox, port):
        config = mail_config(port, **(dict(smtp_user=credentials[0], smtp_password=credentials[1])
                                      if credentials else {}))
        name = save_dump(config, fixture_vmcore, str(tmp_path))
        assert notify(config, savedir=str(tmp_path)).announced == [name]
        assert [(m.tls, m.authenticated) for m in inbox.mails] == [(starttls, auth)]
        assert inbox.logins == ([("kdump", True)] if auth else [])


def test_port_465_is_tls_from_the_first_byte(tmp_path, fixture_vmcore, makedumpfile, trusted) -> None:
    require(os.geteuid() == 0, "port 465 is privileged: the SMTPS test needs root")
    with socket.socket() as probe:
        require(probe.connect_ex(("127.0.0.1", SMTPS_PORT)) != 0, "127.0.0.1:465 is taken by another program")
    credentials = ("kdump", "pw-" + secrets.token_hex(8))
    with mail_server(port=SMTPS_PORT, tls=trusted, credentials=credentials, implicit_tls=True) as (inbox, port):
        config = mail_config(port, smtp_user=credentials[0], smtp_password=credentials[1])
        name = save_dump(config, fixture_vmcore, str(tmp_path))
        assert notify(config, savedir=str(tmp_path)).announced == [name]
        assert [(m.tls, m.authenticated) for m in inbox.mails] == [(True, True)]
        assert inbox.logins == [("kdump", True)]


def test_password_is_never_sent_unencrypted(tmp_path, fixture_vmcore, makedumpfile) -> None:
    password = "pw-" + secrets.token_hex(8)
    with mail_server(credentials=("kdump", password)) as (inbox, port):   # AUTH offered, no STARTTLS
        config = mail_config(port, smtp_user="kdump", smtp_password=password)
        name = save_dump(config, fixture_vmcore, str(tmp_path))
        with pytest.raises(NotifyError, match="offers no STARTTLS, and KDUMP_SMTP_PASSWORD is never sent") as err:
            notify(config, savedir=str(tmp_path))
        assert password not in str(err.value) and name in str(err.value)
        assert inbox.logins == [] and inbox.mails == []
        assert not (tmp_path / name / NOTIFIED).exists()


def test_untrusted_certificate_is_refused_not_bypassed(tmp_path, fixture_vmcore, makedumpfile, certificate,
                                                      monkeypatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)   # the system store, which does not know our CA
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with mail_server(tls=certificate) as (inbox, port):
        config = mail_config(port)
        name = save_dump(config, fixture_vmcore, str(tmp_path))
        with pytest.raises(NotifyError, match="TLS certificate is not trusted"):
            notify(config, savedir=str(tmp_path))
        assert inbox.mails == []
        assert not (tmp_path / name / NOTIFIED).exists()


def test_a_down_mail_server_delays_briefly_and_the_mail_goes_out_at_the_next_run(tmp_path, fixture_vmcore,
                                                                                 makedumpfile) -> None:
    port = free_port()
    config = mail_config(port)
    name = save_dump(config, fixture_vmcore, str(tmp_path))

    with pytest.raises(NotifyError, match="connection refused") as err:   # nothing listens
        notify(config, savedir=str(tmp_path))
    assert f"127.0.0.1:{port}" in str(err.value) and name in str(err.value)

    # a server that takes the connection but never greets: the connect timeout ends the wait
    silent = socket.socket()
    silent.bind(("127.0.0.1", port))
    silent.listen(4)
    try:
        started = time.monotonic()
        with pytest.raises(NotifyError, match="timed out"):
            notify(config, savedir=str(tmp_path))
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert waited < CONNECT_TIMEOUT + 3, f"a silent server held the run for {waited:.1f} s"
    assert not (tmp_path / name / NOTIFIED).exists()

    with mail_server(port=port) as (inbox, _):
        assert notify(config, savedir=str(tmp_path)).announced == [name]
        assert len(inbox.mails) == 1
    assert (tmp_path / name / NOTIFIED).exists()


def test_a_server_that_stalls_after_its_greeting_is_given_up(tmp_path, fixture_vmcore, makedumpfile) -> None:
    port = free_port()
    config = mail_config(port)
    name = save_dump(config, fixture_vmcore, str(tmp_path))
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(1)

    def greet_and_stall() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 stalling server\r\n")
            conn.recv(1024)   # the EHLO, never answered
            time.sleep(DIALOGUE_TIMEOUT + 5)

    server = threading.Thread(target=greet_and_stall, daemon=True)
    server.start()
    try:
        started = time.monotonic()
        with pytest.raises(NotifyError, match=f"timed out after {DIALOGUE_TIMEOUT:g} s"):
            notify(config, savedir=str(tmp_path))
        waited = time.monotonic() - started
    finally:
        listener.close()
    assert waited < DIALOGUE_TIMEOUT + 3, f"a stalled server held the run for {waited:.1f} s"
    assert not (tmp_path / name / NOTIFIED).exists()


def test_failed_save_is_announced_as_incomplete_and_one_being_written_is_not(tmp_path, fixture_vmcore,
                                                                            makedumpfile) -> None:
    with mail_server() as (inbox, port):
        config = mail_config(port)
        st = os.statvfs(tmp_path)
        almost_full = (st.f_bavail * st.f_frsize >> 20) - 8   # room for the start, not for the vmcore
        with pytest.raises(KdumpError):
            save(replace(config, free_disk_size=almost_full), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
        failed = next(p.name for p in tmp_path.iterdir())
        # what the saver has written when a save is still running (or its capture kernel died)
        running = tmp_path / "2030-01-01-00-00"
        running.mkdir()
        (running / MARKER).write_bytes(marker_bytes(HOST, datetime.now(timezone.utc)))
        (running / README).write_text(incomplete_readme(DumpFacts(status="being written", target=str(tmp_path),
                                                                  directory=running.name, hostname=HOST)))
        (running / f"vmcore{INCOMPLETE}").write_bytes(b"partial")

        # a README that says saved but a file still being written: not final, not announced
        leftover = Path(shutil.copytree(tmp_path / failed, tmp_path / "2030-01-02-00-00"))
        readme = (leftover / README).read_text().split("\n\n", 1)[1]   # without the INCOMPLETE banner
        readme = re.sub(r"(?m)^vmcore status: .*$", "vmcore status: saved successfully", readme)
        (leftover / README).write_text(readme)
        (leftover / f"dmesg.txt{INCOMPLETE}").write_bytes(b"partial")

        assert notify(config, savedir=str(tmp_path)).announced == [failed]
        assert len(inbox.mails) == 1
        assert not (leftover / NOTIFIED).exists()
        message = inbox.mails[0].message
        crash_time = crash_time_of(tmp_path / failed)
        assert message["Subject"].strip() == f"kdump: {HOST} crashed {crash_time}, dump INCOMPLETE"
        assert "vmcore status: INCOMPLETE: the target has" in body(inbox.mails[0])
        assert not (running / NOTIFIED).exists()
        assert notify(config, savedir=str(tmp_path)).announced == []


def _secret_forms(user: str, password: str) -> List[str]:
    """The password as it could leak: plain, and inside AUTH PLAIN/LOGIN's base64."""
    return [password, base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
            base64.b64encode(password.encode()).decode()]


def test_password_never_in_logs_or_errors(tmp_path, fixture_vmcore, makedumpfile, trusted, caplog) -> None:
    password = "pw-" + secrets.token_hex(8)
    caplog.set_level(logging.DEBUG)
    with mail_server(tls=trusted, credentials=("kdump", password)) as (inbox, port):
        config = mail_config(port, smtp_user="kdump", smtp_password=password)
        save_dump(config, fixture_vmcore, str(tmp_path))
        wrong = replace(config, smtp_password=password + "-wrong")
        with pytest.raises(NotifyError, match="login as kdump failed") as err:
            notify(wrong, savedir=str(tmp_path))
        errors = [str(err.value)]
        assert notify(config, savedir=str(tmp_path)).announced
        assert len(inbox.mails) == 1
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    assert "announced" in ours
    for secret in _secret_forms("kdump", password) + _secret_forms("kdump", password + "-wrong"):
        assert secret not in ours and secret not in "\n".join(errors)


def run_cli(*args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capture.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_notify_never_prints_the_password(tmp_path, fixture_vmcore, makedumpfile, certificate) -> None:
    password = "pw-" + secrets.token_hex(8)
    target = tmp_path / "crash"
    env = {"SSL_CERT_FILE": str(certificate.cert)}

    def write_config(port: int, secret: str) -> Path:
        path = tmp_path / "kdump"
        path.write_text(f'KDUMP_SAVEDIR="file://{target}"\nKDUMP_HOSTNAME="{HOST}"\n'
                        f'KDUMP_NOTIFICATION_TO="{" ".join(TO)}"\nKDUMP_SMTP_SERVER="127.0.0.1:{port}"\n'
                        f'KDUMP_SMTP_USER="kdump"\nKDUMP_SMTP_PASSWORD="{secret}"\n')
        path.chmod(0o600)
        return path

    with mail_server(tls=certificate, credentials=("kdump", password)) as (inbox, port):
        name = save_dump(mail_config(port), fixture_vmcore, str(target))
        failed = run_cli("-v", "notify", "--config", str(write_config(port, password + "-wrong")), env=env)
        assert failed.returncode == 1 and "login as kdump failed" in failed.stderr
        assert "Traceback" not in failed.stderr
        done = run_cli("-v", "notify", "--config", str(write_config(port, password)), env=env)
        assert done.returncode == 0, done.stderr
        assert f"announced {name}" in done.stderr
        assert len(inbox.mails) == 1
    with mail_server(credentials=("kdump", password)) as (inbox, port):   # no STARTTLS
        save_dump(mail_config(port), fixture_vmcore, str(target))
        refused = run_cli("-v", "notify", "--config", str(write_config(port, password)), env=env)
        assert refused.returncode == 1 and "never sent unencrypted" in refused.stderr
        assert inbox.logins == []
    output = "\n".join(r.stdout + r.stderr for r in (failed, done, refused))
    for secret in _secret_forms("kdump", password) + _secret_forms("kdump", password + "-wrong"):
        assert secret not in output


@pytest.mark.parametrize("text,expected", [
    ("", ("localhost", 25)), ("mail.example.org", ("mail.example.org", 25)),
    ("mail.example.org:587", ("mail.example.org", 587)), ("[::1]:2525", ("::1", 2525)),
    ("::1", ("::1", 25)), (" 127.0.0.1:25 ", ("127.0.0.1", 25)),
])
def test_smtp_server_forms(text, expected) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["mail:0", "mail:65536", "mail:smtp", ":25", "user@mail", "[::1]:x"])
def test_bad_smtp_server_is_a_clear_error(text) -> None:
    with pytest.raises(NotifyError, match="KDUMP_SMTP_SERVER"):
        parse_server(text)
