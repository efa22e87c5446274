"""Our own collector (capture/save/pycollector.py) on the real fixture vmcores.

Checked against makedumpfile's own output (2nd bitmaps), crash(8) with the
fixture kernel's symbols, and python3-libkdumpfile (Debian's, for the system
interpreter, run in a subprocess) reading every saved page back.  On the
6.12 fixture the oracle for slab pages is libkdumpfile reading each struct
page's page_type through the kernel's own vmemmap mapping.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capture.formats.elfcore import ElfCore
from capture.formats.readat import FileReader
from capture.errors import KdumpError
from capture.formats.flattened import FlatReader, reassemble
from capture.formats.kmem import PhysicalMemory
from capture.formats.pageclass import PageClassError, PageClassifier, PageLayout
from capture.formats.kdumpfile import completeness_problems, parse_header
from capture.formats.dumplevel import makedumpfile_misfilters
from capture.save.pycollector import collect, estimate_size
from conftest import cached_fixture, require, require_program

NEW_FIXTURE = "vmcore-6.12-cloud-512M"
RELEASE_61 = "6.1.0-56-cloud-amd64"
VMLINUX_61 = f"/usr/lib/debug/boot/vmlinux-{RELEASE_61}"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def new_vmcore() -> Path:
    """The 6.12 fixture vmcore, decompressed once into the cache."""
    return cached_fixture(NEW_FIXTURE)


class Ours:
    """Our dumps of a vmcore, made once per (level, cpus, compression) and rebuilt into real files."""

    def __init__(self, vmcore: Path, root: Path) -> None:
        self.vmcore = vmcore
        self.root = root
        self.results: Dict[Tuple[int, int, str], object] = {}

    def flat(self, level: int, cpus: int = 1, compression: str = "lzo") -> Path:
        path = self.root / f"{self.vmcore.stem}-d{level}-c{cpus}-{compression}.flat"
        if not path.exists():
            with open(path, "wb") as out:
                self.results[(level, cpus, compression)] = collect(str(self.vmcore), level, out, cpus=cpus,
                                                                   compression=compression)
        return path

    def real(self, level: int, cpus: int = 1, compression: str = "lzo") -> Path:
        path = self.flat(level, cpus, compression).with_suffix(".kdump")
        if not path.exists():
            reassemble(str(self.flat(level, cpus, compression)), str(path))
        return path


@pytest.fixture(scope="module")
def ours61(fixture_vmcore: Path, tmp_path_factory: pytest.TempPathFactory) -> Ours:
    return Ours(fixture_vmcore, tmp_path_factory.mktemp("pycollector-61"))


@pytest.fixture(scope="module")
def ours612(new_vmcore: Path, tmp_path_factory: pytest.TempPathFactory) -> Ours:
    return Ours(new_vmcore, tmp_path_factory.mktemp("pycollector-612"))


def bitmaps(path: Path) -> Tuple[int, int, int]:
    """(1st bitmap, 2nd bitmap, max_mapnr) of a kdump-compressed file, bitmaps as integers (bit n = pfn n)."""
    with FileReader(str(path)) as reader:
        hdr = parse_header(reader, str(path))
        half = hdr.bitmap_size // 2
        first = int.from_bytes(reader(hdr.bitmap_offset, half), "little")
        second = int.from_bytes(reader(hdr.bitmap_offset + half, half), "little")
        return first, second, hdr.max_mapnr


def popcount(value: int) -> int:
    return bin(value).count("1")


def system_libkdumpfile() -> None:
    ok = os.path.exists(SYSTEM_PYTHON) and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import kdumpfile"], capture_output=True).returncode == 0
    require(ok, "python3-libkdumpfile is not installed for /usr/bin/python3 (bash tests/setup.sh installs it)")


COMPARE_PAGES = r"""
import json, sys, kdumpfile
dump, vmcore = sys.argv[1], sys.argv[2]
d = kdumpfile.kdumpfile(dump)
v = kdumpfile.kdumpfile(vmcore)
space = kdumpfile.KDUMP_MACHPHYSADDR
same = differ = nodata = 0
first_bad = []
for pfn in range(d.attr["max_pfn"]):
    try:
        page = d.read(space, pfn * 4096, 4096)
    except kdumpfile.exceptions.NoDataException:
        nodata += 1
        continue
    if page == v.read(space, pfn * 4096, 4096):
        same += 1
    else:
        differ += 1
        first_bad.append(pfn) if len(first_bad) < 10 else None
