"""The nfs transport: how the mount is built, tried, used and undone.

This machine's kernel cannot mount NFS (the QEMU harness exercises real NFS
mounts against nfs-ganesha).  So the command lines are checked as built, and
the connect / retry / unmount logic runs with a runner that turns each NFS
mount command into a real bind mount of a local "export" directory: real
mount and umount system calls, real file system operations through the file
transport, only the NFS protocol replaced.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Sequence

import pytest

from capture.config.targeturl import parse
from conftest import require, require_program
from servers.common import free_port
from transports import nfs
from transports.base import TransportError, TransportOptions
from transports.nfs import NfsTransport, RunResult, export_candidates, mount_commands, run_command


# -- the command lines ----------------------------------------------------------

def test_v4_first_then_v3_with_nolock():
    assert mount_commands("srv", "/dumps", "/mnt/x") == [
        ["mount", "-t", "nfs4", "-o", "vers=4,nolock", "srv:/dumps", "/mnt/x"],
        ["mount", "-t", "nfs", "-o", "vers=3,nolock", "srv:/dumps", "/mnt/x"],
    ]


def test_port_address_and_user_options():
    cmds = mount_commands("srv.example", "/d", "/m", port=2050, user_options="timeo=50, proto=tcp",
                          address="192.0.2.7")
    assert cmds == [
        ["mount", "-t", "nfs4", "-o", "vers=4,nolock,port=2050,addr=192.0.2.7,timeo=50,proto=tcp",
         "srv.example:/d", "/m"],
        ["mount", "-t", "nfs", "-o", "vers=3,nolock,port=2050,timeo=50,proto=tcp", "srv.example:/d", "/m"],
    ]


@pytest.mark.parametrize("opts,fstype,expected", [
    ("vers=3", "nfs", "nolock,vers=3"),
    ("nfsvers=4.1,sec=sys", "nfs4", "nolock,addr=10.0.2.100,nfsvers=4.1,sec=sys"),
    ("v4.2", "nfs4", "nolock,addr=10.0.2.100,v4.2"),
    ("vers=4,addr=10.0.2.9", "nfs4", "nolock,vers=4,addr=10.0.2.9"),
])
def test_a_version_in_the_options_is_the_only_one_tried(opts, fstype, expected):
    cmds = mount_commands("10.0.2.100", "/dumps", "/m", user_options=opts, address="10.0.2.100")
    assert cmds == [["mount", "-t", fstype, "-o", expected, "10.0.2.100:/dumps", "/m"]]


def test_client_address_for_nfs4_only_and_user_options_win():
    cmds = mount_commands("10.0.2.100", "/d", "/m", address="10.0.2.100", client_address="10.0.2.15")
    assert cmds[0][4] == "vers=4,nolock,addr=10.0.2.100,clientaddr=10.0.2.15"
    assert cmds[1][4] == "vers=3,nolock"
    cmds = mount_commands("10.0.2.100", "/d", "/m", user_options="clientaddr=10.0.2.99",
                          address="10.0.2.100", client_address="10.0.2.15")
    assert cmds[0][4] == "vers=4,nolock,addr=10.0.2.100,clientaddr=10.0.2.99"


@pytest.mark.parametrize("net_timeout, timeo", [(60, 100), (10, 17), (300, 500), (1, 10)])
def test_soft_mount_gives_up_after_about_net_timeout(net_timeout, timeo):
    assert nfs.timing_options(net_timeout) == ["soft", f"timeo={timeo}", "retrans=2"]
    cmds = mount_commands("srv", "/d", "/m", net_timeout=net_timeout)
    assert cmds[0][4] == f"vers=4,nolock,soft,timeo={timeo},retrans=2"
    assert cmds[1][4] == f"vers=3,nolock,soft,timeo={timeo},retrans=2"


@pytest.mark.parametrize("opts", ["hard", "soft", "timeo=600", "retrans=5", "softerr,timeo=30"])
def test_timing_in_the_user_options_replaces_ours(opts):
    cmds = mount_commands("srv", "/d", "/m", user_options=opts, net_timeout=60)
    assert cmds[0][4] == f"vers=4,nolock,{opts}"


def test_local_address_towards_the_server():
    assert nfs.local_address_towards("127.0.0.1") == "127.0.0.1"


def test_ipv6_server_in_brackets():
    cmds = mount_commands("fd00::5", "/e", "/m", address="fd00::5")
    assert cmds[0][-2] == "[fd00::5]:/e" and "addr=fd00::5" in cmds[0][4]


def test_export_candidates_walk_up_to_the_root():
    assert export_candidates("/srv/dumps/host") == [
        ("/srv/dumps/host", ""), ("/srv/dumps", "host"), ("/srv", "dumps/host"), ("/", "srv/dumps/host")]
    assert export_candidates("/") == [("/", "")]


# -- connect, retry, unmount with real bind mounts -------------------------------

def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class BindMountServer:
    """A runner that serves "exports" from a local directory by bind-mounting them."""

    def __init__(self, root: Path, v4: bool = True, unreachable_times: int = 0,
                 read_only: bool = False, refuse: bool = False) -> None:
        self.root = root
        self.v4 = v4
        self.unreachable_times = unreachable_times
        self.read_only = read_only
        self.refuse = refuse
        self.calls: List[List[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> RunResult:
        self.calls.append(list(argv))
        if argv[0] == "umount":
            return run_command(argv, timeout)
        assert argv[:2] == ["mount", "-t"] and argv[3] == "-o" and "nolock" in argv[4].split(",")
        fstype, spec, mountpoint = argv[2], argv[5], argv[6]
        if self.unreachable_times:
            self.unreachable_times -= 1
            return RunResult(32, "mount.nfs: Connection refused")
        if self.refuse:
            return RunResult(32, f"mount.nfs: access denied by server while mounting {spec}")
        if fstype == "nfs4" and not self.v4:
            return RunResult(32, "mount.nfs4: Protocol not supported")
        export = self.root / spec.split(":", 1)[1].lstrip("/")
        if not export.is_dir():
            return RunResult(32, f"mount.nfs: mounting {spec} failed, reason given by server: "
                                 "No such file or directory")
        result = run_command(["mount", "--bind", str(export), mountpoint], timeout)
        if result.returncode == 0 and self.read_only:
            result = run_command(["mount", "-o", "remount,bind,ro", mountpoint], timeout)
        return result


@pytest.fixture
def exports(tmp_path):
    require(os.geteuid() == 0, "bind mounts need root")
    probe_src, probe_dst = tmp_path / "probe-src", tmp_path / "probe-dst"
    probe_src.mkdir()
    probe_dst.mkdir()
    r = run_command(["mount", "--bind", str(probe_src), str(probe_dst)], 10)
    require(r.returncode == 0, f"cannot bind-mount here: {r.output}")
    run_command(["umount", str(probe_dst)], 10)
    root = tmp_path / "server"
    (root / "srv" / "dumps").mkdir(parents=True)
    return root


def test_mount_write_and_unmount(exports, tmp_path):
    server = BindMountServer(exports)
    url = parse("nfs://localhost/srv/dumps")
    t = NfsTransport(url, TransportOptions(net_timeout=0), run=server, mount_parent=str(tmp_path))
    t.connect()
    mp = t.mountpoint
    assert mounted(mp)
    address = t._address()
    # net_timeout=0 still waits MIN_IO_TIMEOUT (10 s) for a lost server: timeo=17 (1.7 s) x 6
    assert server.calls == [["mount", "-t", "nfs4", "-o", f"vers=4,nolock,soft,timeo=17,retrans=2,addr={address},"
                             f"clientaddr={address}", "localhost:/srv/dumps", mp]]
    t.mkdir("host-2026")
    t.write_small("host-2026/README.txt", b"saved")
    assert t.free_space() > 0
    t.close()
    assert (exports / "srv" / "dumps" / "host-2026" / "README.txt").read_bytes() == b"saved"
    assert not mounted(mp) and not os.path.exists(mp)
    assert server.calls[-1] == ["umount", mp]


def test_v3_when_v4_fails(exports, tmp_path):
    server = BindMountServer(exports, v4=False)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    t.connect()
    try:
        assert [c[2] for c in server.calls] == ["nfs4", "nfs"]
        assert mounted(t.mountpoint)
    finally:
        t.close()


def test_missing_directories_below_the_export_are_created(exports, tmp_path):
    server = BindMountServer(exports)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps/new/deeper"), TransportOptions(net_timeout=0),
                     run=server, mount_parent=str(tmp_path))
    t.connect()
    try:
        specs = [c[5] for c in server.calls]
        assert specs == ["127.0.0.1:/srv/dumps/new/deeper", "127.0.0.1:/srv/dumps/new/deeper",
                         "127.0.0.1:/srv/dumps/new", "127.0.0.1:/srv/dumps/new",
                         "127.0.0.1:/srv/dumps"]
        t.write_small("f", b"x")
    finally:
        t.close()
    created = exports / "srv" / "dumps" / "new" / "deeper"
    assert (created / "f").read_bytes() == b"x"
    assert oct(created.stat().st_mode & 0o777) == oct(0o700)


def test_unmounted_when_the_base_directory_cannot_be_made(exports, tmp_path):
    server = BindMountServer(exports, read_only=True)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps/sub"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    with pytest.raises(TransportError, match="cannot create the target directory.*[Rr]ead-only"):
        t.connect()
    mountpoints = [c[6] for c in server.calls if c[0] == "mount"]
    assert mountpoints and not any(mounted(mp) for mp in mountpoints)
    assert not os.path.exists(mountpoints[0])
    assert ["umount", mountpoints[0]] in server.calls


def test_unreachable_server_is_retried_until_net_timeout(exports, tmp_path):
    server = BindMountServer(exports, unreachable_times=3)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=20), run=server,
                     mount_parent=str(tmp_path))
    t.connect()
    try:
        assert mounted(t.mountpoint)
    finally:
        t.close()
    server = BindMountServer(exports, unreachable_times=100)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    with pytest.raises(TransportError, match=r"cannot mount nfs://127.0.0.1/srv/dumps: .*Connection refused"):
        t.connect()
    assert len(server.calls) == 2  # v4 and v3, once
    assert not [p for p in os.listdir(tmp_path) if p.startswith("kdump-saver-nfs-")]


def test_refused_export_is_not_retried(exports, tmp_path):
    server = BindMountServer(exports, refuse=True)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=30), run=server,
                     mount_parent=str(tmp_path))
    with pytest.raises(TransportError, match="the server refused: .*access denied"):
        t.connect()
    assert len(server.calls) == 2
    assert not [p for p in os.listdir(tmp_path) if p.startswith("kdump-saver-nfs-")]


def test_missing_export_is_a_clear_error(exports, tmp_path):
    shutil.rmtree(exports)
    exports.mkdir()
    server = BindMountServer(exports / "nothing-exported")
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    with pytest.raises(TransportError, match="exports no part of /srv/dumps"):
        t.connect()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("kdump-saver-nfs-")]


def test_the_real_mount_command_failing_leaves_nothing_behind(tmp_path):
    """With the system's mount: whatever this kernel lacks, the error is clear and nothing stays."""
    require(os.geteuid() == 0, "mount needs root")
    require_program("mount.nfs")
    port = free_port()
    t = NfsTransport(parse(f"nfs://127.0.0.1:{port}/srv/dumps"),
                     TransportOptions(net_timeout=0, mount_options="vers=4"), mount_parent=str(tmp_path))
    with pytest.raises(TransportError, match=rf"cannot mount nfs://127.0.0.1:{port}/srv/dumps"):
        t.connect()
    assert os.listdir(tmp_path) == []
    assert not t.mounted


