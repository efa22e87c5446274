"""Mail when a dump arrives: what ``kdump-saver notify`` does after the reboot.

:func:`notify` looks on the target (any transport, local or remote) for this
host's dumps that are final and not yet announced, sends one mail per dump
to KDUMP_NOTIFICATION_TO (and _CC) through KDUMP_SMTP_SERVER, and then
writes :data:`NOTIFIED` into the dump's directory.  The mark travels with the
dump: retention deletes it together with the dump, a reinstalled host does
not announce old dumps again, and every host sharing a target sees the same
state.  It is written only after the server accepted the mail, so a mail
server that is down leaves the dumps unmarked and the next run sends them.

Which dumps are final:

- complete: README.txt says ``vmcore status: saved successfully`` and no file
  in the directory ends in ``.incomplete``; announced as a crash dump;
- failed: README.txt says ``vmcore status: INCOMPLETE: why``.  The saver writes
  that as the last step of a failed save, so the directory will not change
  any more; announced as an INCOMPLETE dump, with the reason in the body.

A README that still says ``being written`` belongs to a save in progress (or
to one whose capture kernel died mid-way, which cannot be told apart); it is
not announced.

The mail server: ``host`` or ``host:port`` (``[v6addr]:port``), port 25 by
default, ``localhost`` when KDUMP_SMTP_SERVER is empty (the local MTA, which
is what SUSE's mailx-based notification uses).  Connecting and the server's
greeting must take at most ``connect_timeout`` seconds (5 by default), every
later answer at most :data:`DIALOGUE_TIMEOUT`.  Port 465 speaks TLS from the
first byte (SMTPS); on every other port STARTTLS is used whenever the server
offers it.  The certificate is checked against the system's CA store
(OpenSSL's ``SSL_CERT_FILE``/``SSL_CERT_DIR`` select another one; SUSE has no
option for this).  With KDUMP_SMTP_USER set the session logs in (AUTH), and
only over an encrypted connection: KDUMP_SMTP_PASSWORD is never sent in clear
text, never logged and never part of an error message.
"""
from __future__ import annotations

import json
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Dict, List, Optional, Sequence, Tuple

from capture.save import retention
from capture.config import targeturl
from capture.config.options import Config
from capture.formats import INCOMPLETE
from capture.save.dumpdir import README, TOOL, parse_name
from capture.errors import KdumpError
from transports import open_target
from transports.base import Transport, TransportError, TransportOptions, network_reason

log = logging.getLogger(__name__)

NOTIFIED = ".kdump-saver-notified"
"""Written into a dump directory once its mail was accepted."""
DEFAULT_PORT = 25
SMTPS_PORT = 465
"""The port where the connection is TLS from the start (RFC 8314) instead of STARTTLS."""
CONNECT_TIMEOUT = 5.0
"""Seconds for the connection and the server's greeting."""
DIALOGUE_TIMEOUT = 15.0
"""Seconds for each later answer of the server."""

_SUCCESS = "saved successfully"
_FAILED = "INCOMPLETE:"


class NotifyError(KdumpError):
    """The mail could not be sent; the message never holds the SMTP password."""


