#!/bin/sh
# dracut cmdline hook (sourced by init) of a capture initrd whose targets are all
# on the network and that runs no scripts: save at once, before udev starts and
# handles every device.  The drivers recorded at build time are loaded by name
# (udev would load the same ones, by the devices' aliases); boot.sh reboots.
if [ -e /proc/vmcore ] && [ -f /etc/kdump-saver/early-modules ] && [ ! -e /run/kdump-saver.started ]; then
    : > /run/kdump-saver.started
    _kdump_saver_mods=$(cat /etc/kdump-saver/early-modules)
    # shellcheck disable=SC2086
    [ -n "$_kdump_saver_mods" ] && modprobe -a -q $_kdump_saver_mods
    /usr/lib/kdump-saver/boot.sh || warn "kdump-saver: saving the dump failed (exit status $?)"
fi
