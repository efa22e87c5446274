"""The code of the methods :mod:`dataclasses` generates, compiled once when
the capture initrd is built instead of at every start of the saver.

Both sides: :func:`record` runs on the host (``build-initrd``), :func:`use`
when the package :mod:`capture` is imported (in the capture kernel, the
launcher's environment names the cache).

Python 3.11 writes each dataclass's ``__init__``, ``__repr__``, ``__eq__``
(and more for frozen ones) as source text and compiles it with one
``exec(text, globals, locals)`` in the module :mod:`dataclasses`.  On the
capture kernel's single CPU that compiling is a large part of the
interpreter's start-up (measured under QEMU TCG: about 19 ms for each of the
35 dataclasses on the save's path).  :func:`use` gives :mod:`dataclasses`
an ``exec`` that runs the recorded code object for a text recorded at build
time; any other text is compiled as before.  A code object compiled from
the same text by the same interpreter is what ``exec`` would have compiled,
so the classes are the same.

The cache is built by ``build-initrd`` into the root-owned initrd and
trusted as the initrd's byte code is (marshal data is not meant to be
read from anyone else).  It is ignored, never an error, when it is missing, unreadable, from
another interpreter (its magic number differs) or not a cache at all; on a
Python other than 3.11 neither function does anything.  The contract with
:mod:`dataclasses` (one module-level ``exec`` call) is checked by
``tests/test_codecache.py``.
"""
from __future__ import annotations

import builtins
import importlib.util
import marshal
import sys
import zlib
from types import CodeType
from typing import Dict, Mapping, Optional, Sequence

#: the Python versions whose dataclasses compile through one module-level ``exec``
SUPPORTED = ((3, 11),)

#: the environment variable that names the cache file (set by the initrd's launcher)
ENVIRONMENT = "KDUMP_SAVER_CODE_CACHE"

#: where the initrd carries the cache
INITRD_PATH = "/usr/lib/kdump-saver/dataclass-code"

#: a cache (compressed) larger than this is not one of ours
MAX_BYTES = 4 << 20
#: nor one that inflates to more than this
MAX_RAW_BYTES = 16 << 20


def supported(version: Sequence[int] = sys.version_info) -> bool:
    return tuple(version[:2]) in SUPPORTED


def load(path: str) -> Dict[str, CodeType]:
    """The recorded code objects by source text; empty when ``path`` is not a
    cache this interpreter can use."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            return {}
        inflate = zlib.decompressobj()
        raw = inflate.decompress(data, MAX_RAW_BYTES)
        if inflate.unconsumed_tail or not inflate.eof:
            return {}
        cache = marshal.loads(raw)
    except (OSError, EOFError, ValueError, TypeError, zlib.error, MemoryError):
        return {}
    if not isinstance(cache, dict) or cache.get("magic") != importlib.util.MAGIC_NUMBER:
        return {}
    code = cache.get("code")
    if not isinstance(code, dict):
        return {}
    return {text: obj for text, obj in code.items() if isinstance(text, str) and isinstance(obj, CodeType)}


def _compile(source: str) -> CodeType:
    """``source`` compiled as ``exec`` in dataclasses.py compiles it: that module has no
    ``__future__`` imports, so no flags are inherited (this one's would add annotations)."""
    return compile(source, "<string>", "exec", dont_inherit=True)


class CachedExec:
    """``exec`` for :mod:`dataclasses`: a recorded text runs its recorded code;
    any other text is compiled as usual (and counted in :attr:`compiled`)."""

    def __init__(self, code: Mapping[str, CodeType]) -> None:
        self.code = code
        self.compiled = 0
        """Texts that were not recorded."""

    def __call__(self, source: object, globals: Optional[dict] = None, locals: Optional[Mapping] = None) -> None:
        if isinstance(source, str):
            found = self.code.get(source)
            if found is None:
                self.compiled += 1
                found = self._compile(source)
            source = found
        builtins.exec(source, globals, locals)  # type: ignore[arg-type]

    def _compile(self, source: str) -> CodeType:
        return _compile(source)


def use(path: Optional[str]) -> Optional[CachedExec]:
    """Make :mod:`dataclasses` run the code recorded in ``path``; call it before
    the first dataclass is made.  None (nothing changed) without a usable cache."""
    if not path or not supported():
        return None
    code = load(path)
    if not code:
        return None
    import dataclasses
    hook = CachedExec(code)
    dataclasses.exec = hook  # type: ignore[attr-defined]  # shadows the builtin in that module only
    return hook


class Recorder(CachedExec):
    """``exec`` for :mod:`dataclasses` on the host: compiles as ``exec`` does and keeps the result."""

    def __init__(self) -> None:
        self.code: Dict[str, CodeType] = {}
        super().__init__(self.code)

    def _compile(self, source: str) -> CodeType:
        code = self.code[source] = _compile(source)
        return code


# Run by the initrd's interpreter (the magic number must be its own).
# Arguments: the cache file, the sys.path entries (newline-separated), the modules (newline-separated).
_RECORDER = r'''
import sys
out, path, modules = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [p for p in path.split("\n") if p]
import dataclasses, importlib, importlib.util, marshal, zlib
from capture.codecache import Recorder, supported
if not supported():
    print(0)
    sys.exit(0)
recorder = Recorder()
dataclasses.exec = recorder
for name in modules.split("\n"):
    if name:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{name}: {exc!r}", file=sys.stderr)
with open(out, "wb") as f:
    f.write(zlib.compress(marshal.dumps({"magic": importlib.util.MAGIC_NUMBER, "code": recorder.code}), 9))
print(len(recorder.code))
'''


def record(interpreter: str, python_path: Sequence[str], modules: Sequence[str], out: str) -> int:
    """Import ``modules`` with ``interpreter`` (its sys.path starting with
    ``python_path``) and write the code of every dataclass method they made
    to ``out``; return how many.  0, and no file, on a Python other than 3.11
    or when the interpreter fails (the capture kernel then compiles as usual)."""
    import subprocess  # only on the host

    proc = subprocess.run([interpreter, "-S", "-E", "-c", _RECORDER, out, "\n".join(python_path), "\n".join(modules)],
                          capture_output=True, text=True, errors="surrogateescape", cwd="/",
                          env={"PATH": "/usr/bin:/bin"})
    said = proc.stdout.strip().splitlines()
    try:
        return int(said[-1]) if proc.returncode == 0 and said else 0
    except ValueError:
        return 0
