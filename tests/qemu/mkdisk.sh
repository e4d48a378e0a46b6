#!/usr/bin/env bash
# Assembles the QEMU rig's disk image: the partition images that
# image/layout/genimage.cfg takes as inputs, filled with the rig's slot
# contents, then laid out by genimage. Shared by `./dev run` and the tests.
#
#   usage: tests/qemu/mkdisk.sh EDGE_BINARY OUTDIR
#
# Writes OUTDIR/disk.img (sparse, about 330 MiB of which a few hold data) and
# keeps the partition images in OUTDIR/parts/. Nothing needs root: the file
# systems are built from directories, never mounted.
#
# What goes where (docs/image.md, docs/qemu-rig.md):
#   boot.vfat        boot.scr from image/boot/boot.cmd, tests/qemu/edge.toml as
#                    the development provisioning file edge.toml
#   bootstate.img    copy 0 and copy 1 of the factory boot state: A B, 3, 3
#   kernel.ext4      Debian's arm64 kernel as Image.gz, the rig's initrd
#   rootfs.squashfs  busybox, /usr/bin/edge, image/rootfs-overlay
#   data.ext4        empty ext4 labelled data
#
# EDGE_RIG_EXTRA_OVERLAY, when set, names a directory laid over the root after
# image/rootfs-overlay (its files win). It is for measurements that need the
# box to run something of their own (bench/image.sh); the factory image and
# the tests never set it.
#
# Needs the rig cache (`./dev deps`) and, on the host, genimage, mkimage and
# mkenvimage (u-boot-tools), mkfs.vfat and mcopy, e2fsprogs, gzip, mksquashfs, cpio,
# modinfo and qemu-aarch64-static.
set -euo pipefail

# shellcheck source=tests/qemu/rig-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/rig-lib.sh"

readonly GENIMAGE_CFG="$RIG_ROOT/image/layout/genimage.cfg"
readonly BOOT_CMD="$RIG_ROOT/image/boot/boot.cmd"
readonly KERNEL_SLOT="$RIG_ROOT/image/layout/kernel-slot.sh"
readonly OVERLAY="$RIG_ROOT/image/rootfs-overlay"
readonly PROVISIONING="$RIG_HERE/edge.toml"

# Partition image sizes: those of genimage.cfg, which docs/image.md lists.
readonly BOOT_SIZE=32M
readonly KERNEL_SIZE=48M
readonly DATA_SIZE=64M

# docs/image.md: two 16 KiB U-Boot environment blocks, copy 0 at offset 0 and
# copy 1 at 64 KiB, in a 1 MiB partition.
readonly BOOTSTATE_BLOCK=0x4000
readonly BOOTSTATE_COPY1_KIB=64
readonly BOOTSTATE_SIZE=1M