def test_connecting_again_does_not_mount_again(exports, tmp_path):
    """``open_target`` connects and ``with`` connects again: one mount only."""
    server = BindMountServer(exports)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    t.connect()
    with t:
        assert len([c for c in server.calls if c[0] == "mount"]) == 1
    assert not mounted(server.calls[0][6]) and not os.path.exists(server.calls[0][6])


def test_big_file_is_synced_on_the_way_and_arrives_whole(exports, tmp_path):
    server = BindMountServer(exports)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    t.connect()
    block = os.urandom(1 << 20)
    f = t.create("big")
    for _ in range(nfs.SYNC_EVERY // len(block) * 2 + 3):
        f.write(block)
    f.close()
    t.close()
    assert (exports / "srv" / "dumps" / "big").stat().st_size == nfs.SYNC_EVERY * 2 + 3 * len(block)


def test_after_the_server_is_lost_nothing_waits_and_the_unmount_is_forced(exports, tmp_path):
    server = BindMountServer(exports)
    t = NfsTransport(parse("nfs://127.0.0.1/srv/dumps"), TransportOptions(net_timeout=0), run=server,
                     mount_parent=str(tmp_path))
    t.connect()
    f = t.create("vmcore.incomplete")
    mp = t.mountpoint
    t.lost = True   # what a soft mount's EIO on a write sets
    with pytest.raises(TransportError, match="stopped answering"):
        f.write(b"x")
    with pytest.raises(TransportError, match="stopped answering"):
        t.write_small("README.txt", b"INCOMPLETE")
    f.abort()
    t.close()
    assert server.calls[-1] == ["umount", "-f", mp] and not mounted(mp)
