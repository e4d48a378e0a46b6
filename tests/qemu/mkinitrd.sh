#!/usr/bin/env bash
# Assembles the QEMU rig's initramfs: arm64 busybox with its applet links, the
# few kernel modules the virt board's virtio devices need, the `edge` binary,
# its development configuration and tests/qemu/init as /init.
#
#   usage: tests/qemu/mkinitramfs.sh EDGE_BINARY OUTPUT.cpio.gz
#
# Needs the rig cache that `./dev deps` fills (.rig/cache) and, on the host,
# cpio, gzip, modinfo (kmod) and qemu-aarch64-static.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly HERE="$ROOT/tests/qemu"
readonly CACHE="$ROOT/.rig/cache"

# Modules to load at boot; their dependencies are found and loaded first.
# virtio_pci: the virt board's PCIe devices; virtio_net: eth0;
# virtio_rng: early entropy for TLS keys.
readonly WANTED_MODULES=(virtio_pci virtio_net virtio_rng)

main() {
    [[ $# -eq 2 ]] || {
        echo "usage: $0 EDGE_BINARY OUTPUT.cpio.gz" >&2
        exit 2
    }
    local edge=$1 output=$2
    [[ -x $edge ]] || die "no executable at $edge: run ./dev build"
    [[ -f $CACHE/ready ]] || die "no rig cache in $CACHE: run ./dev deps"

    local staging="$output.root"
    rm -rf "$staging"
    mkdir -p "$staging"/{bin,sbin,usr/bin,usr/sbin,etc/edge,dev,proc,sys,tmp,run,lib/modules/rig}

    install_busybox "$staging"
    install_modules "$staging/lib/modules/rig"
    install -m 755 "$edge" "$staging/usr/bin/edge"
    install -m 644 "$HERE/edge.toml" "$staging/etc/edge/edge.toml"
    install -m 755 "$HERE/init" "$staging/init"

    pack "$staging" "$output"
    rm -rf "$staging"
}

die() {
    echo "mkinitramfs: $*" >&2
    exit 1
}

# The applet list comes from the arm64 busybox itself (run through qemu-user),
# so the links match exactly the binary that ships.
install_busybox() {
    local staging=$1
    install -m 755 "$CACHE/busybox" "$staging/bin/busybox"
    local applet
    while read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        local depth=${applet//[^\/]/}
        local up=${depth//\//../}
        ln -sf "${up}bin/busybox" "$staging/$applet"
    done < <(qemu-aarch64-static "$CACHE/busybox" --list-full)
}

# Copies the wanted modules and their dependencies into DEST and writes
# DEST/order, dependencies first, for /init to insmod one by one. Debian's
# package carries no modules.dep (depmod runs at install time), so the
# dependencies are read from each module's own modinfo.
install_modules() {
    local dest=$1
    local version
    version=$(<"$CACHE/kernel-version")
    local tree="$CACHE/modules/$version"

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
