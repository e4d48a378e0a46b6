#!/usr/bin/env bash
# Buildroot post-image step of the edge image: turns Buildroot's outputs
# into the partition images the layout expects, lays them out on one disk
# image with genimage, and writes the block map for bmaptool.
#
#   post-image.sh BINARIES_DIR BOARD
#
# BOARD is qemu-virt or rpi4 (BR2_ROOTFS_POST_SCRIPT_ARGS). Buildroot runs
# the script with HOST_DIR, BUILD_DIR and BR2_EXTERNAL_EDGE_PATH set.
#
# In BINARIES_DIR it reads Image, rootfs.squashfs and, for rpi4, u-boot.bin,
# the kernel's bcm2711-*.dtb and rpi-firmware/. It writes the inputs named
# by image/layout/genimage.cfg (boot.vfat, bootstate.img, kernel.ext4,
# data.ext4, next to rootfs.squashfs), the disk image that file describes,
# its .bmap and a gzip copy for flashing.
#
# Partition image sizes default to the QEMU rig's layout in docs/image.md
# and must not exceed the partitions of genimage.cfg; genimage fails if one
# does. Override them with EDGE_BOOT_VFAT_SIZE, EDGE_KERNEL_EXT4_SIZE and
# EDGE_DATA_EXT4_SIZE (any size truncate(1) accepts).
set -euo pipefail

readonly BINARIES_DIR=${1:?usage: post-image.sh BINARIES_DIR BOARD}
readonly BOARD=${2:?usage: post-image.sh BINARIES_DIR BOARD}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly REPO_ROOT=${BR2_EXTERNAL_EDGE_PATH:-$HERE/../..}/..
readonly BOOT_CMD=$REPO_ROOT/image/boot/boot.cmd
readonly GENIMAGE_CFG=$REPO_ROOT/image/layout/genimage.cfg
readonly KERNEL_SLOT=$REPO_ROOT/image/layout/kernel-slot.sh
readonly PROVISIONING_SAMPLE=$REPO_ROOT/examples/edge.toml

readonly BOOT_VFAT_SIZE=${EDGE_BOOT_VFAT_SIZE:-32M}
readonly KERNEL_EXT4_SIZE=${EDGE_KERNEL_EXT4_SIZE:-48M}
readonly DATA_EXT4_SIZE=${EDGE_DATA_EXT4_SIZE:-64M}

# docs/image.md: each copy of the boot state is one 16 KiB U-Boot
# environment block; copy 0 sits at offset 0, copy 1 at 64 KiB.
readonly BOOTSTATE_BLOCK=0x4000
readonly BOOTSTATE_COPY1_KIB=64
readonly BOOTSTATE_IMAGE_KIB=128

main() {
    case $BOARD in
    qemu-virt | rpi4) ;;
    *) die "unknown board '$BOARD' (expected qemu-virt or rpi4)" ;;
    esac
    use_buildroot_host_tools
    require_inputs

    WORK=$(mktemp -d "${BUILD_DIR:-/tmp}/edge-post-image.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT

    make_boot_script
    make_boot_vfat
    make_kernel_ext4
    make_bootstate
    make_data_ext4
    run_genimage
    make_bmap_and_archive
}

log() {
    printf 'edge post-image: %s\n' "$*" >&2
}

die() {
    printf 'edge post-image: error: %s\n' "$*" >&2
    exit 1
}

# Buildroot built mkimage, mkenvimage, genimage, mkfs.vfat, mtools, mke2fs
# and bmaptool into HOST_DIR; prefer those to whatever the build host has,
# so the image does not depend on the host's versions.
use_buildroot_host_tools() {
    if [[ -n ${HOST_DIR:-} ]]; then
        PATH=$HOST_DIR/bin:$HOST_DIR/sbin:$PATH
    fi
    local tool
    for tool in mkimage mkenvimage genimage mkfs.vfat mcopy mmd mkfs.ext4 debugfs e2fsck resize2fs dumpe2fs bmaptool gzip; do
        command -v "$tool" >/dev/null ||
            die "$tool not found; the defconfigs build it (host-uboot-tools, host-genimage, host-dosfstools, host-mtools, host-e2fsprogs, host-bmap-tools)"
    done
}

