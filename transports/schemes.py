"""The URL schemes of KDUMP_SAVEDIR: one row per scheme, the only place a scheme is declared.

A row names the transport module that handles the scheme, its aliases, its
default port and whether its files can be written at offsets (then the saver
stores the standard vmcore; otherwise the flattened stream).  The table
imports nothing, so URL parsing never pulls in a transport's library
(pysmb for cifs, the OpenSSH client for sftp and ssh), which a capture initrd for another target does not carry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Scheme:
    """One target scheme."""

    name: str
    """The canonical name, as :class:`~capture.config.targeturl.TargetURL` carries it."""
    module: str
    """The transport module: ``open_target``, ``INITRD``, ``initrd_material``."""
    aliases: Tuple[str, ...] = ()
    default_port: Optional[int] = None
    writes_at_offsets: bool = False
    """Whether its dump files are seekable (the standard vmcore is rebuilt in place)."""


SCHEMES: Tuple[Scheme, ...] = (
    Scheme("file", "transports.file", writes_at_offsets=True),
    Scheme("ftp", "transports.ftp", default_port=21),
    Scheme("ftps", "transports.ftp", default_port=21),
    Scheme("sftp", "transports.sftp", aliases=("scp",), default_port=22, writes_at_offsets=True),
    Scheme("ssh", "transports.ssh", default_port=22),
    Scheme("nfs", "transports.nfs", default_port=2049, writes_at_offsets=True),
    Scheme("cifs", "transports.cifs", aliases=("smb",), default_port=445, writes_at_offsets=True),
)

_BY_NAME: Dict[str, Scheme] = {n: s for s in SCHEMES for n in (s.name, *s.aliases)}


def lookup(name: str) -> Optional[Scheme]:
    """The scheme written as ``name`` (any case, aliases included), or None."""
    return _BY_NAME.get(name.lower())


def accepted_names() -> Tuple[str, ...]:
    """Every name a URL may start with, sorted."""
    return tuple(sorted(_BY_NAME))
