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
* Messages never contain a password or private key material; ssh's
  messages are reworded (:func:`~transports.openssh.diagnose`).
* The connection is the OpenSSH client (:mod:`transports.openssh`); key
  files are checked with ``ssh-keygen`` where it is installed (the host),
  and handed to ssh as they are in the capture kernel.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple


from capture.config.targeturl import TargetURL
from transports import openssh
from transports.base import (InitrdMaterial, InitrdProfile, TransportError, TransportOptions, io_timeout,
                             retry_until_timeout)

log = logging.getLogger(__name__)
#: Seconds a single connection attempt may take (TCP connect, banner, key
#: exchange, login), at most; less when KDUMP_NET_TIMEOUT ends sooner.
ATTEMPT_TIMEOUT = 15.0
#: The shortest attempt when KDUMP_NET_TIMEOUT has (nearly) run out.
MIN_ATTEMPT_TIMEOUT = 3.0
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
    (we accept only the types of ``_KEY_ALGORITHMS``: DSA is disabled in OpenSSH,
    Ed448 does not exist there, a FIDO ``sk-*`` key cannot be a host key)."""
    if key_type in _KEY_ALGORITHMS:
        return None
    return (f"{where}: the host key type {key_type} cannot be verified by the capture kernel's "
            f"ssh client; record a key of type {', '.join(_KEY_ALGORITHMS)} for the server instead "
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
    """The keys ``path`` lists for the target (hashed entries too, where
    ``ssh-keygen`` is installed to match them)."""
    if not os.path.exists(path):
        return []
    names = [url.host] if url.effective_port == 22 else []
    names.append(f"[{url.host}]:{url.effective_port}")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise TransportError(f"cannot read the known_hosts file {path}: {_describe(exc)}") from None
    if any(line.startswith("|1|") for line in lines) and shutil.which("ssh-keygen"):
        lines = []
        for name in names:
            res = subprocess.run(["ssh-keygen", "-F", name, "-f", path], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=30)
            lines += [line for line in res.stdout.splitlines() if not line.startswith("#")]
    found: List[ExpectedKey] = []
    for name in names:
        for line in lines:
            fields = line.split()
            if len(fields) < 3 or line.startswith(("#", "@")):
                continue
            if not (name in fields[0].split(",") or fields[0].startswith("|1|")):
                continue
            try:
                key = ExpectedKey(fields[1], base64.b64decode(fields[2], validate=True))
            except (binascii.Error, ValueError):
                continue
            if key not in found:
                found.append(key)
    return found


def ssh_dir() -> str:
    """``~/.ssh`` of the user running kdump-saver (root): ``$HOME``, else the password database."""
    return os.path.join(os.path.expanduser("~"), ".ssh")


def identity_paths(options: TransportOptions) -> Tuple[Tuple[str, ...], bool]:
    """The key files to try (absolute paths) and whether they were named explicitly;
    relative names are files in :func:`ssh_dir`."""
    if options.ssh_identity:
        return tuple(os.path.join(ssh_dir(), os.path.expanduser(name)) for name in options.ssh_identity), True
    return tuple(os.path.join(ssh_dir(), name) for name in DEFAULT_IDENTITIES), False


def load_identities(options: TransportOptions) -> List[str]:
    """The key files to use; one named in KDUMP_SSH_IDENTITY that does not
    exist or (where ``ssh-keygen`` can tell) is not an unencrypted private
    key is an error, a missing or unusable default key is skipped."""
    paths, explicit = identity_paths(options)
    loaded: List[str] = []
    for path in paths:
        if not os.path.exists(path):
            if explicit:
                raise TransportError(f"KDUMP_SSH_IDENTITY: the key file {path} does not exist")
            continue
        if not usable_key(path):
            if explicit:
                raise TransportError(f"KDUMP_SSH_IDENTITY: {path} is not an unencrypted private key")
            log.warning("ignoring %s: not an unencrypted private key", path)
            continue
        loaded.append(path)
    return loaded


def usable_key(path: str) -> bool:
    """Whether ``path`` is a private key ssh can use without a passphrase
    (``ssh-keygen -y``; True where ssh-keygen is not installed: ssh decides)."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        return os.access(path, os.R_OK)
    try:
        res = subprocess.run([keygen, "-y", "-P", "", "-f", path], capture_output=True, stdin=subprocess.DEVNULL,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


class SSHConnection:
    """A logged-in OpenSSH connection (:class:`~transports.openssh.Master`)."""

    def __init__(self, url: TargetURL, master: openssh.Master, timeout: float, first: object = None) -> None:
        self.url = url
        self.master = master
        self.timeout = timeout
        """Seconds of silence from the server before an operation fails (:func:`io_timeout`)."""
        self.first = first
        """What ``ready`` of :func:`connect` returned for the master's own session."""

    @property
    def alive(self) -> bool:
        """False once the connection has dropped."""
        return self.master.alive

    def open_session(self) -> openssh.Channel:
        """A new session (not started yet) with the I/O timeout."""
        if not self.master.alive:
            raise TransportError(f"{self.url.masked()}: cannot open a session: the connection was lost")
        return self.master.channel(self.timeout)

    def close(self) -> None:
        self.master.close()


def endpoint(url: TargetURL, options: TransportOptions, policy: HostKeyPolicy, identities: Sequence[str],
             limit: float) -> openssh.Endpoint:
    """The OpenSSH client's view of the target: host, login, the keys to check."""
    timeout = io_timeout(options)
    name = url.host if url.effective_port == 22 else f"[{url.host}]:{url.effective_port}"
    known = "".join(f"{name} {k.key_type} {base64.b64encode(k.blob).decode()}\n" for k in policy.expected)
    interval = max(1, int(timeout // 3))
    return openssh.Endpoint(host=url.host, port=url.effective_port or 22, user=url.user or _local_user(),
                            identities=tuple(identities), known_hosts=known,
                            host_key_algorithms=policy.key_algorithms(), check_host_key=not policy.check_disabled,
                            password=url.password or None, alive_interval=interval,
                            alive_count=max(1, int(timeout // interval)), connect_timeout=limit)


def connect(url: TargetURL, options: TransportOptions, budget: Optional[float] = None,
            subsystem: Optional[str] = None,
            ready: Optional[Callable[[openssh.Channel], object]] = None) -> SSHConnection:
    """Connect, check the host key and log in, retrying network
    failures until ``budget`` seconds (default ``options.net_timeout``) have
    passed; a silent server ends each attempt within the time left (at least
    :data:`MIN_ATTEMPT_TIMEOUT`; :data:`ATTEMPT_TIMEOUT` for a single try).

    With ``subsystem``, the connection's own session is that subsystem and
    ``ready(channel)`` must get its first answer (raising ``OSError`` or
    ``EOFError`` when it cannot); its result is :attr:`SSHConnection.first`."""
    if openssh.ssh_program() is None:
        raise TransportError(f"{url.masked()}: the OpenSSH client (ssh) is not installed")
    policy = HostKeyPolicy.from_options(url, options)
    identities = load_identities(options)
    user = url.user or _local_user()
    if not identities and not url.password:
        paths, _ = identity_paths(options)
        raise TransportError(f"{url.masked()}: no way to log in as {user}: none of the keys "
                             f"{', '.join(paths)} exists and the URL has no password")
    total = options.net_timeout if budget is None else budget

    def attempt(left: float) -> Tuple[openssh.Master, object]:
        limit = min(ATTEMPT_TIMEOUT, io_timeout(options) if total <= 0 else max(left, MIN_ATTEMPT_TIMEOUT))
        ep = endpoint(url, options, policy, identities, limit)
        if subsystem is None or ready is None:
            try:
                return openssh.start_master(ep, limit), None
            except socket.timeout:
                raise _Retryable(f"{host_label(url)} does not answer (no SSH login within {limit:.0f} s)") from None
            except openssh.SSHFailure as exc:
                raise _failure(url, policy, user, identities, openssh.diagnose(exc.text), limit, subsystem) from None
        master = openssh.start_session_master(ep, subsystem, limit)
        assert master.first is not None
        try:
            first = ready(master.first)
        except (OSError, EOFError) as exc:
            silent = isinstance(exc, TimeoutError) and master.alive
            text = master.errors()
            master.close()
            if silent:
                raise _Retryable(f"{host_label(url)} does not answer (no SSH login within {limit:.0f} s)") from None
            raise _failure(url, policy, user, identities, openssh.diagnose(text), limit, subsystem) from None
        except BaseException:
            master.close()
            raise
        master.first.settimeout(io_timeout(options))
        master.logged_in()
        return master, first

    master, first = retry_until_timeout(url, int(total + 0.999), attempt, (_Retryable,),
                                        reason=lambda exc: exc.reason)
    if policy.check_disabled:
        log.warning("HOST KEY CHECKING IS OFF (KDUMP_HOST_KEY=*): sending the dump to whoever answers at %s",
                    host_label(url))
    else:
        log.info("host key of %s verified (from %s)", host_label(url), policy.source)
    log.info("logged in to %s as %s", host_label(url), user)
    return SSHConnection(url, master, io_timeout(options), first)


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _failure(url: TargetURL, policy: HostKeyPolicy, user: str, identities: Sequence[str],
             why: openssh.Diagnosis, limit: float, subsystem: Optional[str] = None) -> Exception:
    """What ssh's failure means, worded for the administrator: a final
    :class:`TransportError` or a :class:`_Retryable`."""
    label = host_label(url)
    if why.kind == "no-subsystem":
        return TransportError(f"{url.masked()}: the server offers no {subsystem or 'such'} subsystem "
                              f"({why.detail}); use an ssh:// target for servers without sftp")
    seen = f" (server presented {why.fingerprint})" if why.fingerprint else ""
    if why.kind == "login":
        tried = [f"key {path}" for path in identities] + (["the password from the URL"] if url.password else [])
        accepts = f"; it accepts only {why.allowed}" if why.allowed else ""
        return TransportError(f"{url.masked()}: the server refused the login as {user!r} "
                              f"(tried {', '.join(tried) or 'nothing'}{accepts})")
    if why.kind == "host-key-changed":
        return TransportError(f"refusing to send to {url.masked()}: the host key of {label} does not match "
                              f"the one in {policy.source}{seen}; the server was reinstalled or someone is "
                              "intercepting the connection")
    if why.kind == "host-key-unknown" and not policy.expected:
        return TransportError(
            f"refusing to send to {url.masked()}: the host key of {label} is unknown{seen}; no key for this "
            f"host in {policy.source}; set KDUMP_HOST_KEY to the server's key or record it in known_hosts "
            "before building the initrd")
    if why.kind == "host-key-unknown":
        return TransportError(f"refusing to send to {url.masked()}: the host key of {label} does not match "
                              f"the one in {policy.source}{seen}; the server was reinstalled or someone is "
                              "intercepting the connection")
    if why.kind == "host-key-type":
        return TransportError(f"refusing to send to {url.masked()}: {label} has no host key of the type(s) "
                              f"recorded in {policy.source} "
                              f"({', '.join(k.key_type for k in policy.expected)})")
    if why.kind == "algorithms":
        return TransportError(f"{url.masked()}: no common SSH algorithms with {label}: {why.detail}")
    if why.kind == "refused":
        return _Retryable(f"connection refused by {label} (no SSH server listening on that port)")
    if why.kind == "unreachable":
        return _Retryable(f"{label} is unreachable ({why.detail}; is the network up?)")
    if why.kind == "resolve":
        return _Retryable(f"cannot resolve host {url.host!r} ({why.detail})")
    if why.kind == "timeout":
        return _Retryable(f"{label} does not answer (no SSH handshake within {limit:.0f} s)")
    if "closed" in why.detail or "reset" in why.detail:
        return _Retryable(f"SSH handshake with {label} failed: the server closed the connection")
    return _Retryable(f"SSH connection to {label} failed: {why.detail}")


def _local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root"


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a network or SSH error."""
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0].splitlines()[0][:200]
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


INITRD = InitrdProfile(programs=("ssh",))
"""What ssh and sftp need in the capture initrd: the OpenSSH client."""


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
        material.files.extend(loaded)
        if not loaded and not url.password:
            paths, _ = identity_paths(options)
            material.problems.append(
                f"no way to log in to {url.masked()}: no password in KDUMP_SAVEDIR and none of the identity "
                f"files {', '.join(paths)} is a usable private key (set KDUMP_SSH_IDENTITY)")
    return material
