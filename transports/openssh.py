"""The OpenSSH client (``ssh``) as the connection of the sftp and ssh transports.

Runs in the capture kernel and on the host (check-config).  The contract:

* :func:`start_master` runs ``ssh -o ControlMaster=yes`` with
  ``ControlPersist``: one TCP connection, host key check and login; it
  returns once ssh has logged in and run ``true`` (exit status 0), leaving
  the master in the background, or with the reason ssh printed.  Every session after that (the sftp
  subsystem, a remote command) is a :class:`Channel` multiplexed over that
  connection through its control socket, talking through pipes: a remote
  command's session is asked of the master directly (:mod:`transports.sshmux`),
  a subsystem's is an ``ssh`` process.
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
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from transports import sshmux

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
        master.pid = sshmux.master_pid(master.control) if os.path.exists(master.control) else None
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
    """One session over a :class:`Master`, talking through pipes: its stdin
    and stdout are the session's data; stderr (the remote command's, and
    ssh's) goes to a file read by :meth:`stderr_text`.  A command's session
    is asked of the master directly (:mod:`transports.sshmux`); when the
    master does not answer that way, and for a subsystem, an ``ssh``
    process multiplexed over the connection carries it.  Reads and writes
    time out after ``timeout`` seconds (``socket.timeout``); a read at the
    end of the output returns ``b""``."""

    def __init__(self, master: Master, timeout: float) -> None:
        self._master = master
        self._timeout = timeout
        self._proc: Optional[subprocess.Popen] = None
        self._mux: Optional[sshmux.Session] = None
        self._in: Optional[int] = None
        self._out: Optional[int] = None
        self._errpath = ""
        self.closed = False

    def exec_command(self, command: str) -> None:
        """Run ``command`` with the account's shell on the server."""
        self._errpath = self._new_errpath()
        if not self._open_mux(command):
            self.start(self._master.argv("--", self._master.endpoint.host, command), self._errpath, None)

    def invoke_subsystem(self, name: str) -> None:
        """Start the server's subsystem ``name`` (``sftp``)."""
        self.start(self._master.argv("-s", "--", self._master.endpoint.host, name), self._new_errpath(), None)

    def _new_errpath(self) -> str:
        fd, errpath = tempfile.mkstemp(prefix="session-", suffix=".err", dir=self._master.workdir)
        os.close(fd)
        return errpath

    def _open_mux(self, command: str) -> bool:
        """Ask the master for the session; False when it cannot be asked or
        refused (the ``ssh`` process then tries, and says why it fails).
        ``socket.timeout`` when the server did not open it in time: an
        ``ssh`` process would wait for the same server."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with open(self._errpath, "ab") as err:
                self._mux = sshmux.open_session(self._master.control, command, in_r, out_w, err.fileno(),
                                                self._timeout)
        except (OSError, sshmux.MuxError, struct.error) as exc:
            for fd in (in_r, in_w, out_r, out_w):
                os.close(fd)
            if isinstance(exc, socket.timeout):
                raise
            return False
        os.close(in_r)
        os.close(out_w)
        self._in, self._out = in_w, out_r
        os.set_blocking(in_w, False)
        return True

    def start(self, argv: List[str], errpath: str, env: Optional[Dict[str, str]]) -> None:
        """Run ``argv`` as this session's process, its stderr into ``errpath``."""
        self._errpath = errpath
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with open(errpath, "ab") as err:
                self._proc = subprocess.Popen(argv, stdin=in_r, stdout=out_w, stderr=err, env=env,
                                              start_new_session=True)
        except BaseException:
            os.close(in_w)
            os.close(out_r)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        self._in, self._out = in_w, out_r
        os.set_blocking(in_w, False)

    @property
    def pid(self) -> Optional[int]:
        """The ``ssh`` process carrying the session; None when the master carries it alone."""
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
        self._running()
        fd = self._in
        if fd is None:
            raise EOFError("the session's input is closed")
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
        self._running()
        fd = self._out
        if fd is None:
            return b""
        ready, _, _ = select.select([fd], [], [], self._timeout)
        if not ready:
            raise socket.timeout("no answer from the server")
        return os.read(fd, size)

    def shutdown_write(self) -> None:
        """End of input (the remote command sees end of file)."""
        self._running()
        if self._in is not None:
            os.close(self._in)
            self._in = None

    # -- status -------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit status of the remote command (:data:`SSH_FAILED` when ssh
        failed or the connection ended), or None when it has not ended within
        ``timeout`` seconds (default: the channel's timeout)."""
        self._running()
        limit = self._timeout if timeout is None else timeout
        if self._mux is not None:
            return self._mux.poll(limit)
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    @property
    def exit_status(self) -> Optional[int]:
        if self._mux is not None:
            return self._mux.poll()
        return None if self._proc is None else self._proc.poll()

    def connection_lost(self, grace: float = 1.0) -> bool:
        """After :data:`SSH_FAILED`: whether the connection this session ran
        over has ended (rather than the command exiting 255 or dying of a
        signal).  The master exits just after it ends its sessions; it gets
        ``grace`` seconds to do so."""
        if self._mux is not None and self._mux.reported:
            return False  # the server sent the command's own exit status
        deadline = time.monotonic() + grace
        while self._master.alive:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stderr_text(self, limit: int = 65536) -> str:
        """What ssh and the remote command wrote to stderr so far (at most ``limit`` bytes)."""
        return _read_text(self._errpath, limit) if self._errpath else ""

    def _running(self) -> None:
        if (self._proc is None and self._mux is None) or self.closed:
            raise EOFError("the session is closed")

    def close(self) -> None:
        """End the session (killing ssh if it still runs); never raises."""
        if self.closed:
            return
        self.closed = True
        for fd in (self._in, self._out):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._in = self._out = None
        if self._mux is not None:
            self._mux.close()
        proc = self._proc
        if proc is not None and proc.poll() is None:
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
