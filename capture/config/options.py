"""The kdump configuration (/etc/sysconfig/kdump), typed and validated.

INTERFACE PINNED: the field names below are used by the saver, the
transports and the initrd builder.

:func:`load` / :func:`parse_text` read SUSE's file format (shell variable
assignments, see :mod:`capture.config.sysconfig`) without ever executing it, check
every KDUMP_* option and return a :class:`Config`.  All bad values of a file
are reported together in one :class:`~capture.errors.ConfigError`, one line
each: ``FILE:LINE: KEY="VALUE": what is allowed``.  Unknown KDUMP_* keys are
logged as warnings; other shell variables are ignored.  :func:`render` shows
the effective configuration with secrets masked; :func:`serialize` writes it
back, complete and unmasked, in the same syntax.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from capture.config import sysconfig
from capture.config import targeturl
from capture.errors import ConfigError, URLError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/sysconfig/kdump"
INITRD_PATH = "/etc/kdump-saver/kdump.conf"
"""Where the capture initrd carries the normalized configuration."""


DEFAULT_ROUTE_INTERFACE = "default"
"""The interface name SUSE reads as "the card of the default route" (``default:dhcp``)."""


@dataclass(frozen=True)
class NetConfig:
    """KDUMP_NETCONFIG: ``auto``, ``IFACE:MODE[:force]``, or empty (no network).

    ``IFACE`` may be :data:`DEFAULT_ROUTE_INTERFACE` (the interface of the
    default route) and ``MODE`` may be ``auto`` (static or DHCP, as that
    interface is configured now); both are resolved when the initrd is built."""

    mode: str = "auto"          # "auto", "none", "static", "dhcp", "dhcp4", "dhcp6", "auto6"
    interface: str = ""         # empty for plain auto / none; "default" = the default route's interface
    force: bool = False         # ":force": bring the network up even for a local target

    @property
    def on_default_route(self) -> bool:
        """Whether the interface is the one of the default route (``default:MODE``)."""
        return self.interface == DEFAULT_ROUTE_INTERFACE


@dataclass(frozen=True)
class Config:
    """Every KDUMP_* option with SUSE's default."""

    savedir: str = "/var/crash"                 # KDUMP_SAVEDIR: one or more targets separated by spaces (see targets)
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
    update_bootloader: bool = False             # KDUMP_UPDATE_BOOTLOADER: 'enable' writes crashkernel= for GRUB
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

    @property
    def targets(self) -> Tuple[targeturl.TargetURL, ...]:
        """KDUMP_SAVEDIR parsed: the targets in the order they are tried
        (raises :class:`~capture.errors.URLError` for a bad one)."""
        return targeturl.parse_list(self.savedir)


BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "on": True,
                 "false": False, "no": False, "0": False, "off": False}
DUMP_FORMATS = ("none", "elf", "compressed", "lzo", "snappy", "zstd", "raw")
NET_MODES = ("static", "dhcp", "dhcp4", "dhcp6", "auto6", "auto")
HOST_KEY_TYPES = (
    "ssh-ed25519", "ssh-ed448", "ssh-rsa", "ssh-dss",
    "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
IFNAMSIZ = 16
"""The kernel's limit for interface names, including the terminating NUL."""

_MASK = targeturl.MASK


class _Invalid(Exception):
    """A value that is not allowed; the message says what is."""


# --- converters: text of the file -> typed value (raise _Invalid) ---------------------------------

def _text(value: str) -> str:
    return value


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word not in BOOLEAN_WORDS:
        raise _Invalid("must be a boolean: true/false, yes/no, 1/0 or on/off (any case)")
    return BOOLEAN_WORDS[word]


def _integer(minimum: int, maximum: int, meaning: str = "") -> Callable[[str], int]:
    """A converter to an integer of ``minimum..maximum`` (every number has a sane range)."""
    allowed = f"must be an integer from {minimum} to {maximum}"
    if meaning:
        allowed += f" ({meaning})"

    def convert(value: str) -> int:
        text = value.strip()
        if not re.fullmatch(r"-?[0-9]{1,20}", text):
            raise _Invalid(allowed)
        number = int(text)
        if number < minimum or number > maximum:
            raise _Invalid(allowed)
        return number
    return convert


def _dumpformat(value: str) -> str:
    word = value.strip().lower()
    if word not in DUMP_FORMATS:
        raise _Invalid("must be one of " + ", ".join(DUMP_FORMATS) + " (any case)")
    return word


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(?:i?B)?)?", re.IGNORECASE)
#: (numerator, denominator) of each unit in MB; exact integers, no fractions
#: module (it would bring decimal and its 0.4 MB extension into the initrd)
_SIZE_FACTOR_MB = {"": (1, 1), "K": (1, 1024), "M": (1, 1), "G": (1024, 1), "T": (1024 * 1024, 1)}