main() {
    [[ $# -eq 2 ]] || {
        echo "usage: $0 EDGE_BINARY OUTDIR" >&2
        exit 2
    }
    local edge=$1 outdir=$2
    [[ -x $edge ]] || die "no executable at $edge: run ./dev build"
    require_rig_cache

    mkdir -p "$outdir"
    outdir=$(cd "$outdir" && pwd)
    PARTS="$outdir/parts"
    WORK="$outdir/work"
    rm -rf "$PARTS" "$WORK"
    mkdir -p "$PARTS" "$WORK"

    make_kernel_ext4
    make_rootfs_squashfs "$edge"
    make_boot_vfat
    make_bootstate
    make_data_ext4
    run_genimage "$outdir"
    rm -rf "$WORK"
}

# The kernel slot: Debian's arm64 kernel gzip'd as Image.gz (booti unpacks
# it; a third of the size in the slot and in update bundles), the rig's
# initrd, in an ext4 no larger than its files need (image/layout/kernel-slot.sh).
make_kernel_ext4() {
    local dir="$WORK/kernel"
    mkdir -p "$dir"
    if [[ $(head -c2 "$RIG_CACHE/vmlinuz" | od -An -tx1 | tr -d ' ') == 1f8b ]]; then
        cp "$RIG_CACHE/vmlinuz" "$dir/Image.gz"
    else
        gzip -9 -n -c "$RIG_CACHE/vmlinuz" >"$dir/Image.gz"
    fi
    "$RIG_HERE/mkinitrd.sh" "$dir/initrd"
    "$KERNEL_SLOT" "$dir" "$PARTS/kernel.ext4" "$KERNEL_SIZE"
}

# The read-only root of a slot. The kernel modules it needs were loaded by
# the initrd and stay loaded, so it carries none.
make_rootfs_squashfs() {
    local edge=$1 dir="$WORK/rootfs"
    mkdir -p "$dir"/{dev,proc,sys,run,tmp,boot,data,root,var,etc/edge,usr/bin}
    install_busybox "$dir"
    install -m 755 "$edge" "$dir/usr/bin/edge"
    cp -a "$OVERLAY/." "$dir/"
    if [[ -n ${EDGE_RIG_EXTRA_OVERLAY:-} ]]; then
        [[ -d $EDGE_RIG_EXTRA_OVERLAY ]] || die "no directory at $EDGE_RIG_EXTRA_OVERLAY"
        cp -a "$EDGE_RIG_EXTRA_OVERLAY/." "$dir/"
    fi
    # Programs that expect a writable /var find tmpfs there.
    ln -s ../run "$dir/var/run"
    ln -s ../tmp "$dir/var/tmp"
    ln -s ../tmp "$dir/var/log"
    mksquashfs "$dir" "$PARTS/rootfs.squashfs" \
        -comp zstd -all-root -noappend -quiet -no-progress >/dev/null
}

# FAT, as a partner's computer reads it; mkfs.vfat picks FAT16 or FAT32 by
# size, the same call Buildroot's post-image makes. A fixed volume id keeps
# the image reproducible.
make_boot_vfat() {
    local img="$PARTS/boot.vfat"
    mkimage -A arm64 -T script -C none -d "$BOOT_CMD" "$WORK/boot.scr" >/dev/null
    truncate -s "$BOOT_SIZE" "$img"
    mkfs.vfat -n EDGE-BOOT -i 0ed9eb00 "$img" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -i "$img" "$WORK/boot.scr" ::boot.scr
    MTOOLS_SKIP_CHECK=1 mcopy -i "$img" "$PROVISIONING" ::edge.toml
}

# The factory boot state. Variables in the order U-Boot's `env export`
# writes them (sorted), padding NUL, so the block is byte for byte what the
# boot script itself writes for the same values.
make_bootstate() {
    local img="$PARTS/bootstate.img" block="$WORK/bootstate.block"
    printf '%s\n' 'BOOT_A_LEFT=3' 'BOOT_B_LEFT=3' 'BOOT_ORDER=A B' >"$WORK/bootstate.txt"
    mkenvimage -s "$BOOTSTATE_BLOCK" -p 0x00 -o "$block" "$WORK/bootstate.txt"
    dd if="$block" of="$img" bs=1K conv=notrunc status=none
    dd if="$block" of="$img" bs=1K seek="$BOOTSTATE_COPY1_KIB" conv=notrunc status=none
    truncate -s "$BOOTSTATE_SIZE" "$img"
}

make_data_ext4() {
    make_ext4 "$PARTS/data.ext4" "$DATA_SIZE" data
}

# make_ext4 IMAGE SIZE LABEL: an empty ext4 image of SIZE. The image stays
# sparse.
make_ext4() {
    local img=$1 size=$2 label=$3
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F -L "$label" -E root_owner=0:0 "$img"
}

# genimage writes into a directory of its own; the finished image is
# renamed into place so a concurrent reader never sees half of it.
run_genimage() {
    local outdir=$1
    mkdir -p "$WORK/genimage-root" "$WORK/genimage-out"
    genimage \
        --rootpath "$WORK/genimage-root" \
        --tmppath "$WORK/genimage-tmp" \
        --inputpath "$PARTS" \
        --outputpath "$WORK/genimage-out" \
        --config "$GENIMAGE_CFG" >"$WORK/genimage.log" 2>&1 ||
        die "genimage failed: $(cat "$WORK/genimage.log")"
    mv "$WORK/genimage-out/disk.img" "$outdir/disk.img"
}

main "$@"
