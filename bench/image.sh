#!/usr/bin/env bash
# Figures of the box image: the disk image and bundle sizes, power-on to
# healthy in QEMU through U-Boot, and the time `edge update install` takes to
# apply a bundle against a plain `dd` of the same payload bytes to the same
# partition files. Prints a table, then one line of name=value figures.
#
#   bench/image.sh            (BOOTS=3 and APPLIES=5 by default)
#
# docs/benchmarks.md says what each figure means and what it does not.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly BOOTS=${BOOTS:-3}
readonly APPLIES=${APPLIES:-5}
readonly COMPATIBLE=edge-qemu-aarch64

work=$(mktemp -d)
qemu_pid=
cleanup() {
    if [[ -n $qemu_pid ]]; then
        kill "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[image-bench] %s\n' "$*" >&2; }

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

now() { date +%s.%N; }

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

build() {
    "$ROOT/dev" build >&2
    log "building edge and edge-bundle for the host"
    (cd "$ROOT" && cargo build -q --profile bench-fast -p appliance &&
        cargo build -q --profile bench-fast -p image --features cli --bin edge-bundle)
}

host_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/bench-fast/$1"; }

make_disk() {
    log "assembling the factory disk image"
    "$ROOT/tests/qemu/mkdisk.sh" "${CARGO_TARGET_DIR:-$ROOT/target}/aarch64-unknown-linux-musl/release/edge" \
        "$work/factory" >&2
}

make_bundle() {
    local tool
    tool=$(host_bin edge-bundle)
    "$tool" keygen --out "$work/keys" >/dev/null
    "$tool" build --key "$work/keys/bundle-signing.pem" \
        --kernel "$work/factory/parts/kernel.ext4" --rootfs "$work/factory/parts/rootfs.squashfs" \
        --compatible "$COMPATIBLE" --version 0.99.0 --security-version 1 \
        --out "$work/update.bundle" >/dev/null 2>&1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Power-on to the first `200 ok` on /healthz over TLS from the host.
boot_to_healthy() {
    local disk=$work/boot.img port start
    cp --sparse=always "$work/factory/disk.img" "$disk"
    port=$(free_port)
    start=$(now)
    EDGE_RIG_PORT=$port "$ROOT/tests/qemu/boot.sh" "$disk" >/dev/null 2>&1 &
    qemu_pid=$!
    until [[ $(curl -ks --max-time 1 "https://127.0.0.1:$port/healthz" 2>/dev/null) == ok ]]; do
        kill -0 "$qemu_pid" 2>/dev/null || { log "QEMU exited"; return 1; }
        sleep 0.05
    done
    elapsed "$start" "$(now)"
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
}

# Partition files laid out as the box finds them (a sysfs naming them, a
# kernel command line), for `edge update install` on the host.
make_partitions() {
    local dir=$work/disk label
    mkdir -p "$dir"
    for label in bootstate kernel_a kernel_b rootfs_a rootfs_b; do
        mkdir -p "$dir/sys/class/block/$label"
        printf 'DEVNAME=%s\nPARTNAME=%s\n' "$label" "$label" >"$dir/sys/class/block/$label/uevent"
    done
    cp "$work/factory/parts/bootstate.img" "$dir/bootstate"
    truncate -s 48M "$dir/kernel_a" "$dir/kernel_b"
    truncate -s 64M "$dir/rootfs_a" "$dir/rootfs_b"
    echo "edge.slot=A" >"$dir/cmdline"
    cat >"$dir/edge.toml" <<TOML
[update]
keys = ["$work/keys/bundle-signing.pub"]
compatible = "$COMPATIBLE"
state_dir = "$dir/state"
sys_root = "$dir/sys"
dev_root = "$dir"
cmdline = "$dir/cmdline"
reboot = false
TOML
}

apply_once() {
    local dir=$work/disk start
    cp "$work/factory/parts/bootstate.img" "$dir/bootstate"
    rm -rf "$dir/state"
    sync
    start=$(now)
    "$(host_bin edge)" update install --no-reboot --config "$dir/edge.toml" "$work/update.bundle" 2>/dev/null
    elapsed "$start" "$(now)"
}

dd_once() {
    local dir=$work/disk start
    sync
    start=$(now)
    dd if="$work/factory/parts/kernel.ext4" of="$dir/kernel_b" bs=1M conv=notrunc,fsync status=none
    dd if="$work/factory/parts/rootfs.squashfs" of="$dir/rootfs_b" bs=1M conv=notrunc,fsync status=none
    elapsed "$start" "$(now)"
}

main() {
    build
    make_disk
    make_bundle
    make_partitions

    local disk=$work/factory/disk.img
    local apparent allocated gz bundle payload
    apparent=$(stat -c %s "$disk")
    allocated=$(($(stat -c %b "$disk") * $(stat -c %B "$disk")))
    gz=$(gzip -1 -c "$disk" | wc -c)
    bundle=$(stat -c %s "$work/update.bundle")
    payload=$(($(stat -c %s "$work/factory/parts/kernel.ext4") + $(stat -c %s "$work/factory/parts/rootfs.squashfs")))

    log "booting $BOOTS times"
    local boots=() i
    for ((i = 0; i < BOOTS; i++)); do boots+=("$(boot_to_healthy)"); done
    log "applying the bundle and dd-ing its payloads $APPLIES times each, interleaved"
    local applies=() dds=()
    for ((i = 0; i < APPLIES; i++)); do
        applies+=("$(apply_once)")
        dds+=("$(dd_once)")
    done
    local boot apply dd
    boot=$(printf '%s\n' "${boots[@]}" | median)
    apply=$(printf '%s\n' "${applies[@]}" | median)
    dd=$(printf '%s\n' "${dds[@]}" | median)

    printf '%-34s %s\n' "disk image (apparent)" "$(mib "$apparent") MiB"
    printf '%-34s %s\n' "disk image (allocated)" "$(mib "$allocated") MiB"
    printf '%-34s %s\n' "disk image (gzip -1)" "$(mib "$gz") MiB"
    printf '%-34s %s\n' "update bundle" "$(mib "$bundle") MiB (payloads $(mib "$payload") MiB)"
    printf '%-34s %s s (median of %s: %s)\n' "power-on to healthy in QEMU" "$boot" "$BOOTS" "${boots[*]}"
    printf '%-34s %s s (median of %s: %s)\n' "edge update install" "$apply" "$APPLIES" "${applies[*]}"
    printf '%-34s %s s (median of %s: %s)\n' "dd of the same payloads" "$dd" "$APPLIES" "${dds[*]}"
    printf 'image-bench: disk_mib=%s allocated_mib=%s gz_mib=%s bundle_mib=%s boot_to_healthy_s=%s apply_s=%s dd_s=%s apply_vs_dd=%s\n' \
        "$(mib "$apparent")" "$(mib "$allocated")" "$(mib "$gz")" "$(mib "$bundle")" \
        "$boot" "$apply" "$dd" "$(awk -v a="$apply" -v d="$dd" 'BEGIN {printf "%.2f", a / d}')"
}

main "$@"