MAX_FREE_DISK_MB = 1 << 30
"""KDUMP_FREE_DISK_SIZE above 1 PiB is surely a typing error."""


def _size_mb(value: str) -> int:
    allowed = ("must be a size in MB (like 64), or with a unit K, M, G or T (like 512K, 2G); "
               f"0 to {MAX_FREE_DISK_MB} MB (1 PiB)")
    text = value.strip()
    match = _SIZE.fullmatch(text) if len(text) <= 40 else None
    if not match:
        raise _Invalid(allowed)
    whole, _, decimals = match.group(1).partition(".")
    unit_num, unit_den = _SIZE_FACTOR_MB[(match.group(2) or "").upper()]
    num, den = int(whole + decimals) * unit_num, 10 ** len(decimals) * unit_den
    if num > MAX_FREE_DISK_MB * den:
        raise _Invalid(allowed)
    return -(-num // den)


_NETCONFIG_ALLOWED = ('must be "auto", "auto:force", "" (no network) or IFACE:MODE[:force] with MODE one of '
                      + ", ".join(NET_MODES) + f' and IFACE a card or "{DEFAULT_ROUTE_INTERFACE}" '
                      "(the card of the default route)")


def interface_name_problem(name: str) -> Optional[str]:
    """Why the kernel would refuse ``name`` as a network interface name, or None if it is valid."""
    if not name:
        return "the interface name is empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"interface name {name!r} is longer than {IFNAMSIZ - 1} characters"
    if name in (".", ".."):
        return f"{name!r} is not a valid interface name"
    for c in name:
        if c in "/:" or c.isspace() or c == "\0":
            return f"interface name {name!r} contains {c!r}"
    return None


def _netconfig(value: str) -> NetConfig:
    text = value.strip()
    if text == "" or text.lower() == "none":
        return NetConfig(mode="none")
    parts = text.split(":")
    force = False
    if len(parts) > 1 and parts[-1].lower() == "force":
        force = True
        parts = parts[:-1]
    if len(parts) == 1 and parts[0].lower() == "auto":
        return NetConfig(mode="auto", force=force)
    if len(parts) != 2:
        raise _Invalid(_NETCONFIG_ALLOWED)
    interface, mode = parts[0], parts[1].lower()
    if mode not in NET_MODES:
        raise _Invalid(f"unknown mode {parts[1]!r}; {_NETCONFIG_ALLOWED}")
    problem = interface_name_problem(interface)
    if problem:
        raise _Invalid(f"{problem}; {_NETCONFIG_ALLOWED}")
    return NetConfig(mode=mode, interface=interface, force=force)


def format_netconfig(net: NetConfig) -> str:
    """``net`` as written in KDUMP_NETCONFIG."""
    if net.mode == "none":
        text = ""
    elif net.mode == "auto" and not net.interface:
        text = "auto"
    else:
        text = f"{net.interface}:{net.mode}"
    return text + (":force" if net.force else "")


def _word_list(value: str) -> Tuple[str, ...]:
    return tuple(value.split())


_HOST_KEY_ALLOWED = ('must be empty (the key is taken from root\'s known_hosts when the initrd is built), '
                     '"*" (no host key check) or "TYPE BASE64KEY" like "ssh-ed25519 AAAAC3Nza...", '
                     'optionally followed by a comment as in a .pub file')


def _host_key(value: str) -> str:
    words = value.split()
    if not words:
        return ""
    if words == ["*"]:
        return "*"
    if len(words) < 2:
        raise _Invalid(_HOST_KEY_ALLOWED)
    key_type, data = words[0], words[1]   # anything after is the comment of a .pub line (root@host)
    if key_type not in HOST_KEY_TYPES and data in HOST_KEY_TYPES:
        raise _Invalid(f"this looks like a known_hosts line: leave out the host name {key_type!r}; "
                       + _HOST_KEY_ALLOWED)
    if key_type not in HOST_KEY_TYPES:
        raise _Invalid(f"unknown key type {key_type!r} (known: {', '.join(HOST_KEY_TYPES)}); {_HOST_KEY_ALLOWED}")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"the key is not valid base64; {_HOST_KEY_ALLOWED}") from None
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    embedded = blob[4:4 + length] if 0 <= length <= len(blob) - 4 else b""
    if embedded != key_type.encode():
        found = embedded.decode("ascii", "replace") if embedded else "no key type"
        raise _Invalid(f"the key data holds {found!r}, not a {key_type} key; {_HOST_KEY_ALLOWED}")
    return f"{key_type} {data}"


