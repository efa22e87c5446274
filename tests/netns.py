"""Network namespaces for tests: veth pairs, a dnsmasq DHCP/DNS server, TCP listeners.

Every address lives inside namespaces a :class:`Lab` creates; nothing is
routed to or from the host's own namespace.  Each namespace gets its own
``/etc/netns/NAME/resolv.conf`` so that ``ip netns exec`` bind-mounts it over
``/etc/resolv.conf``: code under test writing resolv.conf writes that file,
never the host's.  :meth:`Lab.close` kills every process left in the
namespaces (DHCP clients the code under test started, servers), deletes the
namespaces and their /etc/netns directories, even after a failure.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
_COUNTER = itertools.count()
MARKER = "# kdump-saver test namespace"

#: Runs inside a namespace: checks that /etc/resolv.conf is the namespace's own, then calls bring_up.
_RUNNER = r"""
import json, logging, sys
spec = json.loads(sys.argv[1])
import os
mine, seen = os.stat(spec["resolv_conf"]), os.stat("/etc/resolv.conf")
if (mine.st_dev, mine.st_ino) != (seen.st_dev, seen.st_ino):
    sys.exit("refusing to run: /etc/resolv.conf is not the test namespace's own file")
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
from capture.net import plan as netargs
from capture.net import bringup as network
from capture.errors import KdumpError
try:
    if spec["config"] is not None:
        from capture.config import options as config
        from capture.config import targeturl
        cfg = config.parse_text(spec["config"])
        done = network.prepare(cfg, targeturl.parse(cfg.savedir), cmdline=spec["cmdline"],
                               state_dir=spec["state_dir"], dhcp_client=spec["client"])
        print(json.dumps({"ok": True, "prepared": done}))
        sys.exit(0)
    if spec["netconfig"] is not None:
        from capture.config import options as config
        netconfig = config.parse_text('KDUMP_NETCONFIG="%s"\n' % spec["netconfig"]).netconfig
        plan = netargs.choose_plan(spec["cmdline"], netconfig)
    else:
        plan = netargs.parse_cmdline(spec["cmdline"])
    network.bring_up(plan, spec["target"], spec["timeout"], state_dir=spec["state_dir"],
                     dhcp_client=spec["client"])
except KdumpError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(3)
print(json.dumps({"ok": True}), flush=True)
if spec.get("linger"):                      # stay, as the saver does while it saves
    import time
    time.sleep(spec["linger"])
