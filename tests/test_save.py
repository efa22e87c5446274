"""The core save on the real fixture vmcore, to a local directory."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import lz4.frame
import pytest

from capture.config.options import Config
from capture.errors import KdumpError
from capture.save.sequence import save
from conftest import REPO, sha256_of
from servers.common import children_of

CLI = [sys.executable, "-m", "capture.cli"]
PANIC = "Kernel panic - not syncing: sysrq triggered crash"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def only_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("fmt,flag", [("compressed", "-c"), ("lzo", "-l"), ("elf", "-E")])
@pytest.mark.parametrize("level", [0, 1, 31])
def test_saved_vmcore_equals_direct_makedumpfile_output(tmp_path, fixture_vmcore, reference_dumps,
                                                        fmt, flag, level):
    result = save(Config(dumpformat=fmt, dumplevel=level), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path))
    saved = tmp_path / result.directory / "vmcore"
    assert sha256_of(saved) == sha256_of(reference_dumps.direct(flag, level))
    readme = (tmp_path / result.directory / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    assert f"sha256: {sha256_of(saved)}" in readme


def test_dmesg_of_saved_vmcore_has_the_panic(tmp_path, fixture_vmcore, makedumpfile):
    result = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    out = tmp_path / "dmesg-again.txt"
    subprocess.run([makedumpfile, "--dump-dmesg", str(tmp_path / result.directory / "vmcore"), str(out)],
                   check=True, capture_output=True)
    assert PANIC in out.read_text()
    assert out.read_bytes() == (tmp_path / result.directory / "dmesg.txt").read_bytes()


def test_directory_layout_modes_and_readme(tmp_path, fixture_vmcore, fixture_dmesg):
    result = save(Config(dumpformat="lzo"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    d = tmp_path / result.directory
    assert d.name == "2026-11-26-06-51"  # CRASHTIME 1795675891 in UTC, local target: no host
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    names = sorted(p.name for p in d.iterdir())
    assert names == [".kdump-saver", "README.txt", "dmesg.txt", "vmcore"]
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert (d / "dmesg.txt").read_bytes() == fixture_dmesg.read_bytes()
    readme = (d / "README.txt").read_text()
    for expected in ("kernel release: 6.1.0-56-cloud-amd64", "crash time: 2026-11-26 06:51:31 UTC",
                     f"panic: {PANIC}", "dump level: 31", "kdump-compressed (lzo)",
                     "memory size:", "saved: vmcore 21738267 bytes", "duration:",
                     f"crash /usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64 {d}/vmcore"):
        assert expected in readme, expected
    assert "INCOMPLETE" not in readme


def test_second_dump_in_the_same_minute_gets_a_suffix(tmp_path, fixture_vmcore):
    first = save(Config(dumpformat="lzo"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    before = sha256_of(tmp_path / first.directory / "vmcore")
    second = save(Config(dumpformat="lzo"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    assert second.directory == first.directory + ".2"
    assert sha256_of(tmp_path / first.directory / "vmcore") == before


@pytest.mark.parametrize("fmt", ["snappy", "zstd"])
def test_format_missing_from_makedumpfile_falls_back_to_lzo(tmp_path, fixture_vmcore, reference_dumps,
                                                            makedumpfile, fmt):
    built = subprocess.run([makedumpfile, "-v"], capture_output=True, text=True).stdout
    if f"{fmt}\tenabled" in built:
        pytest.skip(f"this makedumpfile has {fmt}: no fallback to test")
    result = save(Config(dumpformat=fmt, dumplevel=31), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    d = tmp_path / result.directory
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))
    readme = (d / "README.txt").read_text()
    assert f"built without {fmt}; using lzo instead" in readme


def test_raw_format_is_an_lz4_frame_of_the_vmcore(tmp_path, fixture_vmcore):
    result = save(Config(dumpformat="raw"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    packed = tmp_path / result.directory / "vmcore.lz4"
    digest = hashlib.sha256()
    with lz4.frame.open(packed, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == sha256_of(fixture_vmcore)
    assert packed.stat().st_size < fixture_vmcore.stat().st_size // 2


def test_format_none_saves_the_kernel_log_only(tmp_path, fixture_vmcore, fixture_dmesg):
    result = save(Config(dumpformat="none"), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    d = tmp_path / result.directory
    assert sorted(p.name for p in d.iterdir()) == [".kdump-saver", "README.txt", "dmesg.txt"]
    assert (d / "dmesg.txt").read_bytes() == fixture_dmesg.read_bytes()
    assert "saved successfully" in (d / "README.txt").read_text()


def test_cli_save_with_a_suse_config(tmp_path, fixture_vmcore, reference_dumps):
    conf = tmp_path / "kdump"
    target = tmp_path / "crash dumps"
    conf.write_text('## Path: System/Kernel/Kdump\n'
                    f'KDUMP_SAVEDIR="file://{target.as_posix().replace(" ", "%20")}"\n'
                    'KDUMP_DUMPLEVEL="31"\nKDUMP_DUMPFORMAT="lzo"\nKDUMP_KEEP_OLD_DUMPS="5"\n')
    res = run_cli("save", "--config", str(conf), "--vmcore", str(fixture_vmcore))
    assert res.returncode == 0, res.stderr
    assert "dump saved" in res.stderr and "progress:" in res.stderr
    d = only_dir(target)
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))


def test_makedumpfile_failure_is_saved_by_our_own_collector(tmp_path, fixture_vmcore, reference_dumps):
    """makedumpfile fails (here: an option it refuses): the vmcore is started
    again with kdump-saver's collector, byte for byte what makedumpfile 1.7.2 writes."""
    result = save(Config(dumpformat="lzo", dumplevel=31, makedumpfile_options="--no-such-option"),
                  vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    d = tmp_path / result.directory
    readme = (d / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    assert "collector: kdump-saver" in readme and "makedumpfile failed (exit status 1)" in readme
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))


