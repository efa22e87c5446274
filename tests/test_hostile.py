"""Hostile input: every finding of issue 12 point 4, each as the test that failed on the old code.

Configuration and URLs, crafted and damaged dump files (``info``,
``reassemble``), FIFOs, the dump directory, vmcore values on their way into
README/marker/``info``, retention and space failures around a save, and the
ftp transport against a real vsftpd on 127.0.0.1.
"""
from __future__ import annotations

import base64
import json
import mmap
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import lz4.frame
import pytest

import crafted
from capture.config import options, targeturl
from capture.config.options import Config
from capture.errors import ConfigError, DumpFormatError, KdumpError, URLError
from capture.formats import flattened, kdumpfile
from capture.formats.dumpinfo import describe
from capture.save import dumpdir
from capture.save.sequence import read_crashed_kernel, save
from capture.save.space import SpaceLimitReached
from conftest import CACHE, REPO, require, require_program

CLI = [sys.executable, "-m", "capture.cli"]
FIXTURE_HOST = b"fixture-host"
#: the fixture's crash minute (CRASHTIME 1795675891), the name of its dump directory on a local target
FIXTURE_DIR = "2026-11-26-06-51"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kdump"
    path.write_text(text)
    path.chmod(0o600)
    return path


# --- configuration and URLs ------------------------------------------------------------------------

def test_password_of_a_url_without_at_is_never_shown(tmp_path):
    value = "sftp://root:SEKRITPW/var/crash"
    with pytest.raises(URLError) as err:
        targeturl.parse(value)
    assert "SEKRITPW" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        options.parse_text(f'KDUMP_SAVEDIR="{value}"\n', "kdump")
    assert "SEKRITPW" not in str(err.value) and "kdump:1: KDUMP_SAVEDIR=" in str(err.value)
    conf = write_config(tmp_path, f'KDUMP_SAVEDIR="{value}"\n')
    checked = run_cli("check-config", "--config", str(conf))
    assert checked.returncode == 1 and "KDUMP_SAVEDIR" in checked.stderr
    saved = run_cli("save", "--config", str(conf), "--vmcore", "/nonexistent")
    assert saved.returncode == 1
    given = run_cli("save", "--config", str(write_config(tmp_path, "")), "--vmcore", "/nonexistent",
                    "--savedir", value)
    assert given.returncode == 1 and "bad host or port" in given.stderr
    for result in (checked, saved, given):
        assert "SEKRITPW" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key,value", [
    ("KDUMP_CPUS", "9" * 5000),
    ("KDUMP_NET_TIMEOUT", "9" * 20),
    ("KDUMP_NET_TIMEOUT", "86401"),
    ("KDUMP_KEEP_OLD_DUMPS", "1" + "0" * 30),
    ("KDUMP_DUMPLEVEL", "-" + "9" * 4400),
    ("KDUMP_FREE_DISK_SIZE", "9" * 5000),
    ("KDUMP_FREE_DISK_SIZE", "1." + "5" * 5000 + "T"),
    ("KDUMP_FREE_DISK_SIZE", "2048T"),
    ("KDUMP_VERBOSE", "9" * 30),
])
def test_every_number_has_a_sane_range(key, value):
    with pytest.raises(ConfigError) as err:
        options.parse_text(f"# kdump\n{key}={value}\n", "/etc/sysconfig/kdump")
    message = str(err.value)
    assert f"/etc/sysconfig/kdump:2: {key}=" in message
    assert value[:20] in message
    assert "from" in message or "to " in message
    assert all(len(line) < 400 for line in message.splitlines())


def test_numbers_at_the_edges_of_their_ranges_are_accepted():
    config = options.parse_text("KDUMP_NET_TIMEOUT=86400\nKDUMP_CPUS=0\nKDUMP_KEEP_OLD_DUMPS=-1\n"
                                "KDUMP_FREE_DISK_SIZE=1024T\n")
    assert (config.net_timeout, config.cpus, config.keep_old_dumps, config.free_disk_size) == \
        (86400, 0, -1, 1 << 30)


