#!/usr/bin/env bash
# The main job, in one command on a fresh Debian 12 machine, as root:
#   bash qemu-harness/demo.sh [WORKDIR]
# installs everything (tests/setup.sh, qemu-harness/setup.sh), builds the capture
# initrd with `kdump-saver build-initrd`, boots a production system under QEMU
# (TCG) that loads it with `kdump-saver load`, panics it with sysrq, lets
# kdump-saver save the dump through sftp to an sshd on this machine's
# 127.0.0.1, verifies it (README, makedumpfile --dump-dmesg, crash), and
# prints where the dump is and crash's summary of it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
workdir=${1:-/var/tmp/kdump-saver-demo}
if [ "$(id -u)" != 0 ]; then
  echo "demo: run me as root (it installs packages, runs sshd and QEMU)" >&2
  exit 1
fi
bash tests/setup.sh
bash qemu-harness/setup.sh
rm -rf "$workdir/sftp"
exec .venv/bin/python qemu-harness/run.py --workdir "$workdir" --show sftp
