#!/bin/sh
# Start-up step of the capture initrd: runs only when /proc/vmcore exists.
# Mounts the file system that holds a local KDUMP_SAVEDIR (recorded at build
# time in /etc/kdump-saver/fstab), then runs `kdump-saver capture-boot`
# (network, scripts, save, reboot), and reboots in every case.  The
# configuration is /etc/kdump-saver/kdump.conf ($KDUMP_SAVER_CONF for tests).
conf=${KDUMP_SAVER_CONF:-/etc/kdump-saver/kdump.conf}
# KDUMP_VERBOSE bit 8 (debugging while saving): trace this script, as SUSE's kdump-save does
if [ -r "$conf" ]; then
    while IFS='=' read -r key value; do
        [ "$key" = KDUMP_VERBOSE ] || continue
        value=${value#\"}; value=${value%\"}
        case "$value" in ''|*[!0-9]*) ;; *) [ $((value & 8)) -eq 0 ] || set -x ;; esac
    done < "$conf"
fi
[ -e /proc/vmcore ] || exit 0
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# dracut mounts /run noexec, but the DHCP client runs a hook the saver writes there
while read -r _dev _dir _type _opts _rest; do
    if [ "$_dir" = /run ]; then
        case ",$_opts," in *,noexec,*) mount -o remount,exec /run ;; esac
    fi
done < /proc/mounts
device_present() {
    case "$1" in
        UUID=*|LABEL=*) ! command -v blkid > /dev/null || blkid -l -t "$1" -o device > /dev/null 2>&1 ;;
        /dev/*) [ -b "$1" ] ;;
        *) true ;;
    esac
}
mounted=yes
if [ -s /etc/kdump-saver/fstab ]; then
    while read -r src dir fstype opts rest; do
        case "$src" in ''|'#'*) continue ;; esac
        mkdir -p "$dir"
        # without udev settling first (kdump-saver's own /init) the disk may still be
        # being probed after its driver loaded: wait up to 30 s for it to appear
        waited=0
        while ! device_present "$src" && [ "$waited" -lt 60 ]; do
            [ "$waited" -eq 0 ] && echo "kdump-saver: waiting up to 30 s for $src to appear" >&2
            sleep 0.5
            waited=$((waited + 1))
        done
        if ! mount -t "$fstype" -o "$opts" "$src" "$dir"; then
            echo "kdump-saver: mounting $src on $dir with -o $opts failed; trying -o rw" >&2
            if ! mount -t "$fstype" -o rw "$src" "$dir"; then
                echo "kdump-saver: cannot mount $src on $dir ($fstype): the dump cannot be saved" >&2
                mounted=no
            fi
        fi
    done < /etc/kdump-saver/fstab
fi
# capture-boot reboots by itself; getting here after it means it could not
# (killed, most likely out of memory): reboot anyway, so the machine never hangs
rc=1
if [ "$mounted" = yes ]; then
    /usr/bin/kdump-saver capture-boot
    rc=$?
fi
if [ "$rc" -gt 128 ]; then
    echo "kdump-saver: the saver was killed by signal $((rc - 128)), most likely for lack of memory;" \
         "raise crashkernel= (see kdump-saver calibrate)" >&2
fi
sync
# as SUSE's kdump: KDUMP_IMMEDIATE_REBOOT=false means a shell, then the reboot when it exits;
# capture-boot opened that shell itself unless it was killed
if [ "$rc" -gt 128 ]; then
    while IFS='=' read -r key value; do
        [ "$key" = KDUMP_IMMEDIATE_REBOOT ] || continue
        case "$value" in
            '"false"'|'"no"'|'"0"'|false|no|0)
                echo "kdump-saver: KDUMP_IMMEDIATE_REBOOT is false: a shell; exit it to reboot" >&2
                sh -i </dev/console >/dev/console 2>&1 ;;
        esac
    done < "$conf"
fi
# a shell initrd may have no reboot program (it is systemctl's on Debian): the kernel's own reset then
if command -v reboot >/dev/null 2>&1; then
    reboot -f
fi
echo b > /proc/sysrq-trigger
exit $rc
