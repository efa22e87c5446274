"""Fuzzing with Hypothesis: every parser of untrusted input answers, or raises the project's own errors.

Covered: the sysconfig lexer, the option parser, the target URL parser, the
ELF/VMCOREINFO reader, the flattened and kdump-compressed readers behind
``kdump-saver info`` (:func:`describe`) and ``reassemble``.  Every example
must end without an exception other than :class:`KdumpError` and its
subclasses, within a bounded amount of memory (tracemalloc peak) and time
(Hypothesis' deadline, a hang guard, not a speed target).  The example budget
is fixed and the search derandomized, so CI runs the same examples every time
(well under a minute in all).
"""
from __future__ import annotations

import io
import struct
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Callable, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crafted
from capture.config import options, sysconfig, targeturl
from capture.errors import ConfigError, KdumpError, URLError
from capture.formats import flattened
from capture.formats.dumpinfo import describe

#: the most one example may allocate (the inputs are a few KB; honest readers need far less)
MEMORY_LIMIT = 32 << 20


def budget(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=timedelta(seconds=10),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def bounded(call: Callable[[], object]) -> object:
    """Run ``call``; KdumpError is a fine answer; memory must stay under MEMORY_LIMIT."""
    tracemalloc.start()
    try:
        try:
            return call()
        except KdumpError as exc:
            return exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < MEMORY_LIMIT, f"peak allocation {peak} bytes"
    finally:
        tracemalloc.stop()


# --- configuration -------------------------------------------------------------------------------

SHELL = st.text(alphabet=st.sampled_from(list("KDUMP_AVE=\"'\\$`#;&|(){}[]<>*?~!\n\t -.:/@%019xé\x00\x7f")),
                max_size=120)
KEYS = st.sampled_from([o.key for o in options.OPTIONS] + ["KDUMP_UNKNOWN", "export KDUMP_CPUS", "X"])
NUMBERS = st.one_of(st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
                    st.integers(min_value=4290, max_value=4400).map(lambda n: "9" * n),
                    st.sampled_from(["", "0", "-0", "1.5", "1e9", "0x10", "٣", "²", "64M", "9" * 25 + "T",
                                     "1." + "5" * 60 + "G", "inf", "nan"]))
VALUES = st.one_of(NUMBERS, SHELL, st.text(max_size=60))


@budget(400)
@given(text=st.one_of(SHELL, st.text(max_size=300)))
def test_sysconfig_lexer_never_raises(text: str) -> None:
    parsed = bounded(lambda: sysconfig.parse(text))
    assert isinstance(parsed, sysconfig.ParsedFile)
    for assignment in parsed.assignments:
        assert sysconfig.parse(f"K={sysconfig.quote(assignment.value)}\n").assignments[0].value == assignment.value


@budget(300)
@given(lines=st.lists(st.tuples(KEYS, VALUES, st.booleans()), max_size=6))
def test_option_parser_answers_with_a_config_or_a_config_error(lines: List[Tuple[str, str, bool]]) -> None:
    text = "".join(f"{key}={sysconfig.quote(value) if quoted else value}\n" for key, value, quoted in lines)
    result = bounded(lambda: options.parse_text(text, "fuzz"))
    if isinstance(result, options.Config):
        options.render(result)
    else:
        assert isinstance(result, ConfigError)
        assert all(len(line) < 2000 for line in str(result).splitlines())


URL_PIECES = st.sampled_from(["ftp://", "ftps://", "sftp://", "scp://", "ssh://", "nfs://", "cifs://", "smb://",
                              "file://", "/", "//", "@", ":", "::1", "[", "]", "%", "%00", "%0A", "%25", "%2F",
                              "..", ".", "a", "host", "127.0.0.1", "user", "pw", "SEKRIT", "22", "99999", "#", "?",
                              " ", "\t", "é", "xn--", "-", "_", "a" * 64])


@budget(600)
@given(text=st.one_of(st.lists(URL_PIECES, max_size=12).map("".join), st.text(max_size=80)))
def test_url_parser_answers_with_a_url_or_a_url_error(text: str) -> None:
    result = bounded(lambda: targeturl.parse(text))
    masked = targeturl.mask_password(text)
    assert isinstance(masked, str) and isinstance(targeturl.masked_text(text), str)
    if isinstance(result, targeturl.TargetURL):
        assert "\n" not in result.path and "\r" not in result.path
        if len(result.password) >= 4:
            assert result.password not in result.masked()
    else:
        assert isinstance(result, URLError)
        if "SEKRIT" in text and "SEKRIT" not in masked:
            assert "SEKRIT" not in str(result)


# --- dump files ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def describe_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "dump"
    path.write_bytes(data)
    info = bounded(lambda: describe(str(path)))
    if not isinstance(info, KdumpError):
        text = info.format_text()  # type: ignore[union-attr]
        assert all(line.isprintable() for line in text.splitlines())


EDITS = st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 16), st.binary(min_size=1, max_size=8)),
                 max_size=8)
