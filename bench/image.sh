#!/usr/bin/env bash
# Figures of the box image: the disk image and bundle sizes, power-on to
# healthy in QEMU through U-Boot, and the time `edge update install` takes
# inside the QEMU box to apply a bundle into the inactive slot, against a
# plain `dd` of the same payload bytes into the same partitions of the same
# virtual disk. Prints a table, then one line of name=value figures.
#
#   bench/image.sh            (BOOTS=3 and APPLIES=5 by default)
#
# The apply half boots a disk of its own: the factory root with
# bench/qemu/overlay laid over it (tests/qemu/mkdisk.sh's
# EDGE_RIG_EXTRA_OVERLAY), which runs bench/qemu/apply.sh from a second
# virtio disk (tests/qemu/boot.sh's EDGE_RIG_DRIVE) holding the bundle, and
# prints `image-bench:` lines on the serial console.
#
# docs/benchmarks.md says what each figure means and what it does not.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly BOOTS=${BOOTS:-3}
readonly APPLIES=${APPLIES:-5}
readonly COMPATIBLE=edge-qemu-aarch64
# Ample for APPLIES=5 under TCG on a busy machine (a round takes well under a
# minute); a box that hangs ends the run instead of the bench waiting forever.
readonly APPLY_TIMEOUT_S=${APPLY_TIMEOUT_S:-1800}

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
    log "building edge-bundle for the host"
    (cd "$ROOT" && cargo build -q --profile bench-fast -p image --features cli --bin edge-bundle)
}

host_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/bench-fast/$1"; }

box_edge() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/aarch64-unknown-linux-musl/release/edge"; }