def _savedir(value: str) -> str:
    text = value.strip()
    words = text.split()
    for number, word in enumerate(words, 1):
        try:
            targeturl.parse(word)
        except URLError as exc:
            problem = _url_problem(word, exc)
            if len(words) > 1:
                problem = (f"target {number} of {len(words)}: {problem} (targets are separated by spaces; "
                           "write a space inside a path as %20)")
            raise _Invalid(problem) from None
    return " ".join(words)


def _url_problem(text: str, error: URLError) -> str:
    """The message for a bad URL, computed without the password so it cannot leak."""
    masked = targeturl.mask_password(text)
    if masked == text:
        return str(error)
    try:
        targeturl.parse(masked)
    except URLError as masked_error:
        return str(masked_error)
    if "control character" in str(error):
        return f"{masked!r}: the password contains a control character (a percent-escape like %0A or %0D)"
    return ("the user or password part cannot be read; percent-encode '/', '?', '#', '@' and ':' "
            "in user names and passwords (like %2F for '/')")


def _absolute_path(value: str) -> str:
    text = value.strip()
    if text and not text.startswith("/"):
        raise _Invalid("must be empty or an absolute path")
    return text


def _hostname(value: str) -> str:
    text = value.strip()
    if text and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", text):
        raise _Invalid("must be empty or a host name of at most 64 letters, digits, '.', '-' and '_'")
    return text


def _mount_options(value: str) -> str:
    text = value.strip()
    if any(c.isspace() for c in text):
        raise _Invalid("must be comma-separated mount options without spaces, like \"vers=4.2,proto=tcp\"")
    return text


# --- the option table ------------------------------------------------------------------------------

def _format_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, NetConfig):
        return format_netconfig(value)
    if isinstance(value, tuple):
        return " ".join(value)
    return str(value)


@dataclass(frozen=True)
class Option:
    """One KEY of the file: the Config field it fills and how its text is read."""

    key: str
    field: str
    convert: Callable[[str], Any] = _text
    empty_is_default: bool = False   # KEY="" means the default (numbers, booleans, formats)
    secret: bool = False


OPTIONS: Tuple[Option, ...] = (
    Option("KDUMP_SAVEDIR", "savedir", _savedir, empty_is_default=True),
    Option("KDUMP_DUMPLEVEL", "dumplevel", _integer(0, 31, "makedumpfile -d bits"), empty_is_default=True),
    Option("KDUMP_DUMPFORMAT", "dumpformat", _dumpformat, empty_is_default=True),
    Option("KDUMP_KEEP_OLD_DUMPS", "keep_old_dumps",
           _integer(-1, 100000, "0 keeps all, N keeps N old dumps, -1 deletes all old dumps"), empty_is_default=True),
    Option("KDUMP_FREE_DISK_SIZE", "free_disk_size", _size_mb, empty_is_default=True),
    Option("KDUMP_NETCONFIG", "netconfig", _netconfig),
    Option("KDUMP_NET_TIMEOUT", "net_timeout", _integer(0, 86400, "seconds, 0 = do not wait; at most a day"),
           empty_is_default=True),
    Option("KDUMP_IMMEDIATE_REBOOT", "immediate_reboot", _boolean, empty_is_default=True),
    Option("KDUMP_CONTINUE_ON_ERROR", "continue_on_error", _boolean, empty_is_default=True),
    Option("KDUMP_CPUS", "cpus", _integer(0, 65536, "0 = all"), empty_is_default=True),
    Option("KDUMP_VERBOSE", "verbose", _integer(0, 31, "a bitmask of 1, 2, 4, 8 and 16"), empty_is_default=True),
    Option("KDUMP_PRESCRIPT", "prescript"),
    Option("KDUMP_POSTSCRIPT", "postscript"),
    Option("KDUMP_TRANSFER", "transfer"),
    Option("KDUMP_REQUIRED_PROGRAMS", "required_programs", _word_list),
    Option("KDUMP_SSH_IDENTITY", "ssh_identity", _word_list),
    Option("KDUMP_HOST_KEY", "host_key", _host_key),
    Option("KDUMP_COMMANDLINE", "commandline"),
    Option("KDUMP_COMMANDLINE_APPEND", "commandline_append"),
    Option("KDUMP_KERNELVER", "kernelver"),
    Option("KEXEC_OPTIONS", "kexec_options"),
    Option("MAKEDUMPFILE_OPTIONS", "makedumpfile_options"),
    Option("KDUMP_CRASHKERNEL", "crashkernel"),
    Option("KDUMP_AUTO_RESIZE", "auto_resize", _boolean, empty_is_default=True),
    Option("KDUMP_UPDATE_BOOTLOADER", "update_bootloader", _boolean, empty_is_default=True),
    Option("KDUMP_NOTIFICATION_TO", "notification_to"),
    Option("KDUMP_NOTIFICATION_CC", "notification_cc"),
    Option("KDUMP_SMTP_SERVER", "smtp_server"),
    Option("KDUMP_SMTP_USER", "smtp_user"),
    Option("KDUMP_SMTP_PASSWORD", "smtp_password", secret=True),
    Option("KDUMP_CA_FILE", "ca_file", _absolute_path),
    Option("KDUMP_NFS_OPTIONS", "nfs_options", _mount_options),
    Option("KDUMP_HOSTNAME", "hostname", _hostname),
    Option("KDUMP_KNOWN_HOSTS", "known_hosts", _absolute_path),
)
OPTIONS_BY_KEY: Dict[str, Option] = {option.key: option for option in OPTIONS}

