"""Per-transport yardsticks: the C-tools capture an administrator would otherwise run.

Each is a busybox + makedumpfile initrd (:func:`qharness.reference.build_initrd`)
that saves to the same kind of target, on the same server, through the same
guestfwd rules as the harness case of that name:

* ``file``: mount the ext4 virtio disk, ``makedumpfile -c|-l -d 31 /proc/vmcore
  /mnt/vmcore``, ``sync``, unmount;
* ``ssh`` (the yardstick of the sftp and ssh cases): ``makedumpfile -F ... |
  ssh -i KEY root@SERVER 'cat > .../vmcore.flat'`` with OpenSSH's client and
  its libraries, the server's host key pinned: encryption on both sides;
* ``ftp``: ``makedumpfile -F ... | ftpput`` (busybox, passive mode);
* ``nfs``: busybox ``mount -t nfs4`` (the kernel NFS client, as our nfs target
  mounts) and makedumpfile writing the standard file on the mount;
* ``cifs``: busybox ``mount -t cifs`` (the kernel SMB client; cifs-utils'
  ``mount.cifs`` only prepares the same options) and makedumpfile writing the
  standard file on the share.  smbclient would be the userspace analogue of
  our pysmb target but weighs tens of MB with Samba's libraries.

The dump lands where the host can check it (its kernel log must hold the
panic and the run's marker); the time from the panic to the initrd's
``dump sent`` line is what bench/crash_cycle.py sets beside ours.
"""
from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List

from qharness import guest, reference, servers
from qharness.kernel import GuestKernel
from qharness.reference import InitrdPlan