@dataclass(frozen=True)
class MailSettings:
    """KDUMP_NOTIFICATION_TO/_CC and KDUMP_SMTP_*, parsed."""

    to: Tuple[str, ...]
    cc: Tuple[str, ...] = ()
    host: str = "localhost"
    port: int = DEFAULT_PORT
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def server(self) -> str:
        """``host:port`` for messages (IPv6 addresses in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def recipients(self) -> Tuple[str, ...]:
        return self.to + self.cc


def mail_settings(config: Config) -> Optional[MailSettings]:
    """The mail settings, or None when KDUMP_NOTIFICATION_TO is empty (no mail).
    A bad KDUMP_SMTP_SERVER raises :class:`NotifyError`."""
    to = addresses(config.notification_to)
    if not to:
        return None
    host, port = parse_server(config.smtp_server)
    return MailSettings(to=to, cc=addresses(config.notification_cc), host=host, port=port,
                        user=config.smtp_user, password=config.smtp_password)


def addresses(text: str) -> Tuple[str, ...]:
    """Mail addresses separated by spaces (SUSE's form) or commas."""
    return tuple(word for word in re.split(r"[\s,]+", text) if word)


def parse_server(text: str) -> Tuple[str, int]:
    """``host``, ``host:port``, ``[v6addr]:port`` or a bare IPv6 address ->
    (host, port); empty -> ``("localhost", 25)``."""
    text = text.strip()
    if not text:
        return "localhost", DEFAULT_PORT
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host or re.search(r"[\s/@\[\]]", host):
        raise NotifyError(f'KDUMP_SMTP_SERVER="{text}": must be HOST or HOST:PORT')
    if port is None:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise NotifyError(f'KDUMP_SMTP_SERVER="{text}": the port must be a number from 1 to 65535')
    return host, int(port)


def local_hostname(config: Config) -> str:
    """The name this host's dumps carry: KDUMP_HOSTNAME, else the short host
    name (the rule the initrd builder records for the capture kernel)."""
    return config.hostname or socket.gethostname().split(".")[0] or "localhost"


# --- which dumps to announce -----------------------------------------------------------------------

@dataclass(frozen=True)
class DumpNews:
    """A final, not yet announced dump of this host."""

    directory: str
    host: str
    crash_time: str
    status: str
    readme: str

    @property
    def complete(self) -> bool:
        return self.status == _SUCCESS


def unannounced(target: Transport, hostname: str) -> List[DumpNews]:
    """This host's final dumps on ``target`` without :data:`NOTIFIED`, oldest first."""
    found = []
    for dump in retention.own_dumps(target, hostname):
        news = _news_of(target, dump.name, hostname)
        if news is not None:
            found.append(news)
    return found


def _news_of(target: Transport, name: str, hostname: str) -> Optional[DumpNews]:
    files = [entry.name for entry in target.listdir(name) if not entry.is_dir]
    if NOTIFIED in files:
        return None
    raw = target.read_small(f"{name}/{README}")
    if raw is None:
        log.info("%s has no %s; not announced", name, README)
        return None
    readme = raw.decode("utf-8", "replace")
    rows = readme_rows(readme)
    status = rows.get("vmcore status", "")
    partial = [f for f in files if f.endswith(INCOMPLETE)]
    if status == _SUCCESS and partial:
        log.warning("%s: README says saved successfully but %s remain; not announced", name, ", ".join(partial))
        return None
    if status != _SUCCESS and not status.startswith(_FAILED):
        log.info("%s is still being written (or its save was cut off); not announced", name)
        return None
    parsed = parse_name(name)
    crash_time = rows.get("crash time") or (parsed.stamp if parsed else "unknown")
    return DumpNews(name, rows.get("host", hostname), crash_time, status, readme)


def readme_rows(readme: str) -> Dict[str, str]:
    """The ``key: value`` rows of a README, first occurrence of each key."""
    rows: Dict[str, str] = {}
    for line in readme.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and not key.startswith(" ") and key not in rows:
            rows[key] = value.strip()
    return rows


# --- the mail --------------------------------------------------------------------------------------

def sender(settings: MailSettings, hostname: str) -> str:
    """KDUMP_SMTP_USER when it is an address (submission servers often demand
    that), else ``root@HOSTNAME``."""
    return settings.user if "@" in settings.user else f"root@{hostname}"


def subject(news: DumpNews) -> str:
    """``kdump: HOST crashed TIME, dump saved`` (or ``dump INCOMPLETE``)."""
    return f"kdump: {news.host} crashed {news.crash_time}, dump {'saved' if news.complete else 'INCOMPLETE'}"


def compose(news: DumpNews, settings: MailSettings, from_addr: str, hostname: str) -> EmailMessage:
    """One mail for one dump: its README.txt as the body."""
    message = EmailMessage()
    message["From"] = from_addr
    message["To"] = ", ".join(settings.to)
    if settings.cc:
        message["Cc"] = ", ".join(settings.cc)
    message["Subject"] = subject(news)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(news.readme)
    return message


def mark(target: Transport, news: DumpNews, settings: MailSettings) -> None:
    """Write :data:`NOTIFIED` into the dump directory."""
    data = {"tool": TOOL, "notified": datetime.now(timezone.utc).isoformat(),
            "to": list(settings.to), "cc": list(settings.cc)}
    target.write_small(f"{news.directory}/{NOTIFIED}", (json.dumps(data, sort_keys=True) + "\n").encode())


class Mailer:
    """One SMTP session: connected, encrypted (SMTPS on port 465, elsewhere
    STARTTLS when the server offers it), logged in when a user is set.  Every
    failure is a :class:`NotifyError`."""

    def __init__(self, settings: MailSettings, hostname: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.settings = settings
        self.hostname = hostname
        self.connect_timeout = connect_timeout
        self.encrypted = False
        self._smtp: Optional[smtplib.SMTP] = None
        self._limit = connect_timeout
        """The timeout in force, for the words of a timed-out wait."""

    def __enter__(self) -> "Mailer":
        self._limit = self.connect_timeout
        try:
            if self.settings.port == SMTPS_PORT:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.settings.host, self.settings.port,
                                                      local_hostname=self.hostname, timeout=self.connect_timeout,
                                                      context=ssl.create_default_context())
                self.encrypted = True
            else:
                smtp = smtplib.SMTP(self.settings.host, self.settings.port, local_hostname=self.hostname,
                                    timeout=self.connect_timeout)
            self._smtp = smtp
            if smtp.sock is not None:
                smtp.sock.settimeout(DIALOGUE_TIMEOUT)
            self._limit = DIALOGUE_TIMEOUT
            smtp.ehlo_or_helo_if_needed()
            if not self.encrypted and smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
                self.encrypted = True
            if self.settings.user:
                if not self.encrypted:
                    raise NotifyError(f"cannot send mail through {self.settings.server}: the server offers no "
                                      "STARTTLS, and KDUMP_SMTP_PASSWORD is never sent unencrypted")
                smtp.login(self.settings.user, self.settings.password)
        except NotifyError:
            self.close()
            raise
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            self.close()
            raise NotifyError(f"cannot send mail through {self.settings.server}: "
                              f"{self._reason(exc)}") from None
        log.debug("connected to %s (%s%s)", self.settings.server, "TLS" if self.encrypted else "unencrypted",
                  f", logged in as {self.settings.user}" if self.settings.user else "")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
        self.close()

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    def send(self, message: EmailMessage, from_addr: str, recipients: Sequence[str]) -> None:
        """Hand ``message`` to the server; a recipient it refuses is logged,
        a refusal of all of them raises."""
        assert self._smtp is not None, "send() outside the with block"
        try:
            refused = self._smtp.send_message(message, from_addr=from_addr, to_addrs=list(recipients))
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"cannot send mail through {self.settings.server}: {self._reason(exc)}") from None
        for address, (code, text) in refused.items():
            log.warning("the mail server refused %s: %s %s", address, code, self._text(text))

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            words = "; ".join(f"{a}: {c} {self._text(t)}" for a, (c, t) in exc.recipients.items())
            reason = f"every recipient was refused ({words})"
        elif isinstance(exc, smtplib.SMTPSenderRefused):
            reason = f"the sender {exc.sender} was refused: {exc.smtp_code} {self._text(exc.smtp_error)}"
        elif isinstance(exc, smtplib.SMTPAuthenticationError):
            reason = (f"login as {self.settings.user} failed: {exc.smtp_code} {self._text(exc.smtp_error)} "
                      "(check KDUMP_SMTP_USER and KDUMP_SMTP_PASSWORD)")
        elif isinstance(exc, smtplib.SMTPResponseException):
            reason = f"the server answered {exc.smtp_code} {self._text(exc.smtp_error)}"
        elif isinstance(exc, smtplib.SMTPNotSupportedError):
            reason = "the server offers no AUTH, but KDUMP_SMTP_USER is set"
        elif isinstance(exc, smtplib.SMTPServerDisconnected):
            # smtplib reports a read that timed out as a disconnection
            if str(exc).endswith("timed out"):
                reason = f"no answer (timed out after {self._limit:g} s)"
            else:
                reason = "the server closed the connection"
        elif isinstance(exc, smtplib.SMTPException):
            reason = str(exc)
        elif isinstance(exc, ssl.SSLCertVerificationError):
            reason = (f"its TLS certificate is not trusted ({exc.verify_message}; the system's CA store is used, "
                      "SSL_CERT_FILE selects another bundle)")
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS failed ({exc.reason or exc})"
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            reason = f"no answer (timed out after {self._limit:g} s)"
        elif isinstance(exc, OSError):
            reason = network_reason(exc)
        else:
            reason = str(exc)
        return self._scrub(reason)

    def _text(self, raw: object) -> str:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return self._scrub(" ".join(text.split()))

    def _scrub(self, text: str) -> str:
        return text.replace(self.settings.password, "***") if self.settings.password else text


