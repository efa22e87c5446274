"""Errors meant for the administrator: printed as one clear message, never as a traceback."""
from __future__ import annotations


class KdumpError(Exception):
    """A failure with a message fit for the console (no secrets, no traceback)."""


class ConfigError(KdumpError):
    """A bad configuration value or line."""


class URLError(KdumpError):
    """A KDUMP_SAVEDIR that is not a usable target URL."""


class DumpFormatError(KdumpError):
    """A file that is not, or no longer, a dump we can read."""
