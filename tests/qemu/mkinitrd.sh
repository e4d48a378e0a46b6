#!/usr/bin/env bash
# Assembles the QEMU rig's initrd: arm64 busybox with its applet links, the
# kernel modules Debian builds as modules but the box needs before and after
# its root is mounted, and tests/qemu/initrd-init as /init. It goes into each
# kernel slot beside the kernel; the production kernel needs none.
#
#   usage: tests/qemu/mkinitrd.sh OUTPUT.cpio.gz
#
# Needs the rig cache that `./dev deps` fills (.rig/cache) and, on the host,
# cpio, gzip, modinfo (kmod) and qemu-aarch64-static.
set -euo pipefail

# shellcheck source=tests/qemu/rig-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/rig-lib.sh"

# Modules to load at boot, in this order; their dependencies are found and
# loaded first. They stay loaded after the switch to the root slot, which
# therefore carries no modules of its own.
#   virtio_pci: the virt board's PCIe devices; virtio_blk: the disk;
#   virtio_net: eth0; virtio_rng: early entropy for TLS keys;
#   squashfs: the root slots; ext4: the data partition, with crc32c, which
#     ext4 asks for by name at mount time rather than as a dependency;
#   vfat and its code pages: the boot partition (Debian's defaults are
#     code page 437 and iocharset ascii; utf8 for names the partner types);
#   i6300esb: the watchdog boot.sh gives the board, which edge feeds.
readonly WANTED_MODULES=(
    virtio_pci virtio_blk virtio_net virtio_rng
    squashfs
    crc32c_generic ext4
    vfat nls_cp437 nls_ascii nls_utf8
    i6300esb
)

main() {
    [[ $# -eq 1 ]] || {
        echo "usage: $0 OUTPUT.cpio.gz" >&2
        exit 2
    }
    local output=$1
    require_rig_cache

    local staging="$output.root"
    rm -rf "$staging"
    mkdir -p "$staging"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,newroot,lib/modules/rig}

    install_busybox "$staging"
    install_modules "$staging/lib/modules/rig"
    install -m 755 "$RIG_HERE/initrd-init" "$staging/init"

    pack "$staging" "$output"
    rm -rf "$staging"
}

# Copies the wanted modules and their dependencies into DEST and writes
# DEST/order, dependencies first, for /init to insmod one by one. Debian's
# package carries no modules.dep (depmod runs at install time), so the
# dependencies are read from each module's own modinfo.
install_modules() {
    local dest=$1
    local version
    version=$(<"$RIG_CACHE/kernel-version")
    local tree="$RIG_CACHE/modules/$version"

    declare -gA MODULE_PATH=()
    declare -gA MODULE_SEEN=()
    MODULE_ORDER=()
    # Plain expansions rather than helper calls: the tree has thousands of
    # modules and a subshell per module costs seconds.
    local path base
    while read -r path; do
        base=${path##*/}
        base=${base%%.ko*}
        MODULE_PATH[${base//-/_}]=$path
    done < <(find "$tree/kernel" -name '*.ko*')

    local module
    for module in "${WANTED_MODULES[@]}"; do
        visit_module "$tree" "$(normalise "$module")"
    done

    : >"$dest/order"
    for module in "${MODULE_ORDER[@]}"; do
        copy_module "${MODULE_PATH[$module]}" "$dest/$module.ko"
        echo "$module.ko" >>"$dest/order"
    done
}

# Depth-first walk: a module is appended after all of its dependencies.
# Modules built into the kernel need no loading and are skipped.
visit_module() {
    local tree=$1 module=$2
    [[ -n ${MODULE_SEEN[$module]:-} ]] && return 0
    MODULE_SEEN[$module]=1

    if [[ -z ${MODULE_PATH[$module]:-} ]]; then
        is_builtin "$tree" "$module" && return 0
        die "module $module is neither in $tree nor built in"
    fi
    local deps dep
    deps=$(modinfo -F depends "${MODULE_PATH[$module]}")
    for dep in ${deps//,/ }; do
        visit_module "$tree" "$(normalise "$dep")"
    done
    MODULE_ORDER+=("$module")
}

is_builtin() {
    local tree=$1 module=$2
    sed 's|.*/||; s|\.ko$||; s|-|_|g' "$tree/modules.builtin" | grep -qx "$module"
}

# Module names treat '-' and '_' alike (virtio-rng.ko is module virtio_rng).
normalise() {
    echo "${1//-/_}"
}

# busybox insmod takes plain .ko files only; newer Debian kernels compress them.
copy_module() {
    local src=$1 dest=$2
    case $src in
    *.ko.xz) xz -dc "$src" >"$dest" ;;
    *.ko.zst) zstd -qdc "$src" >"$dest" ;;
    *.ko.gz) gzip -dc "$src" >"$dest" ;;
    *) install -m 644 "$src" "$dest" ;;
    esac
}

# Owner root for every entry regardless of who builds it; the temporary file
# and rename keep a concurrent boot from reading a half-written archive.
pack() {
    local staging=$1 output=$2
    (cd "$staging" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
        gzip -6 -n >"$output.tmp"
    mv "$output.tmp" "$output"
}

main "$@"