# --- the whole run ---------------------------------------------------------------------------------

@dataclass
class NotifyResult:
    """What one run did."""

    announced: List[str] = field(default_factory=list)
    """Dump directories whose mail the server accepted."""
    unmarked: List[str] = field(default_factory=list)
    """Announced dumps whose mark could not be written (they will be announced again)."""


def notify(config: Config, savedir: Optional[str] = None, hostname: Optional[str] = None,
           connect_timeout: float = CONNECT_TIMEOUT) -> NotifyResult:
    """Announce this host's new final dumps on the target, one mail each.

    Nothing happens (no target access, no mail) when KDUMP_NOTIFICATION_TO is
    empty; the mail server is contacted only when there is something to
    announce.  Raises :class:`NotifyError` when the mail server cannot be used:
    the dumps not yet sent stay unmarked for the next run.  Target failures
    raise :class:`~transports.base.TransportError`."""
    settings = mail_settings(config)
    if settings is None:
        log.info("KDUMP_NOTIFICATION_TO is empty: no mail is sent")
        return NotifyResult()
    host = hostname or local_hostname(config)
    result = NotifyResult()
    urls = targeturl.parse_list(savedir or config.savedir)
    for url in urls:
        try:
            _notify_target(config, url, host, settings, connect_timeout, result)
        except TransportError as exc:
            if len(urls) == 1:
                raise
            log.warning("cannot look for new dumps on %s: %s", url.masked(), exc)
    return result


