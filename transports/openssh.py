"""The OpenSSH client (``ssh``) as the connection of the sftp and ssh transports.

Runs in the capture kernel and on the host (check-config).  The contract:

* :func:`start_master` runs ``ssh -o ControlMaster=yes`` with
  ``ControlPersist``: one TCP connection, host key check and login; it
  returns once ssh has logged in and run ``true`` (exit status 0), leaving
  the master in the background, or with the reason ssh printed.  Every session after that (the sftp
  subsystem, a remote command) is a :class:`Channel`: an ``ssh`` process
  multiplexed over that connection through its control socket, talking
  through pipes.
* Everything secret or per-connection (the known_hosts file written from
  KDUMP_HOST_KEY, the control socket, the password for ``SSH_ASKPASS``)
  lives in a private directory (mode 0700) removed by :meth:`Master.close`;
  the password file is removed as soon as ssh has logged in.  Nothing
  secret is ever on a command line.
* ssh's own configuration files are ignored (``-F /dev/null``): only what
  the kdump configuration says applies.
* :class:`Channel` reads and writes with a timeout (``socket.timeout``
  when the other side is silent); the connection itself counts as lost
  after ``ServerAliveInterval * ServerAliveCountMax`` seconds of silence.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

#: exit status of ssh itself failing (connection, login, host key, mux)
SSH_FAILED = 255


class SSHFailure(Exception):
    """ssh exited with an error; ``text`` is what it printed (no secrets: ssh never prints them)."""

    def __init__(self, text: str, status: int) -> None:
        super().__init__(text)
        self.text = text
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """Who to connect to and how to prove both sides' identities."""

    host: str
    port: int
    user: str
    identities: Sequence[str] = ()
    """Private key files, tried in order."""
    known_hosts: str = ""
    """known_hosts lines the server's key must match; empty with ``check_host_key`` False."""
    host_key_algorithms: Sequence[str] = ()
    check_host_key: bool = True
    password: Optional[str] = None
    alive_interval: int = 5
    alive_count: int = 3
    connect_timeout: float = 15.0


def ssh_program() -> Optional[str]:
    """The ``ssh`` client's path, or None when it is not installed."""
    return shutil.which("ssh") or ("/usr/bin/ssh" if os.access("/usr/bin/ssh", os.X_OK) else None)


class Master:
    """A running ``ssh -M`` and its private directory.  A master started by
    :func:`start_session_master` is also the first session: :attr:`first`."""

    def __init__(self, endpoint: Endpoint, workdir: str, pid: Optional[int]) -> None:
        self.endpoint = endpoint
        self.workdir = workdir
        self.pid = pid
        self.first: Optional[Channel] = None

    @property
    def control(self) -> str:
        return os.path.join(self.workdir, "control")

    @property
    def alive(self) -> bool:
        """False once ssh's master has exited (the connection dropped)."""
        if self.first is not None:
            return self.first.exit_status is None
        if self.pid is None:
            return os.path.exists(self.control)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return os.path.exists(self.control)

    def argv(self, *tail: str) -> List[str]:
        """An ``ssh`` command line that uses this connection."""
        return _base_argv(self.endpoint, self.workdir) + ["-o", "ControlMaster=no", "-T", *tail]

    def channel(self, timeout: float) -> "Channel":
        """A session not started yet: :meth:`Channel.exec_command` or :meth:`Channel.invoke_subsystem`."""
        return Channel(self, timeout)

    def logged_in(self) -> None:
        """The first session answered: the password file is no longer needed."""
        try:
            os.unlink(os.path.join(self.workdir, "password"))
        except FileNotFoundError:
            pass

    def errors(self) -> str:
        """What the master printed (after it failed)."""
        return _read_text(os.path.join(self.workdir, "master.err"))

    def close(self) -> None:
        """Stop the master (ending every session) and remove the private directory."""
        if self.first is not None:
            self.first.close()
            self.pid = None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            self.pid = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _base_argv(endpoint: Endpoint, workdir: str, log_level: str = "ERROR") -> List[str]:
    program = ssh_program() or "ssh"
    options = {
        "BatchMode": "no" if endpoint.password else "yes",
        "StrictHostKeyChecking": "yes" if endpoint.check_host_key else "no",
        "UserKnownHostsFile": os.path.join(workdir, "known_hosts") if endpoint.check_host_key else "/dev/null",
        "GlobalKnownHostsFile": "/dev/null",
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "HashKnownHosts": "no",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "yes" if endpoint.password else "no",
        "KbdInteractiveAuthentication": "no",
        "NumberOfPasswordPrompts": "1",
        "ConnectionAttempts": "1",
        "ConnectTimeout": str(max(1, int(endpoint.connect_timeout + 0.999))),
        "ServerAliveInterval": str(endpoint.alive_interval),
        "ServerAliveCountMax": str(endpoint.alive_count),
        "ControlPath": os.path.join(workdir, "control"),
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "EscapeChar": "none",
        "LogLevel": log_level,
    }
    if endpoint.check_host_key and endpoint.host_key_algorithms:
        options["HostKeyAlgorithms"] = ",".join(endpoint.host_key_algorithms)
    argv = [program, "-F", "/dev/null", "-p", str(endpoint.port), "-l", endpoint.user]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    for identity in endpoint.identities:
        argv += ["-o", f"IdentityFile={identity}"]
    if not endpoint.identities:
        argv += ["-o", "PubkeyAuthentication=no"]
    return argv


