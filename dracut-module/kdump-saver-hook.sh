#!/bin/sh
# dracut pre-mount hook (sourced by init): save the dump of the crashed kernel.
if [ -e /proc/vmcore ]; then
    /usr/lib/kdump-saver/boot.sh || warn "kdump-saver: saving the dump failed (exit status $?)"
fi
