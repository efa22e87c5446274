"""KDUMP_CPUS > 1: kdump-saver's collector with worker processes (capture/save/pyworkers.py).

The 6.1 fixture is collected with 2 (and 3) worker processes and compared
byte for byte with the single-process stream, read back page by page with
python3-libkdumpfile and opened with crash; a worker killed with SIGKILL in
the middle of a real run, and a truncated vmcore, end with the same stream
or a clear error, never a hang.  The plan tests check which collector
KDUMP_CPUS leads to with Debian's makedumpfile; whole saves with KDUMP_CPUS=2
go to a directory (the standard vmcore) and to vsftpd on 127.0.0.1, an
append-only target (vmcore.flat).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from capture.config import options
from capture.config.options import Config
from capture.errors import KdumpError
from capture.formats.elfcore import ElfCore
from capture.formats.flattened import reassemble
from capture.save import collector
from capture.save.pycollector import collect
from capture.save.pyworkers import affordable_workers
from conftest import require, require_program
from test_transport_ftp import ftpd  # noqa: F401  (the vsftpd fixture)
from test_pycollector import (COMPARE_PAGES, RELEASE_61, VMLINUX_61, FullDisk, bitmaps, popcount,
                              run_system_python, system_libkdumpfile)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def streams(fixture_vmcore: Path, tmp_path_factory: pytest.TempPathFactory):
    """``streams(level, cpus, compression)``: our flattened stream of the fixture, made once."""
    root = tmp_path_factory.mktemp("parallel")
    made = {}

    def make(level: int, cpus: int, compression: str = "lzo") -> Path:
        path = root / f"d{level}-c{cpus}-{compression}.flat"
        if path not in made:
            with open(path, "wb") as out:
                made[path] = collect(str(fixture_vmcore), level, out, cpus=cpus, compression=compression)
        return path
    return make


def children_of(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


# -- the output ------------------------------------------------------------------------------------

@pytest.mark.parametrize("level,compression,cpus", [(1, "lzo", 2), (31, "zlib", 2), (31, "lzo", 3)])
def test_workers_write_the_single_process_stream_byte_for_byte(streams, level, compression, cpus, caplog):
    single = streams(level, 1, compression).read_bytes()
    with caplog.at_level(logging.INFO, logger="capture.save.pycollector"):
        parallel = streams(level, cpus, compression).read_bytes()
    assert parallel == single
    assert f"collecting with {cpus} worker processes" in caplog.text


def test_libkdumpfile_reads_every_page_of_the_parallel_dump(streams, fixture_vmcore, tmp_path):
    system_libkdumpfile()
    dump = tmp_path / "vmcore"
    reassemble(str(streams(1, 2)), str(dump))
    _, dumped, _ = bitmaps(dump)
    seen = run_system_python(COMPARE_PAGES, str(dump), str(fixture_vmcore))
    assert seen["format"] == "diskdump"
    assert seen["differ"] == 0, seen["first_bad"]
    assert seen["same"] == popcount(dumped)


def test_crash_opens_the_parallel_dump(streams, tmp_path):
    crash = require_program("crash")
    require(os.path.exists(VMLINUX_61), f"{VMLINUX_61} missing: apt-get install linux-image-{RELEASE_61}-dbg")
    dump = tmp_path / "vmcore"
    reassemble(str(streams(31, 2)), str(dump))
    commands = tmp_path / "cmds"
    commands.write_text("bt\nquit\n")
    res = subprocess.run([crash, "-s", "-i", str(commands), VMLINUX_61, str(dump)],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert "sysrq_handle_crash" in out, out[-3000:]


# -- failures --------------------------------------------------------------------------------------

def test_a_killed_worker_is_replaced_and_the_stream_is_unchanged(streams, fixture_vmcore):
    """SIGKILL to a worker of a running `python -m capture.save.pycollector --cpus 2`: the
    collector says so, compresses the rest itself and writes the same stream."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "capture.save.pycollector", "-d", "1", "--cpus", "2",
                             str(fixture_vmcore)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        received = bytearray(proc.stdout.read(4 << 20))  # the writer is under way: its workers run
        workers = children_of(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        received += proc.stdout.read()
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    text = err.decode()
    assert proc.returncode == 0, text[-2000:]
    assert "killed by signal SIGKILL" in text and "compressing the rest in this process" in text
    assert bytes(received) == streams(1, 1).read_bytes()


def test_truncated_vmcore_fails_clearly_with_workers(fixture_vmcore, tmp_path):
    vmcore = tmp_path / "vmcore"
    with open(fixture_vmcore, "rb") as src, open(vmcore, "wb") as dst:
        dst.write(src.read(100 << 20))
    started = time.monotonic()
    before = set(children_of(os.getpid()))  # servers of other tests may run as our children
    with open(tmp_path / "flat", "wb") as out:
        with pytest.raises(KdumpError, match="truncated"):
            collect(str(vmcore), 1, out, cpus=2)
    assert time.monotonic() - started < 120  # generous: a hang would never end
    assert set(children_of(os.getpid())) - before == set(), "worker processes left behind"


def test_write_error_stops_and_reaps_the_workers(fixture_vmcore):
    before = set(children_of(os.getpid()))  # servers of other tests may run as our children
    with pytest.raises(KdumpError, match="No space left on device"):
        collect(str(fixture_vmcore), 1, FullDisk(5 << 20), cpus=2)
    assert set(children_of(os.getpid())) - before == set(), "worker processes left behind"


def test_workers_are_capped_by_available_memory(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  262144 kB\nMemAvailable:  120000 kB\n")
    assert affordable_workers(8, str(meminfo)) == 3  # (120000 KiB - 64 MiB) / 16 MiB
    meminfo.write_text("MemAvailable:  10000 kB\n")
    assert affordable_workers(8, str(meminfo)) == 1
    assert affordable_workers(3, str(tmp_path / "missing")) == 3


# -- which collector KDUMP_CPUS leads to -----------------------------------------------------------

@pytest.fixture(scope="module")
def info(fixture_vmcore: Path) -> dict:
    """The fixture's VMCOREINFO (makedumpfile 1.7.2 filters its kernel correctly)."""
    with ElfCore.open(str(fixture_vmcore)) as core:
        return dict(core.vmcoreinfo)


@pytest.fixture(scope="module")
def debian_makedumpfile() -> collector.Makedumpfile:
    mdf = collector.probe(require_program("makedumpfile"))
    require(mdf.version < collector.THREADS_SAFE_FROM, f"makedumpfile {mdf.version_text} has safe --num-threads")
    return mdf


@pytest.mark.parametrize("cpus,online,threads", [(2, 2, 2), (0, 4, 4), (64, 2, 2), (3, 8, 3), (65536, 1, 1)])
def test_kdump_cpus_above_one_gives_our_parallel_collector(debian_makedumpfile, info, cpus, online, threads):
    config = options.parse_text(f'KDUMP_CPUS="{cpus}"\nKDUMP_DUMPFORMAT=lzo\n')
    plan = collector.plan(config, debian_makedumpfile, info, cpus_online=online)
    assert plan.threads == threads
    if threads > 1:
        assert plan.collector == collector.OWN and "--num-threads" in plan.collector_reason
        assert f"collecting with {threads} worker processes (KDUMP_CPUS={cpus})" in plan.notes
        cmd = collector.command(debian_makedumpfile, plan, "/proc/vmcore")
        assert cmd[cmd.index("--cpus") + 1] == str(threads)
    else:
        assert plan.collector == collector.MAKEDUMPFILE


@pytest.mark.parametrize("flags", [[], ["-S", "-s"]])
def test_our_collector_starts_like_the_saver(flags):
    """The collector's interpreter gets the saver's start-up flags (the capture initrd's
    launcher runs `python -S -s`: no site initialisation in the child either)."""
    code = ("import json, sys; from capture.config.options import Config; from capture.save import collector; "
            "print(json.dumps(collector.command(None, collector.own_plan(Config(cpus=2), 'test'), '/proc/vmcore')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, check=True)
    cmd = json.loads(res.stdout)
    assert cmd[1:cmd.index("-m")] == flags and cmd[cmd.index("-m") + 1] == "capture.save.pycollector"


@pytest.mark.parametrize("value", ["-1", "65537", "two", "1.5"])
def test_kdump_cpus_outside_its_range_is_refused(value):
    with pytest.raises(KdumpError, match="KDUMP_CPUS"):
        options.parse_text(f'KDUMP_CPUS="{value}"\n')


def test_one_cpu_keeps_makedumpfile(debian_makedumpfile, info):
    plan = collector.plan(Config(cpus=1, dumpformat="lzo"), debian_makedumpfile, info, cpus_online=2)
    assert (plan.collector, plan.threads) == (collector.MAKEDUMPFILE, 1)


@pytest.mark.parametrize("settings,why", [({"dumpformat": "elf"}, None),
                                          ({"makedumpfile_options": "-e"}, "MAKEDUMPFILE_OPTIONS")])
def test_what_our_collector_cannot_do_stays_single_threaded_makedumpfile(debian_makedumpfile, info, settings, why):
    plan = collector.plan(Config(cpus=2, **settings), debian_makedumpfile, info, cpus_online=2)
    assert (plan.collector, plan.threads) == (collector.MAKEDUMPFILE, 1)
    if why:
        assert any(why in note and "one thread instead of 2" in note for note in plan.notes)


def test_safe_makedumpfile_keeps_its_own_threads(debian_makedumpfile, info):
    newer = replace(debian_makedumpfile, version=(1, 7, 8))
    plan = collector.plan(Config(cpus=2, dumpformat="lzo"), newer, info, cpus_online=2)
    assert (plan.collector, plan.threads) == (collector.MAKEDUMPFILE, 2)
    assert "--num-threads" in collector.command(newer, plan, "/proc/vmcore")


def test_save_with_two_cpus_says_so_and_writes_the_single_process_dump(fixture_vmcore, streams, tmp_path, caplog,
                                                                       debian_makedumpfile):
    """The whole save on a 2-CPU machine: the console names the workers, the vmcore is the
    standard file the single-process stream rebuilds into."""
    from capture.save.sequence import save

    require((os.cpu_count() or 1) >= 2, "needs at least 2 CPUs")
    with caplog.at_level(logging.INFO):
        result = save(Config(cpus=2, dumpformat="lzo", dumplevel=1, free_disk_size=0),
                      vmcore=str(fixture_vmcore), savedir=str(tmp_path / "dumps"))
    assert "collecting with 2 worker processes (KDUMP_CPUS=2)" in caplog.text
    directory = tmp_path / "dumps" / result.directory
    readme = (directory / "README.txt").read_text()
    assert "collector: kdump-saver" in readme and "--num-threads" in readme
    reference = tmp_path / "reference"
    reassemble(str(streams(1, 1)), str(reference))
    assert (directory / "vmcore").read_bytes() == reference.read_bytes()


def test_stream_target_gets_the_parallel_stream_as_vmcore_flat(ftpd, fixture_vmcore, streams, tmp_path, caplog,
                                                                debian_makedumpfile):
    """An append-only target (ftp) takes the parallel collector's flattened stream unchanged as
    vmcore.flat, which rebuilds into the single-process dump."""
    from capture.save.sequence import save

    require((os.cpu_count() or 1) >= 2, "needs at least 2 CPUs")
    with caplog.at_level(logging.INFO):
        result = save(Config(cpus=2, dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                      savedir=ftpd.url("/parallel"))
    assert "collecting with 2 worker processes (KDUMP_CPUS=2)" in caplog.text
    flat = ftpd.home / "parallel" / result.directory / "vmcore.flat"
    rebuilt, reference = tmp_path / "rebuilt", tmp_path / "reference"
    reassemble(str(flat), str(rebuilt))
    reassemble(str(streams(31, 1)), str(reference))
    assert rebuilt.read_bytes() == reference.read_bytes()


def test_killed_parallel_collector_is_replaced_by_makedumpfile(fixture_vmcore, tmp_path, reference_dumps,
                                                                debian_makedumpfile, caplog):
    """The whole collector process (the writer) dies of SIGKILL during a KDUMP_CPUS=2 save: the
    vmcore is started again with single-threaded makedumpfile and the README says why."""
    from capture.save.sequence import save

    require((os.cpu_count() or 1) >= 2, "needs at least 2 CPUs")
    killed = []
    stop = threading.Event()

    def kill_the_collector() -> None:
        while not stop.is_set() and not killed:
            for pid in children_of(os.getpid()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if b"capture.save.pycollector" in cmdline and children_of(pid):  # its workers run
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_the_collector)
    watcher.start()
    try:
        with caplog.at_level(logging.INFO):
            result = save(Config(cpus=2, dumpformat="lzo", dumplevel=31, free_disk_size=0),
                          vmcore=str(fixture_vmcore), savedir=str(tmp_path / "dumps"))
    finally:
        stop.set()
        watcher.join()
    assert killed, "the collector finished before it could be killed"
    directory = tmp_path / "dumps" / result.directory
    readme = (directory / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    assert f"collector: makedumpfile {debian_makedumpfile.version_text}" in readme
    assert "kdump-saver's collector failed (exit status -9)" in readme
    assert "written again by makedumpfile with one thread" in readme
    assert "starting the vmcore again with makedumpfile" in caplog.text
    assert (directory / "vmcore").read_bytes() == reference_dumps.direct("-l", 31).read_bytes()