"""


def ip_netns_available() -> Optional[str]:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' is not installed"
    name = f"kdsprobe{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"'ip netns add' fails here: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def link_kind_available(kind: str) -> Optional[str]:
    """None when the kernel can create links of ``kind`` (bond, vlan, bridge...), else why not."""
    name = f"kdsprobe{os.getpid()}k"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        base = ["ip", "-n", name, "link", "add"]
        if kind == "vlan":
            subprocess.run(base + ["p0", "type", "veth", "peer", "name", "p1"], check=True, capture_output=True)
            argv = base + ["link", "p0", "name", "p0.5", "type", "vlan", "id", "5"]
        else:
            argv = base + ["x0", "type", kind]
        proc = subprocess.run(argv, capture_output=True, text=True)
        return None if proc.returncode == 0 else f"this kernel cannot create {kind} links: {proc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Lab:
    """Namespaces and processes for one test; use as a context manager."""

    def __init__(self) -> None:
        self.prefix = f"kds{os.getpid()}x{next(_COUNTER)}"
        self.namespaces: List[str] = []
        self.processes: List[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="kdump-netns-"))

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building

    def netns(self, label: str) -> str:
        name = f"{self.prefix}{label}"
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"{MARKER} {name}\n")
        self.namespaces.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *args: str) -> str:
        proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def ip_json(self, ns: str, *args: str) -> list:
        out = self.ip(ns, "-j", *args)
        return json.loads(out) if out.strip() else []

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mac_b: Optional[str] = None) -> None:
        """A veth pair: ``name_a`` in ``ns_a`` (up), ``name_b`` in ``ns_b`` (left down)."""
        peer = ["peer", "name", name_b] + (["address", mac_b] if mac_b else []) + ["netns", ns_b]
        self.ip(ns_a, "link", "add", name_a, "type", "veth", *peer)
        self.ip(ns_a, "link", "set", name_a, "up")

    def exec(self, ns: str, argv: Sequence[str], timeout: float = 60, check: bool = True,
             **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"in {ns}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc

    def spawn(self, ns: str, argv: Sequence[str], log_name: str) -> subprocess.Popen:
        log = open(self.tmp / log_name, "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO)
        log.close()
        self.processes.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    # -- servers

    def dnsmasq(self, ns: str, iface: str, dhcp_ranges: Sequence[str], options: Sequence[str] = (),
                hosts: Dict[str, str] = {}, extra: Sequence[str] = ()) -> subprocess.Popen:
        """dnsmasq serving DHCP (and DNS for ``hosts``) on ``iface`` only; waits until it listens."""
        program = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        tag = f"dnsmasq-{ns}"
        argv = [program, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                f"--interface={iface}", "--bind-interfaces", "--except-interface=lo", "--user=root",
                "--group=root", f"--dhcp-leasefile={self.tmp / (tag + '.leases')}",
                f"--pid-file={self.tmp / (tag + '.pid')}", "--log-facility=-", "--log-dhcp",
                "--dhcp-authoritative"]
        argv += [f"--dhcp-range={r}" for r in dhcp_ranges]
        argv += [f"--dhcp-option={o}" for o in options]
        argv += [f"--address=/{name}/{addr}" for name, addr in hosts.items()]
        argv += list(extra)
        proc = self.spawn(ns, argv, tag + ".log")
        self.wait_until(lambda: "started, version" in self.log(tag + ".log") or proc.poll() is not None, 10)
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq failed: {self.log(tag + '.log')}")
        return proc

    def listener(self, ns: str, address: str, port: int) -> subprocess.Popen:
        """A TCP server in ``ns`` that answers every connection with ``kdump-ok <address>``."""
        code = ("import socket,sys\n"
                "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
                "s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); print('listening', flush=True)\n"
                "while True:\n"
                "    c, _ = s.accept(); c.sendall(b'kdump-ok ' + sys.argv[1].encode()); c.close()\n")
        tag = f"listener-{ns}-{port}"
        proc = self.spawn(ns, [PYTHON, "-c", code, address, str(port)], tag + ".log")
        self.wait_until(lambda: "listening" in self.log(tag + ".log") or proc.poll() is not None, 10)
        if proc.poll() is not None:
            raise RuntimeError(f"listener failed: {self.log(tag + '.log')}")
        return proc

    def connect(self, ns: str, address: str, port: int, timeout: float = 5) -> str:
        """What the listener at ``address:port`` says to a client in ``ns`` ('' if unreachable)."""
        code = ("import socket,sys\n"
                "try:\n"
                "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
                "    print(c.recv(100).decode())\n"
                "except OSError as e:\n"
                "    print('')\n")
        return self.exec(ns, [PYTHON, "-c", code, address, str(port), str(timeout)]).stdout.strip()

    # -- the code under test

    def bring_up(self, ns: str, cmdline: str, target: Optional[str], timeout: int,
                 client: Optional[str] = None, netconfig: Optional[str] = None,
                 config: Optional[str] = None) -> "Outcome":
        """Run ``capture.net.bringup.bring_up(parse_cmdline(cmdline), ...)`` inside ``ns``; with
        ``netconfig`` (a KDUMP_NETCONFIG value) the plan is ``choose_plan(cmdline, netconfig)``;
        with ``config`` (sysconfig text) ``network.prepare`` runs instead, for its KDUMP_SAVEDIR."""
        spec = self.bring_up_spec(ns, cmdline, target, timeout, client, netconfig, config)
        proc = self.exec(ns, [PYTHON, "-c", _RUNNER, json.dumps(spec)], timeout=timeout + 60, check=False)
        lines = proc.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        return Outcome(proc.returncode, result.get("error", ""), proc.stderr, Path(spec["state_dir"]),
                       result.get("prepared"))

    def bring_up_spec(self, ns: str, cmdline: str, target: Optional[str], timeout: int,
                      client: Optional[str] = None, netconfig: Optional[str] = None,
                      config: Optional[str] = None, linger: float = 0) -> dict:
        """The JSON the bring-up runner takes (``linger``: seconds it stays after bringing up)."""
        state = self.tmp / f"state-{ns}-{next(_COUNTER)}"
        return {"cmdline": cmdline, "target": target, "timeout": timeout, "state_dir": str(state),
                "client": client, "netconfig": netconfig, "config": config, "linger": linger,
                "resolv_conf": str(Path("/etc/netns") / ns / "resolv.conf")}

    def spawn_bring_up(self, ns: str, spec: dict, log_name: str) -> subprocess.Popen:
        """The bring-up runner of ``spec`` in the background, its output in ``log_name``."""
        return self.spawn(ns, [PYTHON, "-c", _RUNNER, json.dumps(spec)], log_name)

    def run_python(self, ns: str, code: str, *args: str) -> subprocess.CompletedProcess:
        return self.exec(ns, [PYTHON, "-c", code, *args])

    def resolv_conf(self, ns: str) -> str:
        return (Path("/etc/netns") / ns / "resolv.conf").read_text()

    # -- cleaning up

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in self.namespaces:
            self.kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill_namespace_processes(self, ns: str) -> None:
        """Processes still in ``ns`` were started by this test (DHCP clients): end them."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.namespace_pids(ns)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self.wait_until(lambda: not self.namespace_pids(ns), 5)

    @staticmethod
    def namespace_pids(ns: str) -> List[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in proc.stdout.split()]

    @staticmethod
    def wait_until(cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.05)
        return cond()


class Outcome:
    """What one bring_up run inside a namespace gave."""

    def __init__(self, returncode: int, error: str, log: str, state_dir: Path,
                 prepared: Optional[bool] = None) -> None:
        self.prepared = prepared
        self.returncode = returncode
        self.error = error
        self.log = log
        self.state_dir = state_dir

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __repr__(self) -> str:
        return f"Outcome(rc={self.returncode}, error={self.error!r}, log=...{self.log[-3000:]!r})"