def _notify_target(config: Config, url: "targeturl.TargetURL", host: str, settings: "MailSettings",
                   connect_timeout: float, result: NotifyResult) -> None:
    """:func:`notify` for one of the targets."""
    with open_target(url, TransportOptions.from_config(config)) as target:
        news = unannounced(target, host)
        if not news:
            log.info("no new dump of %s on %s", host, url.masked())
            return
        from_addr = sender(settings, host)
        try:
            with Mailer(settings, host, connect_timeout) as mailer:
                for item in news:
                    mailer.send(compose(item, settings, from_addr, host), from_addr, settings.recipients)
                    result.announced.append(item.directory)
                    log.info("announced %s%s to %s", item.directory, "" if item.complete else " (incomplete)",
                             ", ".join(settings.recipients))
                    _mark_or_warn(target, item, settings, result)
        except NotifyError as exc:
            waiting = [n.directory for n in news if n.directory not in result.announced]
            raise NotifyError(f"{exc}; not announced yet, tried again at the next run: "
                              + ", ".join(waiting)) from None


def _mark_or_warn(target: Transport, news: DumpNews, settings: MailSettings, result: NotifyResult) -> None:
    try:
        mark(target, news, settings)
    except (KdumpError, OSError) as exc:
        result.unmarked.append(news.directory)
        log.warning("%s was announced but cannot be marked (%s): it will be announced again", news.directory, exc)
