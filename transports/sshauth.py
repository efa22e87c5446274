"""One authenticated SSH connection for the sftp and ssh transports.

The contract, shared by both schemes:

* The server's host key is checked before a single byte of the dump leaves:
  against ``options.host_key`` (KDUMP_HOST_KEY, ``TYPE BASE64``), else the
  entries for the host in ``options.known_hosts`` (recorded when the initrd
  was built), else root's ``~/.ssh/known_hosts``.  ``*`` switches the check
  off with a loud warning.  An unknown or different key ends the connection
  with a :class:`TransportError` naming the host and the fingerprint seen.
* Authentication tries the private keys of ``options.ssh_identity`` in order
  (default: ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa`` when present),
  then the password of the URL.  As in SUSE's kdump, a relative name in
  KDUMP_SSH_IDENTITY is a file in root's ``~/.ssh`` (:func:`ssh_dir`: the
  home of the user running kdump-saver), never in the current directory.
* Connecting retries failures of the network (refused, unreachable, no
  banner yet) until ``options.net_timeout`` seconds have passed; 0 means a
  single try.  Refused authentication and a wrong host key are final.
* Messages never contain a password or private key material; paramiko's
  exceptions are reworded, never passed through.
"""
from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import logging
import os
import pwd
import socket
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from capture.config.targeturl import TargetURL
from transports.base import (InitrdMaterial, InitrdProfile, TransportError, TransportOptions, io_timeout,
                             retry_until_timeout)

log = logging.getLogger(__name__)
# paramiko logs its own tracebacks (a silent server's banner timeout) at ERROR;
# every failure it has is reworded here instead
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

#: Our receive window per channel and the largest packet we accept: large,
#: so that reading back streams without waiting for window adjustments.
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
#: Seconds a single connection attempt may take (TCP connect, banner, key
#: exchange, login), at most; less when KDUMP_NET_TIMEOUT ends sooner.
ATTEMPT_TIMEOUT = 15.0
#: The shortest attempt when KDUMP_NET_TIMEOUT has (nearly) run out.
MIN_ATTEMPT_TIMEOUT = 3.0
#: Ciphers, fastest first; all of them are also offered by OpenSSH.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")

#: host key type as written in known_hosts -> signature algorithms that prove it
_KEY_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}


def unverifiable_key_problem(key_type: str, where: str) -> Optional[str]:
    """Why a host key of ``key_type`` cannot be checked in the capture kernel, or None
    (paramiko verifies only the types of ``_KEY_ALGORITHMS``: no DSA since paramiko 4,
    no Ed448, no FIDO ``sk-*`` keys)."""
    if key_type in _KEY_ALGORITHMS:
        return None
    return (f"{where}: the host key type {key_type} cannot be verified by paramiko, which the capture kernel "
            f"uses; record a key of type {', '.join(_KEY_ALGORITHMS)} for the server instead "
            "(ssh-keyscan -t ed25519 HOST)")


