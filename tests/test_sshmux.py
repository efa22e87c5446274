"""Remote commands asked of the OpenSSH master directly (transports/sshmux.py).

The ssh transport runs each remote command as a session of its connection
master, asked over the master's control socket (OpenSSH's PROTOCOL.mux)
instead of through an ``ssh -o ControlMaster=no`` process.  These tests run
against the installed OpenSSH client and a real sshd on 127.0.0.1: when an
OpenSSH upgrade changes the protocol, the first one fails loudly (the
transport would quietly fall back to an ``ssh`` process per command).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from typing import Callable, Iterator, Tuple

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from capture.config.targeturl import parse
from servers.sshd import SSHD, SSHLab
from transports import open_target, sshmux
from transports.ssh import SSHTransport

pytest_plugins = ["servers.sshd"]


@pytest.fixture
def t(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> Iterator[SSHTransport]:
    """An ssh:// target on a fresh directory, connected (its master running)."""
    url = sshd_nosftp.url("ssh", ssh_lab.key_user.name, str(ssh_lab.fresh_dir(ssh_lab.key_user)))
    target = open_target(parse(url), ssh_lab.key_options(sshd_nosftp))
    assert isinstance(target, SSHTransport)
    target.connect()
    yield target
    target.close()


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    """True once ``condition()`` holds, False when it did not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ssh_processes_of(pid: int) -> list:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if os.path.basename(line.split()[1]) == "ssh"]


def test_installed_openssh_master_answers_in_protocol_4(t: SSHTransport) -> None:
    master = t.connection.master
    assert sshmux.master_pid(master.control) == master.pid, \
        "the installed OpenSSH master no longer answers PROTOCOL.mux version 4 alive checks"
    channel = t.connection.open_session()
    channel.exec_command("true")
    assert channel.pid is None, \
        "the installed OpenSSH refused a PROTOCOL.mux version 4 session: an ssh process ran the command"
    assert channel.wait(10) == 0
    channel.close()


def test_a_command_session_carries_input_output_errors_and_status(t: SSHTransport) -> None:
    channel = t.connection.open_session()
    channel.exec_command("wc -c; echo 'to stderr' >&2; head -c 300000 /dev/zero | tr '\\0' e >&2; exit 7")
    assert channel.pid is None
    assert ssh_processes_of(os.getpid()) == [], "no ssh process runs for the command"
    block = os.urandom(1 << 20)
    for _ in range(5):
        channel.sendall(block)
    channel.shutdown_write()
    out = b""
    while True:
        data = channel.recv(65536)
        if not data:
            break
        out += data
    assert out.strip() == str(5 << 20).encode()
    assert channel.wait(10) == 7
    assert channel.exit_status == 7
    err = channel.stderr_text(1 << 20)
    assert err.startswith("to stderr\n") and err.count("e") == 300000 + 1, \
        "the status comes after the whole of stderr is written"
    channel.close()


def test_closing_a_running_session_ends_the_remote_command(t: SSHTransport, ssh_lab: SSHLab) -> None:
    channel = t.connection.open_session()
    channel.exec_command("exec cat > /dev/null")
    channel.sendall(b"x" * 1000)
    assert channel.exit_status is None
    channel.close()
    assert within(10, lambda: subprocess.run(["pgrep", "-u", ssh_lab.key_user.name, "-x", "cat"],
                                             capture_output=True).returncode != 0), \
        "the remote cat still runs after its session was closed"
    assert t.run("echo still").stdout.endswith(b"still\n"), "the connection survives"


def test_a_session_whose_connection_dies_reports_no_status(t: SSHTransport, sshd_nosftp: SSHD) -> None:
    channel = t.connection.open_session()
    channel.exec_command("sleep 60")
    assert channel.wait(0.2) is None
    master = t.connection.master
    assert sshd_nosftp.kill_sessions() > 0
    assert channel.wait(10) == sshmux.LOST
    assert within(10, lambda: not master.alive)
    assert t.exit_status(channel, 1) == -1, "the transport reads it as the connection lost"
    channel.close()


def test_a_frozen_server_times_out_once(t: SSHTransport, sshd_nosftp: SSHD) -> None:
    """No second wait in an ``ssh`` process after the master's own timed out."""
    frozen = sshd_nosftp.session_pids()
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        channel = t.connection.open_session()
        channel.settimeout(1.0)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            channel.exec_command("true")
        assert time.monotonic() - started < 1.9
        assert ssh_processes_of(os.getpid()) == []
        channel.close()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


# -- what a master sends back is read within bounds ----------------------------------

@contextlib.contextmanager
def socket_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(our end, the master's end); both closed afterwards."""
    ours, theirs = socket.socketpair()
    ours.settimeout(0.2)  # as the channel's timeout does: a message cut short counts as the end
    with ours, theirs:
        yield ours, theirs


def exit_message(session: int, status: int) -> bytes:
    body = struct.pack(">III", sshmux.S_EXIT_MESSAGE, session, status)
    return struct.pack(">I", len(body)) + body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans())
def test_any_answer_from_the_master_ends_in_a_status_or_none(chunks: list, close: bool) -> None:
    with socket_pair() as (ours, theirs):
        session = sshmux.Session(ours, 1)
        for chunk in chunks:
            theirs.sendall(chunk)
        if close:
            theirs.shutdown(socket.SHUT_RDWR)
        status = session.poll(0.05)
        assert status is None or 0 <= status <= 0xFFFFFFFF
        if close:
            assert status is not None, "a closed socket always ends the session"


def test_an_oversized_length_is_refused_without_reading_it() -> None:
    with socket_pair() as (ours, theirs):
        theirs.sendall(struct.pack(">I", 0xFFFFFFF0))
        assert sshmux.Session(ours, 1).poll(1) == sshmux.LOST


def test_the_exit_message_of_another_session_is_not_ours() -> None:
    with socket_pair() as (ours, theirs):
        session = sshmux.Session(ours, 1)
        theirs.sendall(exit_message(2, 9))
        assert session.poll(0.2) is None
        theirs.sendall(exit_message(1, 4))
        assert session.poll(0.2) is None, "final only once the master has closed the session"
        theirs.shutdown(socket.SHUT_RDWR)
        assert session.poll(1) == 4
