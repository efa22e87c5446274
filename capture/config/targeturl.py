"""KDUMP_SAVEDIR target URLs: parsing, aliases and the masked display form."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import unquote, urlsplit

from capture.errors import URLError
from transports import schemes


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
        if self.port is not None:
            return self.port
        known = schemes.lookup(self.scheme)
        return known.default_port if known else None

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
            f"{_shown(value)} is neither an absolute path nor a URL "
            f"({', '.join(schemes.accepted_names())})")
    given, rest = value.split("://", 1)
    known = schemes.lookup(given)
    if known is None:
        raise URLError(
            f"unknown scheme {given!r} in {_shown(value)}; "
            f"use one of {', '.join(schemes.accepted_names())}")
    scheme = known.name
    try:
        parts = urlsplit("x://" + rest)
        port = parts.port
    except ValueError as exc:
        why = "the port must be a number from 1 to 65535" if "Port" in str(exc) else "the host is malformed"
        raise URLError(f"bad host or port in {_shown(value)}: {why} (a password containing "
                       "'/', '#', '?' or '@' must be percent-encoded, e.g. %2F)") from None
    if parts.query or parts.fragment:
        raise URLError(f"{_shown(value)}: '?' and '#' must be percent-encoded (%3F, %23) in a target path")
    host = parts.hostname or ""
    user = unquote(parts.username) if parts.username is not None else ""
    password = unquote(parts.password) if parts.password is not None else ""
    if _CONTROL.search(user):
        raise URLError(f"{_shown(value)}: the user name contains a control character")
    if _CONTROL.search(password):
        raise URLError(f"{_shown(value)}: the password contains a control character")
    raw_path = parts.path
    if scheme == "file":
        if host not in ("", "localhost"):
            raise URLError(f"{_shown(value)}: file URLs take no host (file:///path)")
        if user or password or port is not None:
            raise URLError(f"{_shown(value)}: file URLs take no user, password or port")
        return TargetURL(scheme="file", path=_clean_path(unquote(raw_path) or "", value), given_scheme=given.lower())
    if not host:
        raise URLError(f"{_shown(value)}: a {scheme} target needs a host")
    hostport = parts.netloc.rpartition("@")[2]
    if "[" in hostport or "]" in hostport:
        if not _BRACKETED.fullmatch(hostport):
            raise URLError(f"{_shown(value)}: the host must be [IPv6 address] followed by "
                           "nothing or :PORT")
        address, _, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise URLError(f"{_shown(value)}: {host!r} in brackets is not an IPv6 address") from None
        if zone and not _ZONE.fullmatch(zone):
            raise URLError(f"{_shown(value)}: {zone!r} is not an interface name (IPv6 zone)")
    elif ":" in host:
        raise URLError(f"{_shown(value)}: IPv6 addresses must be written in brackets, like [::1]")
    else:
        problem = host_name_problem(host)
        if problem:
            raise URLError(f"{_shown(value)}: {problem}")
    if port == 0:
        raise URLError(f"{_shown(value)}: port 0 is not a port")
    path = _clean_path(unquote(raw_path) or "/", value)
    if scheme == "cifs" and len([p for p in path.split("/") if p]) < 1:
        raise URLError(f"{_shown(value)}: a cifs target needs a share: cifs://[user[:password]@]host/SHARE/path")
    if scheme == "nfs" and user:
        raise URLError(f"{_shown(value)}: nfs targets take no user or password")
    return TargetURL(scheme=scheme, path=path, host=host, port=port, user=user,
                     password=password, given_scheme=given.lower())


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BRACKETED = re.compile(r"\[[^\[\]]+\](?::[0-9]*)?")
_ZONE = re.compile(r"[A-Za-z0-9._-]{1,15}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def host_name_problem(host: str) -> Optional[str]:
    """Why ``host`` (not an IPv6 literal) is no host name or IPv4 address, or None.

    Host names are labels of 1 to 63 letters, digits, ``-`` (not at either
    end) and ``_``, joined by single dots, 253 characters at most; non-ASCII
    names must pass the IDNA encoding every network library applies."""
    if len(host) > 253:
        return "the host name is longer than 253 characters"
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return f"{host!r} is not a valid host name (IDNA)"
    labels = ascii_host.lower().rstrip(".").split(".")
    for label in labels:
        if not label:
            return f"{host!r} is not a valid host name: it has an empty label ('..')"
        if len(label) > 63:
            return f"{host!r} is not a valid host name: a label is longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return (f"{host!r} is not a valid host name: labels are letters, digits, '-' and '_' "
                    "('-' not first or last)")
    return None


def parse_list(text: str) -> Tuple[TargetURL, ...]:
    """KDUMP_SAVEDIR as a list of targets, tried in order: the URLs (or
    paths) separated by whitespace, as older SUSE releases documented.  A
    space inside a path must be written ``%20``.  Raise :class:`URLError`
    naming the first bad one (and which of several it is)."""
    words = text.split()
    if not words:
        return (parse(text),)
    targets = []
    for number, word in enumerate(words, 1):
        try:
            targets.append(parse(word))
        except URLError as exc:
            if len(words) == 1:
                raise
            raise URLError(f"target {number} of {len(words)}: {exc} (KDUMP_SAVEDIR holds targets separated "
                           "by spaces; write a space inside a path as %20)") from None
    return tuple(targets)


def _clean_path(path: str, value: str) -> str:
    if not path.startswith("/"):
        raise URLError(f"{_shown(value)}: the path must be absolute")
    if "\0" in path:
        raise URLError(f"{_shown(value)}: the path contains a NUL byte")
    if _CONTROL.search(path):
        raise URLError(f"{_shown(value)}: the path contains a control character "
                       "(a percent-escape like %0A or %0D)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise URLError(f"{_shown(value)}: '..' is not allowed in the target path")
    return "/" + "/".join(parts)


MASK = "***"
#: characters of a bad target quoted in a message
MAX_SHOWN = 200


def _shown(value: str) -> str:
    """``value`` masked and quoted for a message, cut to :data:`MAX_SHOWN` characters."""
    masked = mask_password(value)
    if len(masked) > MAX_SHOWN:
        masked = f"{masked[:MAX_SHOWN]}...({len(masked)} characters)"
    return repr(masked)


def mask_password(value: str) -> str:
    """``value`` (a KDUMP_SAVEDIR text, valid or not) with anything that may be
    a password replaced by :data:`MASK`.

    Deliberately generous, so that even a malformed URL never shows its
    password: the last ``@`` ends the user part, and without an ``@`` a
    ``host:word`` whose word is not a port number is taken for ``user:password``."""
    if "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    at = rest.rfind("@")
    if at >= 0:
        userinfo, hostpath = rest[:at], rest[at + 1:]
        if ":" not in userinfo:
            return value
        return f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@{hostpath}"
    authority, slash, path = rest.partition("/")
    host, colon, port = authority.rpartition(":")
    if not colon or port.isdigit() or (authority.startswith("[") and authority.endswith("]")) or not host:
        return value
    return f"{scheme}://{host}:{MASK}{slash}{path}"


def masked_text(value: str) -> str:
    """A KDUMP_SAVEDIR value for display: the parsed URL's masked form, or
    :func:`mask_password` of the text when it does not parse; several
    targets (separated by spaces) each so."""
    words = value.split()
    if len(words) > 1:
        return " ".join(masked_text(word) for word in words)
    try:
        return parse(value).masked()
    except URLError:
        return mask_password(value)