DEPRECATED = {"KDUMP_COPY_KERNEL": "it is deprecated and ignored (the kernel is not copied next to the dump)"}
"""Keys older SUSE versions knew, which are accepted with a warning."""
UNSUPPORTED_FEATURES = {
    "KDUMP_FADUMP": "firmware-assisted dump (POWER) is not supported by kdump-saver; ignored",
    "KDUMP_FADUMP_SHELL": "firmware-assisted dump (POWER) is not supported by kdump-saver; ignored",
}
"""SUSE booleans for features kdump-saver lacks: a warning only when they are switched on."""


# --- reading ---------------------------------------------------------------------------------------

def load(path: Optional[str] = None) -> Config:
    """Read the configuration from ``path``.

    Without a path: :data:`DEFAULT_PATH` if it exists, else :data:`INITRD_PATH`
    if it exists, else the defaults.  A given path that is missing or
    unreadable, and any bad value, raise :class:`ConfigError`."""
    if path is None:
        for candidate in (DEFAULT_PATH, INITRD_PATH):
            if os.path.exists(candidate):
                path = candidate
                break
        else:
            log.debug("neither %s nor %s exists; using the defaults", DEFAULT_PATH, INITRD_PATH)
            return Config()
    try:
        with open(path, "rb") as stream:
            data = stream.read()
            mode = os.fstat(stream.fileno()).st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    loaded = parse_text(data.decode("utf-8", "surrogateescape"), path)
    if mode & 0o077 and has_password(loaded):
        log.warning("%s holds a password but other users may read it (mode %04o); run: chmod 600 %s",
                    path, mode & 0o7777, path)
    return loaded


def has_password(config: Config) -> bool:
    """Whether ``config`` holds a secret: a password in KDUMP_SAVEDIR or KDUMP_SMTP_PASSWORD."""
    if config.smtp_password:
        return True
    try:
        return any(url.password for url in config.targets)
    except URLError:
        return targeturl.masked_text(config.savedir) != config.savedir


def parse_text(text: str, filename: str = "<string>") -> Config:
    """Read a configuration from the text of a file; ``filename`` names it in messages.

    ``Config.source`` is ``filename``, or None for the default ``"<string>"``.
    Raises :class:`ConfigError` listing every bad line and value."""
    parsed = sysconfig.parse(text)
    errors: List[Tuple[int, str]] = [(p.line, f"{filename}:{p.line}: {p.message}") for p in parsed.problems]
    effective: Dict[str, sysconfig.Assignment] = {}
    for assignment in parsed.assignments:
        earlier = effective.pop(assignment.key, None)
        if earlier is not None and assignment.key in OPTIONS_BY_KEY:
            log.warning("%s:%d: %s is set again (first on line %d); the last value counts, as in a shell",
                        filename, assignment.line, assignment.key, earlier.line)
        effective[assignment.key] = assignment
    for name, line in parsed.exported_names:
        log.debug("%s:%d: 'export %s' has no value; ignored", filename, line, name)

    values: Dict[str, Any] = {}
    for key, assignment in sorted(effective.items(), key=lambda item: item[1].line):
        option = OPTIONS_BY_KEY.get(key)
        if option is None:
            _other_key(assignment, filename)
            continue
        if assignment.expands:
            log.warning("%s:%d: %s contains %s; kdump-saver takes the value literally and never runs it, "
                        "but a shell reading this file would expand it",
                        filename, assignment.line, key, " and ".join(repr(e) for e in assignment.expands))
        try:
            values[option.field] = _convert(option, assignment, filename)
        except _Invalid as exc:
            shown = _MASK if option.secret else (targeturl.masked_text(assignment.value) if key == "KDUMP_SAVEDIR"
                                                 else assignment.value)
            if len(shown) > MAX_SHOWN:
                shown = f"{shown[:MAX_SHOWN]}...({len(assignment.value)} characters)"
            errors.append((assignment.line,
                           f"{filename}:{assignment.line}: {key}={sysconfig.quote(shown)}: {exc}"))
    if errors:
        errors.sort(key=lambda item: item[0])
        count = f"{len(errors)} error" + ("s" if len(errors) > 1 else "")
        raise ConfigError(_printable(f"{filename}: {count} in the configuration:") + "\n"
                          + "\n".join(_printable(e) for _, e in errors))
    return Config(**values, source=None if filename == "<string>" else filename)


