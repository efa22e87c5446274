"""ElfCore, the kdump-compressed header and `kdump-saver info` on the real fixture and makedumpfile output."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from capture.formats import kdumpfile
from capture.formats.dumpinfo import describe
from capture.formats.elfcore import ElfCore, FileReader, NotACoreError
from capture.errors import DumpFormatError
from conftest import REPO, require_program

OSRELEASE = "6.1.0-56-cloud-amd64"
CRASHTIME = 1795675891
FIXTURE_SIZE = 410_705_920
#: physical memory in the fixture's PT_LOADs: 0x9ec00 + 0xdf00000 + 0x7fdd000 (the kernel image
#: segment lies inside the last range and is counted once)
FIXTURE_MEMORY = 368_557_056


def kdump_saver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capture.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def copy_prefix(src: Path, dst: Path, length: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(length))
    return dst


# -- ElfCore ------------------------------------------------------------------------------------


def test_elfcore_reads_the_fixture(fixture_vmcore: Path) -> None:
    with ElfCore.open(str(fixture_vmcore)) as core:
        assert core.machine == "x86_64"
        assert core.osrelease == OSRELEASE
        assert core.crash_time == CRASHTIME
        assert core.page_size == 4096
        assert core.nodename() == "fixture-host"
        uts = core.utsname()
        assert uts is not None and uts["sysname"] == "Linux" and uts["release"] == OSRELEASE
        assert core.expected_size == FIXTURE_SIZE == core.size
        assert not core.truncated
        assert core.memory_size == FIXTURE_MEMORY
        assert core.memory_size_sum == FIXTURE_MEMORY + 0x2830000
        assert [n.name for n in core.notes] == ["CORE", "CORE", "VMCOREINFO"]
        assert len(core.loads) == 4
        symbol = int(core.vmcoreinfo["SYMBOL(init_uts_ns)"], 16)
        assert core.read_virtual(symbol, 6) == b"Linux\0"
        # the same byte through the direct map (PAGE_OFFSET + physical address)
        text = next(s for s in core.loads if s.vaddr == int(core.vmcoreinfo["SYMBOL(_stext)"], 16))
        direct_map = next(s for s in core.loads if s.paddr <= text.paddr < s.paddr + s.memsz
                          and s is not text)
        alias = direct_map.vaddr + (text.paddr - direct_map.paddr) + (symbol - text.vaddr)
        assert core.read_virtual(alias, 6) == b"Linux\0"
        with pytest.raises(DumpFormatError, match="not in the dump"):
            core.read_virtual(0x1000, 8)


def test_elfcore_without_the_exported_offset_finds_the_name(fixture_vmcore: Path) -> None:
    """Older kernels do not export OFFSET(uts_namespace.name): the known layouts are tried and checked."""
    with ElfCore.open(str(fixture_vmcore)) as core:
        del core.vmcoreinfo["OFFSET(uts_namespace.name)"]
        assert core.nodename() == "fixture-host"
        core.vmcoreinfo["OSRELEASE"] = "5.10.0-other"
        assert core.nodename() is None


def test_elfcore_reads_makedumpfile_elf_output(reference_dumps) -> None:
    path = reference_dumps.direct("-E", 31)
    with ElfCore.open(str(path)) as core:
        assert (core.osrelease, core.crash_time, core.page_size) == (OSRELEASE, CRASHTIME, 4096)
        assert core.nodename() == "fixture-host"
        assert core.expected_size == path.stat().st_size
        assert core.memory_size == FIXTURE_MEMORY


@pytest.mark.parametrize("length,message", [
    (10, "truncated ELF header"),
    (200, "truncated ELF program headers"),
    (5000, "truncated ELF notes"),
])
def test_elfcore_truncated_headers(fixture_vmcore: Path, tmp_path: Path, length: int, message: str) -> None:
    path = copy_prefix(fixture_vmcore, tmp_path / "vmcore", length)
    with pytest.raises(DumpFormatError, match=message):
        ElfCore.open(str(path))


def test_elfcore_truncated_data(fixture_vmcore: Path, tmp_path: Path) -> None:
    path = copy_prefix(fixture_vmcore, tmp_path / "vmcore", 1 << 20)
    with ElfCore.open(str(path)) as core:
        assert core.osrelease == OSRELEASE
        assert core.truncated and core.expected_size == FIXTURE_SIZE
        assert core.nodename() is None  # init_uts_ns lies beyond the first MiB


def test_elfcore_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a dump\n")
    with pytest.raises(DumpFormatError, match="not an ELF file"):
        ElfCore.open(str(text))
    with pytest.raises(NotACoreError, match="not a core dump"):
        ElfCore.open(os.path.realpath(sys.executable))


# -- kdump-compressed header ----------------------------------------------------------------------


@pytest.mark.parametrize("flag,level,compression", [("-l", 31, "lzo"), ("-c", 1, "zlib")])
def test_kdump_header(reference_dumps, flag: str, level: int, compression: str) -> None:
    path = reference_dumps.direct(flag, level)
    with FileReader(str(path)) as reader:
        hdr = kdumpfile.parse_header(reader, str(path))
        assert hdr.header_version == 6
        assert hdr.compression == compression
        assert hdr.dump_level == level
        assert hdr.block_size == 4096 and hdr.page_size == 4096
        assert hdr.release == OSRELEASE and hdr.crash_time == CRASHTIME
        assert hdr.utsname["nodename"] == "fixture-host" and hdr.machine == "x86_64"
        assert not hdr.incomplete_flag
        assert kdumpfile.completeness_problems(hdr, reader, reader.size, str(path)) == []
        problems = kdumpfile.completeness_problems(hdr, reader, reader.size - 1, str(path))
        assert problems and "before the last page's data" in problems[0]


def test_kdump_trailing_zero_pages_do_not_hide_the_data_end(reference_dumps) -> None:
    """With zero pages excluded, their descriptors all point at one shared zero page at the start
    of the page data; the fixture's last descriptors are such pages, so the end of the data must be
    found further back in the table."""
    path = reference_dumps.direct("-l", 31)
    with FileReader(str(path)) as reader:
        hdr = kdumpfile.parse_header(reader, str(path))
        pages = kdumpfile.count_dumped_pages(hdr, reader, str(path))
        first = kdumpfile.PAGE_DESC.unpack(reader(hdr.descriptors_offset, 24))
        last = kdumpfile.PAGE_DESC.unpack(reader(hdr.descriptors_offset + (pages - 1) * 24, 24))
        data_start = hdr.descriptors_offset + pages * kdumpfile.PAGE_DESC_SIZE
        # the bitmap's page count and the descriptor table agree on where the data starts
        assert first[0] == data_start
        assert last[0] == data_start and last[1] == 4096
        assert kdumpfile.completeness_problems(hdr, reader, reader.size, str(path)) == []
        assert kdumpfile.completeness_problems(hdr, reader, reader.size - 1, str(path))


# -- describe / info --------------------------------------------------------------------------------


def test_info_on_the_fixture_elf(fixture_vmcore: Path) -> None:
    info = describe(str(fixture_vmcore))
    assert info.format == "ELF" and info.containers == []
    assert info.architecture == "x86_64" and info.kernel_release == OSRELEASE
    assert info.crash_time == CRASHTIME and info.page_size == 4096
    assert info.nodename == "fixture-host"
    assert info.dump_level is None
    assert info.complete and info.problems == []
    text = info.format_text()
    assert "dump level:     not recorded" in text
    assert "crash time:     2026-11-26T06:51:31Z" in text
    assert "status:         complete" in text


@pytest.mark.parametrize("flag,level,compression", [("-l", 31, "lzo"), ("-c", 1, "zlib")])
def test_info_on_kdump_compressed(reference_dumps, flag: str, level: int, compression: str) -> None:
    info = describe(str(reference_dumps.direct(flag, level)))
    assert info.format == "kdump-compressed" and info.compression == compression
    assert info.dump_level == level
    assert (info.architecture, info.kernel_release, info.nodename) == ("x86_64", OSRELEASE, "fixture-host")
    assert info.crash_time == CRASHTIME and info.complete
    assert f"kdump-compressed, {compression}" in info.format_text()


@pytest.mark.parametrize("flag,level,fmt", [("-l", 31, "kdump-compressed"), ("-E", 31, "ELF")])
def test_info_on_flattened(reference_dumps, flag: str, level: int, fmt: str) -> None:
    flat = reference_dumps.flattened(flag, level)
    info = describe(str(flat))
    assert info.containers == ["flattened"] and info.format == fmt
    assert info.kernel_release == OSRELEASE and info.nodename == "fixture-host"
    assert info.dump_size == reference_dumps.direct(flag, level).stat().st_size
    assert info.complete, info.problems
    assert "flattened" in info.format_text()


def test_info_on_truncated_flattened(reference_dumps, tmp_path: Path) -> None:
    flat = reference_dumps.flattened("-l", 31)
    part = copy_prefix(flat, tmp_path / "vmcore.flat", flat.stat().st_size // 2)
    info = describe(str(part))
    assert info.kernel_release == OSRELEASE and info.dump_level == 31
    assert not info.complete
    assert any("no end marker" in p for p in info.problems)
    assert "status:         INCOMPLETE" in info.format_text()
    nearly = copy_prefix(flat, tmp_path / "nearly.flat", flat.stat().st_size - 16)
    info = describe(str(nearly))
    assert not info.complete and len(info.problems) == 1 and "no end marker" in info.problems[0]


def test_info_on_flattened_with_a_corrupt_record(reference_dumps, tmp_path: Path) -> None:
    flat = reference_dumps.flattened("-l", 31)
    data = bytearray(flat.read_bytes())
    first_size = struct.unpack_from(">q", data, 4096 + 8)[0]
    second = 4096 + 16 + first_size
    struct.pack_into(">q", data, second + 8, -7)
    broken = tmp_path / "broken.flat"
    broken.write_bytes(data)
    info = describe(str(broken))
    assert info.end_marker is False and not info.complete
    assert f"corrupt flattened record at stream offset {second}" in info.problems[0]
    # the first record carries the main header; the sub header (dump level) came later
    assert info.kernel_release == OSRELEASE and info.nodename == "fixture-host"
    assert info.dump_level is None
    assert "INCOMPLETE" in info.format_text()


def test_info_on_incomplete_kdump(reference_dumps, tmp_path: Path) -> None:
    direct = reference_dumps.direct("-l", 31)
    cut = copy_prefix(direct, tmp_path / "cut", direct.stat().st_size - 4096)
    info = describe(str(cut))
    assert not info.complete and "before the last page's data" in info.problems[0]

    flagged = tmp_path / "flagged"
    data = bytearray(direct.read_bytes())
    status = struct.unpack_from("<I", data, kdumpfile.FIELDS_OFFSET)[0]
    struct.pack_into("<I", data, kdumpfile.FIELDS_OFFSET, status | kdumpfile.DUMP_DH_COMPRESSED_INCOMPLETE)
    flagged.write_bytes(data)
    info = describe(str(flagged))
    assert not info.complete and "marked it incomplete" in info.problems[0]
    assert info.compression == "lzo"

    named = tmp_path / "vmcore.incomplete"
    os.link(direct, named)
    info = describe(str(named))
    assert not info.complete and ".incomplete" in info.problems[0]


def test_info_on_truncated_elf(fixture_vmcore: Path, tmp_path: Path) -> None:
    info = describe(str(copy_prefix(fixture_vmcore, tmp_path / "vmcore", 1 << 20)))
    assert info.format == "ELF" and info.kernel_release == OSRELEASE
    assert not info.complete
    assert info.problems == [f"the dump has {1 << 20} bytes, its ELF headers describe {FIXTURE_SIZE}"]


def test_info_on_lz4_frames(fixture_vmcore: Path, reference_dumps, tmp_path: Path) -> None:
    import lz4.frame

    head = (fixture_vmcore.open("rb").read(8 << 20))
    streamed = tmp_path / "head.lz4"
    compressor = lz4.frame.LZ4FrameCompressor()
    streamed.write_bytes(compressor.begin() + compressor.compress(head) + compressor.flush())
    info = describe(str(streamed))
    assert info.containers == ["lz4 frame"] and info.format == "ELF"
    assert info.kernel_release == OSRELEASE and info.crash_time == CRASHTIME
    assert info.dump_size == 8 << 20
    assert not info.complete and f"describe {FIXTURE_SIZE}" in info.problems[0]
    assert "lz4 frame containing ELF" in info.format_text()

    cut = copy_prefix(streamed, tmp_path / "cut.lz4", streamed.stat().st_size // 2)
    info = describe(str(cut))
    assert info.kernel_release == OSRELEASE
    assert not info.complete and any("end mark is missing" in p for p in info.problems)

    kdump = reference_dumps.direct("-l", 31)
    wrapped = tmp_path / "kdump.lz4"
    wrapped.write_bytes(lz4.frame.compress(kdump.read_bytes(), store_size=True))
    info = describe(str(wrapped))
    assert info.format == "kdump-compressed" and info.compression == "lzo" and info.dump_level == 31
    assert info.dump_size == kdump.stat().st_size
    assert info.complete, info.problems


def test_info_on_lz4_cli_output(fixture_vmcore: Path, reference_dumps, tmp_path: Path) -> None:
    """The lz4 command writes content checksums and its own block sizes; the ELF inside is complete."""
    lz4 = require_program("lz4")
    elf = reference_dumps.direct("-E", 31)
    out = tmp_path / "vmcore.lz4"
    subprocess.run([lz4, "-q", "-1", "--content-size", str(elf), str(out)], check=True)
    info = describe(str(out))
    assert info.format == "ELF" and info.containers == ["lz4 frame"]
    assert info.nodename == "fixture-host" and info.dump_size == elf.stat().st_size
    assert info.complete, info.problems


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n", b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00"])
def test_info_refuses_non_dumps(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file"
    path.write_bytes(content.ljust(64, b"\0") if content.startswith(b"\x7fELF") else content)
    with pytest.raises(DumpFormatError, match=f"^{re.escape(str(path))} is not a kernel dump \\("):
        describe(str(path))


def test_info_cli(reference_dumps, tmp_path: Path) -> None:
    flat = reference_dumps.flattened("-l", 31)
    ok = kdump_saver("info", str(flat))
    assert ok.returncode == 0, ok.stderr
    assert "flattened kdump-compressed, lzo" in ok.stdout
    assert "kernel release: 6.1.0-56-cloud-amd64" in ok.stdout
    assert "status:         complete" in ok.stdout

    part = copy_prefix(flat, tmp_path / "part.flat", 1 << 20)
    incomplete = kdump_saver("info", str(part))
    assert incomplete.returncode == 2, incomplete.stderr
    assert "INCOMPLETE" in incomplete.stdout
    assert f"{part} is INCOMPLETE: " in incomplete.stderr and "Traceback" not in incomplete.stderr

    data = bytearray(flat.read_bytes())
    second = 4096 + 16 + struct.unpack_from(">q", data, 4096 + 8)[0]
    struct.pack_into(">q", data, second + 8, -7)
    broken = tmp_path / "broken.flat"
    broken.write_bytes(data)
    corrupt = kdump_saver("info", str(broken))
    assert corrupt.returncode == 2
    assert f"corrupt flattened record at stream offset {second}" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr + corrupt.stdout

    text = tmp_path / "README.txt"
    text.write_text("vmcore status: saved successfully\n")
    for path, message in [(text, "is not a kernel dump"), (tmp_path / "missing", "cannot open"),
                          (tmp_path, "is not a kernel dump")]:
        bad = kdump_saver("info", str(path))
        assert bad.returncode == 1
        assert message in bad.stderr and "Traceback" not in bad.stderr + bad.stdout


def test_info_tells_which_collector_wrote_a_saved_dump(tmp_path, fixture_vmcore):
    from capture.config.options import Config
    from capture.save.sequence import save

    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0, cpus=1), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path))
    info = describe(str(tmp_path / result.directory / "vmcore"))
    assert info.collector is not None and info.collector.startswith("makedumpfile 1.")
    assert "collector:" in info.format_text()
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "vmcore").write_bytes((tmp_path / result.directory / "vmcore").read_bytes())
    assert describe(str(lone / "vmcore")).collector is None
