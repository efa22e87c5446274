"""Device drivers resolved against the target kernel (capture.host.drivers).

Real data only: this machine's sysfs and the kernels installed under
/lib/modules (discovered, never pinned).  The case that matters is a NIC
whose driver the running kernel has built in (sysfs then shows no
``driver/module`` link) while an installed kernel has it as a module: the
capture initrd for that kernel must carry the module.  ``modprobe -S KVER -R``
is the reference for the alias matching.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

from capture.config import options as configuration
from capture.config.options import Config
from capture.config.targeturl import parse
from capture.errors import KdumpError
from capture.host import drivers, initrd
from conftest import require, require_program


def installed_kernels() -> List[str]:
    root = Path(drivers.MODULES_ROOT)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "modules.alias").is_file() and (p / "modules.dep").is_file())


def nics() -> List[str]:
    net = Path("/sys/class/net")
    return sorted(p.name for p in net.iterdir() if (p / "device").exists()) if net.is_dir() else []


def builtin_here_modular_there() -> List[Tuple[str, str, str]]:
    """(interface, driver, kernel): the running kernel has the NIC's driver
    built in, the installed ``kernel`` has it as a loadable module."""
    cases = []
    for iface in nics():
        device = Path(f"/sys/class/net/{iface}/device")
        if not (device / "driver").exists() or (device / "driver" / "module").exists():
            continue
        driver = drivers.module_name(os.path.realpath(device / "driver"))
        for kernel in installed_kernels():
            if driver in drivers.ModuleIndex.load(kernel).loadable:
                cases.append((iface, driver, kernel))
    return cases


@pytest.fixture(scope="module")
def case() -> Tuple[str, str, str]:
    cases = builtin_here_modular_there()
    require(bool(cases), "no NIC whose driver is built into the running kernel but a module of an installed "
                         f"kernel (NICs: {nics()}, kernels under /lib/modules: {installed_kernels()})")
    return cases[0]


def test_a_builtin_nic_driver_resolves_to_the_target_kernels_module(case: Tuple[str, str, str]) -> None:
    iface, driver, kernel = case
    index = drivers.ModuleIndex.load(kernel)
    assert driver not in index.builtin
    mods = drivers.device_modules(f"/sys/class/net/{iface}/device", index)
    assert driver in mods
    assert all(m in index.loadable and m not in index.builtin for m in mods), mods
    # the running kernel's sysfs alone names no module for it
    assert driver not in initrd._device_modules(f"/sys/class/net/{iface}/device")


def test_kernel_modules_of_a_network_target_carry_the_target_kernels_nic_driver(case: Tuple[str, str, str]) -> None:
    _, driver, kernel = case
    url = "ftp://127.0.0.1/crash"
    assert driver in initrd.kernel_modules(Config(savedir=url), parse(url), None, kernel)
    offline = configuration.parse_text(f"KDUMP_SAVEDIR={url}\nKDUMP_NETCONFIG=none\n")
    assert driver not in initrd.kernel_modules(offline, parse(url), None, kernel)


def _all_modaliases() -> List[str]:
    found = set()
    for dirpath, _, filenames in os.walk(drivers.SYS_DEVICES):
        if "modalias" in filenames:
            try:
                found.add(Path(dirpath, "modalias").read_text().strip())
            except OSError:
                continue
    return sorted(a for a in found if a)


def test_the_initrd_of_the_target_kernel_has_the_nic_driver(case: Tuple[str, str, str], tmp_path: Path) -> None:
    from test_initrd import build

    require_program("dracut")
    require_program("lsinitrd")
    _, driver, kernel = case
    built = build(tmp_path, "ftp", "KDUMP_SAVEDIR=ftp://kd:pw@127.0.0.1/crash\n", kernel)
    assert [f for f in built.files if f"lib/modules/{kernel}/" in f
            and os.path.basename(f).split(".ko")[0].replace("-", "_") == driver]


def test_alias_matching_agrees_with_modprobe() -> None:
    modprobe = require_program("modprobe")
    kernels = installed_kernels()
    aliases = _all_modaliases()
    require(bool(kernels and aliases), f"no kernel under /lib/modules ({kernels}) or no modalias in sysfs")
    loadable = 0
    for kernel in kernels:
        index = drivers.ModuleIndex.load(kernel)
        for alias in aliases:
            out = subprocess.run([modprobe, "-S", kernel, "-R", alias], capture_output=True, text=True).stdout
            named = {drivers.module_name(m) for m in out.split()}
            # modprobe names built-in drivers too: those need nothing in the initrd
            assert set(index.resolve(alias)) == named - index.builtin, (kernel, alias, named)
            loadable += bool(named - index.builtin)
    assert loadable, "no device of this machine has a loadable driver in any installed kernel"


def test_a_disk_resolves_to_its_block_driver() -> None:
    kernels = installed_kernels()
    disks = [p.name for p in Path("/sys/class/block").iterdir()
             if os.path.realpath(p).startswith(drivers.SYS_DEVICES + "/")
             and "/virtual/" not in os.path.realpath(p)] if Path("/sys/class/block").is_dir() else []
    require(bool(kernels and disks), f"no kernel under /lib/modules ({kernels}) or no disk backed by a device")
    for kernel in kernels:
        index = drivers.ModuleIndex.load(kernel)
        for disk in disks:
            chain = drivers.device_chain(f"/sys/class/block/{disk}")
            bound = {drivers.module_name(os.path.realpath(d / "driver")) for d in chain if (d / "driver").exists()}
            expected = {m for m in bound if m in index.loadable}
            assert expected <= set(drivers.device_modules(f"/sys/class/block/{disk}", index)), (kernel, disk)


def test_an_unreadable_module_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "9.9.9-none").mkdir()
    with pytest.raises(KdumpError, match=r"kernel 9\.9\.9-none: cannot read its module index .*run depmod"):
        drivers.ModuleIndex.load("9.9.9-none", root=str(tmp_path))