MAX_SHOWN = 80
"""Characters of a bad value quoted in an error message."""


def _printable(text: str) -> str:
    """``text`` for a one-line message: bytes that were not UTF-8 as ``\\xNN``, control characters escaped."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _convert(option: Option, assignment: sysconfig.Assignment, filename: str) -> Any:
    value = assignment.value
    if "\0" in value:
        raise _Invalid("contains a NUL byte")
    if any("\udc80" <= c <= "\udcff" for c in value):
        raise _Invalid("contains bytes that are not UTF-8")
    if option.empty_is_default and not value.strip():
        default = getattr(Config(), option.field)
        level = logging.INFO if option.key == "KDUMP_SAVEDIR" else logging.DEBUG
        log.log(level, "%s:%d: %s is empty; using the default %s",
                filename, assignment.line, option.key, sysconfig.quote(_format_text(default)))
        return default
    return option.convert(value)


def _other_key(assignment: sysconfig.Assignment, filename: str) -> None:
    key = assignment.key
    where = f"{filename}:{assignment.line}"
    if key in DEPRECATED:
        if assignment.value.strip():
            log.warning("%s: %s: %s", where, key, DEPRECATED[key])
        return
    if key in UNSUPPORTED_FEATURES:
        if BOOLEAN_WORDS.get(assignment.value.strip().lower(), bool(assignment.value.strip())):
            log.warning("%s: %s: %s", where, key, UNSUPPORTED_FEATURES[key])
        return
    if key.upper().startswith("KDUMP_"):
        suffixes = {k[len("KDUMP_"):]: k for k in OPTIONS_BY_KEY if k.startswith("KDUMP_")}
        import difflib  # only for a misspelled option

        close = difflib.get_close_matches(key.upper()[len("KDUMP_"):], suffixes, n=1, cutoff=0.75)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
        log.warning("%s: unknown option %s, ignored%s", where, key, hint)
        return
    log.debug("%s: %s is not a kdump option; ignored", where, key)


# --- writing ---------------------------------------------------------------------------------------

def render(config: Config) -> str:
    """The effective configuration for people: one ``KEY="value"`` line per
    option, with the savedir password and KDUMP_SMTP_PASSWORD shown as ``***``."""
    lines = []
    for option in OPTIONS:
        text = _format_text(getattr(config, option.field))
        if option.key == "KDUMP_SAVEDIR":
            text = targeturl.masked_text(text)
        elif option.secret and text:
            text = _MASK
        lines.append(f"{option.key}={sysconfig.quote(text)}")
    return "\n".join(lines) + "\n"


def serialize(config: Config) -> str:
    """Every option of ``config``, unmasked, in the file syntax; :func:`parse_text` reads back an
    equal Config (apart from ``source``).  Raises :class:`ConfigError` if a value cannot be
    written so (e.g. a list item with a space)."""
    lines = ["# kdump-saver configuration, normalized (every option, defaults included)"]
    for option in OPTIONS:
        lines.append(f"{option.key}={sysconfig.quote(_format_text(getattr(config, option.field)))}")
    text = "\n".join(lines) + "\n"
    readback = dataclasses.replace(parse_text(text, "<serialized configuration>"), source=config.source)
    if readback != config:
        wrong = [option.key for option in OPTIONS
                 if getattr(readback, option.field) != getattr(config, option.field)]
        raise ConfigError("the configuration cannot be written to a file and read back unchanged: "
                          + ", ".join(wrong))
    return text
