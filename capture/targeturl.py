"""KDUMP_SAVEDIR target URLs: parsing, aliases and the masked display form."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

from capture.errors import URLError

#: accepted scheme -> canonical scheme
SCHEMES = {
    "file": "file",
    "ftp": "ftp",
    "ftps": "ftps",
    "sftp": "sftp",
    "scp": "sftp",
    "ssh": "ssh",
    "nfs": "nfs",
    "cifs": "cifs",
    "smb": "cifs",
}

DEFAULT_PORTS = {"ftp": 21, "ftps": 21, "sftp": 22, "ssh": 22, "nfs": 2049, "cifs": 445}


@dataclass(frozen=True)
class TargetURL:
    """A parsed target.  ``path`` is percent-decoded and absolute; for cifs its
    first component is the share.  ``password`` never appears in ``str()``."""

    scheme: str
    path: str
    host: str = ""
    port: Optional[int] = None
    user: str = ""
    password: str = ""
    given_scheme: str = ""

    @property
    def is_remote(self) -> bool:
        return self.scheme != "file"

    @property
    def effective_port(self) -> Optional[int]:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme)

    @property
    def host_for_url(self) -> str:
        """The host as written in a URL: IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def masked(self) -> str:
        """The URL for messages and READMEs: the password replaced by ``***``."""
        if not self.is_remote:
            return self.path
        userinfo = ""
        if self.user:
            userinfo = self.user + (":***" if self.password else "") + "@"
        elif self.password:
            userinfo = ":***@"
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{userinfo}{self.host_for_url}{port}{self.path}"

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"TargetURL({self.masked()!r})"


def parse(text: str) -> TargetURL:
    """Parse a KDUMP_SAVEDIR value; raise :class:`URLError` naming what is wrong."""
    value = text.strip()
    if not value:
        raise URLError("the target is empty; give a path like /var/crash or a URL like sftp://host/path")
    if value.startswith("/"):
        return TargetURL(scheme="file", path=_clean_path(value, value), given_scheme="")
    if "://" not in value:
        raise URLError(
            f"{_safe(value)!r} is neither an absolute path nor a URL "
            "(file, ftp, ftps, sftp, scp, ssh, nfs, cifs, smb)")
    given, rest = value.split("://", 1)
    scheme = SCHEMES.get(given.lower())
    if scheme is None:
        raise URLError(
            f"unknown scheme {given!r} in {_safe(value)!r}; "
            f"use one of {', '.join(sorted(SCHEMES))}")
    try:
        parts = urlsplit("x://" + rest)
        port = parts.port
    except ValueError as exc:
        why = "the port must be a number from 1 to 65535" if "Port" in str(exc) else "the host is malformed"
        raise URLError(f"bad host or port in {_safe(value)!r}: {why} (a password containing "
                       "'/', '#', '?' or '@' must be percent-encoded, e.g. %2F)") from None
    if parts.query or parts.fragment:
        raise URLError(f"{_safe(value)!r}: '?' and '#' must be percent-encoded (%3F, %23) in a target path")
    host = parts.hostname or ""
    user = unquote(parts.username) if parts.username is not None else ""
    password = unquote(parts.password) if parts.password is not None else ""
    raw_path = parts.path
    if scheme == "file":
        if host not in ("", "localhost"):
            raise URLError(f"{_safe(value)!r}: file URLs take no host (file:///path)")
        if user or password or port is not None:
            raise URLError(f"{_safe(value)!r}: file URLs take no user, password or port")
        return TargetURL(scheme="file", path=_clean_path(unquote(raw_path) or "", value), given_scheme=given.lower())
    if not host:
        raise URLError(f"{_safe(value)!r}: a {scheme} target needs a host")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise URLError(f"{_safe(value)!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise URLError(f"{_safe(value)!r}: IPv6 addresses must be written in brackets, like [::1]")
    if port == 0:
        raise URLError(f"{_safe(value)!r}: port 0 is not a port")
    path = _clean_path(unquote(raw_path) or "/", value)
    if scheme == "cifs" and len([p for p in path.split("/") if p]) < 1:
        raise URLError(f"{_safe(value)!r}: a cifs target needs a share: cifs://[user[:password]@]host/SHARE/path")
    if scheme == "nfs" and user:
        raise URLError(f"{_safe(value)!r}: nfs targets take no user or password")
    return TargetURL(scheme=scheme, path=path, host=host, port=port, user=user,
                     password=password, given_scheme=given.lower())


def _clean_path(path: str, value: str) -> str:
    if not path.startswith("/"):
        raise URLError(f"{_safe(value)!r}: the path must be absolute")
    if "\0" in path:
        raise URLError(f"{_safe(value)!r}: the path contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise URLError(f"{_safe(value)!r}: '..' is not allowed in the target path")
    return "/" + "/".join(parts)


def _safe(value: str) -> str:
    """``value`` with anything that may be a password replaced by ``***``, for
    error messages; it errs on the side of hiding too much."""
    if "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    at = rest.rfind("@")
    if at < 0:
        return value
    userinfo, hostpath = rest[:at], rest[at + 1:]
    if ":" not in userinfo:
        return value
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpath}"
