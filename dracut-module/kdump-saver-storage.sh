#!/bin/sh
# dracut cmdline hook (sourced by init, or by dracut-cmdline.service): the file
# system of a local KDUMP_SAVEDIR is on LVM, MD RAID, LUKS or multipath, which
# dracut assembles from its initqueue.  Keep that queue running until each
# device the saver mounts exists; a device that never comes ends in dracut's
# timeout, then rd.emergency=reboot.
if [ -e /proc/vmcore ] && [ -s /etc/kdump-saver/wait-devices ]; then
    while read -r _kdump_saver_dev; do
        [ -n "$_kdump_saver_dev" ] && wait_for_dev "$_kdump_saver_dev"
    done < /etc/kdump-saver/wait-devices
    unset _kdump_saver_dev
fi
