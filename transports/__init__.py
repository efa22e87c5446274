"""Dump targets, one module per URL scheme.

Each module exposes ``open_target(url, options) -> Transport`` returning a
connected :class:`transports.base.Transport`, ``INITRD`` (an
:class:`~transports.base.InitrdProfile`) and, where the target needs files or
checks at initrd build time, ``initrd_material(url, options)``.  Modules are imported only when
their scheme is used, so a capture initrd for one target carries only that
target's dependencies.
"""
from __future__ import annotations

import importlib

from capture.targeturl import TargetURL
from transports.base import InitrdMaterial, InitrdProfile, Transport, TransportError, TransportOptions

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


def initrd_profile(url: TargetURL) -> InitrdProfile:
    """What the transport for ``url`` needs in the capture initrd."""
    return importlib.import_module(module_for(url.scheme)).INITRD


def initrd_material(url: TargetURL, options: TransportOptions) -> InitrdMaterial:
    """Files and build-time checks the target ``url`` needs (none for most)."""
    module = importlib.import_module(module_for(url.scheme))
    check = getattr(module, "initrd_material", None)
    return check(url, options) if check is not None else InitrdMaterial()
