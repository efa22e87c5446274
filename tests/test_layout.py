"""The package map holds: who may import whom (statically, function-level imports included).

- ``transports`` uses only the configuration, URL and error parts of ``capture``;
- the capture-kernel packages (config, formats, save, net) never import the
  production side (``capture.host``) or the command line;
- ``formats`` reads and writes dump files and knows nothing of the save or the network;
- ``config`` depends on nothing but errors and the scheme table.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

from conftest import REPO


def imports_of(path: Path) -> Set[str]:
    """Every module ``path`` imports, at any depth of its code (``from X import y``
    counts as X and X.y)."""
    tree = ast.parse(path.read_text(), str(path))
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_imports(package: str) -> Dict[str, Set[str]]:
    directory = REPO / package.replace(".", "/")
    return {str(f.relative_to(REPO)): imports_of(f) for f in sorted(directory.rglob("*.py"))}


def ours(names: Set[str]) -> Set[str]:
    return {n for n in names if n.split(".")[0] in ("capture", "transports")}


def test_transports_import_only_configuration_urls_and_errors() -> None:
    allowed = ("capture.errors", "capture.config.targeturl", "capture.config.options", "capture.config")
    for path, names in package_imports("transports").items():
        bad = {n for n in ours(names) if n.startswith("capture") and not n.startswith(allowed)}
        assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize("package", ["capture.config", "capture.formats", "capture.save", "capture.net"])
def test_capture_kernel_packages_never_import_the_host_side_or_the_cli(package: str) -> None:
    for path, names in package_imports(package).items():
        bad = {n for n in ours(names) if n.startswith(("capture.host", "capture.commands", "capture.cli"))}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_formats_know_nothing_of_the_save_or_the_network() -> None:
    for path, names in package_imports("capture.formats").items():
        bad = {n for n in ours(names) if n.startswith(("capture.save", "capture.net", "transports"))}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_config_depends_only_on_errors_and_the_scheme_table() -> None:
    for path, names in package_imports("capture.config").items():
        bad = {n for n in ours(names)
               if not n.startswith(("capture.config", "capture.errors", "transports.schemes"))
               and n not in ("transports",)}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_every_scheme_module_has_the_transport_surface() -> None:
    """Each module of the scheme table offers open_target, INITRD and initrd_material,
    and a scheme said to write at offsets has seekable dump files."""
    import importlib

    from transports import base, schemes

    for scheme in schemes.SCHEMES:
        module = importlib.import_module(scheme.module)
        assert callable(module.open_target), scheme.name
        assert isinstance(module.INITRD, base.InitrdProfile), scheme.name
        assert callable(module.initrd_material), scheme.name
        files = [c for c in vars(module).values()
                 if isinstance(c, type) and issubclass(c, base.DumpFile) and c.__module__ == module.__name__]
        assert files or scheme.module == "transports.nfs", scheme.name  # nfs writes through transports.file
        for cls in files:
            assert cls.seekable == scheme.writes_at_offsets, (scheme.name, cls.__name__)
    assert schemes.lookup("SCP").name == "sftp" and schemes.lookup("smb").name == "cifs"
    assert schemes.lookup("gopher") is None
