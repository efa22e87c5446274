"""The kdump configuration (/etc/sysconfig/kdump), typed and validated.

INTERFACE PINNED: the field names below are used by the saver, the
transports and the initrd builder.  Parsing and validation live in
:func:`load` / :func:`parse_text` (to be completed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

DEFAULT_PATH = "/etc/sysconfig/kdump"
INITRD_PATH = "/etc/kdump-saver/kdump.conf"
"""Where the capture initrd carries the normalized configuration."""


@dataclass(frozen=True)
class NetConfig:
    """KDUMP_NETCONFIG: ``auto``, ``IFACE:MODE[:force]``, or empty (no network)."""

    mode: str = "auto"          # "auto", "none", "static", "dhcp", "dhcp4", "dhcp6", "auto6"
    interface: str = ""         # empty for auto / none
    force: bool = False         # ":force": bring the network up even for a local target


@dataclass(frozen=True)
class Config:
    """Every KDUMP_* option with SUSE's default."""

    savedir: str = "/var/crash"                 # KDUMP_SAVEDIR (parse with capture.targeturl.parse)
    dumplevel: int = 31                         # KDUMP_DUMPLEVEL 0..31
    dumpformat: str = "compressed"              # none, elf, compressed, lzo, snappy, zstd, raw (lowercased)
    keep_old_dumps: int = 0                     # KDUMP_KEEP_OLD_DUMPS >= -1
    free_disk_size: int = 64                    # KDUMP_FREE_DISK_SIZE, MB
    netconfig: NetConfig = field(default_factory=NetConfig)
    net_timeout: int = 30                       # KDUMP_NET_TIMEOUT, seconds, 0 = no wait
    immediate_reboot: bool = True
    continue_on_error: bool = True
    cpus: int = 32                              # KDUMP_CPUS, 0 = all
    verbose: int = 0                            # KDUMP_VERBOSE bitmask
    prescript: str = ""
    postscript: str = ""
    transfer: str = ""
    required_programs: Tuple[str, ...] = ()
    ssh_identity: Tuple[str, ...] = ()
    host_key: str = ""
    commandline: str = ""
    commandline_append: str = ""
    kernelver: str = ""
    kexec_options: str = ""
    makedumpfile_options: str = ""
    crashkernel: str = "auto"
    auto_resize: bool = False
    notification_to: str = ""
    notification_cc: str = ""
    smtp_server: str = ""
    smtp_user: str = ""
    smtp_password: str = ""
    # kdump-saver extensions
    ca_file: str = ""                           # KDUMP_CA_FILE: CA bundle for ftps
    nfs_options: str = ""                       # KDUMP_NFS_OPTIONS: extra nfs mount options
    hostname: str = ""                          # KDUMP_HOSTNAME: production hostname, recorded at initrd build
    known_hosts: str = ""                       # KDUMP_KNOWN_HOSTS: known_hosts file recorded at initrd build
    source: Optional[str] = None                # the file this was read from