print(json.dumps({"format": d.attr["file.format"], "same": same, "differ": differ, "nodata": nodata,
                  "first_bad": first_bad}))
"""

SLAB_PAGES = r"""
import json, struct, sys, kdumpfile
vmcore, vmemmap, slab_type, max_pfn = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3]), int(sys.argv[4])
k = kdumpfile.kdumpfile(vmcore)
k.attr["addrxlat.ostype"] = "linux"
slab_heads, tails = set(), {}
step = 32768
for start in range(0, max_pfn, step):
    n = min(step, max_pfn - start)
    try:
        raw = k.read(kdumpfile.KDUMP_KVADDR, vmemmap + start * 64, n * 64)
    except kdumpfile.exceptions.KDumpBaseException:
        continue
    for i in range(n):
        compound_head, = struct.unpack_from("<Q", raw, i * 64 + 8)
        page_type, = struct.unpack_from("<I", raw, i * 64 + 48)
        if compound_head & 1:
            tails[start + i] = (compound_head - 1 - vmemmap) // 64
        elif page_type == slab_type:
            slab_heads.add(start + i)
slab = sorted(slab_heads | {pfn for pfn, head in tails.items() if head in slab_heads})
print(json.dumps({"heads": len(slab_heads), "slab": slab}))
"""


def run_system_python(script: str, *args: str, timeout: int = 600) -> dict:
    res = subprocess.run([SYSTEM_PYTHON, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


# -- the 6.1 fixture against makedumpfile ---------------------------------------------------------

@pytest.mark.parametrize("level", [0, 1, 31])
def test_keeps_what_makedumpfile_keeps_and_drops_what_it_drops(ours61, reference_dumps, level):
    present, theirs, their_mapnr = bitmaps(reference_dumps.direct("-l", level))
    our_present, mine, our_mapnr = bitmaps(ours61.real(level))
    assert our_mapnr == their_mapnr
    assert our_present == present
    assert popcount(theirs & ~mine) == 0, "a page makedumpfile keeps is missing from our dump"
    they_drop = present & ~theirs
    we_drop_too = they_drop & ~mine
    assert popcount(we_drop_too) >= 0.95 * popcount(they_drop)
    if level == 31:
        assert popcount(they_drop) > 50_000  # the comparison means something: most pages go


def test_output_is_complete_and_matches_makedumpfiles_size(ours61, reference_dumps):
    ours = ours61.real(31)
    with FileReader(str(ours)) as reader:
        hdr = parse_header(reader, str(ours))
        assert completeness_problems(hdr, reader, reader.size, str(ours)) == []
        assert hdr.dump_level == 31 and hdr.compression == "lzo" and hdr.nr_cpus == 2
        assert hdr.utsname["nodename"] == "fixture-host"
        assert hdr.vmcoreinfo["OSRELEASE"] == RELEASE_61
    reference = reference_dumps.direct("-l", 31).stat().st_size
    assert abs(ours.stat().st_size - reference) <= 0.02 * reference


@pytest.mark.parametrize("flag,level,compression", [("-l", 0, "lzo"), ("-l", 1, "lzo"), ("-l", 31, "lzo"),
                                                   ("-c", 31, "zlib")])
def test_byte_identical_to_makedumpfile_1_7_2(ours61, reference_dumps, makedumpfile, flag, level, compression):
    """Debian 12's makedumpfile is the reference; another version may lay out the same dump differently."""
    version = subprocess.run([makedumpfile, "-v"], capture_output=True, text=True).stdout.split()[2]
    if version != "1.7.2":
        pytest.skip(f"byte identity is checked against makedumpfile 1.7.2, this is {version}")
    assert ours61.real(level, compression=compression).read_bytes() == \
        reference_dumps.direct(flag, level).read_bytes()


