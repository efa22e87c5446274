"""The Python import closure of the saver, found by tracing at build time.

The capture initrd carries a Python interpreter with only the files the saver
needs: the interpreter binary, the standard-library modules actually
imported, the third-party packages the configured target needs (with the
package metadata they read, such as paramiko's ``*.dist-info``) and our own
packages.  The files are found by running the very interpreter that runs
kdump-saver in a child process started like the initrd starts it (``-S -E``,
an explicit ``sys.path``) and recording, with an audit hook, every file that
importing the roots opens, plus every module's ``__file__``.

Top-level packages that the target does not need are *blocked* in the child:
importing them raises ImportError there, so a hard dependency on, say,
paramiko in a file-target code path shows up at build time, not at crash
time.

Every file keeps its path in the initrd: the interpreter finds its standard
library from its own location, and the launcher puts the recorded
``sys.path`` entries on PYTHONPATH.

The initrd carries byte code only (:func:`compile_sources`): each ``module.py``
becomes ``module.pyc`` beside where the source was (Python's sourceless
import, which ignores ``__pycache__`` once the source is gone), compiled by
the closure's own interpreter with ``dfile`` set to the source path, so
tracebacks and logging still name ``module.py`` and its line numbers.
"""
from __future__ import annotations

import ast
import importlib.util
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from capture.errors import KdumpError

log = logging.getLogger(__name__)

#: third-party top-level packages the saver may use, and what needs each one
OPTIONAL_ROOTS: Dict[str, str] = {
    "smb": "cifs targets",
    "nmb": "cifs targets",
    "lz4": "KDUMP_DUMPFORMAT=raw",
    "lzo": "kdump-saver's own collector (lzo pages; zlib without it)",
}

#: standard-library modules imported lazily at run time, not at import time:
#: host names are IDNA-encoded by socket.getaddrinfo (every str host, ASCII
#: too: the codec, with stringprep and unicodedata, cannot be left out), messages may be
#: encoded to ASCII/latin-1 by the console and by ftplib, and the launcher's
#: ``python -m`` runs the frozen runpy, which imports importlib.util
RUNTIME_STDLIB = ("encodings.idna", "encodings.punycode", "encodings.ascii", "encodings.latin_1",
                  "importlib.util", "importlib.machinery")
#: carried without being imported by the tracer (importing site would run the
#: build system's .pth files): helpers such as a DHCP hook may start Python
#: without -S
STARTUP_FILES = ("os.py", "site.py", "_sitebuiltins.py")

# The child runs with -S: at that point only sys and a few frozen modules are
# loaded, so the tracer itself must not import anything (it would pollute the
# closure).  Arguments: path entries, required, optional, blocked ("\n"-joined).
_TRACER = r'''
import sys
path, required, optional, blocked = (a.split("\n") if a else [] for a in sys.argv[1:5])
sys.path[0:0] = path
opened = set()
def _hook(event, args):
    if event == "open" and args:
        p = args[0]
        if isinstance(p, bytes):
            p = p.decode("utf-8", "surrogateescape")
        if isinstance(p, str):
            opened.add(p)
    elif event == "ctypes.dlopen" and args and isinstance(args[0], str):
        opened.add(args[0])
sys.addaudithook(_hook)
blocked = frozenset(blocked)
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError("not in this initrd: " + name, name=name)
        return None
sys.meta_path.insert(0, _Blocker())
out = sys.stdout
for name in required + optional:
    parent = name.rpartition(".")[0]
    if name not in required and parent in sys.modules and not hasattr(sys.modules[parent], "__path__"):
        continue  # "from module import name": a name, not a submodule
    try:
        __import__(name)
    except BaseException as exc:
        kind = "E" if name in required else "W"
        out.write(kind + " " + name + "\t" + type(exc).__name__ + ": " + str(exc).replace("\n", " ") + "\n")
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else None
    if origin in ("frozen", "built-in"):
        f = None
    out.write("M " + name + "\t" + (f or "") + "\n")
for p in opened:
    out.write("O " + p + "\n")
out.write("P " + sys.prefix + "\n")
for p in sys.path:
    out.write("S " + p + "\n")
out.write("V %d.%d\n" % sys.version_info[:2])
'''


