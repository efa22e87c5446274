#!/usr/bin/env python3
"""Throughput of the ftp and cifs transports against curl and smbclient.

Starts a private vsftpd and a private smbd on 127.0.0.1 (as the tests do),
then sends the same payload, in the same run, with:

* our ftp transport appending the flattened stream (the saver's
  ``vmcore.flat``: STOR to a temporary name, then RNFR/RNTO) versus
  ``curl -T`` of the same file;
* our cifs transport writing the flattened stream's records at their offsets
  (what the saver does on a cifs target), then renaming, versus
  ``smbclient -c 'put'`` of the rebuilt file;
* our cifs transport appending the flattened stream versus ``smbclient put``
  of the stream file.

Each timing includes connecting and logging in, on both sides (curl and
smbclient also pay for starting a process).  Credentials go to curl and
smbclient through 0600 files, never on their command lines.  Every result is
checked on the server's disk.  Prints MB/s and the ratio of times ours /
reference (target: <= 1.25).  Payloads: the fixture's ``makedumpfile -F -l
-d 31`` stream (21.7 MB) and, with ``--big``, the whole 411 MB fixture
vmcore as one stream.  Run as root:
``.venv/bin/python bench/transports_net.py [--rounds N] [--big]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from capture.config.targeturl import parse  # noqa: E402
from conftest import CACHE, FIXTURE_NAME  # noqa: E402
from payloads import blocks, flattened_stream, rebuilt, records, sha256  # noqa: E402
from servers.ftpd import FtpServer  # noqa: E402
from servers.smbd import SambaServer  # noqa: E402
from transports import open_target  # noqa: E402
from transports.base import TransportOptions  # noqa: E402

OPTIONS = TransportOptions(net_timeout=0)


def median_time(rounds: int, run: Callable[[int], None]) -> float:
    times: List[float] = []
    for i in range(rounds):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours_append(url: str, src: Path, name: str) -> None:
    with open_target(parse(url), OPTIONS) as t:
        f = t.create(name + ".incomplete")
        for b in blocks(src):
            f.write(b)
        f.close()
        t.rename(name + ".incomplete", name)


def ours_offsets(url: str, flat: Path, name: str) -> None:
    with open_target(parse(url), OPTIONS) as t:
        f = t.create(name + ".incomplete")
        for offset, data in records(flat):
            f.pwrite(data, offset)
        f.close()
        t.rename(name + ".incomplete", name)


def run_checked(argv: List[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def report(label: str, size: int, ours: float, ref: float, ref_name: str) -> float:
    ratio = ours / ref
    print(f"{label:<44} ours {size / ours / 1e6:8.1f} MB/s ({ours:6.3f} s)   "
          f"{ref_name} {size / ref / 1e6:8.1f} MB/s ({ref:6.3f} s)   ratio {ratio:5.2f}"
          f"{'' if ratio <= 1.25 else '   ABOVE 1.25'}")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big", action="store_true", help="also send the whole 411 MB vmcore as a stream")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (creates Unix users and runs vsftpd and smbd)", file=sys.stderr)
        return 2
    for prog in ("curl", "smbclient", "makedumpfile"):
        if shutil.which(prog) is None:
            print(f"{prog} is missing (bash tests/setup.sh installs it)", file=sys.stderr)
            return 2
    vmcore = CACHE / f"{FIXTURE_NAME}.elf"
    if not vmcore.exists():
        print(f"{vmcore} missing: run the tests once (fixture_vmcore decompresses it)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="kdump-bench-net-"))
    ftpd = FtpServer(work / "ftpd")
    smbd = SambaServer(work / "smbd")
    ratios: List[float] = []
    try:
        ftpd.start()
        smbd.start()
        netrc = work / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login {ftpd.user} password {ftpd.password}\n")
        netrc.chmod(0o600)
        smbauth = work / "smbauth"
        smbauth.write_text(f"username = {smbd.user}\npassword = {smbd.password}\n")
        smbauth.chmod(0o600)

        flat = flattened_stream(vmcore)
        real = rebuilt(flat, work)
        payloads = [("flattened -l -d 31", flat, real)]
        if args.big:
            payloads.append(("whole vmcore (411 MB)", vmcore, vmcore))
        ftp_dir = ftpd.home / "bench"
        smb_dir = smbd.share_dir / "bench"
        print(f"{args.rounds} rounds each, median; connect and login included on both sides")
        for label, stream, whole in payloads:
            size = stream.stat().st_size
            want = sha256(stream)

            # ftp: append stream vs curl -T
            ours = median_time(args.rounds, lambda i: ours_append(ftpd.url("/bench"), stream, f"ours{i}"))
            ref = median_time(args.rounds, lambda i: run_checked(
                ["curl", "-sS", "--netrc-file", str(netrc), "--ftp-create-dirs", "-T", str(stream),
                 f"ftp://127.0.0.1:{ftpd.port}/bench/curl{i}"]))
            for i in range(args.rounds):
                assert sha256(ftp_dir / f"ours{i}") == want and sha256(ftp_dir / f"curl{i}") == want
                (ftp_dir / f"ours{i}").unlink()
                (ftp_dir / f"curl{i}").unlink()
            ratios.append(report(f"ftp, {label}, appended", size, ours, ref, "curl -T"))

            smbclient = ["smbclient", "-A", str(smbauth), "-p", str(smbd.port), f"//127.0.0.1/{smbd.share}"]
            # cifs: the saver's pattern (records at offsets) vs smbclient put of the rebuilt file
            if whole is not stream:
                want_real = sha256(whole)
                ours = median_time(args.rounds, lambda i: ours_offsets(smbd.url("/bench"), stream, f"ours{i}"))
                ref = median_time(args.rounds, lambda i: run_checked(
                    smbclient + ["-c", f"put {whole} bench/smbclient{i}"]))
                for i in range(args.rounds):
                    assert sha256(smb_dir / f"ours{i}") == want_real
                    assert sha256(smb_dir / f"smbclient{i}") == want_real
                    (smb_dir / f"ours{i}").unlink()
                    (smb_dir / f"smbclient{i}").unlink()
                ratios.append(report(f"cifs, {label}, at offsets", whole.stat().st_size, ours, ref,
                                     "smbclient put"))
            # cifs: append stream vs smbclient put of the same file
            ours = median_time(args.rounds, lambda i: ours_append(smbd.url("/bench"), stream, f"ours{i}"))
            ref = median_time(args.rounds, lambda i: run_checked(
                smbclient + ["-c", f"put {stream} bench/smbclient{i}"]))
            for i in range(args.rounds):
                assert sha256(smb_dir / f"ours{i}") == want and sha256(smb_dir / f"smbclient{i}") == want
                (smb_dir / f"ours{i}").unlink()
                (smb_dir / f"smbclient{i}").unlink()
            ratios.append(report(f"cifs, {label}, appended", size, ours, ref, "smbclient put"))
    finally:
        ftpd.remove()
        smbd.remove()
        shutil.rmtree(work, ignore_errors=True)
    worst = max(ratios)
    print(f"worst ratio {worst:.2f} (target <= 1.25): {'ok' if worst <= 1.25 else 'ABOVE TARGET'}")
    return 0 if worst <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
