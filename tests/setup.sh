#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian 12 machine (as root):
# Debian packages, then a virtual environment in .venv with kdump-saver.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

packages=(
  makedumpfile liblzo2-dev lz4 xz-utils zstd python3-venv
  openssh-server openssh-client samba smbclient vsftpd curl
  iproute2 kexec-tools openssl nfs-common crash python3-libkdumpfile
  dracut-core dracut-network cpio e2fsprogs linux-image-cloud-amd64
  dnsmasq-base isc-dhcp-client udhcpc dhcpcd-base busybox-static qemu-system-x86
  lvm2 mdadm cryptsetup-bin
)
missing=()
# (outputs go to variables first: under pipefail, `cmd | grep -q` fails when grep
# exits at the first match and cmd then dies of SIGPIPE)
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# crash(8) on dumps of the fixture needs the fixture kernel's symbols: optional,
# installed while Debian's archive still has that kernel ABI.
fixture_dbg=linux-image-6.1.0-56-cloud-amd64-dbg
policy=$(apt-cache policy "$fixture_dbg" 2>/dev/null || true)
if [ ! -e /usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64 ] \
   && grep -q 'Candidate: [0-9]' <<<"$policy"; then
  echo "setup: installing $fixture_dbg (283 MB download) for crash(8) on the fixture"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$fixture_dbg" >/dev/null
fi

# the QEMU end-to-end tests (tests/test_qemu_e2e.py): the current cloud kernel's -dbg
# package for crash(8), nfs-ganesha and the rest of qemu-harness's needs
bash qemu-harness/setup.sh

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done ($(.venv/bin/python --version), $(makedumpfile -v 2>&1 | head -1))"
