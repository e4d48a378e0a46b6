#!/usr/bin/env bash
# Makes the file system image of a kernel slot (`kernel_a`/`kernel_b` in
# docs/image.md) from a directory: the QEMU rig's mkdisk.sh and Buildroot's
# post-image step both call it, so the two images and every update bundle
# carry slots made the same way.
#
#   usage: image/layout/kernel-slot.sh DIR IMAGE MAX_SIZE
#
# DIR holds the slot's files (Image.gz or Image, an initrd, device trees).
# The slot is written whole by the updater and only ever read, by U-Boot: an
# ext4 without journal, without room kept to grow, without blocks reserved
# for root, with a handful of inodes, every file owned by root, and shrunk
# to the fewest blocks that hold its files. genimage pads it to the
# partition. It fails if the files do not fit in MAX_SIZE (any size
# truncate(1) accepts), the partition's size.
#
# Needs e2fsprogs (mkfs.ext4, debugfs, e2fsck, resize2fs, dumpe2fs).
set -euo pipefail

die() {
    printf 'kernel-slot.sh: error: %s\n' "$*" >&2
    exit 1
}

main() {
    [[ $# -eq 3 ]] || {
        echo "usage: $0 DIR IMAGE MAX_SIZE" >&2
        exit 2
    }
    local dir=$1 img=$2 max_size=$3
    [[ -d $dir ]] || die "no directory at $dir"

    rm -f "$img"
    truncate -s "$max_size" "$img"
    mkfs.ext4 -q -F -L kernel -E root_owner=0:0 \
        -b 4096 -m 0 -N 64 -O ^has_journal,^resize_inode -d "$dir" "$img" ||
        die "the files of $dir do not fit in $max_size"
    give_to_root "$dir" "$img"
    shrink "$img"
}

# mke2fs copies the owner of each file it reads onto the image; the box
# reads them as root, so hand every file to root, whoever built the image.
give_to_root() {
    local dir=$1 img=$2 path
    (cd "$dir" && find . -mindepth 1 -printf '/%P\n') | while read -r path; do
        printf 'set_inode_field %s uid 0\nset_inode_field %s gid 0\n' "$path" "$path"
    done | debugfs -w -f - "$img" >/dev/null 2>&1 ||
        die "could not set file owners in $img"
}

shrink() {
    local img=$1 blocks block_size
    e2fsck -f -p "$img" >/dev/null || die "e2fsck found errors in $img"
    resize2fs -M "$img" >/dev/null 2>&1 || die "resize2fs could not shrink $img"
    blocks=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block count: *//p')
    block_size=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block size: *//p')
    [[ -n $blocks && -n $block_size ]] || die "cannot read the size of $img"
    truncate -s $((blocks * block_size)) "$img"
}

main "$@"