require_inputs() {
    local file
    for file in "$BOOT_CMD" "$GENIMAGE_CFG" "$PROVISIONING_SAMPLE" \
        "$BINARIES_DIR/Image" "$BINARIES_DIR/rootfs.squashfs"; do
        [[ -f $file ]] || die "missing $file"
    done
    if [[ $BOARD == rpi4 ]]; then
        [[ -f $BINARIES_DIR/u-boot.bin ]] || die "missing $BINARIES_DIR/u-boot.bin"
        [[ -d $BINARIES_DIR/rpi-firmware ]] || die "missing $BINARIES_DIR/rpi-firmware/"
        rpi_dtbs >/dev/null
    fi
}

# The device trees the kernel built for the Raspberry Pi 4 family, one per
# line; failing when there is none.
rpi_dtbs() {
    local found=0 dtb
    for dtb in "$BINARIES_DIR"/bcm2711-*.dtb; do
        [[ -f $dtb ]] || continue
        printf '%s\n' "$dtb"
        found=1
    done
    [[ $found == 1 ]] || die "no bcm2711-*.dtb in $BINARIES_DIR"
}

make_boot_script() {
    log "compiling $BOOT_CMD"
    mkimage -A arm64 -T script -C none -d "$BOOT_CMD" "$BINARIES_DIR/boot.scr" >/dev/null
}

# The boot partition is the one a partner sees when the card is in a PC.
# It carries the boot script and a sample provisioning file; the partner
# saves their own as edge.toml beside it. On the Raspberry Pi it also
# carries what the GPU firmware needs to start U-Boot. mkfs.vfat picks FAT16
# or FAT32 from the size, so the cluster count matches the type and every
# operating system reads the volume the same way.
make_boot_vfat() {
    local img=$BINARIES_DIR/boot.vfat
    log "making boot.vfat ($BOOT_VFAT_SIZE)"
    rm -f "$img"
    truncate -s "$BOOT_VFAT_SIZE" "$img"
    mkfs.vfat -n EDGE-BOOT -i 0ed9eb00 "$img" >/dev/null

    export MTOOLS_SKIP_CHECK=1
    mcopy -i "$img" "$BINARIES_DIR/boot.scr" ::boot.scr
    mcopy -i "$img" "$PROVISIONING_SAMPLE" ::edge.toml.example
    if [[ $BOARD == rpi4 ]]; then
        add_rpi_boot_files "$img"
    fi
}

