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

_kdump_saver_strip() {
    # only what loading needs in the shared objects and programs installed
    # so far (the Python closure and its libraries): dracut strips debug
    # information alone, and only of files with an execute bit (Debian
    # installs extension modules 0644).  These are the initrd's own copies
    # (a file with other links is left alone); kernel modules are dracut's
    # business (signatures)
    [[ $do_strip == no ]] && return 0
    command -v strip > /dev/null || { dinfo "kdump-saver: no strip (binutils): shared objects stay as they are"; return 0; }
    find "$initdir" -type f -links 1 ! -name '*.ko' ! -name '*.ko.*' \
        \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 \
        | xargs -r -0 strip --strip-unneeded -p 2> /dev/null
    return 0
}

_kdump_saver_drop_unreferenced() {
    # each library named (by its file name's prefix) that no other file of
    # the initrd mentions any more, in the order given
    local _name _lib _users
    for _name in "$@"; do
        _users=$(grep -rlaF --exclude=ld.so.cache -- "$_name" "$initdir" | grep -v "/${_name}[^/]*$" | head -n 1)
        [[ -n $_users ]] && continue
        for _lib in $(find "$initdir" -name "${_name}*"); do
            rm -f "$_lib"
        done
    done
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
    # target's dependencies (all but the .py sources: byte code below),
    # all at the paths they have on this system;
    # ELF files get their shared libraries (libpython, libssl, ...)
    mapfile -t _files < <(_kdump_saver_list python-files)
    inst_multiple "${_files[@]}" || dfatal "kdump-saver: cannot install the Python closure"
    # dracut resolves the libraries only of files with an execute bit, and
    # Debian installs extension modules 0644 (_ssl.*.so needs libssl.so.3);
    # the interpreter's too, now rather than at dracut's end, so that
    # _kdump_saver_strip sees libpython
    mapfile -t _files < <(_kdump_saver_list python-files | grep -E '\.so(\.[0-9.]+)?$|/python[0-9.]*$')
    if ((${#_files[@]})); then
        mapfile -t _files < <(_kdump_saver_libraries "${_files[@]}")
        ((${#_files[@]})) && { inst_multiple "${_files[@]}" \
            || dfatal "kdump-saver: cannot install the shared libraries of the Python closure"; }
    fi
    # the byte code compiled from the closure's sources (no .py in the initrd):
    # staged at $_stage/bytecode/<path>, installed at <path>
    mapfile -t _files < <(_kdump_saver_list python-bytecode)
    if ((${#_files[@]})); then
        $DRACUT_INSTALL -r "$_stage/bytecode" ${initdir:+-D "$initdir"} -a "${_files[@]}" \
            || dfatal "kdump-saver: cannot install the byte code of the Python closure"
    fi
    while read -r _dir; do
        mkdir -p "${initdir}${_dir}"
    done < <(_kdump_saver_list python-dirs)
    # the dataclass methods' code, compiled at build time (capture/codecache.py)
    [[ -f $_stage/dataclass-code ]] && inst_simple "$_stage/dataclass-code" /usr/lib/kdump-saver/dataclass-code

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

    # a local target on LVM, MD RAID, LUKS or multipath (dracut's lvm, mdraid,
    # crypt, multipath modules do the assembling): only these devices, opened
    # with the recorded key files, and the initqueue waits until they exist
    if [[ -s $_stage/storage-cmdline ]]; then
        inst_simple "$_stage/storage-cmdline" /etc/cmdline.d/90kdump-saver-storage.conf
    fi
    if [[ -s $_stage/crypttab ]]; then
        inst_simple "$_stage/crypttab" /etc/crypttab
        chmod 0600 "${initdir}/etc/crypttab"
    fi
    if [[ -s $_stage/wait-devices ]]; then
        inst_simple "$_stage/wait-devices" /etc/kdump-saver/wait-devices
        inst_hook cmdline 95 "$moddir/kdump-saver-storage.sh"
    fi

    inst_script "$_stage/kdump-saver" /usr/bin/kdump-saver
    inst_script "$moddir/kdump-saver-boot.sh" /usr/lib/kdump-saver/boot.sh

    if ! dracut_module_included "systemd"; then
        # no logind without systemd: the seat rules have nothing to tell, and
        # the loginctl they run alone needs libsystemd-shared (about 5 MB with
        # its libraries) in a capture initrd
        rm -f "$initdir/usr/lib/udev/rules.d/71-seat.rules" "$initdir/usr/lib/udev/rules.d/73-seat-late.rules" \
            "$initdir/usr/bin/loginctl" "$initdir/bin/loginctl"
        _kdump_saver_drop_unreferenced libsystemd-shared- libgcrypt.so libgpg-error.so liblz4.so
    fi
    _kdump_saver_strip

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/kdump-saver-capture.service" "$systemdsystemunitdir/kdump-saver-capture.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd.target kdump-saver-capture.service \
            || dfatal "kdump-saver: cannot make initrd.target want kdump-saver-capture.service"
    else
        # no root= on the capture command line: tell init we take over
        inst_hook cmdline 99 "$moddir/kdump-saver-cmdline.sh"
        # after udev settled and the initqueue ran, before any root mount
        inst_hook pre-mount 90 "$moddir/kdump-saver-hook.sh"
        # only network targets and no scripts: our /init saves at once, without
        # dracut's hooks and udev; dracut's init stays for anything else
        if [[ -f $_stage/early-modules ]]; then
            inst_simple "$_stage/early-modules" /etc/kdump-saver/early-modules
            inst_simple "$moddir/kdump-saver-early.fstab" /etc/kdump-saver/early-fstab
            mv "$initdir/init" "$initdir/usr/lib/kdump-saver/dracut-init" \
                || dfatal "kdump-saver: cannot move dracut's init aside"
            inst_script "$moddir/kdump-saver-init.sh" /init
            chmod 0755 "$initdir/init"
        fi
    fi
}
