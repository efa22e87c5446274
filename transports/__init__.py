"""Dump targets, one module per URL scheme.

Each module exposes ``open_target(url, options) -> Transport`` returning a
connected :class:`transports.base.Transport`.  Modules are imported only when
their scheme is used, so a capture initrd for one target carries only that
target's dependencies.
"""
from __future__ import annotations

import importlib

from capture.targeturl import TargetURL
from transports.base import Transport, TransportError, TransportOptions

#: scheme (after alias resolution in :mod:`capture.targeturl`) -> module
REGISTRY = {
    "file": "transports.file",
    "sftp": "transports.sftp",
    "ssh": "transports.ssh",
    "ftp": "transports.ftp",
    "ftps": "transports.ftp",
    "cifs": "transports.cifs",
    "nfs": "transports.nfs",
}


def module_for(scheme: str) -> str:
    """The module name that handles ``scheme``."""
    try:
        return REGISTRY[scheme]
    except KeyError:
        raise TransportError(f"no transport for scheme {scheme!r}") from None


def open_target(url: TargetURL, options: TransportOptions) -> Transport:
    """Connect to ``url`` with the transport registered for its scheme."""
    module = importlib.import_module(module_for(url.scheme))
    return module.open_target(url, options)
