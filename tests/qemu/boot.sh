#!/usr/bin/env bash
# Boots the QEMU rig: Debian's qemu_arm64 U-Boot as firmware on QEMU's `virt`
# board, the given disk image (tests/qemu/mkdisk.sh) on virtio-blk, serial
# console on stdio. U-Boot's distro boot finds boot.scr on the disk's FAT
# partition, and that script chooses the slot. Shared by `./dev run` and the
# QEMU tests so both boot the box the same way.
#
#   usage: tests/qemu/boot.sh DISK_IMAGE
#   EDGE_RIG_PORT   host port on 127.0.0.1 forwarded to the box's :443 (default 8443)
#   EDGE_RIG_SERVER host port on 127.0.0.1 the box reaches as 10.0.2.100:443
#                   (an update server of a test); default: none
#   EDGE_RIG_REBOOT "allow" lets the box reboot (an update does); default:
#                   a reboot ends QEMU
#   EDGE_RIG_DRIVE  a raw image attached as a second virtio disk (/dev/vdb in
#                   the box), for a measurement's own files (bench/image.sh);
#                   default: none
#
# The disk image is written to: the boot script counts tries in its bootstate
# partition and the box writes to its boot and data partitions. Boot a copy
# to keep the original.
set -euo pipefail

readonly UBOOT=/usr/lib/u-boot/qemu_arm64/u-boot.bin

main() {
    [[ $# -eq 1 ]] || {
        echo "usage: $0 DISK_IMAGE" >&2
        exit 2
    }
    local disk=$1
    local port=${EDGE_RIG_PORT:-8443}
    [[ -f $UBOOT ]] || {
        echo "no U-Boot at $UBOOT: run ./dev deps (package u-boot-qemu)" >&2
        exit 1
    }
    [[ -f $disk ]] || {
        echo "no disk image at $disk: run tests/qemu/mkdisk.sh" >&2
        exit 1
    }

    # -no-reboot with panic=-1 (on the kernel command line the boot script
    #   writes): a reboot, a kernel panic or a power-off ends QEMU instead of
    #   looping, so a test sees the failure at once.
    # restrict=on: the box cannot reach the host or beyond; only the explicit
    #   forward of 127.0.0.1:PORT to the box's :443 crosses the boundary.
    #   QEMU's own DHCP server inside the user network still answers.
    # romfile=: Debian's QEMU ships no iPXE option ROM unless ipxe-qemu is installed.
    # virtio-rng: the kernel's random pool is ready early, so TLS key generation
    #   in edge does not wait for entropy.
    # i6300esb: a watchdog on PCI (virt has none of its own) for edge to arm
    #   and feed; if it stops being fed, QEMU resets the board, which with
    #   -no-reboot ends QEMU.
    local netdev="user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:443"
    # guestfwd is the one way out of the restricted network: each connection
    # the box opens to 10.0.2.100:443 becomes an nc to the test's server on
    # the host's loopback.
    if [[ -n ${EDGE_RIG_SERVER:-} ]]; then
        netdev+=",guestfwd=tcp:10.0.2.100:443-cmd:nc 127.0.0.1 $EDGE_RIG_SERVER"
    fi
    local reboot=(-no-reboot)
    [[ ${EDGE_RIG_REBOOT:-} == allow ]] && reboot=()
    # After the boot disk, which stays U-Boot's `virtio 0` and the box's vda.
    local extra=()
    if [[ -n ${EDGE_RIG_DRIVE:-} ]]; then
        extra=(-drive "if=none,file=$EDGE_RIG_DRIVE,format=raw,id=hd1" -device "virtio-blk-pci,drive=hd1")
    fi

    exec qemu-system-aarch64 \
        -M virt -cpu cortex-a57 -m 512 -nographic "${reboot[@]}" \
        -bios "$UBOOT" \
        -drive "if=none,file=$disk,format=raw,id=hd0" \
        -device virtio-blk-pci,drive=hd0 \
        "${extra[@]}" \
        -netdev "$netdev" \
        -device virtio-net-pci,netdev=n0,romfile= \
        -device virtio-rng-pci \
        -device i6300esb
}

main "$@"
