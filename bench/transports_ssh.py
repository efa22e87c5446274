#!/usr/bin/env python3
"""Throughput of the sftp and ssh transports against OpenSSH's own clients.

Starts a private sshd on 127.0.0.1 (as in the tests), then sends the same
payload, in the same run, with:

* our sftp transport, writing the flattened stream's records at their
  offsets (what the saver does on an sftp target), versus ``sftp put`` of the
  rebuilt file;
* our ssh transport, appending the flattened stream (the saver's
  ``vmcore.flat``), versus ``ssh host 'cat > f' < stream``.

Each timing includes connecting and logging in, on both sides; rounds are
interleaved and the median counts.  Our transports make the file durable at
the end (fsync@openssh.com, ``sync FILE``), so the target ratio (<= 1.25) is
judged against OpenSSH doing the same (``put -f``, ``cat > f && sync f``);
the ratio against the plain commands is printed too.  Payloads: the fixture's
``makedumpfile -F -l -d 31`` stream (21.7 MB) and, with ``--big``, the whole
411 MB fixture vmcore as one stream.  Run as root: ``.venv/bin/python
bench/transports_ssh.py [--rounds N] [--big]``.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from capture.config.targeturl import parse  # noqa: E402
from payloads import BLOCK, blocks, flattened_stream, rebuilt, records, sha256  # noqa: E402
from sshlab import fixture_vmcore, ssh_lab  # noqa: E402
from transports import open_target  # noqa: E402
from transports.base import TransportOptions  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big", action="store_true", help="also send the whole 411 MB vmcore as a stream")
    args = ap.parse_args()
    vmcore = fixture_vmcore()
    with ssh_lab("kdump-bench-ssh-") as lab:
        work, server, user, key, dest, known_hosts = (lab.work, lab.server, lab.user, lab.key, lab.dest,
                                                      lab.known_hosts)
        options = TransportOptions(known_hosts=str(known_hosts), ssh_identity=(key,), net_timeout=0)
        ssh_opts = ["-i", key, "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null"]

        flat = flattened_stream(vmcore)
        real = rebuilt(flat, work)
        payloads = [("flattened -l -d 31", flat, real)]
        if args.big:
            payloads.append(("whole vmcore (411 MB)", vmcore, vmcore))

        def url(scheme: str) -> str:
            return server.url(scheme, user.name, str(dest))

        print(f"sshd on 127.0.0.1:{server.port}, {args.rounds} rounds each, median times, connect included")
        worst = 0.0
        for label, stream, target_file in payloads:
            size = stream.stat().st_size

            def ours_sftp(i: int) -> None:
                with open_target(parse(url("sftp")), options) as t:
                    f = t.create("ours-sftp")
                    if stream == target_file:
                        for n, data in enumerate(blocks(stream)):
                            f.pwrite(data, n * BLOCK)
                    else:
                        for offset, data in records(stream):
                            f.pwrite(data, offset)
                    f.close()

            def openssh_sftp(i: int, flags: str = "") -> None:
                batch = work / "batch"
                batch.write_text(f"put {flags} {target_file} {dest}/openssh-sftp\n")
                subprocess.run(["sftp", "-q", "-b", str(batch), "-P", str(server.port), *ssh_opts,
                                f"{user.name}@127.0.0.1"], check=True, stdout=subprocess.DEVNULL)

            def openssh_sftp_fsync(i: int) -> None:
                openssh_sftp(i, "-f")

            def ours_ssh(i: int) -> None:
                with open_target(parse(url("ssh")), options) as t:
                    f = t.create("ours-ssh")
                    for data in blocks(stream):
                        f.write(data)
                    f.close()

            def openssh_ssh(i: int, then: str = "") -> None:
                with open(stream, "rb") as src:
                    subprocess.run(["ssh", "-p", str(server.port), *ssh_opts, f"{user.name}@127.0.0.1",
                                    f"cat > {dest}/openssh-ssh{then}"], stdin=src, check=True)

            def openssh_ssh_sync(i: int) -> None:
                openssh_ssh(i, f" && sync -- {dest}/openssh-ssh")

            methods = {"openssh sftp put": openssh_sftp, "openssh sftp put -f": openssh_sftp_fsync,
                       "our sftp": ours_sftp, "openssh ssh cat": openssh_ssh,
                       "openssh ssh cat+sync": openssh_ssh_sync, "our ssh": ours_ssh}
            times: Dict[str, List[float]] = {name: [] for name in methods}
            order = list(methods)
            for i in range(args.rounds):  # interleaved, so that load from elsewhere hits all alike
                for name in order[i % len(order):] + order[:i % len(order)]:
                    start = time.perf_counter()
                    methods[name](i)
                    times[name].append(time.perf_counter() - start)
            results = {name: statistics.median(t) for name, t in times.items()}
            sent_real = target_file.stat().st_size
            check(dest / "ours-sftp", target_file)
            check(dest / "ours-ssh", stream)
            print(f"\n{label}: stream {size / 1e6:.1f} MB, rebuilt file {sent_real / 1e6:.1f} MB")
            for name, seconds in results.items():
                moved = sent_real if "sftp" in name else size
                print(f"  {name:21s} {seconds:7.3f} s  {moved / seconds / 1e6:7.1f} MB/s")
            for ours, ref, durable in (("our sftp", "openssh sftp put", "openssh sftp put -f"),
                                       ("our ssh", "openssh ssh cat", "openssh ssh cat+sync")):
                ratio = results[ours] / results[ref]
                fair = results[ours] / results[durable]
                worst = max(worst, fair)
                print(f"  ratio {ours} / {ref}: {ratio:.2f};  / {durable} (both make the file durable): "
                      f"{fair:.2f}  {'ok' if fair <= 1.25 else 'ABOVE TARGET 1.25'}")
            for p in dest.iterdir():
                p.unlink()
        print(f"\nworst ratio {worst:.2f} (target <= 1.25)")
        return 0


def check(got: Path, want: Path) -> None:
    if sha256(got) != sha256(want):
        raise SystemExit(f"{got} differs from {want}")


if __name__ == "__main__":
    sys.exit(main())