TRANSPORTS = ("file", "ssh", "ftp", "nfs", "cifs")
FOR_CASE = {"file": "file", "sftp": "ssh", "ssh": "ssh", "ftp": "ftp", "nfs": "nfs", "cifs": "cifs"}
"""The yardstick of each harness case's target."""
FLAGS = {"compressed": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z", "elf": "-E"}
DISK_MB = 384
KEY = "/root/.ssh/id_ed25519"
KNOWN_HOSTS = "/root/.ssh/known_hosts"


@dataclass
class Target:
    """A yardstick's target: what its initrd runs, what QEMU attaches, where the dump lands."""

    plan: InitrdPlan
    dump: Path
    disks: List[Path] = field(default_factory=list)
    forwards: Dict[int, int] = field(default_factory=dict)
    mount: List[str] = field(default_factory=list)     # host mount command to reach ``dump``


def _makedumpfile(dumpformat: str, flattened: bool) -> str:
    flag = FLAGS.get(dumpformat, "-c")
    return f"makedumpfile {'-F ' if flattened else ''}{flag} -d 31 /proc/vmcore"


def _wait_for(path: str) -> str:
    return f"for i in $(seq 100); do [ -e {path} ] && break; sleep 0.1; done"


@contextlib.contextmanager
def target(transport: str, workdir: Path, dumpformat: str) -> Iterator[Target]:
    """Start the server (or make the disk) for ``transport`` and describe the yardstick."""
    workdir.mkdir(parents=True, exist_ok=True)
    if transport == "file":
        image = workdir / "disk.img"
        with open(image, "wb") as f:
            f.truncate(DISK_MB << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        mnt = workdir / "mnt"
        mnt.mkdir(exist_ok=True)
        plan = InitrdPlan(network=False, modules=["virtio_blk"],
                          setup=f"{_wait_for('/dev/vda')}\nmount -t ext4 /dev/vda /mnt",
                          save=f"{_makedumpfile(dumpformat, False)} /mnt/vmcore && sync && umount /mnt")
        yield Target(plan, mnt / "vmcore", disks=[image], mount=["mount", "-o", "loop", str(image), str(mnt)])
        return
    scheme = "sftp" if transport == "ssh" else transport
    server = servers.make(scheme, workdir / "server")
    with server:
        crash_dir = server.export / "crash"
        crash_dir.mkdir(mode=0o700, exist_ok=True)
        st = server.export.stat()
        shutil.chown(crash_dir, st.st_uid, st.st_gid)
        yield Target(_server_plan(transport, server, crash_dir, dumpformat),
                     crash_dir / ("vmcore" if transport in ("nfs", "cifs") else "vmcore.flat"),
                     forwards=server.forwards)


def _server_plan(transport: str, server: servers.Server, crash_dir: Path, dumpformat: str) -> InitrdPlan:
    host = guest.GUEST_SERVER
    stream = _makedumpfile(dumpformat, True)
    if transport == "ssh":
        assert isinstance(server, servers.SshServer)
        remote = f"cat > {crash_dir / 'vmcore.flat'}"
        return InitrdPlan(
            binaries=[Path(shutil.which("ssh") or "/usr/bin/ssh")],
            files={KEY: server.identity.read_bytes(), KNOWN_HOSTS: f"{host} {server.host_key}\n".encode()},
            save=f"{stream} | ssh -i {KEY} -o BatchMode=yes -o StrictHostKeyChecking=yes "
                 f"-o UserKnownHostsFile={KNOWN_HOSTS} root@{host} {shlex.quote(remote)}")
    if transport == "ftp":
        assert isinstance(server, servers.FtpServer)
        ftp = server.server
        return InitrdPlan(save=f"{stream} | ftpput -u {shlex.quote(ftp.user)} -p {shlex.quote(ftp.password)} "
                               f"{host} crash/vmcore.flat -")
    if transport == "nfs":
        assert isinstance(server, servers.NfsServer)
        return InitrdPlan(
            modules=["nfsv4"],
            setup=f"mount -t nfs4 -o vers=4,nolock,addr={host},clientaddr=10.0.2.15 "
                  f"{host}:{server.pseudo} /mnt",
            save=f"{_makedumpfile(dumpformat, False)} /mnt/crash/vmcore && sync && umount /mnt")
    if transport == "cifs":
        assert isinstance(server, servers.CifsServer)
        smb = server.server
        return InitrdPlan(
            modules=["cifs", "cmac", "ccm", "gcm", "ghash_generic", "ctr", "sha512_generic", "ecb"],
            files={"/etc/cifs-credentials": f"{smb.user}\n{smb.password}\n".encode()},
            setup=f"mount -t cifs //{host}/{smb.share} /mnt -o ip={host},username=$(sed -n 1p "
                  f"/etc/cifs-credentials),password=$(sed -n 2p /etc/cifs-credentials)",
            save=f"{_makedumpfile(dumpformat, False)} /mnt/crash/vmcore && sync && umount /mnt")
    raise ValueError(f"no yardstick for {transport!r}; yardsticks: {', '.join(TRANSPORTS)}")


def crash(kernel: GuestKernel, workdir: Path, crashkernel: str, transport: str, dumpformat: str,
          memory_mb: int = 1024, label: str = "yardstick") -> reference.ReferenceCrash:
    """Boot, crash, let the ``transport`` yardstick save, and check the dump on the host."""
    marker = f"qharness-marker-{label}"
    with target(transport, workdir, dumpformat) as t:
        initrd = reference.build_initrd(kernel, t.plan, workdir / f"{label}-initrd.cpio")
        prod = reference.production_image(kernel, initrd, marker, workdir / f"{label}-production.cpio")
        run = guest.boot(guest.GuestSpec(
            kernel=kernel, initrd=prod, memory_mb=memory_mb, timeout=600,
            append=reference.production_append(crashkernel), disks=t.disks,
            forwards=t.forwards, network=bool(t.forwards)), workdir / f"{label}-console.log")
        if t.mount:
            subprocess.run(t.mount, check=True)
        try:
            problems = reference.check_dump(t.dump, marker)
        finally:
            if t.mount:
                subprocess.run(["umount", t.mount[-1]], capture_output=True)
    return reference.finish(run, problems)