@dataclass(frozen=True)
class Closure:
    """What the initrd must carry for the saver's Python.

    ``files`` are absolute paths, installed at the same path in the initrd;
    ``python_path`` is what the launcher puts on PYTHONPATH.
    """

    interpreter: str
    version: str
    prefix: str
    stdlib_dir: str
    python_path: Tuple[str, ...]
    files: Tuple[str, ...]
    directories: Tuple[str, ...]
    modules: Dict[str, str] = field(default_factory=dict)
    warnings: Tuple[str, ...] = ()

    @property
    def stdlib_modules(self) -> List[str]:
        """Names of the standard-library modules in the closure (sorted)."""
        names = getattr(sys, "stdlib_module_names", None)

        def is_stdlib(name: str, path: str) -> bool:
            if name == "__main__":
                return True
            if path:
                return _under(path, self.stdlib_dir) and "/site-packages/" not in path
            return names is None or name.partition(".")[0] in names

        return sorted(n for n, f in self.modules.items() if is_stdlib(n, f))

    @property
    def sources(self) -> List[str]:
        """The ``.py`` files of the closure: carried as byte code, not as source."""
        return [f for f in self.files if f.endswith(".py")]

    @property
    def carried_files(self) -> List[str]:
        """The files carried as they are: everything but the sources and the
        ``__pycache__`` byte code a sourceless import would never read."""
        return [f for f in self.files if not f.endswith(".py") and "/__pycache__/" not in f]

    @property
    def packages(self) -> List[str]:
        """Top-level names of the non-stdlib packages in the closure."""
        stdlib = set(self.stdlib_modules)
        return sorted({n.partition(".")[0] for n, f in self.modules.items() if n not in stdlib})


def real_interpreter(executable: Optional[str] = None) -> str:
    """The interpreter binary behind ``executable`` (default: the running one),
    with virtual-environment symlinks resolved."""
    path = os.path.realpath(executable or sys.executable)
    if not os.access(path, os.X_OK):
        raise KdumpError(f"the Python interpreter {path} is not executable")
    return path


