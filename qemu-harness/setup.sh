#!/usr/bin/env bash
# Installs what the QEMU harness needs on a fresh Debian 12 machine (as root):
# QEMU, the current Debian cloud kernel and its -dbg package (for crash), the
# kdump tools, dracut, the servers the matrix saves to and debootstrap (the
# Debian image of the debian cases).  Idempotent: a
# second run installs nothing.  The kernel version is discovered, never pinned.
set -euo pipefail

packages=(
  qemu-system-x86 linux-image-cloud-amd64 crash busybox-static kexec-tools
  makedumpfile dracut-core dracut-network cpio xz-utils e2fsprogs
  openssh-server openssh-client samba smbclient vsftpd
  nfs-ganesha nfs-ganesha-vfs iproute2 debootstrap
)
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
# (dpkg-query's output goes to a variable first: under pipefail, `cmd | grep -q`
# fails when grep exits at the first match and cmd then dies of SIGPIPE)
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "qemu-harness setup: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt_install "${missing[@]}"
fi

# The kernel that linux-image-cloud-amd64 depends on right now.
depends=$(dpkg-query -W -f='${Depends}' linux-image-cloud-amd64)
kver=$(grep -o 'linux-image-[^ ,]*-cloud-amd64' <<<"$depends" | sed -n '1s/^linux-image-//p' || true)
if [ -z "$kver" ]; then
  echo "qemu-harness setup: cannot tell which kernel linux-image-cloud-amd64 depends on" >&2
  exit 1
fi
if [ ! -e "/usr/lib/debug/boot/vmlinux-$kver" ]; then
  echo "qemu-harness setup: installing linux-image-$kver-dbg (about 283 MB to download)"
  apt_install "linux-image-$kver-dbg" || {
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt_install "linux-image-$kver-dbg"
  }
fi
# ganesha's packaged service is not used: the harness starts its own on 127.0.0.1.
for unit in nfs-ganesha smbd nmbd vsftpd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$unit" 2>/dev/null; then
    systemctl stop "$unit" 2>/dev/null || true
  fi
done
echo "qemu-harness setup: done (kernel $kver, $(qemu-system-x86_64 --version | head -1))"