make_disk() {
    log "assembling the factory disk image"
    "$ROOT/tests/qemu/mkdisk.sh" "$(box_edge)" "$work/factory" >&2
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

# payload_offset BUNDLE INDEX: where payload 0 (kernel) or 1 (rootfs) starts
# in the bundle (docs/bundle.md, "File layout"): the kernel at the first
# 4096-byte boundary after the 88-byte header and the manifest, the rootfs at
# the first one after the kernel.
payload_offset() {
    local bundle=$1 index=$2 manifest p0
    manifest=$(od -An -tu4 -j12 -N4 "$bundle" | tr -d ' ')
    p0=$(((88 + manifest + 4095) / 4096 * 4096))
    if ((index == 0)); then
        echo "$p0"
    else
        echo $(((p0 + $(stat -c %s "$work/factory/parts/kernel.ext4") + 4095) / 4096 * 4096))
    fi
}

# The bench disk: an ext4 image (no root needed) with the bundle, the key
# that signed it, an edge.toml whose [update] section trusts that key, the
# measurement script and its parameters. dd cuts the payloads out of the
# same bundle file, checked here to be byte for byte the slot images.
make_bench_drive() {
    local dir=$work/bench-drive parts=$work/factory/parts bundle=$work/update.bundle
    local kernel_offset rootfs_offset kernel_size rootfs_size
    mkdir -p "$dir"
    kernel_offset=$(payload_offset "$bundle" 0)
    rootfs_offset=$(payload_offset "$bundle" 1)
    kernel_size=$(stat -c %s "$parts/kernel.ext4")
    rootfs_size=$(stat -c %s "$parts/rootfs.squashfs")
    if ! cmp -s <(tail -c +$((kernel_offset + 1)) "$bundle" | head -c "$kernel_size") "$parts/kernel.ext4" ||
        ! cmp -s <(tail -c +$((rootfs_offset + 1)) "$bundle" | head -c "$rootfs_size") "$parts/rootfs.squashfs"; then
        log "the payloads are not where docs/bundle.md puts them"
        return 1
    fi

    cp "$bundle" "$dir/update.bundle"
    cp "$work/keys/bundle-signing.pub" "$dir/bundle-signing.pub"
    install -m 755 "$ROOT/bench/qemu/apply.sh" "$dir/apply.sh"
    cat >"$dir/edge.toml" <<TOML
# bench/image.sh: edge update install inside the box, trusting the bench's key.
[update]
compatible = "$COMPATIBLE"
keys = ["/run/image-bench/bundle-signing.pub"]
state_dir = "/tmp/image-bench-state"
TOML
    cat >"$dir/bench.env" <<ENV
APPLIES=$APPLIES
KERNEL_OFFSET=$kernel_offset
KERNEL_SIZE=$kernel_size
ROOTFS_OFFSET=$rootfs_offset
ROOTFS_SIZE=$rootfs_size
ENV
    local mib=$(($(du -s --block-size=1M --apparent-size "$dir" | cut -f1) + 16))
    truncate -s "${mib}M" "$work/bench-drive.ext4"
    mkfs.ext4 -q -F -b 4096 -L image-bench -E root_owner=0:0 -d "$dir" "$work/bench-drive.ext4"
}

# Boots the bench's own disk (the factory root with bench/qemu/overlay over
# it) with the bench disk attached; the box runs bench/qemu/apply.sh and
# powers off. Leaves the console's `image-bench:` lines in $work/rounds.
# Not run in a subshell, so that the exit trap knows QEMU's pid.
apply_in_box() {
    log "assembling the bench's disk image (factory root plus bench/qemu/overlay)"
    EDGE_RIG_EXTRA_OVERLAY=$ROOT/bench/qemu/overlay "$ROOT/tests/qemu/mkdisk.sh" "$(box_edge)" \
        "$work/bench-disk" >&2
    make_bench_drive
    local console=$work/apply-console.log
    EDGE_RIG_DRIVE=$work/bench-drive.ext4 EDGE_RIG_PORT=$(free_port) \
        timeout "$APPLY_TIMEOUT_S" "$ROOT/tests/qemu/boot.sh" "$work/bench-disk/disk.img" \
        </dev/null >"$console" 2>&1 &
    qemu_pid=$!
    wait "$qemu_pid" || true
    qemu_pid=
    tr -d '\r' <"$console" | grep '^image-bench:' >"$work/rounds" || true
    if ! grep -q '^image-bench: done' "$work/rounds"; then
        log "the box did not finish the measurement; its console ends:"
        tail -n 30 "$console" >&2
        return 1
    fi
}

# field NAME: the values of NAME= in the round lines on stdin, one a line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

main() {
    build
    make_disk
    make_bundle

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
    log "applying the bundle and dd-ing its payloads in the box, $APPLIES times each, interleaved"
    apply_in_box
    log "$(grep '^image-bench: box:' "$work/rounds")"
    local applies dds reads
    mapfile -t applies < <(field apply_s <"$work/rounds")
    mapfile -t dds < <(field dd_s <"$work/rounds")
    mapfile -t reads < <(field apply_slot_read_mib <"$work/rounds")
    local boot apply dd read
    boot=$(printf '%s\n' "${boots[@]}" | median)
    apply=$(printf '%s\n' "${applies[@]}" | median)
    dd=$(printf '%s\n' "${dds[@]}" | median)
    read=$(printf '%s\n' "${reads[@]}" | median)

    printf '%-34s %s\n' "disk image (apparent)" "$(mib "$apparent") MiB"
    printf '%-34s %s\n' "disk image (allocated)" "$(mib "$allocated") MiB"
    printf '%-34s %s\n' "disk image (gzip -1)" "$(mib "$gz") MiB"
    printf '%-34s %s\n' "update bundle" "$(mib "$bundle") MiB (payloads $(mib "$payload") MiB)"
    printf '%-34s %s s (median of %s: %s)\n' "power-on to healthy in QEMU" "$boot" "$BOOTS" "${boots[*]}"
    printf '%-34s %s s (median of %s: %s)\n' "edge update install, in the box" "$apply" "$APPLIES" "${applies[*]}"
    printf '%-34s %s s (median of %s: %s)\n' "dd conv=fsync, same bytes and disk" "$dd" "$APPLIES" "${dds[*]}"
    printf '%-34s %s MiB (median of %s: %s)\n' "slot B read from disk by install" "$read" "$APPLIES" "${reads[*]}"
    printf 'image-bench: disk_mib=%s allocated_mib=%s gz_mib=%s bundle_mib=%s boot_to_healthy_s=%s apply_s=%s dd_s=%s apply_vs_dd=%s apply_slot_read_mib=%s\n' \
        "$(mib "$apparent")" "$(mib "$allocated")" "$(mib "$gz")" "$(mib "$bundle")" \
        "$boot" "$apply" "$dd" "$(awk -v a="$apply" -v d="$dd" 'BEGIN {printf "%.2f", a / d}')" "$read"
}

main "$@"
