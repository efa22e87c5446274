"""Checking a saved dump on the host, with the tools an administrator uses.

:func:`dump_dirs` finds kdump-saver's directories under an export;
:func:`check_saved` checks one of them: README.txt says ``saved
successfully``, modes are 0700/0600, ``makedumpfile --dump-dmesg`` of the
vmcore (a flattened one rebuilt with ``makedumpfile -R`` first) holds the
panic line and the run's marker and equals the saved ``dmesg.txt``, and
``crash`` with the kernel's -dbg vmlinux reports the panic and a backtrace
through ``sysrq_handle_crash``.  Every failed check is collected as text in
:class:`Verdict` rather than raised, so a caller can show all of them next
to the console log.
"""
from __future__ import annotations

import re
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

PANIC = "Kernel panic - not syncing: sysrq triggered crash"
CRASH_PANIC = f'PANIC: "{PANIC}"'
BACKTRACE_FUNCTION = "sysrq_handle_crash"
MARKER_FILE = ".kdump-saver"
README = "README.txt"
DMESG = "dmesg.txt"
VMCORE_NAMES = ("vmcore", "vmcore.flat")


@dataclass
class Verdict:
    """The outcome of the checks of one dump directory."""

    directory: Optional[Path]
    problems: List[str] = field(default_factory=list)
    readme: Dict[str, str] = field(default_factory=dict)
    crash_summary: str = ""
    vmcore: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


def dump_dirs(export: Path) -> List[Path]:
    """kdump-saver's dump directories (those holding its marker), by name."""
    if not export.is_dir():
        return []
    return sorted(p for p in export.iterdir() if p.is_dir() and (p / MARKER_FILE).is_file())


def parse_readme(text: str) -> Dict[str, str]:
    """The ``key: value`` lines of README.txt (first occurrence of each key)."""
    facts: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and not key.startswith(" ") and key not in facts:
            facts[key.strip()] = value.strip()
    return facts


def check_saved(directory: Path, vmlinux: Path, marker: str, kernel_release: str,
                check_modes: bool = True) -> Verdict:
    """All checks of a dump that must have been saved completely."""
    v = Verdict(directory)
    readme = directory / README
    if not v.expect(readme.is_file(), f"{directory}: no {README}"):
        return v
    text = readme.read_text(errors="replace")
    v.readme = parse_readme(text)
    v.expect(v.readme.get("vmcore status") == "saved successfully",
             f"{readme}: vmcore status is {v.readme.get('vmcore status')!r}, not 'saved successfully'")
    v.expect("INCOMPLETE" not in text, f"{readme} still says INCOMPLETE")
    v.expect(v.readme.get("kernel release") == kernel_release,
             f"{readme}: kernel release {v.readme.get('kernel release')!r}, expected {kernel_release!r}")
    v.expect(PANIC in v.readme.get("panic", ""), f"{readme}: panic line {v.readme.get('panic')!r}")
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".incomplete")]
    v.expect(not leftovers, f"{directory}: unfinished files {leftovers}")
    if check_modes:
        _check_modes(v, directory)
    vmcores = [directory / n for n in VMCORE_NAMES if (directory / n).is_file()]
    if not v.expect(len(vmcores) == 1, f"{directory}: expected one of {VMCORE_NAMES}, found "
                                       f"{sorted(p.name for p in directory.iterdir())}"):
        return v
    v.vmcore = vmcores[0]
    saved = v.readme.get("saved", "").split(" ")
    v.expect(saved[:2] == [v.vmcore.name, str(v.vmcore.stat().st_size)],
             f"{readme}: 'saved: {v.readme.get('saved')}' does not match {v.vmcore.name} of "
             f"{v.vmcore.stat().st_size} bytes")
    dmesg = extract_dmesg(v.vmcore)
    if v.expect(dmesg is not None, f"makedumpfile --dump-dmesg {v.vmcore} failed"):
        assert dmesg is not None
        v.expect(PANIC in dmesg, f"the vmcore's kernel log lacks {PANIC!r}")
        v.expect(marker in dmesg, f"the vmcore's kernel log lacks this run's marker {marker!r}: "
                                  "is it the dump of another crash?")
        saved_dmesg = directory / DMESG
        if v.expect(saved_dmesg.is_file(), f"{directory}: no {DMESG}"):
            v.expect(saved_dmesg.read_text(errors="replace") == dmesg,
                     f"{saved_dmesg} differs from makedumpfile --dump-dmesg of {v.vmcore.name}")
    if v.expect(vmlinux.is_file(), f"{vmlinux} is missing (the kernel's -dbg package)"):
        out = run_crash(vmlinux, v.vmcore)
        v.crash_summary = summarize_crash(out)
        v.expect(CRASH_PANIC in out, f"crash does not report {CRASH_PANIC}:\n{out[-3000:]}")
        v.expect(re.search(rf"\b{BACKTRACE_FUNCTION}\b", _section(out, "bt")) is not None,
                 f"crash's backtrace does not pass through {BACKTRACE_FUNCTION}:\n{out[-3000:]}")
    return v