# The GPU firmware reads config.txt, loads the device tree matching the
# board and applies its overlays, then starts u-boot.bin as its "kernel";
# U-Boot hands that device tree on.
add_rpi_boot_files() {
    local img=$1 file dtb
    for file in "$BINARIES_DIR"/rpi-firmware/*; do
        [[ -f $file ]] || continue
        mcopy -i "$img" "$file" "::$(basename "$file")"
    done
    if [[ -d $BINARIES_DIR/rpi-firmware/overlays ]]; then
        mmd -i "$img" ::overlays
        mcopy -s -i "$img" "$BINARIES_DIR"/rpi-firmware/overlays/* ::overlays/
    fi
    while read -r dtb; do
        mcopy -i "$img" "$dtb" "::$(basename "$dtb")"
    done < <(rpi_dtbs)
    mcopy -i "$img" "$BINARIES_DIR/u-boot.bin" ::u-boot.bin
}

# One kernel image serves both kernel slots at the factory, gzip'd as
# Image.gz (booti unpacks it; the slot and every update bundle carry a third
# of the bytes). The Raspberry Pi's device trees built with that kernel ride
# along in the slot, so an update can carry a matching device tree. The
# boot script hands the kernel the firmware's device tree (from the boot
# partition, with the config.txt overlays applied), not these. The slot's
# file system is made as the QEMU rig makes it (image/layout/kernel-slot.sh).
make_kernel_ext4() {
    local img=$BINARIES_DIR/kernel.ext4 dir=$WORK/kernel dtb
    mkdir -p "$dir"
    gzip -9 -n -c "$BINARIES_DIR/Image" >"$dir/Image.gz"
    if [[ $BOARD == rpi4 ]]; then
        while read -r dtb; do
            cp "$dtb" "$dir/"
        done < <(rpi_dtbs)
    fi
    "$KERNEL_SLOT" "$dir" "$img" "$KERNEL_EXT4_SIZE"
    log "made kernel.ext4 ($(stat -c %s "$img") bytes, at most $KERNEL_EXT4_SIZE)"
}

make_data_ext4() {
    log "making data.ext4 ($DATA_EXT4_SIZE)"
    make_ext4 "$BINARIES_DIR/data.ext4" "$DATA_EXT4_SIZE" data
}

# make_ext4 IMAGE SIZE LABEL: an empty ext4 image.
make_ext4() {
    local img=$1 size=$2 label=$3
    rm -f "$img"
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F -L "$label" -E root_owner=0:0 "$img"
}

# The initial boot state: slot A first, three tries on each slot, in the
# order U-Boot's `env export` writes variables, so the factory state is
# byte for byte what the boot script itself would write. Padding is NUL,
# as docs/image.md defines the block.
make_bootstate() {
    local img=$BINARIES_DIR/bootstate.img copy=$WORK/bootstate.block
    log "making bootstate.img"
    printf '%s\n' 'BOOT_A_LEFT=3' 'BOOT_B_LEFT=3' 'BOOT_ORDER=A B' >"$WORK/bootstate.txt"
    mkenvimage -s "$BOOTSTATE_BLOCK" -p 0x00 -o "$copy" "$WORK/bootstate.txt"
    rm -f "$img"
    dd if="$copy" of="$img" bs=1K conv=notrunc status=none
    dd if="$copy" of="$img" bs=1K seek="$BOOTSTATE_COPY1_KIB" conv=notrunc status=none
    truncate -s "$((BOOTSTATE_IMAGE_KIB * 1024))" "$img"
}

run_genimage() {
    log "laying out the disk with $GENIMAGE_CFG"
    local root=$WORK/genimage-root tmp=$WORK/genimage-tmp
    mkdir -p "$root"
    genimage \
        --rootpath "$root" \
        --tmppath "$tmp" \
        --inputpath "$BINARIES_DIR" \
        --outputpath "$BINARIES_DIR" \
        --config "$GENIMAGE_CFG"
}

# The disk image is the top-level `image NAME { hdimage ... }` section of
# genimage.cfg; the partition images are inputs, not sections.
disk_image_name() {
    awk '
        /^[[:space:]]*image[[:space:]]+[^[:space:]]+[[:space:]]*\{/ && depth == 0 {
            name = $2; depth = 1; next
        }
        depth > 0 {
            if ($0 ~ /^[[:space:]]*hdimage[[:space:]]*\{/ && depth == 1) { print name; exit }
            depth += gsub(/\{/, "{") - gsub(/\}/, "}")
        }
    ' "$GENIMAGE_CFG"
}

# bmaptool copies only the blocks that hold data and checks each range
# against the map's checksums, so a flashed card is verified as it is
# written. The gzip copy is what gets published; bmaptool and Etcher read
# it directly.
make_bmap_and_archive() {
    local name
    name=$(disk_image_name)
    [[ -n $name ]] || die "no 'image NAME { hdimage {} }' section in $GENIMAGE_CFG"
    local img=$BINARIES_DIR/$name
    [[ -f $img ]] || die "genimage did not write $img"
    log "writing $name.bmap and $name.gz"
    bmaptool create -o "$img.bmap" "$img"
    gzip -9 -n -k -f "$img"
}

main "$@"
