#!/bin/sh
# The apply half of bench/image.sh, run inside the QEMU box (busybox ash) from
# the bench disk, which also holds the bundle, its public key, an `edge.toml`
# with an `[update]` section trusting that key, and bench.env (how many
# rounds, where the payloads sit in the bundle).
#
# Each round times `edge update install --no-reboot` of the bundle into the
# inactive slot B, then a plain `dd conv=fsync` of the same payload bytes, cut
# from the same bundle file, into the same partitions (kernel_b, rootfs_b).
# Before each: the boot state and the updater's record are put back as they
# were, everything is synced and the page cache dropped, so both read the
# bundle from the bench disk and write through to the box's disk.
#
# Prints one `image-bench: round=N apply_s=… dd_s=… …` line per round on the
# console, or `image-bench: error: …` and stops at the first failure.
set -eu

here=$(dirname "$0")
# shellcheck source=/dev/null
. "$here/bench.env"
bundle=$here/update.bundle
config=$here/edge.toml
# The updater's record, as the bench's edge.toml names it: on tmpfs, so the
# box's own /data/edge is never touched.
state=/tmp/image-bench-state

fail() {
    echo "image-bench: error: $*" >&2
    exit 1
}

# The device name of the partition with GPT name $1 (docs/image.md).
partition() {
    for uevent in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$1" "$uevent"; then
            sed -n 's/^DEVNAME=//p' "$uevent"
            return 0
        fi
    done
    fail "no partition named $1"
}

# Seconds since boot, to 10 ms: busybox `date` has no %N.
now() { cut -d ' ' -f 1 /proc/uptime; }

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# MiB read from the partitions $@ so far (field 3 of a block device's stat
# counts 512-byte sectors read from the device, not from the page cache).
read_mib() {
    for dev in "$@"; do
        awk '{ print $3 }' "/sys/class/block/$dev/stat"
    done | awk '{ s += $1 } END { printf "%.1f", s / 2048 }'
}

# Both contenders start alike: the boot state the box booted with, no
# updater record, nothing dirty, nothing cached.
reset() {
    dd if=/tmp/image-bench-bootstate of="/dev/$bootstate" bs=64k conv=notrunc,fsync status=none
    rm -rf "$state"
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# The installer reuses what slot B already holds of the bundle (docs/update.md,
# step 4), which after a round is all of it: spoil the first MiB of both
# payloads so that each round installs the whole bundle, as a first install
# does.
spoil_slot() {
    for dev in "$kernel_b" "$rootfs_b"; do
        dd if=/dev/zero of="/dev/$dev" bs=1M count=1 conv=notrunc,fsync status=none
    done
}

apply_once() {
    spoil_slot
    reset
    before=$(read_mib "$kernel_b" "$rootfs_b")
    start=$(now)
    /usr/bin/edge update install --no-reboot --config "$config" "$bundle" >/tmp/image-bench-edge.log 2>&1 ||
        fail "edge update install: $(tail -n 3 /tmp/image-bench-edge.log)"
    apply_s=$(elapsed "$start" "$(now)")
    apply_read=$(awk -v a="$before" -v b="$(read_mib "$kernel_b" "$rootfs_b")" 'BEGIN { printf "%.1f", b - a }')
}

dd_once() {
    reset
    start=$(now)
    dd if="$bundle" of="/dev/$kernel_b" bs=1M iflag=skip_bytes,count_bytes \
        skip="$KERNEL_OFFSET" count="$KERNEL_SIZE" conv=notrunc,fsync status=none
    dd if="$bundle" of="/dev/$rootfs_b" bs=1M iflag=skip_bytes,count_bytes \
        skip="$ROOTFS_OFFSET" count="$ROOTFS_SIZE" conv=notrunc,fsync status=none
    dd_s=$(elapsed "$start" "$(now)")
}

main() {
    grep -q 'edge.slot=A' /proc/cmdline || fail "the box did not boot slot A"
    bootstate=$(partition bootstate)
    kernel_b=$(partition kernel_b)
    rootfs_b=$(partition rootfs_b)
    dd if="/dev/$bootstate" of=/tmp/image-bench-bootstate bs=64k status=none
    echo "image-bench: box: $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU," \
        "bench disk $(findfs LABEL=image-bench), bundle $(wc -c <"$bundle") bytes," \
        "slot B on /dev/$kernel_b and /dev/$rootfs_b"

    round=1
    while [ "$round" -le "$APPLIES" ]; do
        apply_once
        dd_once
        echo "image-bench: round=$round apply_s=$apply_s dd_s=$dd_s apply_slot_read_mib=$apply_read"
        round=$((round + 1))
    done
    reset
    echo "image-bench: done"
}

main "$@"
