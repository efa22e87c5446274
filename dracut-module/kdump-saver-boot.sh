#!/bin/sh
# Start-up step of the capture initrd: runs only when /proc/vmcore exists.
# Mounts the file system that holds a local KDUMP_SAVEDIR (recorded at build
# time in /etc/kdump-saver/fstab), then runs `kdump-saver <boot-command>`:
# capture-boot (network, scripts, save, reboot) or, with an older saver, save.
[ -e /proc/vmcore ] || exit 0
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# dracut mounts /run noexec, but the DHCP client runs a hook the saver writes there
while read -r _dev _dir _type _opts _rest; do
    if [ "$_dir" = /run ]; then
        case ",$_opts," in *,noexec,*) mount -o remount,exec /run ;; esac
    fi
done < /proc/mounts
if [ -s /etc/kdump-saver/fstab ]; then
    while read -r src dir fstype opts rest; do
        case "$src" in ''|'#'*) continue ;; esac
        mkdir -p "$dir"
        if ! mount -t "$fstype" -o "$opts" "$src" "$dir"; then
            echo "kdump-saver: mounting $src on $dir with -o $opts failed; trying -o rw" >&2
            if ! mount -t "$fstype" -o rw "$src" "$dir"; then
                echo "kdump-saver: cannot mount $src on $dir ($fstype)" >&2
                exit 1
            fi
        fi
    done < /etc/kdump-saver/fstab
fi
cmd=$(cat /etc/kdump-saver/boot-command 2>/dev/null)
[ -n "$cmd" ] || cmd=save
if [ "$cmd" = save ]; then
    /usr/bin/kdump-saver save
    rc=$?
    sync
    while IFS='=' read -r key value; do
        [ "$key" = KDUMP_IMMEDIATE_REBOOT ] || continue
        case "$value" in
            '"false"'|'"no"'|'"0"'|false|no|0) exit $rc ;;
        esac
    done < /etc/kdump-saver/kdump.conf
    reboot -f || echo b > /proc/sysrq-trigger
    exit $rc
fi
exec /usr/bin/kdump-saver "$cmd"
