"""The QEMU harness of kdump-saver: boot a production kernel under QEMU (TCG),
crash it, let the capture initrd built by ``kdump-saver build-initrd`` save the
dump to a real server on 127.0.0.1, and verify the result on the host.

Modules: :mod:`cpio` (initramfs archives), :mod:`kernel` (the guest kernel),
:mod:`production` (the production system's initramfs), :mod:`servers` (sshd,
FTP, Samba, nfs-ganesha on 127.0.0.1), :mod:`guest` (one QEMU run),
:mod:`verify` (the dump checked with makedumpfile and crash), :mod:`cases`
(the matrix) and :mod:`runner` (one case from start to verdict).
"""
