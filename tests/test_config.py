"""The configuration: SUSE's /etc/sysconfig/kdump read without a shell, validated, rendered, serialized.

Where the file syntax matters, bash itself is the reference: the same file
is sourced by bash and the values compared with ours.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from capture.config import options as config
from capture.config import sysconfig
from capture.config.options import Config, NetConfig
from capture.errors import ConfigError, KdumpError
from conftest import REPO, require_program

# Modeled on the layout of SUSE's file: fillup headers, long comments, a mix
# of quoted and unquoted values, empty strings, and keys kdump-saver does not use.
SUSE_STYLE = """\
## Path:        System/Kernel/Kdump
## Description: Crash Dump Configuration
#
# This file is sourced by the kdump service and by kdump-saver.  Change the
# values below and restart kdump.service.

## Type:        string
## Default:     ""
## ServiceRestart: kdump
#
# Kernel Version string for the -kdump kernel. Empty means the running kernel.
#
KDUMP_KERNELVER=""

## Type:        integer
## Default:     32
#
# Number of CPUs for the kdump environment (nr_cpus=); 0 uses them all.
#
KDUMP_CPUS=4

## Type:        string
## Default:     ""
#
# Arguments passed to kexec.
#
KEXEC_OPTIONS=""

## Type:        string
## Default:     ""
#
# Command line for the kdump kernel.  If empty, it is built automatically.
#
KDUMP_COMMANDLINE=""

## Type:        string
## Default:     ""
#
# Appended to the automatic command line.
#
KDUMP_COMMANDLINE_APPEND="cio_ignore=all,!da5d,!f500-f502 nokaslr"

## Type:        yesno
## Default:     "true"
#
# Reboot when the dump has been saved.
#
KDUMP_IMMEDIATE_REBOOT="yes"

## Type:        string
## Default:     ""
#
# A program to run instead of the built-in save.
#
KDUMP_TRANSFER=""

## Type:        string
## Default:     "/var/crash"
#
# Where to save dumps: a path or a URL (file, ftp, sftp, ssh, nfs, cifs).
# Example: ftp://user:password@host:21/var/crash
#
KDUMP_SAVEDIR="sftp://dumper@127.0.0.1:2222/srv/crash"

## Type:        integer
## Default:     0
#
# How many old dumps to keep; 0 keeps all, -1 deletes all.
#
KDUMP_KEEP_OLD_DUMPS=5

## Type:        integer
## Default:     64
#
# Megabytes that must stay free on the target.
#
KDUMP_FREE_DISK_SIZE=128

## Type:        integer
## Default:     0
#
# Bitmask: 1 command line, 2 progress, 4 kexec, 8 debug.
#
KDUMP_VERBOSE=3

## Type:        integer(0:31)
## Default:     31
#
# Pages to leave out of the dump (makedumpfile -d).
#
KDUMP_DUMPLEVEL=31

## Type:        list(none,ELF,compressed,lzo,snappy,zstd,raw)
## Default:     "compressed"
#
# The dump format.
#
KDUMP_DUMPFORMAT="lzo"

## Type:        yesno
## Default:     "true"
#
# Go on (reboot) after an error instead of opening a shell.
#
KDUMP_CONTINUE_ON_ERROR="true"

## Type:        string
## Default:     ""
#
# Extra programs for the kdump initrd.
#
KDUMP_REQUIRED_PROGRAMS="/usr/bin/ethtool  /usr/sbin/ss"

## Type:        string
## Default:     ""
#
# Scripts run before and after the dump is saved.
#
KDUMP_PRESCRIPT=""
KDUMP_POSTSCRIPT='logger -t kdump "dump saved"'

## Type:        string
## Default:     "auto"
#
# Network: auto, or INTERFACE:MODE with MODE static, dhcp, dhcp4, dhcp6, auto6.
#
KDUMP_NETCONFIG="eth1:static"

## Type:        integer
## Default:     30
#
# Seconds to wait for the network.
#
KDUMP_NET_TIMEOUT=30

## Type:        string
## Default:     ""
#
# Notification by e-mail after the reboot.
#
KDUMP_SMTP_SERVER="mail.example.org"
KDUMP_SMTP_USER="kdump"
KDUMP_SMTP_PASSWORD="Sm7p-Secret"
KDUMP_NOTIFICATION_TO="root@example.org admin@example.org"
KDUMP_NOTIFICATION_CC=""

## Type:        string
## Default:     ""
#
# SSH keys used to log into the target, and the target's host key.
#
KDUMP_SSH_IDENTITY="/root/.ssh/kdump_key"
KDUMP_HOST_KEY=""

