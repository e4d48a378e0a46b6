#!/usr/bin/env bash
# Boots the QEMU rig: Debian's arm64 kernel and the given initramfs on QEMU's
# `virt` board, serial console on stdio. Shared by `./dev run` and the QEMU
# tests so both boot the box the same way.
#
#   usage: tests/qemu/boot.sh INITRAMFS
#   EDGE_RIG_PORT      host port on 127.0.0.1 forwarded to the box's :443 (default 8443)
#   EDGE_RIG_CMDLINE   extra kernel command line; unknown key=value words reach
#                      /init and edge as environment variables (e.g. RUST_LOG=debug)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly CACHE="$ROOT/.rig/cache"

main() {
    [[ $# -eq 1 ]] || {
        echo "usage: $0 INITRAMFS" >&2
        exit 2
    }
    local initramfs=$1
    local port=${EDGE_RIG_PORT:-8443}
    [[ -f $CACHE/vmlinuz ]] || {
        echo "no rig kernel in $CACHE: run ./dev deps" >&2
        exit 1
    }

    # -no-reboot with panic=-1: a kernel panic or the init powering off ends
    #   QEMU instead of looping, so a test sees the failure at once.
    # restrict=on: the box cannot reach the host or beyond; only the explicit
    #   forward of 127.0.0.1:PORT to the box's :443 crosses the boundary.
    # romfile=: Debian's QEMU ships no iPXE option ROM unless ipxe-qemu is installed.
    # virtio-rng: the kernel's random pool is ready early, so TLS key generation
    #   in edge does not wait for entropy.
    exec qemu-system-aarch64 \
        -M virt -cpu cortex-a57 -m 512 -nographic -no-reboot \
        -kernel "$CACHE/vmlinuz" \
        -initrd "$initramfs" \
        -append "console=ttyAMA0 panic=-1 quiet ${EDGE_RIG_CMDLINE:-}" \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:443" \
        -device virtio-net-pci,netdev=n0,romfile= \
        -device virtio-rng-pci
}

main "$@"
