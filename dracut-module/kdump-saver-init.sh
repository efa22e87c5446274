#!/bin/sh
# /init of a capture initrd with no storage stack to assemble (network targets,
# plain local file systems) and no scripts to run (dracut's own init is then /usr/lib/kdump-saver/dracut-init): in a
# capture kernel, mount what the saver needs, load the drivers recorded at build
# time by name (udev would load the same ones, by the devices' aliases) and
# save at once, without dracut's hooks and udev; boot.sh reboots.  Anywhere
# else dracut's init runs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -d /proc/self ] || mount -t proc -o nosuid,noexec,nodev proc /proc
if [ -e /proc/vmcore ] && [ ! -e /run/kdump-saver.started ]; then
    # /sys, /dev and /run with one process (each costs the dump's one CPU a program's start)
    mount -a -T /etc/kdump-saver/early-fstab
    exec 0<> /dev/console 1<> /dev/console 2<> /dev/console
    : > /run/kdump-saver.started
    mods=
    while read -r mod; do
        mods="$mods $mod"
    done < /etc/kdump-saver/early-modules
    # shellcheck disable=SC2086
    [ -n "$mods" ] && modprobe -a -q $mods
    /usr/lib/kdump-saver/boot.sh
    echo b > /proc/sysrq-trigger
fi
exec /usr/lib/kdump-saver/dracut-init "$@"