@pytest.mark.parametrize("url,what", [
    ("ftp://127.0.0.1/var/crash%0D%0ADELE%20x", "path"),
    ("ftp://127.0.0.1/a%0Ab", "path"),
    ("sftp://h/a%09b", "path"),
    ("ftp://us%0D%0Aer@127.0.0.1/x", "user"),
    ("ftp://user:pa%0D%0Ass@127.0.0.1/x", "password"),
])
def test_control_characters_in_urls_are_refused_at_parse_time(tmp_path, url, what):
    with pytest.raises(URLError) as err:
        targeturl.parse(url)
    assert f"the {what}" in str(err.value) and "control character" in str(err.value)
    assert "pa%0D" not in str(err.value) or what != "password"
    checked = run_cli("check-config", "--config", str(write_config(tmp_path, f'KDUMP_SAVEDIR="{url}"\n')))
    assert checked.returncode == 1 and "control character" in checked.stderr
    assert "\r" not in checked.stderr


@pytest.mark.parametrize("url,why", [
    ("ftp://" + "a" * 64 + ".example/x", "longer than 63"),
    ("sftp://a..b/x", "empty label"),
    ("ssh://" + ".".join(["abcdefghi"] * 26) + "/x", "longer than 253"),
    ("sftp://[::1]]/x", "[IPv6 address]"),
    ("sftp://[::1]x/x", "[IPv6 address]"),
    ("sftp://::1]/x", "malformed"),
    ("sftp://127.0.0.1%00/x", "not a valid host name"),
    ("ftp://127.0.0.1%2500/x", "not a valid host name"),
    ("ssh://-host/x", "not a valid host name"),
    ("ssh://ho st/x", "not a valid host name"),
    ("sftp://[fe80::1%25eth0%0A]/x", "malformed"),
    ("sftp://[fe80::1%25abcdefghijklmnopq]/x", "interface name"),
])
def test_bad_hosts_are_refused_at_parse_time(url, why):
    with pytest.raises(URLError) as err:
        targeturl.parse(url)
    assert why in str(err.value)


@pytest.mark.parametrize("url,host", [
    ("sftp://dumps.example.com/x", "dumps.example.com"),
    ("ftp://192.0.2.1:2121/x", "192.0.2.1"),
    ("sftp://[::1]:22/x", "::1"),
    ("sftp://[fe80::1%25eth0]/x", "fe80::1%25eth0"),
    ("cifs://my_server/share", "my_server"),
    ("ftp://münchen.example/x", "münchen.example"),
    ("ssh://" + "a" * 63 + ".example./x", "a" * 63 + ".example."),
])
def test_good_hosts_still_parse(url, host):
    assert targeturl.parse(url).host == host


# --- crafted dump files -------------------------------------------------------------------------

def _kdump_header_with(bitmap_blocks: int) -> bytes:
    real = bytearray(crafted.kdump_file([b"\1" * crafted.PAGE]))
    struct.pack_into("<I", real, 436, bitmap_blocks)
    return bytes(real[:2 * crafted.PAGE])


def _describe_bounded(path: Path, limit: int = 64 << 20):
    """describe(), asserting that it allocates less than ``limit`` bytes at its peak."""
    tracemalloc.start()
    try:
        try:
            info = describe(str(path))
        except DumpFormatError as exc:
            info = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"describe took {peak} bytes"
    return info


@pytest.mark.parametrize("bitmap_blocks", [1 << 19, 1 << 23])
def test_flattened_record_far_away_is_not_a_complete_dump(tmp_path, bitmap_blocks):
    path = tmp_path / "crafted.flat"
    path.write_bytes(crafted.flattened([(0, _kdump_header_with(bitmap_blocks)), (1 << 40, b"\0" * 16)]))
    info = _describe_bounded(path)
    assert not isinstance(info, Exception) and not info.complete
    assert any("corrupt record header" in p for p in info.problems), info.problems