def _known_hosts_types(path: str, url: TargetURL) -> List[str]:
    """Key types known_hosts lists for the target's host (plain, unhashed entries only)."""
    names = {url.host, f"[{url.host}]:{url.effective_port}"}
    found: List[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and not line.startswith("#") and names & set(fields[0].split(",")):
                    found.append(fields[1])
    except OSError:
        return []
    return found


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH form ``SHA256:...`` of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def host_label(url: TargetURL) -> str:
    """``host:port`` as shown in messages."""
    return f"{url.host_for_url}:{url.effective_port}"


@dataclass(frozen=True)
class ExpectedKey:
    """A public host key the server must present: its type and blob."""

    key_type: str
    blob: bytes


@dataclass(frozen=True)
class HostKeyPolicy:
    """Which host keys are acceptable for one target.

    ``check_disabled`` is set by KDUMP_HOST_KEY=``*``; otherwise ``expected``
    lists the acceptable keys (possibly none: then every key is refused) and
    ``source`` says where they came from, for messages.
    """

    check_disabled: bool
    expected: Tuple[ExpectedKey, ...]
    source: str

    @classmethod
    def from_options(cls, url: TargetURL, options: TransportOptions) -> "HostKeyPolicy":
        value = options.host_key.strip()
        if value == "*":
            return cls(True, (), "KDUMP_HOST_KEY=*")
        if value:
            return cls(False, (_parse_host_key(value),), "KDUMP_HOST_KEY")
        path = options.known_hosts or os.path.join(ssh_dir(), "known_hosts")
        return cls(False, tuple(_known_hosts_keys(path, url)), path)

    def key_algorithms(self) -> Tuple[str, ...]:
        """Host key algorithms to offer, so the server shows a key we know."""
        algorithms: List[str] = []
        for key in self.expected:
            for name in _KEY_ALGORITHMS.get(key.key_type, (key.key_type,)):
                if name not in algorithms:
                    algorithms.append(name)
        return tuple(algorithms)

    def verify(self, url: TargetURL, key: paramiko.PKey) -> None:
        """Accept ``key`` or raise :class:`TransportError` (nothing sent yet)."""
        seen = f"{key.get_name()} {fingerprint(key)}"
        if self.check_disabled:
            log.warning("HOST KEY CHECKING IS OFF (KDUMP_HOST_KEY=*): sending the dump to whoever "
                        "answers at %s, which presented %s", host_label(url), seen)
            return
        for expected in self.expected:
            if expected.key_type == key.get_name() and expected.blob == key.asbytes():
                log.info("host key of %s verified (%s, from %s)", host_label(url), seen, self.source)
                return
        if not self.expected:
            raise TransportError(
                f"refusing to send to {url.masked()}: the host key of {host_label(url)} is unknown "
                f"(server presented {seen}); no key for this host in {self.source}; set "
                "KDUMP_HOST_KEY to the server's key or record it in known_hosts before building the initrd")
        raise TransportError(
            f"refusing to send to {url.masked()}: the host key of {host_label(url)} does not match "
            f"the one in {self.source} (server presented {seen}); the server was reinstalled or "
            "someone is intercepting the connection")


def _parse_host_key(value: str) -> ExpectedKey:
    fields = value.split()
    if len(fields) < 2:
        raise TransportError(f"KDUMP_HOST_KEY must be 'TYPE BASE64' (like 'ssh-ed25519 AAAA...') or '*', "
                             f"not {value[:40]!r}")
    key_type, data = fields[0], fields[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TransportError(f"KDUMP_HOST_KEY: the key after {key_type!r} is not valid base64") from None
    return ExpectedKey(key_type, blob)


def _known_hosts_keys(path: str, url: TargetURL) -> List[ExpectedKey]:
    if not os.path.exists(path):
        return []
    try:
        keys = paramiko.HostKeys(path)
    except (OSError, paramiko.SSHException) as exc:
        raise TransportError(f"cannot read the known_hosts file {path}: {_describe(exc)}") from None
    names = [url.host] if url.effective_port == 22 else []
    names.append(f"[{url.host}]:{url.effective_port}")
    found: List[ExpectedKey] = []
    for name in names:
        entry = keys.lookup(name)
        if not entry:
            continue
        for key_type in entry.keys():
            found.append(ExpectedKey(key_type, entry[key_type].asbytes()))
    return found


@dataclass(frozen=True)
class Identity:
    """A private key loaded for authentication; ``path`` is for messages."""

    path: str
    key: paramiko.PKey


def ssh_dir() -> str:
    """``~/.ssh`` of the user running kdump-saver (root): ``$HOME``, else the password database."""
    return os.path.join(os.path.expanduser("~"), ".ssh")


def identity_paths(options: TransportOptions) -> Tuple[Tuple[str, ...], bool]:
    """The key files to try (absolute paths) and whether they were named explicitly;
    relative names are files in :func:`ssh_dir`."""
    if options.ssh_identity:
        return tuple(os.path.join(ssh_dir(), os.path.expanduser(name)) for name in options.ssh_identity), True
    return tuple(os.path.join(ssh_dir(), name) for name in DEFAULT_IDENTITIES), False


def load_identities(options: TransportOptions) -> List[Identity]:
    """Load the private keys; a key named in KDUMP_SSH_IDENTITY that cannot be
    used is an error, a missing default key is not."""
    paths, explicit = identity_paths(options)
    loaded: List[Identity] = []
    for path in paths:
        if not os.path.exists(path):
            if explicit:
                raise TransportError(f"KDUMP_SSH_IDENTITY: the key file {path} does not exist")
            continue
        key = _load_key(path)
        if key is None:
            if explicit:
                raise TransportError(f"KDUMP_SSH_IDENTITY: {path} is not an unencrypted ed25519, "
                                     "ecdsa or rsa private key")
            log.warning("ignoring %s: not an unencrypted ed25519, ecdsa or rsa private key", path)
            continue
        loaded.append(Identity(path, key))
    return loaded


def _load_key(path: str) -> Optional[paramiko.PKey]:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(path)
        except (paramiko.SSHException, ValueError, OSError, TypeError, IndexError):
            continue
    return _load_key_with_cryptography(path)


def _load_key_with_cryptography(path: str) -> Optional[paramiko.PKey]:
    """Second chance for ECDSA and RSA keys in OpenSSH's format: paramiko
    rejects some valid ones depending on their padding (paramiko issue 2445)."""
    try:
        with open(path, "rb") as f:
            key = serialization.load_ssh_private_key(f.read(), password=None)
    except (ValueError, TypeError, OSError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    return None


class SSHConnection:
    """A connected, verified and authenticated paramiko transport."""

    def __init__(self, url: TargetURL, transport: paramiko.Transport, timeout: float) -> None:
        self.url = url
        self.transport = transport
        self.timeout = timeout
        """Seconds of silence from the server before an operation fails (:func:`io_timeout`)."""

    @property
    def alive(self) -> bool:
        """False once the connection has dropped."""
        return self.transport.is_active()

    def open_session(self) -> paramiko.Channel:
        """A new session channel with our window sizes and the I/O timeout."""
        try:
            channel = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE,
                                                  timeout=self.timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.url.masked()}: cannot open a session: {describe(exc)}") from None
        channel.settimeout(self.timeout)
        return channel

    def close(self) -> None:
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001 - close never raises
            pass


def connect(url: TargetURL, options: TransportOptions, budget: Optional[float] = None) -> SSHConnection:
    """Connect, check the host key and authenticate, retrying network
    failures until ``budget`` seconds (default ``options.net_timeout``) have
    passed; a silent server ends each attempt within the time left (at least
    :data:`MIN_ATTEMPT_TIMEOUT`; :data:`ATTEMPT_TIMEOUT` for a single try)."""
    policy = HostKeyPolicy.from_options(url, options)
    identities = load_identities(options)
    user = url.user or _local_user()
    if not identities and not url.password:
        paths, _ = identity_paths(options)
        raise TransportError(f"{url.masked()}: no way to log in as {user}: none of the keys "
                             f"{', '.join(paths)} exists and the URL has no password")
    total = options.net_timeout if budget is None else budget

    def attempt(left: float) -> paramiko.Transport:
        limit = min(ATTEMPT_TIMEOUT, io_timeout(options) if total <= 0 else max(left, MIN_ATTEMPT_TIMEOUT))
        return _handshake(url, policy, limit, io_timeout(options))

    transport = retry_until_timeout(url, int(total + 0.999), attempt, (_Retryable,),
                                    reason=lambda exc: exc.reason)
    try:
        _authenticate(url, transport, user, identities)
    except BaseException:
        transport.close()
        raise
    return SSHConnection(url, transport, io_timeout(options))


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _handshake(url: TargetURL, policy: HostKeyPolicy, limit: float, timeout: float) -> paramiko.Transport:
    port = url.effective_port or 22
    try:
        sock = socket.create_connection((url.host, port), timeout=limit)
    except socket.gaierror as exc:
        raise _Retryable(f"cannot resolve host {url.host!r} ({exc.strerror or exc})") from None
    except OSError as exc:
        raise _Retryable(_socket_reason(exc, url, limit)) from None
    sock.settimeout(timeout)
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                   default_max_packet_size=MAX_PACKET_SIZE)
    try:
        transport.banner_timeout = limit
        transport.handshake_timeout = limit
        transport.auth_timeout = limit
        security = transport.get_security_options()
        security.ciphers = tuple(c for c in CIPHERS if c in security.ciphers) + tuple(
            c for c in security.ciphers if c not in CIPHERS)
        wanted = [a for a in policy.key_algorithms() if a in security.key_types]
        if wanted:
            security.key_types = tuple(wanted)
        try:
            transport.start_client(timeout=limit)
        except paramiko.IncompatiblePeer as exc:
            if wanted:
                raise TransportError(
                    f"refusing to send to {url.masked()}: {host_label(url)} has no host key of the type(s) "
                    f"recorded in {policy.source} ({', '.join(k.key_type for k in policy.expected)})") from None
            raise TransportError(f"{url.masked()}: no common SSH algorithms with {host_label(url)}: "
                                 f"{describe(exc)}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _Retryable(f"SSH handshake with {host_label(url)} failed: {describe(exc)}") from None
        if not transport.is_active() or not transport.initial_kex_done:
            # paramiko's start_client returns when its time is up, without an error
            raise _Retryable(f"no SSH handshake with {host_label(url)} within {limit:.0f} s "
                             "(the server accepted the connection but does not answer)")
        key = transport.get_remote_server_key()
        policy.verify(url, key)
        return transport
    except BaseException:
        transport.close()
        raise


def _authenticate(url: TargetURL, transport: paramiko.Transport, user: str,
                  identities: Sequence[Identity]) -> None:
    tried: List[str] = []
    allowed: List[str] = []
    for identity in identities:
        tried.append(f"key {identity.path} ({fingerprint(identity.key)})")
        try:
            transport.auth_publickey(user, identity.key)
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
            continue
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{url.masked()}: connection lost while logging in: {describe(exc)}") from None
        if transport.is_authenticated():
            log.info("logged in to %s as %s with %s", host_label(url), user, identity.path)
            return
    if url.password:
        tried.append("the password from the URL")
        try:
            transport.auth_password(user, url.password)
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
        except paramiko.AuthenticationException:
            pass
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{url.masked()}: connection lost while logging in: {describe(exc)}") from None
        if transport.is_authenticated():
            log.info("logged in to %s as %s with the URL's password", host_label(url), user)
            return
    accepts = f"; it accepts only {', '.join(allowed)}" if allowed else ""
    raise TransportError(f"{url.masked()}: the server refused the login as {user!r} "
                         f"(tried {', '.join(tried)}{accepts})")


def _socket_reason(exc: OSError, url: TargetURL, limit: float) -> str:
    if isinstance(exc, socket.timeout):
        return f"no answer from {host_label(url)} within {limit:.0f} s"
    if exc.errno == errno.ECONNREFUSED:
        return f"connection refused by {host_label(url)} (no SSH server listening on that port)"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{host_label(url)} is unreachable ({os.strerror(exc.errno)}; is the network up?)"
    return f"{host_label(url)}: {exc.strerror or exc}"


def _local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root"


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a network or paramiko error."""
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0].splitlines()[0][:200]  # paramiko's "Socket is closed"
    if isinstance(exc, paramiko.ChannelException):
        return f"the server refused a channel ({exc.text})"
    if isinstance(exc, paramiko.SSHException):
        # paramiko's texts name protocol steps, never credentials; keep only the first line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text[:200]
    return type(exc).__name__


def remote_path(base: str, rel: str) -> str:
    """``rel`` (relative, ``/``-separated) joined to the absolute ``base``;
    ``..`` and NUL are refused so that nothing escapes the target directory."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in rel:
        raise TransportError(f"refusing the path {rel!r}: it must stay inside the target directory")
    if not parts:
        return base
    return base.rstrip("/") + "/" + "/".join(parts)


INITRD = InitrdProfile(packages=("paramiko",), imports=("paramiko",))
"""What ssh and sftp need in the capture initrd: paramiko and its cryptography stack."""


def initrd_material(url: TargetURL, options: TransportOptions) -> InitrdMaterial:
    """The target's host key as known_hosts lines (unless KDUMP_HOST_KEY
    decides), the identity files to carry, and what would fail at crash time:
    no known host key, no usable identity and no password."""
    material = InitrdMaterial()
    if options.host_key.strip() == "*":
        log.warning("KDUMP_HOST_KEY=*: the capture kernel will not check the identity of %s", host_label(url))
    else:
        try:
            policy = HostKeyPolicy.from_options(url, options)
        except TransportError as exc:
            material.problems.append(str(exc))
        else:
            verifiable = [k for k in policy.expected if k.key_type in _KEY_ALGORITHMS]
            listed = [k.key_type for k in policy.expected]
            if not listed and not options.host_key.strip():
                listed = _known_hosts_types(policy.source, url)
            unverifiable = sorted({t for t in listed if t not in _KEY_ALGORITHMS})
            if not verifiable and unverifiable:
                material.problems.extend(unverifiable_key_problem(t, policy.source) or "" for t in unverifiable)
            elif not verifiable:
                material.problems.append(
                    f"no host key for {host_label(url)}: KDUMP_HOST_KEY is empty and {policy.source} "
                    f"has no entry for it; set KDUMP_HOST_KEY=\"TYPE BASE64\" or run "
                    f"ssh-keyscan -p {url.effective_port} {url.host} >> {policy.source}")
            elif not options.host_key.strip():
                name = url.host if url.effective_port == 22 else f"[{url.host}]:{url.effective_port}"
                material.known_hosts = "".join(f"{name} {k.key_type} {base64.b64encode(k.blob).decode()}\n"
                                               for k in verifiable)
    try:
        loaded = load_identities(options)
    except TransportError as exc:
        material.problems.append(str(exc))
    else:
        material.files.extend(i.path for i in loaded)
        if not loaded and not url.password:
            paths, _ = identity_paths(options)
            material.problems.append(
                f"no way to log in to {url.masked()}: no password in KDUMP_SAVEDIR and none of the identity "
                f"files {', '.join(paths)} is a usable private key (set KDUMP_SSH_IDENTITY)")
    return material
