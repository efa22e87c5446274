#!/bin/bash
# dracut module "kdump-saver": the capture initrd's dump saver.
#
# `kdump-saver build-initrd` prepares a staging directory (traced Python
# closure, programs, kernel modules, normalized configuration, host keys,
# build stamp) and runs dracut with this module and KDUMP_SAVER_STAGE set to
# that directory.  Without a staging directory the module refuses to be
# included: it cannot know what the configured target needs.

# called by dracut
check() {
    [[ -n $KDUMP_SAVER_STAGE && -f $KDUMP_SAVER_STAGE/python-files ]] || return 1
    require_binaries makedumpfile ip || return 1
    # only when asked for (dracut --modules / --add)
    return 255
}

# called by dracut
depends() {
    echo base
    return 0
}

# called by dracut
installkernel() {
    local _mods
    [[ -s $KDUMP_SAVER_STAGE/kernel-modules ]] || return 0
    mapfile -t _mods < "$KDUMP_SAVER_STAGE/kernel-modules"
    # a module missing from this kernel (or built in) is not an error here
    hostonly='' instmods "${_mods[@]}"
}

_kdump_saver_libraries() {
    # the shared libraries (ldd: the whole closure) of the given ELF files
    ldd "$@" 2>/dev/null | sed -n -e 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p' | sort -u
}

_kdump_saver_list() {
    # the non-empty lines of a staging list file
    [[ -s $KDUMP_SAVER_STAGE/$1 ]] || return 0
    grep -v '^[[:space:]]*$' "$KDUMP_SAVER_STAGE/$1"
}

# called by dracut
install() {
    local _stage=$KDUMP_SAVER_STAGE _f _files _dir

    # the interpreter, its standard-library closure, our packages and the
    # target's dependencies, all at the paths they have on this system;
    # ELF files get their shared libraries (libpython, libssl, ...)
    mapfile -t _files < <(_kdump_saver_list python-files)
    inst_multiple "${_files[@]}" || dfatal "kdump-saver: cannot install the Python closure"
    # dracut resolves the libraries only of files with an execute bit, and
    # Debian installs extension modules 0644 (_ssl.*.so needs libssl.so.3)
    mapfile -t _files < <(_kdump_saver_list python-files | grep -E '\.so(\.[0-9.]+)?$')
    if ((${#_files[@]})); then
        mapfile -t _files < <(_kdump_saver_libraries "${_files[@]}")
        ((${#_files[@]})) && { inst_multiple "${_files[@]}" \
            || dfatal "kdump-saver: cannot install the shared libraries of the Python closure"; }
    fi
    while read -r _dir; do
        mkdir -p "${initdir}${_dir}"
    done < <(_kdump_saver_list python-dirs)

    # programs the saver runs: makedumpfile, ip, a DHCP client, mount, ...
    mapfile -t _files < <(_kdump_saver_list programs)
    ((${#_files[@]})) && { inst_multiple "${_files[@]}" || dfatal "kdump-saver: cannot install ${_files[*]}"; }
    mapfile -t _files < <(_kdump_saver_list programs-optional)
    ((${#_files[@]})) && inst_multiple -o "${_files[@]}"

    # files the configuration names (SSH identities, CA bundle, scripts)
    mapfile -t _files < <(_kdump_saver_list files)
    for _f in "${_files[@]}"; do
        inst_simple "$_f" || dfatal "kdump-saver: cannot install $_f"
    done

    # dhclient keeps its leases and reads its script's helpers here
    mkdir -p "${initdir}/var/lib/dhcp" "${initdir}/run" "${initdir}/kdump/mnt"

    inst_dir /etc/kdump-saver
    inst_simple "$_stage/kdump.conf" /etc/kdump-saver/kdump.conf
    inst_simple "$_stage/build-stamp" /etc/kdump-saver/build-stamp
    [[ -f $_stage/known_hosts ]] && inst_simple "$_stage/known_hosts" /etc/kdump-saver/known_hosts
    [[ -f $_stage/ca-bundle.pem ]] && inst_simple "$_stage/ca-bundle.pem" /etc/kdump-saver/ca-bundle.pem
    [[ -f $_stage/fstab ]] && inst_simple "$_stage/fstab" /etc/kdump-saver/fstab
    chmod 0600 "${initdir}/etc/kdump-saver/kdump.conf"

    inst_script "$_stage/kdump-saver" /usr/bin/kdump-saver
    inst_script "$moddir/kdump-saver-boot.sh" /usr/lib/kdump-saver/boot.sh

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/kdump-saver-capture.service" "$systemdsystemunitdir/kdump-saver-capture.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd.target kdump-saver-capture.service \
            || dfatal "kdump-saver: cannot make initrd.target want kdump-saver-capture.service"
    else
        # no root= on the capture command line: tell init we take over
        inst_hook cmdline 99 "$moddir/kdump-saver-cmdline.sh"
        # after udev settled and the initqueue ran, before any root mount
        inst_hook pre-mount 90 "$moddir/kdump-saver-hook.sh"
    fi
}