def _check_modes(v: Verdict, directory: Path) -> None:
    mode = stat.S_IMODE(directory.stat().st_mode)
    v.expect(mode == 0o700, f"{directory} has mode {mode:04o}, not 0700")
    for p in directory.iterdir():
        if p.is_file():
            mode = stat.S_IMODE(p.stat().st_mode)
            v.expect(mode == 0o600, f"{p} has mode {mode:04o}, not 0600")


def is_flattened(path: Path) -> bool:
    """makedumpfile's flattened format starts with the string ``makedumpfile``."""
    with open(path, "rb") as f:
        return f.read(12) == b"makedumpfile"


def extract_dmesg(vmcore: Path) -> Optional[str]:
    """``makedumpfile --dump-dmesg`` of a dump (ELF or kdump-compressed; a
    flattened file is first rebuilt with ``makedumpfile -R``)."""
    with tempfile.TemporaryDirectory(prefix="qharness-dmesg.") as tmp:
        source = vmcore
        if is_flattened(vmcore):
            source = Path(tmp) / "vmcore"
            with open(vmcore, "rb") as flat:
                rebuilt = subprocess.run(["makedumpfile", "-R", str(source)], stdin=flat,
                                         capture_output=True, text=True)
            if rebuilt.returncode != 0:
                return None
        out = Path(tmp) / "dmesg"
        proc = subprocess.run(["makedumpfile", "--dump-dmesg", str(source), str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            return None
        return out.read_text(errors="replace")


def run_crash(vmlinux: Path, vmcore: Path, timeout: float = 300) -> str:
    """crash's answer to ``sys`` and ``bt``, each section introduced by ``== CMD ==``."""
    with tempfile.NamedTemporaryFile("w", prefix="qharness-crash.", suffix=".cmd") as cmds:
        cmds.write("set scroll off\n!echo '== sys =='\nsys\n!echo '== bt =='\nbt\nexit\n")
        cmds.flush()
        proc = subprocess.run(["crash", "-s", "-i", cmds.name, str(vmlinux), str(vmcore)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    return proc.stdout + ("\n" + proc.stderr if proc.stderr.strip() else "")


def _section(out: str, name: str) -> str:
    start = out.find(f"== {name} ==")
    return out[start:] if start >= 0 else out


def summarize_crash(out: str) -> str:
    """The lines of ``sys`` and the first frames of ``bt`` an administrator reads first."""
    keep: List[str] = []
    for line in _section(out, "sys").splitlines()[1:]:
        if line.startswith("== bt =="):
            break
        if line.strip():
            keep.append(line.rstrip())
    frames = [line.rstrip() for line in _section(out, "bt").splitlines()[1:] if line.strip()]
    return "\n".join(keep + [""] + frames[:12])
