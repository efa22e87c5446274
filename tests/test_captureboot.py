"""The capture-kernel sequence around the save: scripts, transfer, exit status."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def capture_boot(conf: Path, vmcore: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capture.cli", "capture-boot", "--config", str(conf),
                           "--vmcore", str(vmcore), "--no-reboot"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_pre_and_post_scripts_run_and_their_status_is_in_the_readme(tmp_path, fixture_vmcore):
    target = tmp_path / "dumps"
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_SAVEDIR="{target}"\nKDUMP_DUMPFORMAT="lzo"\n'
                    f'KDUMP_PRESCRIPT="touch {tmp_path}/pre-ran"\n'
                    f'KDUMP_POSTSCRIPT="ls {target}/*/vmcore > {tmp_path}/post-saw; exit 3"\n')
    res = capture_boot(conf, fixture_vmcore)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pre-ran").exists()
    # the postscript ran after the vmcore was complete
    assert (tmp_path / "post-saw").read_text().strip().endswith("/vmcore")
    (d,) = list(target.iterdir())
    readme = (d / "README.txt").read_text()
    assert "note: KDUMP_PRESCRIPT exited with status 0" in readme
    assert "note: KDUMP_POSTSCRIPT exited with status 3" in readme
    assert "not in a capture kernel: no reboot" in res.stderr


def test_the_collector_starts_only_after_the_prescript(tmp_path, fixture_vmcore):
    """Without KDUMP_PRESCRIPT the collector's page scan starts while the network comes up;
    with one, the script runs first (it may prepare what the save needs)."""
    target = tmp_path / "dumps"
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_SAVEDIR="{target}"\nKDUMP_DUMPFORMAT="lzo"\n'
                    f'KDUMP_PRESCRIPT="sleep 2; ps -ww -eo args > {tmp_path}/running"\n')
    res = capture_boot(conf, fixture_vmcore)
    assert res.returncode == 0, res.stderr
    collectors = [line for line in (tmp_path / "running").read_text().splitlines()
                  if str(fixture_vmcore) in line and "--dump-dmesg" not in line and "capture-boot" not in line]
    assert collectors == [], collectors


def test_transfer_replaces_the_save(tmp_path, fixture_vmcore):
    target = tmp_path / "dumps"
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_SAVEDIR="{target}"\nKDUMP_TRANSFER="cp {fixture_vmcore} {tmp_path}/copied"\n')
    res = capture_boot(conf, fixture_vmcore)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "copied").stat().st_size == fixture_vmcore.stat().st_size
    assert not target.exists() or not list(target.iterdir())


def test_a_failed_save_is_a_non_zero_exit_with_a_clear_message(tmp_path, fixture_vmcore):
    conf = tmp_path / "kdump"
    (tmp_path / "plain-file").write_text("not a directory")
    conf.write_text(f'KDUMP_SAVEDIR="{tmp_path}/plain-file/dumps"\n')
    res = capture_boot(conf, fixture_vmcore)
    assert res.returncode == 1
    assert "error: " in res.stderr and "plain-file" in res.stderr and "Traceback" not in res.stderr


def test_failing_transfer_is_a_failure(tmp_path, fixture_vmcore):
    conf = tmp_path / "kdump"
    conf.write_text('KDUMP_TRANSFER="exit 7"\n')
    res = capture_boot(conf, fixture_vmcore)
    assert res.returncode == 1
    assert "KDUMP_TRANSFER exited with status 7" in res.stderr


def test_a_truncated_vmcore_read_beside_the_network_is_a_clear_error(tmp_path, fixture_vmcore):
    # the vmcore is read in a thread while the network comes up; its failure must
    # reach the console as a plain error, not a traceback, and fail the boot's save
    truncated = tmp_path / "vmcore"
    with open(fixture_vmcore, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(8 << 20))
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_SAVEDIR="{tmp_path}/dumps"\n')
    res = capture_boot(conf, truncated)
    assert res.returncode == 1
    assert "is truncated" in res.stderr and "Traceback" not in res.stderr