def test_truncated_vmcore_is_refused_before_anything_is_written(tmp_path, fixture_vmcore):
    cut = tmp_path / "vmcore.cut"
    with open(fixture_vmcore, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(8 << 20))
    target = tmp_path / "target"
    res = run_cli("save", "--vmcore", str(cut), "--savedir", str(target))
    assert res.returncode == 1
    assert "is truncated" in res.stderr and "Traceback" not in res.stderr
    assert not target.exists() or not any(target.iterdir())


def test_a_file_that_is_not_a_vmcore_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a kernel dump\n" * 100)
    res = run_cli("save", "--vmcore", str(junk), "--savedir", str(tmp_path / "target"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and str(junk) in res.stderr


def test_bad_target_url_is_a_clear_error(tmp_path, fixture_vmcore):
    res = run_cli("save", "--vmcore", str(fixture_vmcore), "--savedir", "sftp://root:hunter2@[::1/x")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr


def _collectors_running() -> list:
    """Our child processes that are a collector (makedumpfile or kdump-saver's), zombies included."""
    found = []
    for pid in children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"makedumpfile" in cmdline or b"capture.save.pycollector" in cmdline:
            found.append((pid, cmdline.decode(errors="replace")))
    return found


def test_the_collector_started_early_survives_a_failed_target(tmp_path, fixture_vmcore, reference_dumps):
    """The collector starts before any target is opened (its start-up overlaps the size
    estimate); a first target that fails before writing leaves it to the next one, whose
    vmcore is the one makedumpfile writes, and nothing is left running."""
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the target directory should be\n")
    good = tmp_path / "good"
    result = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                  savedir=f"file://{blocked}/dumps file://{good}")
    d = good / result.directory
    assert "failed" in (d / "README.txt").read_text()
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))
    assert _collectors_running() == []


def test_no_collector_is_left_running_when_no_target_takes_the_dump(tmp_path, fixture_vmcore, makedumpfile):
    """Every target fails: the collector started early is stopped and reaped, not left
    blocked on its full pipe."""
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the target directory should be\n")
    for cpus in (1, 2):  # makedumpfile; kdump-saver's parallel collector (makedumpfile before 1.7.8)
        with pytest.raises(KdumpError):
            save(Config(dumpformat="lzo", dumplevel=0, cpus=cpus), vmcore=str(fixture_vmcore),
                 savedir=str(blocked / "dumps"))
    assert _collectors_running() == []


def test_the_size_is_estimated_only_when_the_room_may_be_too_small(tmp_path, small_fs, fixture_vmcore, caplog):
    """On a target with room for even an uncompressed dump of the whole memory the
    estimate (CPU time the collector needs) is skipped; on a tight one it is made and
    recorded, and it is close to what the dump took."""
    caplog.set_level("INFO")
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore), savedir=str(roomy))
    assert "more than the dump of" in caplog.text and "expected to take" not in caplog.text
    assert "expected size before saving" not in (only_dir(roomy) / "README.txt").read_text()

    caplog.clear()
    tight = small_fs(200)  # less than the fixture's 512 MB of memory
    save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=2), vmcore=str(fixture_vmcore), savedir=str(tight))
    assert "expected to take" in caplog.text
    made = only_dir(tight)
    noted = [line for line in (made / "README.txt").read_text().splitlines() if "expected size before saving" in line]
    assert len(noted) == 1, noted
    expected = int(noted[0].split("saving: ")[1].split()[0])
    actual = (made / "vmcore").stat().st_size
    assert 0.5 * actual < expected < 2 * actual, (expected, actual)


@pytest.mark.parametrize("level", [0, 31])
def test_no_dump_is_larger_than_the_worst_case_the_estimate_is_skipped_for(tmp_path, fixture_vmcore, level):
    from capture.formats.elfcore import ElfCore
    from capture.save.sequence import worst_case_size

    save(Config(dumpformat="lzo", dumplevel=level), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    with ElfCore.open(str(fixture_vmcore)) as core:
        memory = core.memory_size
    assert (only_dir(tmp_path) / "vmcore").stat().st_size <= worst_case_size(memory)
