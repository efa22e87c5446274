"""capture.codecache: dataclass methods compiled at build time, used in the capture kernel.

Every interpreter that records or uses a cache is a child process: the hook
changes the module ``dataclasses`` for the rest of the process.
"""
from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from capture import codecache
from conftest import require

REPO = Path(__file__).resolve().parents[1]
#: modules on the capture kernel's path with many dataclasses between them
MODULES = ["capture.cli", "capture.commands.capture_boot", "capture.save.boot", "capture.net.bringup",
           "capture.save.sequence", "transports.ssh", "transports.ftp", "transports.file"]



@pytest.fixture(autouse=True)
def python_3_11() -> None:
    require(codecache.supported(), f"the code cache is for Python 3.11 only, not {sys.version.split()[0]}")


#: a child interpreter: imports its arguments, then prints the code of each method of our dataclasses
#: and how many texts were compiled rather than taken from a cache
_REPORT = r'''
import dataclasses, importlib, json, sys
def canonical(code):
    """What defines a code object (marshal's bytes also depend on reference counts)."""
    consts = [canonical(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
            code.co_flags, code.co_argcount, code.co_kwonlyargcount, code.co_posonlyargcount, code.co_qualname,
            code.co_linetable.hex(), code.co_exceptiontable.hex()]
for name in sys.argv[1:]:
    importlib.import_module(name)
methods = {}
for name, module in sorted(sys.modules.items()):
    if not name.startswith(("capture", "transports")):
        continue
    for attr, cls in sorted(vars(module).items()):
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == name:
            for meth in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__"):
                fn = cls.__dict__.get(meth)
                code = getattr(getattr(fn, "__wrapped__", fn), "__code__", None)
                if code is not None:
                    methods[f"{name}.{attr}.{meth}"] = canonical(code)
hook = getattr(dataclasses, "exec", None)
print(json.dumps({"methods": methods, "compiled": getattr(hook, "compiled", None)}))
'''


def child(cache: str, *modules: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(codecache.ENVIRONMENT, None)
    if cache:
        env[codecache.ENVIRONMENT] = cache
    proc = subprocess.run([sys.executable, "-S", "-s", "-c", "import capture.cli\n" + _REPORT, *modules],
                          capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codecache") / "dataclass-code"
    recorded = codecache.record(sys.executable, [str(REPO)], MODULES, str(out))
    assert recorded > 100, "the save's modules make well over 100 dataclass methods"
    return out


def test_dataclasses_compile_through_one_module_level_exec() -> None:
    """The contract with the standard library: if Python stops compiling
    dataclass methods through ``exec`` looked up in the module dataclasses,
    the cache would silently do nothing; this fails instead."""
    proc = subprocess.run([sys.executable, "-S", "-c", r'''
import dataclasses
from capture.codecache import Recorder
recorder = Recorder()
dataclasses.exec = recorder
@dataclasses.dataclass(frozen=True)
class P:
    x: int
    y: str = "a"
assert P(1) == P(1, "a") and repr(P(2)) == "P(x=2, y='a')" and hash(P(1)) == hash(P(1))
print(len(recorder.code))
'''], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 5, "__init__, __repr__, __eq__, __hash__, __setattr__/__delattr__ went through exec"


def test_cached_classes_are_the_classes_compiled_as_usual(cache: Path) -> None:
    plain = child("", *MODULES)
    cached = child(str(cache), *MODULES)
    assert plain["compiled"] is None, "no cache: dataclasses keeps the builtin exec"
    assert cached["compiled"] == 0, "every method of the recorded modules came from the cache"
    assert len(plain["methods"]) > 100
    assert cached["methods"] == plain["methods"], "the same code, method for method"


def test_texts_not_recorded_are_compiled(cache: Path) -> None:
    report = child(str(cache), *MODULES, "capture.formats.kdumpfile", "capture.save.pycollector")
    assert report["compiled"] > 0
    assert report["methods"] == child("", *MODULES, "capture.formats.kdumpfile",
                                      "capture.save.pycollector")["methods"]


def test_the_cache_is_small(cache: Path) -> None:
    assert cache.stat().st_size < 100_000, "every byte of the initrd is reserved memory"


def _write(path: Path, payload: object, magic: bytes = b"") -> Path:
    cache = {"magic": magic or __import__("importlib.util").util.MAGIC_NUMBER, "code": payload}
    path.write_bytes(zlib.compress(marshal.dumps(cache)))
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "not-zlib", "not-a-dict", "other-magic", "no-code",
                                  "bomb", "too-big"])
def test_a_cache_that_is_not_usable_is_ignored(case: str, tmp_path: Path) -> None:
    path = tmp_path / "cache"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not-zlib":
        path.write_bytes(b"\x00" * 100)
    elif case == "not-a-dict":
        path.write_bytes(zlib.compress(marshal.dumps([1, 2, 3])))
    elif case == "other-magic":
        _write(path, {"x": compile("x = 1", "<string>", "exec")}, magic=b"\x00\x00\r\n")
    elif case == "no-code":
        _write(path, ["not", "a", "dict"])
    elif case == "bomb":
        path.write_bytes(zlib.compress(b"\0" * (codecache.MAX_RAW_BYTES + 1), 9))
    elif case == "too-big":
        path.write_bytes(os.urandom(codecache.MAX_BYTES + 1))
    assert codecache.load(str(path)) == {}
    report = child(str(path), "capture.save.sequence")
    assert report["compiled"] is None, "nothing changed in dataclasses"


def test_entries_of_the_wrong_types_are_dropped(tmp_path: Path) -> None:
    code = compile("y = 2", "<string>", "exec")
    path = _write(tmp_path / "cache", {"x = 1": 7, 3: code, "y = 2": code})
    assert codecache.load(str(path)) == {"y = 2": code}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), wrap=st.booleans())
def test_any_bytes_load_without_a_traceback(data: bytes, wrap: bool, tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.write_bytes(zlib.compress(data) if wrap else data)
    assert isinstance(codecache.load(str(path)), dict)


def test_record_with_a_failing_interpreter_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    assert codecache.record("/bin/false", [str(REPO)], MODULES, str(out)) == 0
    assert not out.exists()


def test_only_python_3_11() -> None:
    assert codecache.supported((3, 11, 2))
    assert not codecache.supported((3, 12, 0)) and not codecache.supported((3, 13, 1))