## Type:        string
## Default:     "auto"
#
# The crashkernel reservation.
#
KDUMP_CRASHKERNEL="auto"

## Type:        yesno
## Default:     "false"
#
KDUMP_AUTO_RESIZE=no

## Type:        yesno
## Default:     "false"
#
# Firmware-assisted dump (POWER only).
#
KDUMP_FADUMP="false"
KDUMP_FADUMP_SHELL="false"

## Type:        string
## Default:     ""
#
# Extra options for makedumpfile.
#
MAKEDUMPFILE_OPTIONS="--message-level 23"
KDUMPTOOL_FLAGS=""
"""

SUSE_EXPECTED = Config(
    savedir="sftp://dumper@127.0.0.1:2222/srv/crash",
    dumplevel=31,
    dumpformat="lzo",
    keep_old_dumps=5,
    free_disk_size=128,
    netconfig=NetConfig(mode="static", interface="eth1", force=False),
    net_timeout=30,
    immediate_reboot=True,
    continue_on_error=True,
    cpus=4,
    verbose=3,
    prescript="",
    postscript='logger -t kdump "dump saved"',
    transfer="",
    required_programs=("/usr/bin/ethtool", "/usr/sbin/ss"),
    ssh_identity=("/root/.ssh/kdump_key",),
    host_key="",
    commandline="",
    commandline_append="cio_ignore=all,!da5d,!f500-f502 nokaslr",
    kernelver="",
    kexec_options="",
    makedumpfile_options="--message-level 23",
    crashkernel="auto",
    auto_resize=False,
    notification_to="root@example.org admin@example.org",
    notification_cc="",
    smtp_server="mail.example.org",
    smtp_user="kdump",
    smtp_password="Sm7p-Secret",
)

KDUMP_SAVER = REPO / ".venv" / "bin" / "kdump-saver"


def write(tmp_path: Path, text: str, name: str = "kdump") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def bash_values(path: Path, keys: List[str]) -> Dict[str, str]:
    """What bash gets for ``keys`` when it sources ``path`` (only for files known to be harmless)."""
    bash = require_program("bash")
    script = '. "$1" || exit 99; shift; for k; do printf "%s\\0" "${!k}"; done'
    out = subprocess.run([bash, "-c", script, "bash", str(path), *keys],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]})
    assert out.stderr == b"", out.stderr
    return dict(zip(keys, out.stdout.decode().split("\0")[:-1]))


def config_error(text: str, filename: str = "/etc/sysconfig/kdump") -> str:
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, filename)
    return str(info.value)


# --- a real-looking SUSE file ------------------------------------------------------------------------

def test_suse_style_file_reads_unchanged_without_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, SUSE_STYLE)
    path.chmod(0o600)     # it holds the SMTP password
    with caplog.at_level(logging.WARNING):
        loaded = config.load(str(path))
    assert loaded == dataclasses.replace(SUSE_EXPECTED, source=str(path))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_suse_style_file_values_equal_what_bash_sources(tmp_path: Path) -> None:
    path = write(tmp_path, SUSE_STYLE)
    keys = [a.key for a in sysconfig.parse(SUSE_STYLE).assignments]
    assert len(keys) == 32
    expected = bash_values(path, keys)
    ours = {a.key: a.value for a in sysconfig.parse(SUSE_STYLE).assignments}
    assert ours == expected


def test_defaults_match_suse() -> None:
    default = config.parse_text("")
    assert default == Config()
    assert (default.savedir, default.dumplevel, default.dumpformat, default.keep_old_dumps,
            default.free_disk_size, default.netconfig, default.net_timeout, default.immediate_reboot,
            default.continue_on_error, default.cpus, default.verbose, default.crashkernel,
            default.auto_resize) == (
        "/var/crash", 31, "compressed", 0, 64, NetConfig("auto", "", False), 30, True, True, 32, 0,
        "auto", False)


def test_every_config_field_has_exactly_one_key() -> None:
    fields = {f.name for f in dataclasses.fields(Config)} - {"source"}
    assert sorted(o.field for o in config.OPTIONS) == sorted(fields)
    assert len(config.OPTIONS_BY_KEY) == len(config.OPTIONS)


def test_empty_values_mean_the_default_for_typed_options() -> None:
    text = "\n".join(f'{o.key}=""' for o in config.OPTIONS if o.empty_is_default) + "\n"
    assert config.parse_text(text) == Config()


def test_empty_netconfig_means_no_network() -> None:
    assert config.parse_text('KDUMP_NETCONFIG=""').netconfig == NetConfig(mode="none")


# --- quoting: the same values as bash --------------------------------------------------------------

QUOTING_CASES = [
    ('V=plain', "plain"),
    ('V="double quoted value"', "double quoted value"),
    ("V='single quoted value'", "single quoted value"),
    ('V=""', ""),
    ("V=''", ""),
    ('V=', ""),
    ('V="a"\'b\'c', "abc"),
    ('V="it\'s"', "it's"),
    ("V='say \"hi\"'", 'say "hi"'),
    ('V="a\\"b"', 'a"b'),
    ('V="back\\\\slash"', "back\\slash"),
    ('V="keep\\n\\t\\x"', "keep\\n\\t\\x"),
    ("V='no\\escape'", "no\\escape"),
    ('V=a\\ b', "a b"),
    ('V=a\\"b', 'a"b'),
    ('V=\\$HOME', "$HOME"),
    ('V="\\$HOME"', "$HOME"),
    ("V='$HOME'", "$HOME"),
    ('V=a#b', "a#b"),
    ('V=value # comment', "value"),
    ('V="value" # comment "with quotes', "value"),
    ('V="# not a comment"', "# not a comment"),
    ('V=a=b=c', "a=b=c"),
    ('V="x;y|z&w<>()"', "x;y|z&w<>()"),
    ('V="multi\nline"', "multi\nline"),
    ("V='multi\nline'", "multi\nline"),
    ('V="contin\\\nued"', "continued"),
    ('V=contin\\\nued', "continued"),
    ('export V="exported"', "exported"),
    ('   V="indented"   ', "indented"),
    ('\tV=tab\t# comment', "tab"),
    ('W=1 V=two', "two"),
    ('W=1; V=semi', "semi"),
    ('V="ünïcödé ✓"', "ünïcödé ✓"),
    ('V=first\nV=second', "second"),
]


@pytest.mark.parametrize("text,value", QUOTING_CASES, ids=[c[0] for c in QUOTING_CASES])
def test_quoting_matches_bash(tmp_path: Path, text: str, value: str) -> None:
    path = write(tmp_path, text + "\n")
    assert bash_values(path, ["V"])["V"] == value, "the expected value itself is wrong"
    assignment = sysconfig.find_assignment(sysconfig.parse(text + "\n"), "V")
    assert assignment is not None
    assert assignment.value == value
    assert config.parse_text(f"{text.replace('V=', 'KDUMP_PRESCRIPT=')}\n").prescript == value


def test_crlf_line_endings_and_bom_are_tolerated() -> None:
    text = '\ufeffKDUMP_DUMPLEVEL=1\r\nKDUMP_SAVEDIR="/srv/dumps"\r\n# comment\r\n'
    loaded = config.parse_text(text)
    assert (loaded.dumplevel, loaded.savedir) == (1, "/srv/dumps")


def test_line_numbers_count_multiline_values() -> None:
    text = 'KDUMP_PRESCRIPT="one\ntwo\nthree"\nKDUMP_DUMPLEVEL=99\n'
    assert "/etc/sysconfig/kdump:4: KDUMP_DUMPLEVEL=\"99\"" in config_error(text)


SYNTAX_ERRORS = [
    ('KDUMP_DUMPLEVEL = 31', "no spaces are allowed around '='"),
    ('KDUMP_DUMPLEVEL =31', "no spaces are allowed around '='"),
    ('KDUMP_SAVEDIR=/var/crash dir', "the value of KDUMP_SAVEDIR continues after an unquoted space"),
    ('KDUMP_SAVEDIR= /var/crash', "the value of KDUMP_SAVEDIR continues after an unquoted space"),
    ('KDUMP_CPUS=1 KDUMP_DUMPLEVEL=3 x', "the value of KDUMP_DUMPLEVEL continues after an unquoted space"),
    ('rm -rf /tmp/never', "'rm' is not a KEY=value assignment"),
    ('KDUMP_PRESCRIPT=a|b', "unquoted '|'"),
    ('KDUMP_PRESCRIPT=a&&b', "unquoted '&'"),
    ('KDUMP_PRESCRIPT=a>/tmp/out', "unquoted '>'"),
    ('KDUMP_PRESCRIPT="never closed', 'double quote (") opened here is never closed'),
    ("KDUMP_PRESCRIPT='never closed", "single quote (') opened here is never closed"),
    ("KDUMP_PRESCRIPT=`never closed", "backtick (`) opened here is never closed"),
]


@pytest.mark.parametrize("line,message", SYNTAX_ERRORS, ids=[c[0] for c in SYNTAX_ERRORS])
def test_syntax_errors_name_file_and_line(line: str, message: str) -> None:
    error = config_error(f"# header\n{line}\nKDUMP_CPUS=1\n", "/etc/sysconfig/kdump")
    assert f"/etc/sysconfig/kdump:2: " in error
    assert message in error


def test_syntax_errors_do_not_show_the_rest_of_a_password() -> None:
    error = config_error("KDUMP_SMTP_PASSWORD=first half-of-secret\n")
    assert "half-of-secret" not in error
    assert "/etc/sysconfig/kdump:1: the value of KDUMP_SMTP_PASSWORD continues after an unquoted space" in error


def test_statement_with_syntax_error_sets_nothing() -> None:
    parsed = sysconfig.parse("KDUMP_SAVEDIR=/a b\nKDUMP_CPUS=2\n")
    assert [(a.key, a.value) for a in parsed.assignments] == [("KDUMP_CPUS", "2")]
    assert [p.line for p in parsed.problems] == [1]


# --- nothing is ever executed ----------------------------------------------------------------------

def test_command_substitutions_are_never_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker1, marker2, marker3 = (tmp_path / f"executed{i}" for i in (1, 2, 3))
    text = (f"KDUMP_PRESCRIPT=$(touch {marker1})\n"
            f'KDUMP_POSTSCRIPT="`touch {marker2}`"\n'
            f"KDUMP_TRANSFER=\"$(touch {marker3}) $HOME\"\n")
    path = write(tmp_path, text)
    with caplog.at_level(logging.WARNING):
        loaded = config.load(str(path))
    assert not marker1.exists() and not marker2.exists() and not marker3.exists()
    assert loaded.prescript == f"$(touch {marker1})"
    assert loaded.postscript == f"`touch {marker2}`"
    assert loaded.transfer == f"$(touch {marker3}) $HOME"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{path}:1: KDUMP_PRESCRIPT contains '$('" in w for w in warnings), warnings
    assert any(f"{path}:2: KDUMP_POSTSCRIPT contains '`'" in w for w in warnings), warnings
    assert any(f"{path}:3: KDUMP_TRANSFER contains '$(' and '$NAME'" in w for w in warnings), warnings
    # the same file does run commands when a shell sources it: the test above can fail
    bash_values(path, ["KDUMP_PRESCRIPT"])
    assert marker1.exists() and marker2.exists() and marker3.exists()


def test_single_quoted_substitution_is_literal_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = config.parse_text("KDUMP_PRESCRIPT='echo $(date) `id` $HOME'\n")
    assert loaded.prescript == "echo $(date) `id` $HOME"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- bad values --------------------------------------------------------------------------------------

BAD_VALUES = [
    ("KDUMP_DUMPLEVEL", "32", "must be an integer from 0 to 31"),
    ("KDUMP_DUMPLEVEL", "-1", "must be an integer from 0 to 31"),
    ("KDUMP_DUMPLEVEL", "thirty", "must be an integer from 0 to 31"),
    ("KDUMP_DUMPLEVEL", "0x1f", "must be an integer from 0 to 31"),
    ("KDUMP_DUMPFORMAT", "gzip", "must be one of none, elf, compressed, lzo, snappy, zstd, raw"),
    ("KDUMP_KEEP_OLD_DUMPS", "-2", "must be an integer from -1 to 100000"),
    ("KDUMP_KEEP_OLD_DUMPS", "5.5", "must be an integer from -1 to 100000"),
    ("KDUMP_FREE_DISK_SIZE", "64X", "must be a size in MB"),
    ("KDUMP_FREE_DISK_SIZE", "-1", "must be a size in MB"),
    ("KDUMP_FREE_DISK_SIZE", "64B", "must be a size in MB"),
    ("KDUMP_NET_TIMEOUT", "-5", "must be an integer from 0 to 86400"),
    ("KDUMP_CPUS", "-1", "must be an integer from 0 to 65536"),
    ("KDUMP_CPUS", "all", "must be an integer from 0 to 65536"),
    ("KDUMP_VERBOSE", "32", "must be an integer from 0 to 31"),
    ("KDUMP_IMMEDIATE_REBOOT", "maybe", "must be a boolean: true/false, yes/no, 1/0 or on/off"),
    ("KDUMP_CONTINUE_ON_ERROR", "2", "must be a boolean"),
    ("KDUMP_AUTO_RESIZE", "y", "must be a boolean"),
    ("KDUMP_NETCONFIG", "eth0:bogus", "unknown mode 'bogus'"),
    ("KDUMP_NETCONFIG", "eth0", 'must be "auto", "auto:force", "" (no network) or IFACE:MODE[:force]'),
    ("KDUMP_NETCONFIG", "auto:forced", 'must be "auto"'),
    ("KDUMP_NETCONFIG", "eth0:dhcp:force:x", 'must be "auto"'),
    ("KDUMP_NETCONFIG", ":dhcp", "the interface name is empty"),
    ("KDUMP_NETCONFIG", "averyverylongname:dhcp", "longer than 15 characters"),
    ("KDUMP_NETCONFIG", "eth/0:dhcp", "contains '/'"),
    ("KDUMP_NETCONFIG", "eth 0:dhcp", "contains ' '"),
    ("KDUMP_NETCONFIG", "..:dhcp", "not a valid interface name"),
    ("KDUMP_SAVEDIR", "var/crash", "neither an absolute path nor a URL"),
    ("KDUMP_SAVEDIR", "gopher://host/x", "unknown scheme 'gopher'"),
    ("KDUMP_SAVEDIR", "sftp:///nohost", "needs a host"),
    ("KDUMP_SAVEDIR", "/var/../etc", "'..' is not allowed"),
    ("KDUMP_HOST_KEY", "ssh-foo AAAA", "unknown key type 'ssh-foo'"),
    ("KDUMP_HOST_KEY", "ssh-ed25519 not*base64", "not valid base64"),
    ("KDUMP_HOST_KEY", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQ==", "holds 'ssh-rsa', not a ssh-ed25519 key"),
    ("KDUMP_HOST_KEY", "host.example.org ssh-ed25519 AAAA", 'or "TYPE BASE64KEY"'),
    ("KDUMP_HOST_KEY", "* *", '"*" (no host key check)'),
    ("KDUMP_CA_FILE", "certs/ca.pem", "must be empty or an absolute path"),
    ("KDUMP_KNOWN_HOSTS", "~/.ssh/known_hosts", "must be empty or an absolute path"),
    ("KDUMP_NFS_OPTIONS", "vers=4.2, proto=tcp", "without spaces"),
    ("KDUMP_HOSTNAME", "web/01", "must be empty or a host name"),
]


@pytest.mark.parametrize("key,value,allowed", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_value_names_file_line_key_value_and_what_is_allowed(key: str, value: str, allowed: str) -> None:
    text = f"# kdump\n\n{key}={sysconfig.quote(value)}\n"
    error = config_error(text, "/etc/sysconfig/kdump")
    assert f"/etc/sysconfig/kdump:3: {key}={sysconfig.quote(value)}: " in error
    assert allowed in error
    assert "1 error in the configuration" in error


def test_all_errors_of_a_file_are_reported_together() -> None:
    text = ("KDUMP_DUMPLEVEL=40\n"
            "KDUMP_CPUS=4\n"
            "KDUMP_DUMPFORMAT=gzip\n"
            "KDUMP_SAVEDIR=a b\n"
            "KDUMP_IMMEDIATE_REBOOT=sometimes\n")
    error = config_error(text, "F")
    lines = error.splitlines()
    assert lines[0] == "F: 4 errors in the configuration:"
    assert [line.split(":")[1] for line in lines[1:]] == ["1", "3", "4", "5"]
    assert error.startswith("F: ") and isinstance(ConfigError(error), KdumpError)


def test_savedir_password_never_appears_in_errors() -> None:
    secret = "Pa55-w0rd"
    for url in (f"ftp://user:{secret}@host:99x/p",      # bad port
                f"ftp://user:{secret}/x@host/p",         # '/' in the password, not percent-encoded
                f"ftp://user:{secret}#z@host/p",         # '#' in the password
                f"nfs://user:{secret}@host/p",           # nfs takes no user
                f"sftp://user:{secret}@[zz]/p"):          # bad IPv6 literal
        error = config_error(f"KDUMP_SAVEDIR='{url}'\n")
        assert "Pa55" not in error and "w0rd" not in error, error
        assert "user:***@" in error, error


@pytest.mark.parametrize("word,value", [
    (w, v) for v, words in ((True, ["true", "TRUE", "True", "yes", "Yes", "YES", "1", "on", "ON", " yes "]),
                            (False, ["false", "FALSE", "no", "No", "0", "off", "Off"]))
    for w in words])
def test_booleans_in_every_spelling(word: str, value: bool) -> None:
    loaded = config.parse_text(f'KDUMP_IMMEDIATE_REBOOT="{word}"\nKDUMP_AUTO_RESIZE="{word}"\n'
                               f'KDUMP_CONTINUE_ON_ERROR="{word}"\n')
    assert (loaded.immediate_reboot, loaded.auto_resize, loaded.continue_on_error) == (value, value, value)


@pytest.mark.parametrize("text,megabytes", [
    ("0", 0), ("64", 64), ("100M", 100), ("100MB", 100), ("512K", 1), ("1025K", 2), ("1024k", 1),
    ("1G", 1024), ("2 GiB", 2048), ("1.5G", 1536), ("1T", 1048576), ("0.5", 1),
])
def test_free_disk_size_units_round_up_to_megabytes(text: str, megabytes: int) -> None:
    assert config.parse_text(f'KDUMP_FREE_DISK_SIZE="{text}"').free_disk_size == megabytes


@pytest.mark.parametrize("text,net", [
    ("auto", NetConfig("auto", "", False)),
    ("AUTO", NetConfig("auto", "", False)),
    ("auto:force", NetConfig("auto", "", True)),
    ("", NetConfig("none", "", False)),
    ("none", NetConfig("none", "", False)),
    ("eth0:dhcp", NetConfig("dhcp", "eth0", False)),
    ("eth0:DHCP4", NetConfig("dhcp4", "eth0", False)),
    ("enp0s31f6:dhcp6:force", NetConfig("dhcp6", "enp0s31f6", True)),
    ("bond0.100:static", NetConfig("static", "bond0.100", False)),
    ("wlp3s0:auto6", NetConfig("auto6", "wlp3s0", False)),
    ("abcdefghijklmno:dhcp", NetConfig("dhcp", "abcdefghijklmno", False)),
])
def test_netconfig_forms(text: str, net: NetConfig) -> None:
    loaded = config.parse_text(f'KDUMP_NETCONFIG="{text}"')
    assert loaded.netconfig == net
    assert config.parse_text(f'KDUMP_NETCONFIG="{config.format_netconfig(net)}"').netconfig == net


def test_dumpformat_any_case_is_normalized() -> None:
    for given, normal in (("ELF", "elf"), ("Compressed", "compressed"), ("LZO", "lzo"), ("none", "none"),
                          ("snappy", "snappy"), ("ZSTD", "zstd"), ("raw", "raw")):
        assert config.parse_text(f"KDUMP_DUMPFORMAT={given}").dumpformat == normal


def test_lists_split_on_any_whitespace() -> None:
    loaded = config.parse_text('KDUMP_SSH_IDENTITY=" /root/.ssh/a\t/root/.ssh/b\n/root/.ssh/c "\n'
                               'KDUMP_REQUIRED_PROGRAMS=""\n')
    assert loaded.ssh_identity == ("/root/.ssh/a", "/root/.ssh/b", "/root/.ssh/c")
    assert loaded.required_programs == ()


def test_real_host_keys_are_accepted(tmp_path: Path) -> None:
    keygen = require_program("ssh-keygen")
    for key_type, bits in (("ed25519", []), ("ecdsa", ["-b", "384"]), ("rsa", ["-b", "2048"])):
        key = tmp_path / key_type
        subprocess.run([keygen, "-q", "-t", key_type, *bits, "-N", "", "-f", str(key)], check=True)
        public = key.with_suffix(".pub").read_text().split()
        value = f"{public[0]}   {public[1]}"
        assert config.parse_text(f'KDUMP_HOST_KEY="{value}"').host_key == f"{public[0]} {public[1]}"
        # the same blob under another type name is rejected
        wrong = "ssh-dss" if key_type != "rsa" else "ssh-ed25519"
        assert "not a " + wrong in config_error(f'KDUMP_HOST_KEY="{wrong} {public[1]}"')
    assert config.parse_text('KDUMP_HOST_KEY="*"').host_key == "*"


def test_non_utf8_bytes_only_matter_in_values(tmp_path: Path) -> None:
    path = tmp_path / "kdump"
    path.write_bytes(b"# Kommentar mit \xfc (latin-1)\nKDUMP_DUMPLEVEL=1\n")
    assert config.load(str(path)).dumplevel == 1
    path.write_bytes(b"KDUMP_CPUS=1\nKDUMP_PRESCRIPT=\"gr\xfc\xdfe\"\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert f'{path}:2: KDUMP_PRESCRIPT="gr\\xfc\\xdfe": contains bytes that are not UTF-8' in str(info.value)
    str(info.value).encode("utf-8")     # printable on a UTF-8 console


def test_error_lines_stay_one_line_each() -> None:
    error = config_error('KDUMP_DUMPLEVEL="3\n1"\nKDUMP_CPUS="\t-1"\n')
    assert error.splitlines()[1:] == [
        '/etc/sysconfig/kdump:1: KDUMP_DUMPLEVEL="3\\n1": must be an integer from 0 to 31 (makedumpfile -d bits)',
        '/etc/sysconfig/kdump:3: KDUMP_CPUS="\\t-1": must be an integer from 0 to 65536 (0 = all)']


# --- keys: unknown, deprecated, not ours -----------------------------------------------------------

def warnings_for(text: str, caplog: pytest.LogCaptureFixture) -> List[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="capture.config.options"):
        config.parse_text(text, "/etc/sysconfig/kdump")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_unknown_kdump_key_is_a_warning_with_a_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    warnings = warnings_for("# x\nKDUMP_SAVE_DIR=/srv\n", caplog)
    assert warnings == ["/etc/sysconfig/kdump:2: unknown option KDUMP_SAVE_DIR, ignored; "
                        "did you mean KDUMP_SAVEDIR?"]
    assert warnings_for("KDUMP_FROBNICATE=1\n", caplog) == [
        "/etc/sysconfig/kdump:1: unknown option KDUMP_FROBNICATE, ignored"]


def test_other_variables_are_ignored_quietly(caplog: pytest.LogCaptureFixture) -> None:
    assert warnings_for("PATH=/bin\nKDUMPTOOL_FLAGS=\nexport LANG\nMAKEDUMPFILE_OPTIONS=-D\n", caplog) == []
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "/etc/sysconfig/kdump:1: PATH is not a kdump option; ignored" in debug


def test_deprecated_and_unsupported_keys(caplog: pytest.LogCaptureFixture) -> None:
    assert warnings_for('KDUMP_COPY_KERNEL="yes"\n', caplog) == [
        "/etc/sysconfig/kdump:1: KDUMP_COPY_KERNEL: it is deprecated and ignored "
        "(the kernel is not copied next to the dump)"]
    assert warnings_for('KDUMP_FADUMP="false"\n', caplog) == []
    assert "not supported" in warnings_for('KDUMP_FADUMP="yes"\n', caplog)[0]


def test_a_repeated_key_warns_and_the_last_value_counts(caplog: pytest.LogCaptureFixture) -> None:
    warnings = warnings_for("KDUMP_CPUS=1\nKDUMP_CPUS=2\n", caplog)
    assert warnings == ["/etc/sysconfig/kdump:2: KDUMP_CPUS is set again (first on line 1); "
                        "the last value counts, as in a shell"]
    assert config.parse_text("KDUMP_CPUS=1\nKDUMP_CPUS=2\n").cpus == 2


# --- load ------------------------------------------------------------------------------------------

def test_load_without_path_prefers_sysconfig_then_initrd_then_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysconfig_path, initrd_path = tmp_path / "sysconfig-kdump", tmp_path / "kdump.conf"
    monkeypatch.setattr(config, "DEFAULT_PATH", str(sysconfig_path))
    monkeypatch.setattr(config, "INITRD_PATH", str(initrd_path))
    assert config.load() == Config()
    initrd_path.write_text("KDUMP_CPUS=2\n")
    assert config.load() == Config(cpus=2, source=str(initrd_path))
    sysconfig_path.write_text("KDUMP_CPUS=3\n")
    assert config.load() == Config(cpus=3, source=str(sysconfig_path))


def test_load_of_a_missing_or_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothere: cannot read the configuration: No such file"):
        config.load(str(tmp_path / "nothere"))
    with pytest.raises(ConfigError, match="cannot read the configuration: Is a directory"):
        config.load(str(tmp_path))


def test_load_warns_when_a_file_with_a_password_is_readable_by_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, 'KDUMP_SAVEDIR="ftp://u:Ft9-Secret@127.0.0.1/d"\n')
    for mode, warned in ((0o644, True), (0o640, True), (0o600, False)):
        path.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            config.load(str(path))
        messages = [r.getMessage() for r in caplog.records]
        assert (f"{path} holds a password but other users may read it (mode {mode:04o}); "
                f"run: chmod 600 {path}" in messages) == warned, messages
        assert not any("Ft9-Secret" in m for m in messages)
    path.write_text('KDUMP_SAVEDIR="ftp://u@127.0.0.1/d"\n')
    path.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        config.load(str(path))
    assert caplog.records == []


# --- render and serialize --------------------------------------------------------------------------

def test_render_masks_passwords_and_lists_every_option() -> None:
    loaded = config.parse_text('KDUMP_SAVEDIR="ftp://dumper:Ft9-Secret@127.0.0.1:2121/dumps"\n'
                               'KDUMP_SMTP_PASSWORD="Sm7p-Secret"\n')
    shown = config.render(loaded)
    assert "Ft9-Secret" not in shown and "Sm7p-Secret" not in shown
    assert 'KDUMP_SAVEDIR="ftp://dumper:***@127.0.0.1:2121/dumps"' in shown.splitlines()
    assert 'KDUMP_SMTP_PASSWORD="***"' in shown.splitlines()
    assert [line.split("=", 1)[0] for line in shown.splitlines()] == [o.key for o in config.OPTIONS]
    assert 'KDUMP_SMTP_PASSWORD=""' in config.render(Config()).splitlines()


def test_render_without_secrets_reads_back_equal() -> None:
    loaded = dataclasses.replace(SUSE_EXPECTED, smtp_password="")
    assert config.parse_text(config.render(loaded)) == loaded


NASTY = Config(
    savedir="cifs://DOM%3Buser:p%40ss%22w0rd@[::1]:4450/share/dumps%20dir",
    dumplevel=0, dumpformat="elf", keep_old_dumps=-1, free_disk_size=0,
    netconfig=NetConfig("dhcp6", "eth-0.1", True), net_timeout=0,
    immediate_reboot=False, continue_on_error=False, cpus=0, verbose=15,
    prescript='echo "$(date)" `id` $HOME \\ end\n second line',
    postscript="it's 'quoted' # not a comment ; | & > <",
    transfer="\\\\server\\share\\",
    required_programs=("/usr/bin/a", "b"), ssh_identity=("/root/.ssh/id_ed25519",),
    host_key="*", commandline="console=ttyS0 quiet", commandline_append='x="y z"',
    kernelver="6.1.0-28-cloud-amd64", kexec_options="-s", makedumpfile_options="--cyclic-buffer 1024",
    crashkernel="", auto_resize=True, notification_to="a@b", notification_cc="c@d",
    smtp_server="127.0.0.1:25", smtp_user="u", smtp_password='p"w$`\\\'',
    ca_file="/etc/ssl/ca.pem", nfs_options="vers=4.2,proto=tcp", hostname="web-01.example",
    known_hosts="/root/.ssh/known_hosts",
)


@pytest.mark.parametrize("original", [Config(), SUSE_EXPECTED, NASTY], ids=["defaults", "suse", "nasty"])
def test_serialize_round_trips(tmp_path: Path, original: Config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        text = config.serialize(original)
        assert config.parse_text(text) == original
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    # bash reads the same strings, so the file is safe to source as well
    path = write(tmp_path, text)
    keys = [o.key for o in config.OPTIONS]
    ours = {a.key: a.value for a in sysconfig.parse(text).assignments}
    assert bash_values(path, keys) == ours


def test_serialize_refuses_what_cannot_be_read_back() -> None:
    with pytest.raises(ConfigError, match="KDUMP_SSH_IDENTITY"):
        config.serialize(Config(ssh_identity=("/root/my key",)))
    with pytest.raises(ConfigError, match="KDUMP_DUMPLEVEL"):
        config.serialize(Config(dumplevel=99))


# --- the command line ------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KDUMP_SAVER), *args], capture_output=True, text=True, timeout=60)


def test_cli_check_config_prints_the_masked_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, SUSE_STYLE.replace(
        'KDUMP_SAVEDIR="sftp://dumper@127.0.0.1:2222/srv/crash"',
        'KDUMP_SAVEDIR="sftp://dumper:Sft9-Secret@127.0.0.1:2222/srv/crash"'))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "Sft9-Secret" not in result.stdout + result.stderr
    assert "Sm7p-Secret" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert 'KDUMP_SAVEDIR="sftp://dumper:***@127.0.0.1:2222/srv/crash"' in lines
    assert 'KDUMP_SMTP_PASSWORD="***"' in lines
    assert 'KDUMP_DUMPFORMAT="lzo"' in lines and 'KDUMP_NETCONFIG="eth1:static"' in lines
    assert "configuration is valid" in result.stderr


def test_cli_check_config_reports_every_error_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "# bad\nKDUMP_DUMPLEVEL=77\nKDUMP_SAVEDIR='ftp://u:Ft9-Secret@host:x/p'\n"
                           "KDUMP_NETCONFIG=eth0:dchp\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "Ft9-Secret" not in result.stderr
    assert f"{path}: 3 errors in the configuration:" in result.stderr
    assert f'{path}:2: KDUMP_DUMPLEVEL="77": must be an integer from 0 to 31' in result.stderr
    assert f'{path}:3: KDUMP_SAVEDIR="ftp://u:***@host:x/p": ' in result.stderr
    assert f"{path}:4: KDUMP_NETCONFIG=\"eth0:dchp\": unknown mode 'dchp'" in result.stderr


def test_cli_check_config_on_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "cannot read the configuration: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_check_config_warns_about_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "KDUMP_DUMPLEVL=1\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0
    assert f"{path}:1: unknown option KDUMP_DUMPLEVL, ignored; did you mean KDUMP_DUMPLEVEL?" in result.stderr
    assert 'KDUMP_DUMPLEVEL="31"' in result.stdout.splitlines()