def test_flattened_stream_is_whole(ours61):
    with open(ours61.flat(31), "rb") as f:
        reader = FlatReader(f)
        reader.drain()
    assert reader.complete


def test_worker_processes_write_the_same_stream(ours61):
    assert ours61.flat(31, cpus=2).read_bytes() == ours61.flat(31).read_bytes()


def test_spawned_workers_write_the_same_stream(ours61, fixture_vmcore, tmp_path):
    """With another thread alive (as in the saver) the forked workers still write the same stream:
    they touch no lock another thread could hold (no logging, only reads, compression and pipes)."""
    done = threading.Event()
    waiter = threading.Thread(target=done.wait)
    waiter.start()
    try:
        with open(tmp_path / "flat", "wb") as out:
            collect(str(fixture_vmcore), 31, out, cpus=3)
    finally:
        done.set()
        waiter.join()
    assert (tmp_path / "flat").read_bytes() == ours61.flat(31).read_bytes()


def test_crash_opens_our_dump(ours61):
    crash = require_program("crash")
    require(os.path.exists(VMLINUX_61), f"{VMLINUX_61} missing: apt-get install linux-image-{RELEASE_61}-dbg")
    dump = ours61.real(31)
    commands = dump.with_suffix(".cmds")
    commands.write_text("sys\nbt\nexit\n")
    res = subprocess.run([crash, "-s", "-i", str(commands), VMLINUX_61, str(dump)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert 'PANIC: "Kernel panic - not syncing: sysrq triggered crash"' in out, out[-3000:]
    assert "sysrq_handle_crash" in out, out[-3000:]


@pytest.mark.parametrize("level,compression", [(1, "lzo"), (31, "lzo"), (31, "zlib")])
def test_every_saved_page_equals_the_vmcore(ours61, fixture_vmcore, level, compression):
    system_libkdumpfile()
    dump = ours61.real(level, compression=compression)
    _, mine, _ = bitmaps(dump)
    seen = run_system_python(COMPARE_PAGES, str(dump), str(fixture_vmcore))
    assert seen["format"] == "diskdump"
    assert seen["differ"] == 0, seen["first_bad"]
    assert seen["same"] == popcount(mine)


def test_size_estimate_is_close(ours61, fixture_vmcore):
    for level in (1, 31):
        actual = ours61.real(level).stat().st_size
        estimate = estimate_size(str(fixture_vmcore), level, sample_pages=2048)
        assert abs(estimate.size - actual) <= 0.15 * actual, (level, estimate, actual)
        assert estimate.pages_dumped == popcount(bitmaps(ours61.real(level))[1])


# -- the 6.12 fixture: slab pages by page_type ----------------------------------------------------

@pytest.fixture(scope="module")
def slab_pages(new_vmcore) -> List[int]:
    system_libkdumpfile()
    with ElfCore.open(str(new_vmcore)) as core:
        info = core.vmcoreinfo
        max_pfn = PhysicalMemory.from_core(core, str(new_vmcore)).max_pfn(4096)
    slab_type = int(info["NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"]) & 0xFFFFFFFF
    seen = run_system_python(SLAB_PAGES, str(new_vmcore), info["SYMBOL(vmemmap)"], str(slab_type), str(max_pfn))
    assert seen["heads"] > 500, seen["heads"]  # the oracle found the slab pages at all
    return seen["slab"]


def test_no_slab_page_is_dropped_on_6_12(ours612, slab_pages, new_vmcore):
    present, mine, _ = bitmaps(ours612.real(31))
    slab_in_dump = [pfn for pfn in slab_pages if present >> pfn & 1]
    dropped = [pfn for pfn in slab_in_dump if not mine >> pfn & 1]
    assert dropped == [], f"{len(dropped)} slab pages dropped, e.g. {dropped[:10]}"
    assert len(slab_in_dump) > 500


def test_makedumpfile_1_7_2_drops_slab_pages_and_we_say_so(slab_pages, new_vmcore, makedumpfile, tmp_path):
    """The case makedumpfile_misfilters exists for, seen on the real thing."""
    version = subprocess.run([makedumpfile, "-v"], capture_output=True, text=True).stdout.split()[2]
    with ElfCore.open(str(new_vmcore)) as core:
        reason = makedumpfile_misfilters(core.vmcoreinfo, version, 31)
    out = tmp_path / "mdf-d31"
    subprocess.run([makedumpfile, "-l", "-d", "31", str(new_vmcore), str(out)], check=True, capture_output=True)
    present, theirs, _ = bitmaps(out)
    dropped = [pfn for pfn in slab_pages if present >> pfn & 1 and not theirs >> pfn & 1]
    assert bool(dropped) == (reason is not None), (version, reason, len(dropped))


def test_level_31_is_well_below_level_1_on_6_12(ours612):
    assert ours612.real(31).stat().st_size < 0.6 * ours612.real(1).stat().st_size


def test_every_saved_page_equals_the_vmcore_on_6_12(ours612, new_vmcore):
    system_libkdumpfile()
    seen = run_system_python(COMPARE_PAGES, str(ours612.real(31)), str(new_vmcore))
    assert seen["differ"] == 0, seen["first_bad"]
    assert seen["same"] == popcount(bitmaps(ours612.real(31))[1])


# -- makedumpfile_misfilters ----------------------------------------------------------------------

def test_misfilters_names_the_slab_problem_only_where_it_exists(fixture_vmcore, new_vmcore):
    with ElfCore.open(str(new_vmcore)) as core:
        new = dict(core.vmcoreinfo)
    with ElfCore.open(str(fixture_vmcore)) as core:
        old = dict(core.vmcoreinfo)
    reason = makedumpfile_misfilters(new, "1.7.2", 31)
    assert reason is not None and "slab" in reason and "1.7.6" in reason
    assert makedumpfile_misfilters(new, (1, 7, 2), 23) is None
    assert makedumpfile_misfilters(new, "1.7.6", 31) is None
    assert makedumpfile_misfilters(old, "1.7.2", 31) is None
    without_slab = {k: v for k, v in old.items() if k != "NUMBER(PG_slab)"}
    assert "neither" in makedumpfile_misfilters(without_slab, "1.7.9", 8)
    renamed = {("OFFSET(page.compound_info)" if k == "OFFSET(page.compound_head)" else k): v for k, v in new.items()}
    assert "compound_info" in makedumpfile_misfilters(renamed, "1.7.9", 23)
    assert makedumpfile_misfilters(renamed, "1.8.0", 23) is None


def patched_copy(vmcore: Path, out: Path, old: bytes, new: bytes) -> Path:
    """A copy of ``vmcore`` with ``old`` replaced by ``new`` (same length) in its ELF notes."""
    shutil.copyfile(vmcore, out)
    with open(out, "r+b") as f:
        head = f.read(1 << 16)
        at = head.find(old)
        assert at > 0 and len(old) == len(new)
        f.seek(at)
        f.write(new)
    return out


def test_without_slab_marks_user_data_is_kept(fixture_vmcore, ours61, tmp_path):
    """A kernel that marks slab pages in no way VMCOREINFO tells: level 31 becomes 23, said in the header."""
    vmcore = patched_copy(fixture_vmcore, tmp_path / "vmcore", b"NUMBER(PG_slab)=", b"NUMBER(XX_slab)=")
    with open(tmp_path / "flat", "wb") as out:
        result = collect(str(vmcore), 31, out)
    assert result.dump_level == 23 and any("slab" in note for note in result.notes)
    assert "user data" not in result.excluded
    reassemble(str(tmp_path / "flat"), str(tmp_path / "dump"))
    _, mine, _ = bitmaps(tmp_path / "dump")
    _, level31, _ = bitmaps(ours61.real(31))
    assert popcount(level31 & ~mine) == 0 and popcount(mine & ~level31) > 5_000
    with FileReader(str(tmp_path / "dump")) as reader:
        assert parse_header(reader, "dump").dump_level == 23


def test_unusable_vmcoreinfo_still_saves_everything_but_zero_pages(fixture_vmcore, tmp_path):
    vmcore = patched_copy(fixture_vmcore, tmp_path / "vmcore", b"SIZE(page)=64", b"SIZE(page)=zz")
    with open(tmp_path / "flat", "wb") as out:
        result = collect(str(vmcore), 31, out)
    assert result.dump_level == 1 and result.pages_dumped == result.pages_present
    assert any("SIZE(page)" in note for note in result.notes)


def test_truncated_vmcore_fails_clearly_and_leaves_no_end_marker(fixture_vmcore, tmp_path):
    vmcore = tmp_path / "vmcore"
    with open(fixture_vmcore, "rb") as src, open(vmcore, "wb") as dst:
        dst.write(src.read(100 << 20))
    with open(tmp_path / "flat", "wb") as out:
        with pytest.raises(KdumpError, match="truncated"):
            collect(str(vmcore), 31, out)
    with open(tmp_path / "flat", "rb") as f:
        reader = FlatReader(f)
        with pytest.raises(KdumpError, match="truncated"):
            reader.drain()


class FullDisk:
    """A sink that takes ``limit`` bytes, then fails like a full disk."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def write(self, data) -> int:
        if len(data) > self.left:
            raise OSError(28, "No space left on device")
        self.left -= len(data)
        return len(data)


@pytest.mark.parametrize("cpus", [1, 2])
def test_write_error_is_a_clear_error(fixture_vmcore, cpus):
    with pytest.raises(KdumpError, match="No space left on device"):
        collect(str(fixture_vmcore), 31, FullDisk(5 << 20), cpus=cpus)


# -- property: mutated VMCOREINFO ----------------------------------------------------------------

KEYS = ["PAGESIZE", "SIZE(page)", "OFFSET(page.flags)", "OFFSET(page._mapcount)", "OFFSET(page.mapping)",
        "OFFSET(page.private)", "OFFSET(page.compound_head)", "OFFSET(page.compound_order)",
        "OFFSET(page.compound_dtor)", "NUMBER(PG_lru)", "NUMBER(PG_private)", "NUMBER(PG_slab)",
        "NUMBER(PG_head_mask)", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "NUMBER(HUGETLB_PAGE_DTOR)",
        "NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)", "SYMBOL(mem_section)", "LENGTH(mem_section)",
        "SIZE(mem_section)", "OFFSET(mem_section.section_mem_map)", "SYMBOL(init_top_pgt)", "NUMBER(phys_base)",
        "NUMBER(pgtable_l5_enabled)", "LENGTH(zone.free_area)", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)",
        "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)", "SYMBOL(vmemmap)", "OSRELEASE"]

VALUES = st.one_of(
    st.integers(min_value=0, max_value=70).map(str),
    st.integers(min_value=0, max_value=70).map(str),
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.integers(min_value=0, max_value=(1 << 64) - 1).map(lambda n: format(n, "x")),
    st.integers(min_value=-300, max_value=300).map(str),
    st.text(max_size=12),
    st.sampled_from(["", "0", "-1", "4096", "ffffffffffffffff", "0x10", "nan", "1e9"]),
)

MUTATION = st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), VALUES))


@pytest.fixture(scope="module")
def fixture_core(fixture_vmcore):
    core = ElfCore.open(str(fixture_vmcore))
    yield core, PhysicalMemory.from_core(core, str(fixture_vmcore)), dict(core.vmcoreinfo)
    core.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_vmcoreinfo_gives_a_clear_error_or_a_bounded_classification(fixture_core, mutations):
    core, memory, original = fixture_core
    info = dict(original)
    for key, value in mutations:
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    core.vmcoreinfo = info
    started = time.monotonic()
    try:
        classifier = PageClassifier.open(core, memory)
        pages = 0
        for _first, codes in classifier.classify(0, 40_000):
            pages += len(codes)
            assert set(codes) <= {0, 2, 4, 8, 16, 32, 64}
        assert pages == 40_000
        event("classified")
    except PageClassError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("PageClassError")
    except KdumpError as exc:  # the dump itself (an address that does not translate)
        assert str(exc)
        event(type(exc).__name__)
    finally:
        core.vmcoreinfo = original
    assert time.monotonic() - started < 20
    makedumpfile_misfilters(info, "1.7.2", 31)  # never raises on garbage


@settings(max_examples=40, deadline=None)
@given(info=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)))
def test_layout_from_arbitrary_vmcoreinfo_never_crashes(info):
    try:
        layout = PageLayout.from_vmcoreinfo(info)
    except PageClassError as exc:
        assert str(exc)
        return
    assert layout.struct_size >= 16 and layout.page_size & (layout.page_size - 1) == 0


def test_kdump_saver_save_on_6_12_keeps_every_slab_page_and_says_why(slab_pages, new_vmcore, ours612, tmp_path):
    """The whole save at -d 31 on the kernel makedumpfile 1.7.2 mis-filters: the
    saver decides up front to use its own collector, says so, and the dump it
    calls complete has every slab page and is still filtered."""
    from capture.config.options import Config
    from capture.save.sequence import save

    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0), vmcore=str(new_vmcore),
                  savedir=str(tmp_path))
    d = tmp_path / result.directory
    readme = (d / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    assert "collector: kdump-saver" in readme and "slab" in readme
    present, kept, _ = bitmaps(d / "vmcore")
    missing = [pfn for pfn in slab_pages if present >> pfn & 1 and not kept >> pfn & 1]
    assert missing == [] and len(slab_pages) > 500
    assert (d / "vmcore").stat().st_size < 0.6 * ours612.real(1).stat().st_size
    assert b"newkernel-marker-readers" in (d / "dmesg.txt").read_bytes()


DRGN_TASKS = r"""
import json, sys
import drgn
from drgn.helpers.linux.pid import for_each_task
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
print(json.dumps({"nodename": prog["init_uts_ns"].name.nodename.string_().decode(),
                  "tasks": sorted(t.comm.string_().decode() for t in for_each_task(prog))}))
"""


def test_drgn_reads_the_same_kernel_state_from_our_dump_as_from_the_vmcore(ours61, fixture_vmcore):
    """A second real reader besides crash and libkdumpfile: the task list through drgn."""
    vmlinux = Path("/usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64")
    require(vmlinux.exists(), f"{vmlinux} is missing (linux-image-6.1.0-56-cloud-amd64-dbg)")
    try:
        import drgn  # noqa: F401
    except ImportError:
        require(False, "drgn is not installed (the test extra installs it)")

    def read(core: Path) -> dict:
        out = subprocess.run([sys.executable, "-c", DRGN_TASKS, str(core), str(vmlinux)],
                             capture_output=True, text=True, timeout=300, check=True).stdout
        return json.loads(out)

    ours, original = read(ours61.real(31)), read(fixture_vmcore)
    assert ours["nodename"] == "fixture-host" and ours == original
    assert "awk" in ours["tasks"] and len(ours["tasks"]) > 40
