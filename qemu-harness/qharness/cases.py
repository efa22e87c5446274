"""The matrix: one :class:`Case` per target and per behaviour worth a crash."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

STATIC_ADDRESS = "10.0.2.42"
"""The static capture-kernel address of the ``static`` case (QEMU's DHCP would give 10.0.2.15)."""


@dataclass(frozen=True)
class Case:
    """One end-to-end scenario.

    ``scheme`` is the target kind; ``file`` saves to a virtio disk with an ext4
    file system of ``disk_mb`` that the capture initrd mounts.  ``crashes``
    crashes run one after another against the same target (with the guest
    clock a day later each time).  ``free_disk_margin_mb`` sets
    KDUMP_FREE_DISK_SIZE to the disk's free space minus that margin, so the
    dump cannot fit and the save must stop with the limit intact.
    ``restart_after_mb`` restarts the server (down for ``restart_pause``
    seconds) once an unfinished file (``*.incomplete``) on the target holds
    that many MB: the save must survive it.  With ``expect_failure`` the
    server stays away longer than KDUMP_NET_TIMEOUT: the save must end with
    an error and the capture kernel reboot.

    The guest has 1 GiB and reserves ``crashkernel`` for the capture kernel:
    256M leaves room to spare; the smallest size that still saves is what
    bench/crash_cycle.py measures (target: 192M or less).
    """

    name: str
    scheme: str
    description: str
    static_ip: bool = False
    crashes: int = 1
    settings: Tuple[Tuple[str, str], ...] = ()
    disk_mb: int = 384
    free_disk_margin_mb: Optional[int] = None
    foreign_entries: bool = False
    memory_mb: int = 1024
    crashkernel: str = "256M"
    restart_after_mb: Optional[int] = None
    restart_pause: float = 5.0
    expect_failure: bool = False

    @property
    def expect_saved(self) -> bool:
        return self.free_disk_margin_mb is None and not self.expect_failure

    @property
    def extra_settings(self) -> Dict[str, str]:
        return dict(self.settings)


LZO = (("KDUMP_DUMPFORMAT", "lzo"),)
"""Faster than zlib under TCG; file and sftp keep the default format."""

MATRIX: Tuple[Case, ...] = (
    Case("file", "file", "local ext4 file system on a virtio disk, mounted by the capture initrd"),
    Case("sftp", "sftp", "OpenSSH sftp, DHCP"),
    Case("ssh", "ssh", "OpenSSH, commands over ssh, DHCP, lzo", settings=LZO),
    Case("ftp", "ftp", "vsftpd, passive mode, DHCP, lzo", settings=LZO),
    Case("ftps", "ftps", "vsftpd with explicit TLS (AUTH TLS, PROT P), certificate of a test CA given as "
         "KDUMP_CA_FILE, DHCP, lzo", settings=LZO),
    Case("cifs", "cifs", "Samba, SMB2, DHCP, lzo", settings=LZO),
    Case("nfs", "nfs", "nfs-ganesha, NFSv4 over TCP, DHCP, lzo", settings=LZO),
    Case("nfs-restart", "nfs", "nfs-ganesha restarted (down 5 s) when the vmcore holds 12 MB (about 40 % "
         "of the 30 MB lzo dump); the soft mount waits up to KDUMP_NET_TIMEOUT (60 s)", settings=LZO,
         restart_after_mb=12),
    Case("nfs-restart-early", "nfs", "as nfs-restart, the server down when the vmcore holds 4 MB (about 13 %)",
         settings=LZO, restart_after_mb=4),
    Case("nfs-restart-late", "nfs", "as nfs-restart, the server down once the vmcore holds 17 MB (the lzo "
         "dump is 24 to 30 MB, one crash to the next, and the file grows in steps of up to 4 MB: stopped at "
         "55-85 %; 21 MB once came only when a 24 MB file was whole)", settings=LZO, restart_after_mb=17),
    Case("nfs-gone", "nfs", "nfs-ganesha stopped when the vmcore holds 12 MB and kept away for longer than "
         "KDUMP_NET_TIMEOUT (20 s): a clean error and a reboot, not a hang, lzo",
         settings=LZO + (("KDUMP_NET_TIMEOUT", "20"),), restart_after_mb=12, restart_pause=400,
         expect_failure=True),
    Case("static", "sftp", f"OpenSSH sftp, the production eth0 static at {STATIC_ADDRESS}: ip= static "
         "on the capture command line, lzo", static_ip=True, settings=LZO),
    Case("keep-old", "file", "KDUMP_KEEP_OLD_DUMPS=1 over three crashes, foreign entries left alone, lzo",
         crashes=3, settings=(("KDUMP_KEEP_OLD_DUMPS", "1"),) + LZO, foreign_entries=True),
    Case("free-disk", "file", "KDUMP_FREE_DISK_SIZE on a disk too small for the dump, lzo",
         disk_mb=96, free_disk_margin_mb=3, settings=LZO),
)

DEMO = MATRIX[1]

BY_NAME: Dict[str, Case] = {c.name: c for c in MATRIX}


def get(name: str) -> Case:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown case {name!r}; cases: {', '.join(BY_NAME)}") from None
