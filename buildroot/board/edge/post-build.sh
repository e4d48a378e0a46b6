#!/usr/bin/env bash
# Buildroot post-build step of the edge image: finishes the root filesystem
# before it is packed into the read-only squashfs of a slot.
#
#   post-build.sh TARGET_DIR [BOARD]
#
# Buildroot runs it after copying BR2_ROOTFS_OVERLAY, with BR2_CONFIG and
# BR2_EXTERNAL_EDGE_PATH in the environment. BOARD (qemu-virt or rpi4, from
# BR2_ROOTFS_POST_SCRIPT_ARGS) is not used here: both boards get the same root.
set -euo pipefail

readonly TARGET_DIR=${1:?usage: post-build.sh TARGET_DIR [BOARD]}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
# The external tree is buildroot/ in the edge repository; everything it
# shares with the QEMU rig and the image crate lives beside it.
readonly REPO_ROOT=${BR2_EXTERNAL_EDGE_PATH:-$HERE/../..}/..
readonly OVERLAY=$REPO_ROOT/image/rootfs-overlay

main() {
    apply_overlay_unless_configured
    make_mount_points
    remove_writers_of_the_root
    check_essentials
}

log() {
    printf 'edge post-build: %s\n' "$*" >&2
}

die() {
    printf 'edge post-build: error: %s\n' "$*" >&2
    exit 1
}

# The defconfigs name the overlay in BR2_ROOTFS_OVERLAY, and then Buildroot
# has copied it already. A configuration derived by hand may have dropped
# it, and a root without the box's inittab and rcS does not start edge, so
# apply it here in that case rather than build an image that cannot work.
apply_overlay_unless_configured() {
    local configured=""
    if [[ -n ${BR2_CONFIG:-} && -f $BR2_CONFIG ]]; then
        configured=$(sed -n 's/^BR2_ROOTFS_OVERLAY="\(.*\)"$/\1/p' "$BR2_CONFIG")
    fi
    if [[ $configured == *image/rootfs-overlay* ]]; then
        return
    fi
    [[ -d $OVERLAY ]] || die "no rootfs overlay at $OVERLAY"
    log "BR2_ROOTFS_OVERLAY does not name image/rootfs-overlay; copying $OVERLAY"
    cp -a "$OVERLAY/." "$TARGET_DIR/"
}

# The root is read-only, so every mount point must exist in the image: the
# data partition, the FAT boot partition with the provisioning file, and the
# tmpfs mounts the overlay's rcS makes.
make_mount_points() {
    local dir
    for dir in data boot run tmp proc sys dev; do
        mkdir -p "$TARGET_DIR/$dir"
    done
}

# Nothing in a slot may expect to write to its own root: state belongs on
# /data, which survives an update, or in tmpfs. The overlay's rcS brings the
# whole system up itself and never runs the S?? scripts Buildroot's packages
# install; several of those write to the root (seedrng keeps its seed under
# /var/lib, ifup its state under /etc/network). Drop them, so the root shows
# only what actually runs. Entropy comes from the hardware generators the
# kernel fragment builds in, not from a saved seed.
remove_writers_of_the_root() {
    local script
    for script in "$TARGET_DIR"/etc/init.d/S[0-9][0-9]*; do
        [[ -e $script ]] || continue
        log "removing /etc/init.d/$(basename "$script"): rcS does not run it"
        rm -f "$script"
    done
    rm -rf "$TARGET_DIR/var/lib/seedrng"
    if [[ -f $TARGET_DIR/etc/inittab ]] &&
        grep -q 'remount,rw' "$TARGET_DIR/etc/inittab"; then
        die "/etc/inittab remounts the root writable; the overlay's inittab must not"
    fi
}

# A root filesystem without these boots into nothing; failing the build is
# cheaper than finding out on a partner's desk.
check_essentials() {
    local file
    for file in usr/bin/edge etc/inittab etc/init.d/rcS etc/init.d/edge; do
        [[ -e $TARGET_DIR/$file ]] || die "the root filesystem has no /$file"
    done
}

main "$@"