def test_kdump_bitmap_beyond_the_file_is_not_read(tmp_path):
    path = tmp_path / "crafted.kdump"
    path.write_bytes(_kdump_header_with(1 << 23))
    info = _describe_bounded(path)
    assert not info.complete and info.dumped_pages is None
    assert any("before the page descriptors" in p for p in info.problems)


def test_reassemble_refuses_a_record_at_15_tib(tmp_path):
    flat = tmp_path / "crafted.flat"
    flat.write_bytes(crafted.flattened([(0, crafted.kdump_file([b"\1" * 4096])), (15 << 40, b"x" * 4096)]))
    out = tmp_path / "vmcore"
    result = run_cli("reassemble", str(flat), str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "corrupt record header" in result.stderr
    assert not out.exists()
    partial = tmp_path / "vmcore.incomplete"
    assert partial.stat().st_size < 1 << 20


def _fields(size: int):
    return [(at, fmt) for at in range(0, size, 4) for fmt in ("<I", "<i")] + \
        [(at, "<q") for at in range(0, size - 7, 8)]


EXTREMES = {"<I": (0, 1, 0xFFFFFFFF, 0x80000000), "<i": (-1, -(1 << 31), (1 << 31) - 1),
            "<q": (-1, 1 << 62, (1 << 63) - 1, -(1 << 63))}


def test_every_kdump_header_field_at_extreme_values_gives_a_clear_answer(tmp_path):
    """Header (0..464) and sub header (4096..4200) of a small real-layout dump, each field
    set to extreme values: describe() answers or raises DumpFormatError, within bounded memory."""
    base = crafted.kdump_file([bytes([i]) * crafted.PAGE for i in range(3)], max_mapnr=64)
    path = tmp_path / "mutant"
    tracemalloc.start()
    try:
        for region_start, size in ((0, kdumpfile.HEADER_SIZE), (crafted.PAGE, kdumpfile.SUB_HEADER_SIZE)):
            for at, fmt in _fields(size):
                for value in EXTREMES[fmt]:
                    mutant = bytearray(base)
                    struct.pack_into(fmt, mutant, region_start + at, value)
                    path.write_bytes(mutant)
                    try:
                        describe(str(path)).format_text()
                    except DumpFormatError:
                        pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_split_range_that_is_backwards_is_refused(tmp_path):
    mutant = bytearray(crafted.kdump_file([b"\1" * crafted.PAGE]))
    struct.pack_into("<i", mutant, crafted.PAGE + 12, 1)          # split
    struct.pack_into("<QQ", mutant, crafted.PAGE + 80, 50, 10)   # start_pfn_64 > end_pfn_64
    (tmp_path / "split").write_bytes(mutant)
    with pytest.raises(DumpFormatError, match="split range"):
        describe(str(tmp_path / "split"))


def flip_bits(data: bytes, count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.fixture(scope="module")
def flat_c31(reference_dumps) -> bytes:
    return reference_dumps.flattened("-c", 31).read_bytes()


@pytest.mark.parametrize("seed", range(4))
def test_twenty_bit_flips_in_a_flat_file_are_not_complete(tmp_path, flat_c31, seed):
    path = tmp_path / "vmcore.flat"
    path.write_bytes(flat_c31)
    assert describe(str(path)).complete
    path.write_bytes(flip_bits(flat_c31, 20, seed))
    try:
        info = describe(str(path))
    except DumpFormatError:
        return
    assert not info.complete


@pytest.fixture(scope="module")
def lz4_dump(reference_dumps) -> bytes:
    data = reference_dumps.direct("-l", 31).read_bytes()
    return lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX4MB, content_checksum=True)


@pytest.mark.parametrize("seed", range(3))
def test_thirty_bit_flips_in_a_vmcore_lz4_are_not_complete(tmp_path, lz4_dump, seed):
    path = tmp_path / "vmcore.lz4"
    path.write_bytes(lz4_dump)
    assert describe(str(path)).complete
    path.write_bytes(flip_bits(lz4_dump, 30, seed))
    try:
        info = describe(str(path))
    except DumpFormatError:
        return
    assert not info.complete


def test_one_flipped_byte_in_lz4_data_breaks_the_content_checksum(tmp_path, lz4_dump):
    damaged = bytearray(lz4_dump)
    damaged[len(damaged) // 2] ^= 0x40
    path = tmp_path / "vmcore.lz4"
    path.write_bytes(damaged)
    info = describe(str(path))
    assert not info.complete and any("lz4 data is damaged" in p for p in info.problems), info.problems


def test_pt_note_offset_of_2_63_is_a_clear_error(tmp_path):
    notes = crafted.elf_note(b"VMCOREINFO", 0, b"OSRELEASE=6.1\n")
    path = tmp_path / "core"
    path.write_bytes(crafted.elf_core(notes, note_offset=1 << 63))
    with pytest.raises(DumpFormatError, match="truncated ELF notes"):
        describe(str(path))
    result = run_cli("info", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_crashtime_of_29_nines_is_no_crash_time(tmp_path, caplog):
    info = crafted.vmcoreinfo_text({"OSRELEASE": "6.1.0-test", "CRASHTIME": "9" * 29, "PAGESIZE": "9" * 5000})
    path = tmp_path / "core"
    path.write_bytes(crafted.elf_core(crafted.elf_note(b"VMCOREINFO", 0, info)))
    described = describe(str(path))
    assert described.crash_time is None and described.page_size is None
    assert "crash time:     unknown" in described.format_text()
    crashed = read_crashed_kernel(str(path))
    assert crashed.release == "6.1.0-test"
    assert "naming the dump after the current clock" in caplog.text


def test_kdump_header_time_stamp_out_of_range_is_no_crash_time(tmp_path):
    mutant = bytearray(crafted.kdump_file([b"\1" * crafted.PAGE], info={"OSRELEASE": "6.1"}))
    struct.pack_into("<q", mutant, 408, (1 << 63) - 1)
    (tmp_path / "k").write_bytes(mutant)
    described = describe(str(tmp_path / "k"))
    assert described.crash_time is None and "crash time:     unknown" in described.format_text()


# --- FIFOs and other files that are no dumps ----------------------------------------------------------

def test_info_and_save_refuse_a_fifo_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    info = run_cli("info", str(fifo), timeout=60)
    assert info.returncode == 1 and "is a FIFO" in info.stderr and "Traceback" not in info.stderr
    saved = run_cli("save", "--config", str(write_config(tmp_path, "")), "--vmcore", str(fifo),
                    "--savedir", str(tmp_path / "out"), timeout=60)
    assert saved.returncode == 1 and "is a FIFO" in saved.stderr and "Traceback" not in saved.stderr


def test_a_character_device_is_refused(tmp_path):
    result = run_cli("info", "/dev/zero", timeout=60)
    assert result.returncode == 1 and "is a character device" in result.stderr


# --- the dump directory -----------------------------------------------------------------------------

def test_a_thousand_dumps_in_the_same_minute_is_a_clear_error(tmp_path, fixture_vmcore, makedumpfile):
    (tmp_path / FIXTURE_DIR).mkdir()
    for seq in range(2, dumpdir.MAX_SEQ + 1):
        (tmp_path / f"{FIXTURE_DIR}.{seq}").mkdir()
    with pytest.raises(KdumpError) as err:
        save(Config(dumpformat="none"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    assert type(err.value) is KdumpError
    assert f"{FIXTURE_DIR}.{dumpdir.MAX_SEQ} all exist" in str(err.value)


FORGED = b"x\nvmcore status: saved successfully"


@pytest.fixture(scope="module")
def forged_vmcore(fixture_vmcore) -> Path:
    """The fixture vmcore with the nodename in its utsname replaced by :data:`FORGED` (cached)."""
    out = CACHE / "vmcore-6.1-forged-nodename.elf"
    if out.exists() and out.stat().st_size == fixture_vmcore.stat().st_size:
        return out
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(fixture_vmcore, tmp)
    patched = 0
    with open(tmp, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        at = m.find(FIXTURE_HOST + b"\0")
        while at >= 0:
            if m[at - 65:at - 59] == b"Linux\0":
                m[at:at + 65] = FORGED.ljust(65, b"\0")
                patched += 1
            at = m.find(FIXTURE_HOST + b"\0", at + 1)
    assert patched >= 1
    tmp.rename(out)
    return out


def test_a_nodename_with_a_newline_forges_no_line(tmp_path, forged_vmcore, makedumpfile):
    result = save(Config(dumpformat="none", keep_old_dumps=0), vmcore=str(forged_vmcore), savedir=str(tmp_path))
    directory = tmp_path / result.directory
    readme = (directory / "README.txt").read_text()
    assert [line for line in readme.splitlines() if line.startswith("vmcore status:")] == \
        ["vmcore status: saved successfully"]
    assert "host: x\\x0avmcore status: saved successfully" in readme
    marker = json.loads((directory / ".kdump-saver").read_text())
    assert "\n" not in marker["host"]
    text = describe(str(forged_vmcore)).format_text()
    assert "\nvmcore status" not in text and "host name:      x\\x0avmcore status" in text
    printed = run_cli("info", str(forged_vmcore))
    assert [line for line in printed.stdout.splitlines() if line.startswith("host name:")] == \
        ["host name:      x\\x0avmcore status: saved successfully"]


def test_a_remote_directory_name_never_carries_what_the_nodename_holds():
    from datetime import datetime, timezone
    when = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    assert dumpdir.base_name(when, "../x\n/y", remote=True) == "_x__y-2026-01-02-03-04"
    assert dumpdir.base_name(when, "", remote=True) == "unknown-2026-01-02-03-04"


# --- retention and space around a save ------------------------------------------------------------------

def test_an_old_dump_that_cannot_be_deleted_leaves_the_save_complete(tmp_path, fixture_vmcore, makedumpfile):
    require(os.geteuid() == 0 and shutil.which("chattr") is not None, "chattr +i needs root and e2fsprogs")
    old = tmp_path / "2020-01-01-00-00"
    old.mkdir()
    from datetime import datetime, timezone
    (old / ".kdump-saver").write_bytes(dumpdir.marker_bytes("fixture-host", datetime.now(timezone.utc), dumpdir.COMPLETE))
    (old / "vmcore").write_bytes(b"old dump")
    made = subprocess.run(["chattr", "+i", str(old / "vmcore")], capture_output=True, text=True)
    require(made.returncode == 0, f"chattr +i does not work here: {made.stderr.strip()}")
    try:
        result = save(Config(dumpformat="none", keep_old_dumps=-1), vmcore=str(fixture_vmcore),
                      savedir=str(tmp_path))
        readme = (tmp_path / result.directory / "README.txt").read_text()
        assert readme.startswith("vmcore status: saved successfully")
        assert [line for line in readme.splitlines()
                if line.startswith("note:") and "2020-01-01-00-00" in line and "could not" in line], readme
        assert (old / "vmcore").exists()
    finally:
        subprocess.run(["chattr", "-i", str(old / "vmcore")], check=False)


def test_an_old_dump_that_cannot_be_deleted_gives_exit_status_0(tmp_path, fixture_vmcore, makedumpfile):
    require(os.geteuid() == 0 and shutil.which("chattr") is not None, "chattr +i needs root and e2fsprogs")
    old = tmp_path / "target" / "2020-01-01-00-00"
    old.mkdir(parents=True)
    from datetime import datetime, timezone
    (old / ".kdump-saver").write_bytes(dumpdir.marker_bytes("fixture-host", datetime.now(timezone.utc), dumpdir.COMPLETE))
    (old / "vmcore").write_bytes(b"old dump")
    made = subprocess.run(["chattr", "+i", str(old / "vmcore")], capture_output=True, text=True)
    require(made.returncode == 0, f"chattr +i does not work here: {made.stderr.strip()}")
    try:
        conf = write_config(tmp_path, 'KDUMP_DUMPFORMAT=none\nKDUMP_KEEP_OLD_DUMPS=-1\n')
        result = run_cli("save", "--config", str(conf), "--vmcore", str(fixture_vmcore),
                         "--savedir", str(tmp_path / "target"), timeout=600)
        assert result.returncode == 0, result.stderr
        assert "2020-01-01-00-00" in result.stderr and "could not" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["chattr", "-i", str(old / "vmcore")], check=False)


def fill(fs: Path) -> None:
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_target_is_refused_without_leaving_a_directory(small_fs, fixture_vmcore, makedumpfile):
    fs = small_fs(1)
    fill(fs)
    with pytest.raises(SpaceLimitReached) as err:
        save(Config(dumpformat="none", free_disk_size=0), vmcore=str(fixture_vmcore), savedir=str(fs))
    assert "the target is full" in str(err.value) and "0 MB" not in str(err.value)
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]


def test_running_out_of_space_with_no_limit_leaves_a_readme_that_says_so(small_fs, fixture_vmcore, makedumpfile):
    fs = small_fs(16)
    with pytest.raises(KdumpError) as err:
        save(Config(dumpformat="lzo", free_disk_size=0), vmcore=str(fixture_vmcore), savedir=str(fs))
    assert "0 MB" not in str(err.value)
    (d,) = list(fs.iterdir())
    assert sorted(p.name for p in d.iterdir()) == [".kdump-saver", "README.txt", "dmesg.txt", "vmcore.incomplete"]
    readme = (d / "README.txt").read_text()
    assert readme.startswith("THIS DUMP IS INCOMPLETE.") and "being written" not in readme
    assert "vmcore status: INCOMPLETE: the target is full" in readme


def test_space_messages_never_say_0_mb():
    from capture.save.space import amount
    assert amount(0) == "0 bytes" and amount(1000) == "1000 bytes" and amount(5 << 20) == "5 MB"


# --- ftp against a real vsftpd ----------------------------------------------------------------------

def _ftp_prerequisites() -> None:
    require(os.geteuid() == 0, "the FTP tests run vsftpd and create a test account: run as root")
    require_program("vsftpd")


@pytest.fixture(scope="module")
def ftpd_umask_022(tmp_path_factory):
    """A vsftpd whose new files are 0644 unless the client asks otherwise (pyftpdlib's default)."""
    _ftp_prerequisites()
    from servers.ftpd import FtpServer
    server = FtpServer(tmp_path_factory.mktemp("ftpd022"), umask="022")
    server.start()
    yield server
    server.remove()


def test_ftp_plain_file_named_like_the_dump_directory_gets_the_next_name(ftpd_umask_022):
    from transports import open_target
    from transports.base import TransportOptions
    server = ftpd_umask_022
    with open_target(targeturl.parse(server.url("/plainfile")), TransportOptions(net_timeout=0)) as t:
        t.write_small("host-2026-01-01-00-00", b"not a directory")
        assert dumpdir.create_unique(t, "host-2026-01-01-00-00") == "host-2026-01-01-00-00.2"
        assert {e.name: e.is_dir for e in t.listdir()} == {"host-2026-01-01-00-00": False,
                                                           "host-2026-01-01-00-00.2": True}


def test_ftp_failed_upload_is_not_left_readable_by_others(ftpd_umask_022):
    from transports import open_target
    from transports.base import TransportOptions
    server = ftpd_umask_022
    with open_target(targeturl.parse(server.url("/modes")), TransportOptions(net_timeout=0)) as t:
        t.mkdir("d")
        f = t.create("d/vmcore.incomplete")
        f.write(b"secret memory " * 100000)
        f.abort()
        t.write_small("d/README.txt", b"readme")
    base = server.home / "modes"
    assert stat.S_IMODE((base / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((base / "d" / "vmcore.incomplete").stat().st_mode) == 0o600
    assert stat.S_IMODE((base / "d" / "README.txt").stat().st_mode) == 0o600


def test_ftp_target_running_full_leaves_a_readme_that_says_so(tmp_path, fixture_vmcore, makedumpfile):
    """vsftpd cannot tell its free space: the disk fills during the upload, and even
    README.txt.tmp cannot be written; the README is replaced in place instead."""
    _ftp_prerequisites()
    from servers.common import tmpfs
    from servers.ftpd import FtpServer
    server = FtpServer(tmp_path / "srv")
    try:
        with tmpfs(server.home, "4m", "kdftptest"):
            server.start()
            with pytest.raises(KdumpError) as err:
                save(Config(dumpformat="lzo", free_disk_size=0, net_timeout=0), vmcore=str(fixture_vmcore),
                     savedir=server.url("/dumps"))
            assert "451" in str(err.value) or "out of space" in str(err.value)
            (d,) = list((server.home / "dumps").iterdir())
            names = sorted(p.name for p in d.iterdir())
            assert "README.txt.tmp" not in names and "README.txt" in names, names
            readme = (d / "README.txt").read_text()
            assert readme.startswith("THIS DUMP IS INCOMPLETE.") and "being written" not in readme
            assert "vmcore status: INCOMPLETE: cannot write" in readme
            server.stop()
    finally:
        server.remove()


# --- point 5: host keys the capture kernel's ssh cannot verify are refused when the initrd is built ----------------

def _blob(key_type: str) -> str:
    name = key_type.encode()
    return base64.b64encode(len(name).to_bytes(4, "big") + name + b"\0\0\0\x01x").decode()


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.mark.parametrize("key_type", ["ssh-dss", "ssh-ed448", "sk-ssh-ed25519@openssh.com",
                                      "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_host_key_types_ssh_cannot_verify_are_refused_at_build_time(tmp_path, key_type):
    from transports import sshauth
    from transports.base import TransportOptions
    host_key = f"{key_type} {_blob(key_type)}"
    assert options.parse_text(f'KDUMP_HOST_KEY="{host_key}"\n').host_key == host_key
    url = targeturl.parse("sftp://user:pw@dumps.example/x")
    material = sshauth.initrd_material(url, TransportOptions(host_key=host_key))
    assert [p for p in material.problems if "cannot be verified by the capture kernel's ssh client" in p and key_type in p], \
        material.problems
    known = tmp_path / "known_hosts"
    known.write_text(f"dumps.example {host_key}\n")
    material = sshauth.initrd_material(url, TransportOptions(known_hosts=str(known)))
    assert [p for p in material.problems if "cannot be verified by the capture kernel's ssh client" in p and key_type in p], \
        material.problems


def test_a_verifiable_key_next_to_an_unverifiable_one_is_carried_alone(tmp_path):
    from transports import sshauth
    from transports.base import TransportOptions
    known = tmp_path / "known_hosts"
    known.write_text(f"dumps.example ssh-dss {_blob('ssh-dss')}\ndumps.example {ED25519}\n")
    url = targeturl.parse("sftp://user:pw@dumps.example/x")
    material = sshauth.initrd_material(url, TransportOptions(known_hosts=str(known)))
    assert material.problems == []
    assert material.known_hosts == f"dumps.example {ED25519}\n"
