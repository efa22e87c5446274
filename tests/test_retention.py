"""KDUMP_KEEP_OLD_DUMPS on a local target with foreign things around our dumps."""
from __future__ import annotations

from pathlib import Path

import pytest

from capture.config.options import Config
from capture.save.dumpdir import parse_name
from capture.errors import KdumpError
from capture.save.sequence import save
from conftest import sha256_of


def foreign_things(root: Path) -> dict:
    """What retention must never touch, with a fingerprint of each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "unrelated").mkdir()
    (root / "unrelated" / "data").write_text("keep me")
    (root / "app-dump").mkdir()
    (root / "2020-01-01-00-00").mkdir()            # date-named, SUSE-style, no marker
    (root / "2020-01-01-00-00" / "vmcore").write_text("an old SUSE dump")
    other = root / "other-host-2020-01-02-00-00"     # another host's dump on a shared target
    other.mkdir()
    (other / ".kdump-saver").write_text('{"tool": "kdump-saver", "host": "other-host"}\n')
    (root / "2020-01-03-00-00").write_text("a plain file with a dump-like name")
    (root / "2020-01-04-00-00").mkdir()            # fake marker: not ours
    (root / "2020-01-04-00-00" / ".kdump-saver").write_text("not json")
    return snapshot(root)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def own_dirs(root: Path) -> list:
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / ".kdump-saver").exists() and "other-host" not in p.name
                  and p.name != "2020-01-04-00-00")


def save_n(root: Path, vmcore: Path, n: int, keep: int) -> list:
    return [save(Config(dumpformat="lzo", keep_old_dumps=keep), vmcore=str(vmcore), savedir=str(root)).directory
            for _ in range(n)]


def assert_foreign_untouched(root: Path, before: dict) -> None:
    after = snapshot(root)
    for name, content in before.items():
        assert name in after, f"{name} was deleted"
        assert after[name] == content, f"{name} was changed"


@pytest.mark.parametrize("keep,expected_left", [(0, 4), (2, 3), (1, 2), (-1, 1)])
def test_retention_keeps_n_old_dumps_and_nothing_foreign_is_touched(tmp_path, fixture_vmcore, keep,
                                                                    expected_left):
    root = tmp_path / "crash"
    before = foreign_things(root)
    made = save_n(root, fixture_vmcore, 3, keep=0)
    newest = save(Config(dumpformat="lzo", keep_old_dumps=keep), vmcore=str(fixture_vmcore),
                  savedir=str(root)).directory
    left = own_dirs(root)
    assert len(left) == expected_left
    assert newest in left
    by_age = sorted(made + [newest], key=lambda n: parse_name(n).sort_key)
    assert sorted(left) == sorted(by_age[-expected_left:])
    assert_foreign_untouched(root, before)


def test_failed_save_deletes_nothing(tmp_path, fixture_vmcore):
    root = tmp_path / "crash"
    before = foreign_things(root)
    made = save_n(root, fixture_vmcore, 2, keep=0)
    hashes = {d: sha256_of(root / d / "vmcore") for d in made}
    with pytest.raises(KdumpError):  # a target that cannot keep KDUMP_FREE_DISK_SIZE free
        save(Config(dumpformat="lzo", keep_old_dumps=-1, free_disk_size=1 << 29),
             vmcore=str(fixture_vmcore), savedir=str(root))
    for d, h in hashes.items():
        assert sha256_of(root / d / "vmcore") == h
    assert_foreign_untouched(root, before)


def test_retention_counts_only_this_hosts_dumps(tmp_path, fixture_vmcore):
    root = tmp_path / "shared"
    save(Config(dumpformat="lzo", hostname="alpha"), vmcore=str(fixture_vmcore), savedir=str(root))
    save(Config(dumpformat="lzo", hostname="beta"), vmcore=str(fixture_vmcore), savedir=str(root))
    save(Config(dumpformat="lzo", hostname="alpha", keep_old_dumps=-1), vmcore=str(fixture_vmcore),
         savedir=str(root))
    hosts = sorted(__import__("json").loads((p / ".kdump-saver").read_text())["host"] for p in root.iterdir())
    assert hosts == ["alpha", "beta"]
