#!/usr/bin/env python3
"""CPU seconds a save over sftp/ssh costs the saving machine, against the C-tools pipeline.

A capture kernel usually has one CPU: every CPU second the saver spends
beside makedumpfile is downtime.  This prints the CPU time (user + system,
every process on the client side: the saver, makedumpfile, the OpenSSH
client and its connection master) of ``kdump-saver save`` of the fixture
vmcore to a private sshd on 127.0.0.1, next to the same figure, measured in
the same run, for the pipeline an administrator would write in a minimal
initrd: ``makedumpfile -F -c -d 31 VMCORE | ssh HOST 'cat > vmcore.flat'``.
The server's processes do not count (they run on another machine).  The
ratio is ours / pipeline, medians of interleaved rounds.

    .venv/bin/python bench/save_cpu.py [--rounds N] [--format compressed|lzo]

To see where the time goes: ``KDUMP_BENCH_PROFILE=/tmp/prof`` writes a
cProfile (CPU time) of each save to /tmp/prof.PID; ``KDUMP_BENCH_WRAP=CMD``
runs each save under CMD (e.g. a script calling ``strace -f -e execve``).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from sshlab import fixture_vmcore, ssh_lab  # noqa: E402

_PR_SET_CHILD_SUBREAPER = 36
#: the save in-process, printing the saver's own CPU seconds (its children excluded)
RUNNER = """
import os, resource, sys
from capture.cli import main
if os.environ.get("KDUMP_BENCH_PROFILE"):
    import cProfile, time
    profile = cProfile.Profile(time.process_time)
    profile.runcall(main, sys.argv[1:])
    profile.dump_stats(os.environ["KDUMP_BENCH_PROFILE"] + "." + str(os.getpid()))
else:
    main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
"""
FLAGS = {"compressed": "-c", "lzo": "-l"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_all(keep: int) -> None:
    """Wait for every descendant but the server ``keep`` (orphans come to us: we are a subreaper)."""
    while True:
        children = set()
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                children.update(int(pid) for pid in f.read().split())
        children.discard(keep)
        if not children:
            return
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def measured(run: Callable[[], None], server_pid: int) -> Tuple[float, float]:
    """(CPU seconds of every process ``run`` started, wall seconds)."""
    reap_all(server_pid)
    before, start = children_cpu(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    reap_all(server_pid)
    return children_cpu() - before, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--format", choices=sorted(FLAGS), default="compressed")
    args = ap.parse_args()
    vmcore = fixture_vmcore()
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    with ssh_lab("kdump-bench-cpu-") as lab:
        work, server, user, key, dest, known_hosts = (lab.work, lab.server, lab.user, lab.key, lab.dest,
                                                      lab.known_hosts)
        conf = work / "conf" / "kdump.conf"
        conf.parent.mkdir()
        env = dict(os.environ, PYTHONPATH=str(REPO))

        own: Dict[str, List[float]] = {"sftp": [], "ssh": []}

        def ours(scheme: str) -> Callable[[], None]:
            def run() -> None:
                conf.write_text(f'KDUMP_SAVEDIR="{server.url(scheme, user.name, str(dest / scheme))}"\n'
                                f'KDUMP_DUMPFORMAT="{args.format}"\nKDUMP_DUMPLEVEL="31"\nKDUMP_CPUS="1"\n'
                                f'KDUMP_SSH_IDENTITY="{key}"\nKDUMP_KNOWN_HOSTS="{known_hosts}"\n'
                                'KDUMP_FREE_DISK_SIZE="1"\nKDUMP_KEEP_OLD_DUMPS="1"\n')
                res = subprocess.run([*os.environ.get("KDUMP_BENCH_WRAP", "").split(), sys.executable, "-S", "-s", "-c", RUNNER, "save", "--config", str(conf),
                                      "--vmcore", str(vmcore)], cwd="/", env=env, check=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                own[scheme].append(float(res.stdout.strip().splitlines()[-1]))
            return run

        def pipeline() -> None:
            ssh = (f"ssh -F /dev/null -p {server.port} -i {key} -o UserKnownHostsFile={known_hosts} "
                   f"-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes {user.name}@127.0.0.1")
            subprocess.run(["sh", "-c", f"makedumpfile -F {FLAGS[args.format]} -d 31 {vmcore} 2>/dev/null "
                                        f"| {ssh} 'cat > {dest}/vmcore.flat'"], check=True)

        methods: Dict[str, Callable[[], None]] = {"pipeline": pipeline, "our sftp": ours("sftp"),
                                                  "our ssh": ours("ssh")}
        cpu: Dict[str, List[float]] = {name: [] for name in methods}
        wall: Dict[str, List[float]] = {name: [] for name in methods}
        order = list(methods)
        for i in range(args.rounds):
            for name in order[i % len(order):] + order[:i % len(order)]:
                c, w = measured(methods[name], server.proc.pid if server.proc else -1)
                cpu[name].append(c)
                wall[name].append(w)
        print(f"fixture {vmcore.name}, makedumpfile {FLAGS[args.format]} -d 31, {args.rounds} rounds, "
              f"medians; load {os.getloadavg()[0]:.1f}")
        reference = statistics.median(cpu["pipeline"])
        for name in methods:
            c, w = statistics.median(cpu[name]), statistics.median(wall[name])
            scheme = name.split()[-1]
            mine = f"  (the saver's own process {statistics.median(own[scheme]):.3f} s)" if scheme in own else ""
            print(f"  {name:10s} CPU {c:6.3f} s  wall {w:6.3f} s  CPU ratio {c / reference:5.2f}{mine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
