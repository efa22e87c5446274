"""No command on an ftp control connection while a transfer is open (issue 12, point 5).

A server answers a command sent during a STOR only after the transfer (vsftpd
does not even read it before), so the client waits for a reply that cannot
come, or takes the ``226`` of the STOR for the command's answer.  These tests
put a :class:`~servers.ftpproxy.RecordingFtpProxy` between the saver and a
real vsftpd and record every control connection through whole saves: the free
space check (``AVBL``, which vsftpd lacks, answered by the proxy with the
real free space of the served file system or a set figure), retention of an
older dump (``LIST``, ``RETR``, ``DELE``, ``RMD``), a resume after the
server's session process is killed mid-dump (``SIZE``, ``REST`` + ``STOR``,
or ``APPE`` when ``REST`` is refused), and a save that stops half-way (the
README of a failed ``vmcore.incomplete``).  Between ``PASV`` and the final
reply of its transfer, no command may go on that connection (but ``REST``
right before the transfer) nor on any other.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Iterator, List

import pytest

from capture.config.options import Config
from capture.errors import KdumpError
from capture.save.sequence import save
from capture.save.space import RESERVE
from conftest import require, sha256_of
from servers.ftpd import FtpServer
from servers.ftpproxy import Event, RecordingFtpProxy, overlapping_commands
from test_resume import cut_when, partial_size
from test_transport_cifs import lz4_sha256

NET_TIMEOUT = 10


@pytest.fixture(scope="module")
def ftpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    require(os.geteuid() == 0, "vsftpd and its test account need root")
    server = FtpServer(tmp_path_factory.mktemp("ftpd-order")).start()
    yield server
    server.remove()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def config(**changes: object) -> Config:
    values = dict(dumpformat="raw", net_timeout=NET_TIMEOUT, free_disk_size=1, keep_old_dumps=1)
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def commands(events: List[Event]) -> List[str]:
    return [e.verb for e in events if e.kind == "cmd"]


def stores_of(events: List[Event], name: str) -> List[str]:
    return [e.text.split(" ", 1)[0] for e in events if e.kind == "cmd" and e.verb in ("STOR", "APPE")
            and e.text.endswith(name)]


@pytest.mark.parametrize("resume", ["REST+STOR", "APPE"])
def test_whole_save_with_space_check_retention_and_resume_keeps_the_control_connection_quiet(
        resume: str, ftpd: FtpServer, fixture_vmcore: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = "order-" + resume.replace("+", "-").lower()
    root = ftpd.home / name
    refuse = frozenset({"REST"}) if resume == "APPE" else frozenset()
    with RecordingFtpProxy(ftpd.port, avbl=lambda: free_bytes(ftpd.home), refuse=refuse) as proxy:
        url = f"ftp://{ftpd.user}:{ftpd.password}@127.0.0.1:{proxy.port}/{name}"
        # two older dumps, so that KDUMP_KEEP_OLD_DUMPS=1 deletes one after the third save
        first = save(config(), vmcore=str(fixture_vmcore), savedir=url)
        kept = save(config(), vmcore=str(fixture_vmcore), savedir=url)
        size = (root / first.directory / "vmcore.lz4").stat().st_size
        before = len(proxy.events)
        killed: list = []
        cutter = cut_when(partial_size(root), size // 2, lambda: killed.append(ftpd.kill_sessions()))
        with caplog.at_level(logging.INFO):
            second = save(config(), vmcore=str(fixture_vmcore), savedir=url)
        cutter.join(5)
        events = list(proxy.events)
    assert killed and killed[0] > 0, "the server's session was killed during the transfer"
    assert "resumed storing" in caplog.text

    problems = overlapping_commands(events)
    assert problems == [], "\n".join(problems)

    later = events[before:]
    verbs = commands(later)
    answered = [e for e in later if e.kind == "reply" and e.by_proxy and e.code == "213"]
    assert len(answered) >= 2, f"the free space was asked (start, room, end): {verbs}"
    # the empty 0600 file, the data, the resumed data
    assert stores_of(later, "vmcore.incomplete") == ["STOR", "STOR", "STOR" if resume == "REST+STOR" else "APPE"]
    assert "SIZE" in verbs and "REST" in verbs
    assert any(e.by_proxy and e.code == "502" for e in later) == (resume == "APPE")
    assert {"RMD", "DELE"} <= set(verbs) and ({"LIST", "MLSD"} & set(verbs)), "retention listed and deleted"
    # the older dump went (KDUMP_KEEP_OLD_DUMPS=1), the new one is whole
    assert sorted(p.name for p in root.iterdir()) == sorted([kept.directory, second.directory])
    saved = root / second.directory
    assert lz4_sha256(saved / "vmcore.lz4") == sha256_of(fixture_vmcore)
    assert (saved / "README.txt").read_text().startswith("vmcore status: saved successfully")
    print(f"{resume}: {len(later)} events on {len({e.conn for e in later})} control connections, "
          f"{len(answered)} AVBL, no command during a transfer")


def test_save_stopped_by_the_space_limit_mid_transfer_keeps_the_control_connection_quiet(
        ftpd: FtpServer, fixture_vmcore: Path) -> None:
    """The server says 40 MB are free beyond KDUMP_FREE_DISK_SIZE: the save must stop before
    writing more, without asking again while the STOR runs, and leave its INCOMPLETE README."""
    name = "order-full"
    root = ftpd.home / name
    limit = 1 << 20
    with RecordingFtpProxy(ftpd.port, avbl=lambda: limit + RESERVE + (40 << 20)) as proxy:
        url = f"ftp://{ftpd.user}:{ftpd.password}@127.0.0.1:{proxy.port}/{name}"
        with pytest.raises(KdumpError, match="KDUMP_FREE_DISK_SIZE"):
            save(config(), vmcore=str(fixture_vmcore), savedir=url)
        events = list(proxy.events)
    problems = overlapping_commands(events)
    assert problems == [], "\n".join(problems)
    assert stores_of(events, "vmcore.incomplete") == ["STOR", "STOR"]  # the empty 0600 one, then the data
    [failed] = [p for p in root.iterdir() if p.is_dir()]
    assert (failed / "README.txt").read_text().startswith("THIS DUMP IS INCOMPLETE")
    partial = failed / "vmcore.incomplete"
    assert 0 < partial.stat().st_size <= 40 << 20
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600


def test_the_checker_sees_a_command_during_a_transfer(ftpd: FtpServer) -> None:
    """The check above can fail: a client that asks AVBL while its STOR runs is caught."""
    import ftplib

    with RecordingFtpProxy(ftpd.port, avbl=lambda: 1 << 30) as proxy:
        conn = ftplib.FTP()
        conn.connect("127.0.0.1", proxy.port, timeout=10)
        conn.login(ftpd.user, ftpd.password)
        conn.voidcmd("TYPE I")
        data = conn.transfercmd("STOR checker-probe")
        data.sendall(b"x" * 1000)
        assert conn.sendcmd("AVBL /").startswith("213")
        data.close()
        assert conn.voidresp().startswith("226")
        conn.quit()
        events = list(proxy.events)
    problems = overlapping_commands(events)
    assert len(problems) == 1 and "AVBL" in problems[0] and "transfer: STOR" in problems[0]
    (ftpd.home / "checker-probe").unlink()


def test_other_calls_during_a_stor_are_refused_and_the_stor_survives(ftpd: FtpServer) -> None:
    """The transport keeps the rule itself: a call that needs the control connection while a STOR
    runs is refused (free space is estimated instead), and the STOR goes on undisturbed."""
    from capture.config.targeturl import parse
    from transports import open_target
    from transports.base import TransportError, TransportOptions

    with RecordingFtpProxy(ftpd.port, avbl=lambda: 10 << 30) as proxy:
        url = parse(f"ftp://{ftpd.user}:{ftpd.password}@127.0.0.1:{proxy.port}/order-refused")
        with open_target(url, TransportOptions(net_timeout=0)) as t:
            assert t.free_space() == 10 << 30
            f = t.create("file")
            f.write(b"a" * (3 << 20))
            for call in (lambda: t.listdir(""), lambda: t.remove("x"), lambda: t.rmdir("x"),
                         lambda: t.create("other"), lambda: t.read_small("x")):
                with pytest.raises(TransportError, match="no other command while storing"):
                    call()
            assert t.free_space() == (10 << 30) - (3 << 20)
            f.write(b"b" * 1000)
            f.close()
            assert t.free_space() == 10 << 30  # asked again once the STOR is over
        events = list(proxy.events)
    problems = overlapping_commands(events)
    assert problems == [], "\n".join(problems)
    assert (ftpd.home / "order-refused" / "file").read_bytes() == b"a" * (3 << 20) + b"b" * 1000