def _prepare(endpoint: Endpoint) -> Tuple[str, Dict[str, str]]:
    """The private directory (known_hosts, askpass) and ssh's environment."""
    workdir = tempfile.mkdtemp(prefix="kdump-saver-ssh-")
    os.chmod(workdir, 0o700)
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    try:
        if endpoint.check_host_key:
            _write_private(os.path.join(workdir, "known_hosts"), endpoint.known_hosts)
        if endpoint.password:
            _write_private(os.path.join(workdir, "password"), endpoint.password + "\n")
            askpass = os.path.join(workdir, "askpass")
            _write_private(askpass, f"#!/bin/sh\nIFS= read -r p < '{workdir}/password' && printf '%s\\n' \"$p\"\n")
            os.chmod(askpass, 0o700)
            env.update(SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, env


def _master_argv(endpoint: Endpoint, workdir: str, persist: bool) -> List[str]:
    # LogLevel DEBUG1 for the key the server presented ("Server host key: ..."); stderr is a file
    return _base_argv(endpoint, workdir, "DEBUG1") + ["-o", "ControlMaster=yes", "-o",
                                                      f"ControlPersist={'yes' if persist else 'no'}", "-T"]


def start_master(endpoint: Endpoint, limit: float) -> Master:
    """Connect, check the host key and log in within ``limit`` seconds; raise
    :class:`SSHFailure` (what ssh said) or ``socket.timeout``."""
    workdir, env = _prepare(endpoint)
    try:
        errfile = os.path.join(workdir, "master.err")
        # a master started with -N refuses sessions of its clients; with
        # ControlPersist it goes to the background once ``true`` has run
        argv = _master_argv(endpoint, workdir, True) + ["--", endpoint.host, "true"]
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env=env, start_new_session=True)
        try:
            status = proc.wait(timeout=limit + 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise socket.timeout(f"no SSH login within {limit:.0f} s") from None
        master = Master(endpoint, workdir, None)
        master.logged_in()
        # ``true`` may fail (an sftp-only account runs its forced command instead): what
        # counts is the master running after the login
        master.pid = _master_pid(master.control) if os.path.exists(master.control) else None
        if master.pid is None:
            raise SSHFailure(_read_text(errfile), status or SSH_FAILED)
        return master
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def start_session_master(endpoint: Endpoint, subsystem: str, timeout: float) -> Master:
    """A master whose own session is the server's ``subsystem``: no second
    process between us and the connection.  It is started, not yet known to
    work: the caller talks to :attr:`Master.first` (timing out after
    ``timeout``) and, when that fails, reads :meth:`Master.errors`."""
    workdir, env = _prepare(endpoint)
    try:
        master = Master(endpoint, workdir, None)
        argv = _master_argv(endpoint, workdir, False) + ["-s", "--", endpoint.host, subsystem]
        master.first = Channel(master, timeout)
        master.first.start(argv, os.path.join(workdir, "master.err"), env)
        master.pid = master.first.pid
        return master
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


#: OpenSSH's multiplexing protocol (PROTOCOL.mux): hello, alive check and its answer
_MUX_MSG_HELLO, _MUX_VERSION, _MUX_C_ALIVE_CHECK, _MUX_S_ALIVE = 0x00000001, 4, 0x10000004, 0x80000005


def _master_pid(control: str, timeout: float = 10.0) -> Optional[int]:
    """The pid of the master listening on ``control`` (its answer to an alive
    check, asked over the socket: no ssh process started), or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control)

            def send(*words: int) -> None:
                body = struct.pack(f">{len(words)}I", *words)
                sock.sendall(struct.pack(">I", len(body)) + body)

            def receive() -> bytes:
                head = _recv_exact(sock, 4)
                (length,) = struct.unpack(">I", head)
                if length > 65536:
                    raise OSError("oversized mux message")
                return _recv_exact(sock, length)

            send(_MUX_MSG_HELLO, _MUX_VERSION)
            hello = receive()
            if struct.unpack(">I", hello[:4])[0] != _MUX_MSG_HELLO:
                return None
            send(_MUX_C_ALIVE_CHECK, 1)
            answer = receive()
            kind, _request, pid = struct.unpack(">III", answer[:12])
            return pid if kind == _MUX_S_ALIVE else None
    except (OSError, struct.error):
        return None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        block = sock.recv(n - len(out))
        if not block:
            raise OSError("the master closed the control socket")
        out += block
    return out


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_text(path: str, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


class Channel:
    """One session over a :class:`Master`: an ``ssh`` process whose stdin and
    stdout are the session's data; stderr (ssh's and the remote command's)
    goes to a file read by :meth:`stderr_text`.  Reads and writes time out
    after ``timeout`` seconds (``socket.timeout``); a read at the end of the
    output returns ``b""``."""

    def __init__(self, master: Master, timeout: float) -> None:
        self._master = master
        self._timeout = timeout
        self._proc: Optional[subprocess.Popen] = None
        self._errpath = ""
        self.closed = False

    def exec_command(self, command: str) -> None:
        """Run ``command`` with the account's shell on the server."""
        self._start(["--", self._master.endpoint.host, command])

    def invoke_subsystem(self, name: str) -> None:
        """Start the server's subsystem ``name`` (``sftp``)."""
        self._start(["-s", "--", self._master.endpoint.host, name])

    def _start(self, tail: List[str]) -> None:
        fd, errpath = tempfile.mkstemp(prefix="session-", suffix=".err", dir=self._master.workdir)
        os.close(fd)
        self.start(self._master.argv(*tail), errpath, None)

    def start(self, argv: List[str], errpath: str, env: Optional[Dict[str, str]]) -> None:
        """Run ``argv`` as this session's process, its stderr into ``errpath``."""
        self._errpath = errpath
        with open(errpath, "ab") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          env=env, start_new_session=True)
        assert self._proc.stdin is not None
        os.set_blocking(self._proc.stdin.fileno(), False)

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    # -- timeouts ---------------------------------------------------------

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout if timeout is not None else 3600.0

    def gettimeout(self) -> float:
        return self._timeout

    # -- data ---------------------------------------------------------------

    def sendall(self, data: bytes) -> None:
        """Write all of ``data``; ``socket.timeout`` when ssh takes nothing for
        the timeout, ``EOFError`` when the session has ended."""
        proc = self._running()
        if proc.stdin is None or proc.stdin.closed:
            raise EOFError("the session's input is closed")
        fd = proc.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                raise EOFError("the session ended") from None
            view = view[n:]
            if view:
                _, ready, _ = select.select([], [fd], [], self._timeout)
                if not ready:
                    raise socket.timeout("the server takes no data")

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of the session's output; ``b""`` at its end."""
        proc = self._running()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self._timeout)
        if not ready:
            raise socket.timeout("no answer from the server")
        return os.read(fd, size)

    def shutdown_write(self) -> None:
        """End of input (the remote command sees end of file)."""
        proc = self._running()
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass

    # -- status -------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit status of the remote command (:data:`SSH_FAILED` when ssh
        failed or the connection ended), or None when it has not ended within
        ``timeout`` seconds (default: the channel's timeout)."""
        proc = self._running()
        try:
            return proc.wait(timeout=self._timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def exit_status(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    def stderr_text(self, limit: int = 65536) -> str:
        """What ssh and the remote command wrote to stderr so far (at most ``limit`` bytes)."""
        return _read_text(self._errpath, limit) if self._errpath else ""

    def _running(self) -> subprocess.Popen:
        if self._proc is None or self.closed:
            raise EOFError("the session is closed")
        return self._proc

    def close(self) -> None:
        """End the session (killing ssh if it still runs); never raises."""
        if self.closed:
            return
        self.closed = True
        proc = self._proc
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            if proc.poll() is None:
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._errpath:
            try:
                os.unlink(self._errpath)
            except OSError:
                pass

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- what ssh's messages mean -------------------------------------------------

@dataclass(frozen=True)
class Diagnosis:
    """What an ssh failure means for us: ``kind`` is one of ``login``,
    ``host-key-changed``, ``host-key-unknown``, ``host-key-type``,
    ``no-subsystem``, ``algorithms``, ``network``; ``retry`` says whether
    trying again may help; ``detail`` is ssh's own words (a line)."""

    kind: str
    retry: bool
    detail: str
    allowed: str = ""
    fingerprint: str = ""


_RULES = (
    (re.compile(r"Permission denied \(([^)]*)\)"), "login", False),
    (re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED"), "host-key-changed", False),
    (re.compile(r"Host key for .* has changed"), "host-key-changed", False),
    (re.compile(r"No \S+ host key is known for|Host key verification failed"), "host-key-unknown", False),
    (re.compile(r"no matching host key type found"), "host-key-type", False),
    (re.compile(r"subsystem request failed"), "no-subsystem", False),
    (re.compile(r"Unable to negotiate"), "algorithms", False),
    (re.compile(r"Connection refused"), "refused", True),
    (re.compile(r"No route to host|Network is unreachable"), "unreachable", True),
    (re.compile(r"Could not resolve hostname|Name or service not known|Temporary failure in name resolution"),
     "resolve", True),
    (re.compile(r"timed out|Connection timed out"), "timeout", True),
)


def diagnose(text: str) -> Diagnosis:
    """The meaning of ssh's stderr ``text`` after it failed."""
    said = [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith(("@", "debug", "Authenticated to", "Transferred:"))]
    last = said[-1][:300] if said else "ssh failed without a message"
    presented = re.search(r"Server host key: (\S+ SHA256:[A-Za-z0-9+/=]+)", text)
    changed = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", "\n".join(said))
    fingerprint = presented.group(1) if presented else (changed.group(1) if changed else "")
    for pattern, kind, retry in _RULES:
        found = pattern.search("\n".join(said))
        if found:
            allowed = found.group(1) if kind == "login" else ""
            return Diagnosis(kind, retry, last, allowed=allowed, fingerprint=fingerprint)
    return Diagnosis("network", True, last, fingerprint=fingerprint)
