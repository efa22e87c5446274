#!/bin/sh
# dracut pre-mount hook (sourced by init): save the dump of the crashed kernel,
# unless kdump-saver's own /init (kdump-saver-init.sh) already ran the save.
if [ -e /proc/vmcore ] && [ ! -e /run/kdump-saver.started ]; then
    : > /run/kdump-saver.started
    /usr/lib/kdump-saver/boot.sh || warn "kdump-saver: saving the dump failed (exit status $?)"
fi
