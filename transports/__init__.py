"""Dump targets, one module per URL scheme, found by scheme in :mod:`transports.schemes`.

Every transport module has the surface :class:`TransportModule` describes:
``open_target(url, options)`` returning a connected
:class:`~transports.base.Transport`, ``INITRD`` (an
:class:`~transports.base.InitrdProfile`) and ``initrd_material(url, options)``.
Modules are imported only when their scheme is used, so a capture initrd for
one target carries only that target's dependencies.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from transports import schemes

if TYPE_CHECKING:
    from typing import Protocol

    from capture.config.targeturl import TargetURL
    from transports.base import InitrdMaterial, InitrdProfile, Transport, TransportOptions

    class TransportModule(Protocol):
        """What every module named in :data:`transports.schemes.SCHEMES` provides."""

        INITRD: InitrdProfile

        def open_target(self, url: TargetURL, options: TransportOptions) -> Transport:
            """Connect to ``url``; raise :class:`~transports.base.TransportError` naming why not."""

        def initrd_material(self, url: TargetURL, options: TransportOptions) -> InitrdMaterial:
            """Files the capture initrd needs for ``url`` and what would fail at crash time."""


def module_for(scheme: str) -> str:
    """The name of the module that handles ``scheme`` (canonical or alias)."""
    from transports.base import TransportError

    known = schemes.lookup(scheme)
    if known is None:
        raise TransportError(f"no transport for scheme {scheme!r}")
    return known.module


def load(scheme: str) -> "TransportModule":
    """The transport module of ``scheme``, imported now."""
    return cast("TransportModule", importlib.import_module(module_for(scheme)))


def open_target(url: "TargetURL", options: "TransportOptions") -> "Transport":
    """Connect to ``url`` with the transport registered for its scheme."""
    return load(url.scheme).open_target(url, options)


def initrd_profile(url: "TargetURL") -> "InitrdProfile":
    """What the transport for ``url`` needs in the capture initrd."""
    return load(url.scheme).INITRD


def initrd_material(url: "TargetURL", options: "TransportOptions") -> "InitrdMaterial":
    """Files and build-time checks the target ``url`` needs (none for most)."""
    return load(url.scheme).initrd_material(url, options)