def package_root(package: str) -> str:
    """The sys.path entry that holds ``package`` in the running interpreter."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise KdumpError(f"cannot find the Python package {package!r}")
    origin = Path(spec.origin)
    depth = package.count(".") + (2 if origin.name == "__init__.py" else 1)
    return str(origin.parents[depth - 1])


def static_imports(source_files: Iterable[str]) -> Set[str]:
    """Every module named by an import statement in ``source_files``,
    including imports inside functions (lazy imports)."""
    names: Set[str] = set()
    for path in source_files:
        try:
            tree = ast.parse(Path(path).read_text(encoding="utf-8"), path)
        except (OSError, SyntaxError, ValueError) as exc:
            log.debug("cannot scan %s: %s", path, exc)
            continue
        module = _module_name_for(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(module, node.module, node.level, path)
                if base:
                    names.add(base)
                    names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return names


def trace(required: Sequence[str], optional: Sequence[str] = (),
          allowed_roots: Iterable[str] = (), path: Sequence[str] = (),
          executable: Optional[str] = None, always: Sequence[str] = ()) -> Closure:
    """Import ``required`` and ``optional`` in a child interpreter and return
    the closure.

    ``allowed_roots``: which of :data:`OPTIONAL_ROOTS` may be imported (the
    others are blocked).  ``path``: sys.path entries for our packages and
    the dependencies.  ``always``: extra files to carry whole (our own
    package sources).  A required module that fails to import is a
    :class:`KdumpError`; an optional one is only logged.  ``optional`` may
    name submodules of a required package, such as ``foo.bar`` where only
    ``foo`` exists; those are tried and their failures ignored.
    """
    python = real_interpreter(executable)
    blocked = sorted(set(OPTIONAL_ROOTS) - set(allowed_roots))
    argv = [python, "-S", "-E", "-c", _TRACER,
            "\n".join(path), "\n".join(required), "\n".join(optional), "\n".join(blocked)]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="surrogateescape",
                          cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if proc.returncode != 0:
        raise KdumpError(f"tracing the saver's imports with {python} failed: "
                         f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    modules: Dict[str, str] = {}
    opened: List[str] = []
    sys_path: List[str] = []
    errors: List[str] = []
    warnings: List[str] = []
    prefix = version = ""
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "M":
            name, _, f = rest.partition("\t")
            modules[name] = f
        elif tag == "O":
            opened.append(rest)
        elif tag == "S":
            sys_path.append(rest)
        elif tag == "P":
            prefix = rest
        elif tag == "V":
            version = rest
        elif tag == "E":
            errors.append(rest)
        elif tag == "W":
            warnings.append(rest)
    if errors:
        raise KdumpError("the capture initrd would lack Python modules the saver needs: "
                         + "; ".join(e.replace("\t", " -> ") for e in errors))
    for w in warnings:
        log.debug("optional import skipped: %s", w.replace("\t", " -> "))
    stdlib = _stdlib_dir(modules, prefix, version)
    roots = [p for p in sys_path if p and os.path.isdir(p)]
    files: Set[str] = {python}
    for f in modules.values():
        if f and os.path.isfile(f):
            files.add(f)
            if f.endswith(".py"):
                pyc = importlib.util.cache_from_source(f)
                if os.path.isfile(pyc):
                    files.add(pyc)
    for f in opened:
        f = os.path.normpath(f)
        if os.path.isfile(f) and any(_under(f, r) for r in roots):
            files.add(f)
    for f in always:
        files.add(f)
    for name in STARTUP_FILES:  # os.py is also the landmark by which Python finds its prefix
        f = os.path.join(stdlib, name)
        if os.path.isfile(f):
            files.add(f)
            pyc = importlib.util.cache_from_source(f)
            if os.path.isfile(pyc):
                files.add(pyc)
    dynload = os.path.join(stdlib, "lib-dynload")
    directories = (dynload,) if os.path.isdir(dynload) else ()
    return Closure(interpreter=python, version=version, prefix=prefix, stdlib_dir=stdlib,
                   python_path=tuple(path), files=tuple(sorted(files)),
                   directories=directories, modules=modules,
                   warnings=tuple(w.replace("\t", " -> ") for w in warnings))


#: compile optimization for the initrd's byte code: 0 keeps docstrings and
#: asserts (paramiko, pyasn1 and our own code assert invariants)
BYTECODE_OPTIMIZE = 0

# Run by the closure's interpreter (the magic number must be its own).
# Arguments: destination root, optimization; source paths on stdin.
_COMPILER = r'''
import py_compile, sys
root, optimize = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    src = line.rstrip("\n")
    if src:
        py_compile.compile(src, cfile=root + src + "c", dfile=src, doraise=True, optimize=optimize,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
'''


def bytecode_path(source: str) -> str:
    """Where the byte code of ``source`` goes in the initrd: ``module.pyc``
    beside ``module.py`` (the location of a sourceless import)."""
    return source + "c"


def compile_sources(interpreter: str, sources: Sequence[str], root: str,
                    optimize: int = BYTECODE_OPTIMIZE) -> List[str]:
    """Compile ``sources`` with ``interpreter`` into ``root`` + the
    :func:`bytecode_path` of each; return those initrd paths.  A source that
    does not compile is a :class:`KdumpError`."""
    if not sources:
        return []
    proc = subprocess.run([interpreter, "-S", "-E", "-c", _COMPILER, root, str(optimize)],
                          input="".join(f"{s}\n" for s in sources), capture_output=True, text=True,
                          errors="surrogateescape", cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if proc.returncode != 0:
        raise KdumpError(f"compiling the saver's Python closure with {interpreter} failed: "
                         f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return [bytecode_path(s) for s in sources]


def _stdlib_dir(modules: Dict[str, str], prefix: str, version: str) -> str:
    enc = modules.get("encodings")
    if enc:
        return os.path.dirname(os.path.dirname(enc))
    return os.path.join(prefix, "lib", f"python{version}")


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") + "/"
    return path.startswith(root)


def _module_name_for(path: str) -> Optional[str]:
    """The dotted module name of a source file inside a package tree."""
    p = Path(path)
    parts = [p.stem] if p.name != "__init__.py" else []
    d = p.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts) or None


def _resolve_relative(module: Optional[str], name: Optional[str], level: int, path: str) -> Optional[str]:
    if level == 0:
        return name
    if not module:
        return None
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = ".".join(parts[:len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def python_sources(directory: str) -> List[str]:
    """The ``.py`` files of a package directory (no tests, no caches)."""
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "tests", "test")]
        out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(out)


def blocked_roots(allowed: Iterable[str]) -> FrozenSet[str]:
    """The optional roots that are refused when only ``allowed`` may be imported."""
    return frozenset(set(OPTIONAL_ROOTS) - set(allowed))