EXTREME = st.sampled_from([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1])


def edited(base: bytes, edits: List[Tuple[int, bytes]]) -> bytes:
    out = bytearray(base)
    for at, data in edits:
        at %= max(1, len(out))
        out[at:at + len(data)] = data
    return bytes(out)


def vmcoreinfo_values():
    return st.dictionaries(st.sampled_from(["OSRELEASE", "PAGESIZE", "CRASHTIME", "SYMBOL(init_uts_ns)",
                                            "OFFSET(uts_namespace.name)", "X"]),
                           st.one_of(NUMBERS, st.text(max_size=20)), max_size=5)


@budget(250)
@given(info=vmcoreinfo_values(), edits=EDITS, note_offset=st.one_of(st.none(), EXTREME),
       phnum=st.one_of(st.none(), st.sampled_from([0, 1, 0xFFFF, 0xFFFE])))
def test_elf_reader(scratch: Path, info, edits, note_offset, phnum) -> None:
    notes = crafted.elf_note(b"VMCOREINFO", 0, crafted.vmcoreinfo_text(info).replace(b"\0", b""))
    uts = crafted.utsname(b"fuzz\nhost\x1b[31m")
    core = crafted.elf_core(notes, loads=[(0xffffffff82000000, uts)], note_offset=note_offset, phnum=phnum)
    describe_bytes(scratch, edited(core, edits))


KDUMP = crafted.kdump_file([bytes([i]) * crafted.PAGE for i in range(3)], max_mapnr=64)
#: offsets of the header and sub header fields (4 and 8 bytes)
FIELDS = [(at, fmt) for at in range(8, 464, 4) for fmt in ("<I",)] + \
    [(crafted.PAGE + at, "<Q") for at in range(0, 104, 8)]


@budget(300)
@given(fields=st.lists(st.tuples(st.sampled_from(FIELDS), EXTREME), max_size=4), edits=EDITS,
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=len(KDUMP))))
def test_kdump_reader(scratch: Path, fields, edits, cut) -> None:
    data = bytearray(KDUMP)
    for (at, fmt), value in fields:
        struct.pack_into(fmt, data, at, value % (1 << (8 * struct.calcsize(fmt))))
    data = bytearray(edited(bytes(data), edits))
    describe_bytes(scratch, bytes(data[:cut] if cut is not None else data))


OFFSETS = st.one_of(st.integers(min_value=-2, max_value=1 << 16), EXTREME.map(lambda v: v % (1 << 63)),
                    st.sampled_from([1 << 40, 15 << 40, (1 << 62) + 1]))


@budget(300)
@given(records=st.lists(st.tuples(OFFSETS, st.binary(max_size=64)), max_size=6), with_dump=st.booleans(),
       end=st.booleans(), sizes=st.lists(st.tuples(st.integers(min_value=0, max_value=5), EXTREME), max_size=2),
       edits=EDITS)
def test_flattened_reader_and_reassemble(scratch: Path, records, with_dump, end, sizes, edits) -> None:
    real = [(0, KDUMP)] if with_dump else []
    stream = bytearray(crafted.flattened(real + list(records), end_marker=end))
    for index, value in sizes:  # a record header's size field, lying
        at = 4096 + (16 + len(KDUMP) if with_dump and index else 0) + 8
        if at + 8 <= len(stream):
            struct.pack_into(">Q", stream, at, value % (1 << 64))
    data = edited(bytes(stream), [(4096 + at, b) for at, b in edits])
    describe_bytes(scratch, data)
    out = scratch / "reassembled"
    for leftover in (out, scratch / "reassembled.incomplete"):
        leftover.unlink(missing_ok=True)
    bounded(lambda: flattened.reassemble_stream(io.BytesIO(data), str(out), "fuzz"))
    partial = out if out.exists() else scratch / "reassembled.incomplete"
    if partial.exists():
        assert partial.stat().st_size <= 2 * len(data) + flattened.MAX_HOLE


@budget(150)
@given(payload=st.one_of(st.just(KDUMP), st.binary(max_size=256)), edits=EDITS,
       checksums=st.booleans(), cut=st.integers(min_value=0, max_value=64))
def test_lz4_container(scratch: Path, payload, edits, checksums, cut) -> None:
    import lz4.frame
    frame = lz4.frame.compress(payload, content_checksum=checksums, block_checksum=checksums)
    data = edited(frame, edits)
    describe_bytes(scratch, data[:len(data) - cut] if cut < len(data) else data)


@budget(200)
@given(data=st.binary(max_size=600), magic=st.sampled_from([b"", b"\x7fELF\x02\x01", b"KDUMP   ",
                                                           b"makedumpfile\0\0\0\0", b"\x04\x22\x4d\x18"]))
def test_arbitrary_bytes_behind_a_signature(scratch: Path, data: bytes, magic: bytes) -> None:
    if magic or data:
        describe_bytes(scratch, magic + data)
