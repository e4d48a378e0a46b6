# Boot chooser of the edge box, run by U-Boot's distro boot from the FAT
# `boot` partition (compile: mkimage -A arm64 -T script -C none -d boot.cmd boot.scr).
#
# docs/image.md is the contract this script implements: it reads the boot
# state from the raw `bootstate` partition (copy 0, else copy 1, else the
# defaults), picks the first slot of BOOT_ORDER with tries left, counts the
# try by writing the state back (copy 0, then copy 1), and boots that slot's
# kernel. Nothing here may persist through `saveenv`: the boot state lives
# only on the partition.
#
# Lines starting with "edge-boot:" are read by the QEMU rig's tests; keep
# them stable.

# Distro boot says which device the script came from; the slots are on the
# same one. Run by hand (`source`), assume the QEMU rig's disk.
test -n "${devtype}" || setenv devtype virtio
test -n "${devnum}" || setenv devnum 0
${devtype} dev ${devnum}

# Partition numbers are fixed by docs/image.md: 2 bootstate, 3/4 kernel_a/b,
# 5/6 rootfs_a/b. The state is read into the kernel's load area, which is
# free until the kernel is loaded after the state has been written back.
setenv edge_buf ${kernel_addr_r}
if part start ${devtype} ${devnum} 2 edge_copy0; then
    # Copy 1 is 64 KiB (0x80 blocks of 512 bytes) after copy 0.
    setexpr edge_copy1 ${edge_copy0} + 0x80
else
    echo "edge-boot: no bootstate partition on ${devtype} ${devnum}"
    setenv edge_copy0
fi

# A copy counts only if its CRC holds and all three variables have valid
# values; only these three are imported, so the partition cannot set any
# other variable of U-Boot (bootcmd, bootargs) by accident or on purpose.
setenv edge_state
for edge_copy in 0 1; do
    if test -z "${edge_state}" && test -n "${edge_copy0}"; then
        setenv BOOT_ORDER
        setenv BOOT_A_LEFT
        setenv BOOT_B_LEFT
        if test ${edge_copy} = 0; then
            setenv edge_blk ${edge_copy0}
        else
            setenv edge_blk ${edge_copy1}
        fi
        if ${devtype} read ${edge_buf} ${edge_blk} 0x20; then
            if env import -c ${edge_buf} 0x4000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then
                setenv edge_state ${edge_copy}
            fi
        fi
        if test "x${BOOT_ORDER}" != "xA B" && test "x${BOOT_ORDER}" != "xB A"; then
            setenv edge_state
        fi
        setenv edge_valid_a
        setenv edge_valid_b
        for edge_v in 0 1 2 3; do
            test "x${BOOT_A_LEFT}" = "x${edge_v}" && setenv edge_valid_a 1
            test "x${BOOT_B_LEFT}" = "x${edge_v}" && setenv edge_valid_b 1
        done
        if test -z "${edge_valid_a}" || test -z "${edge_valid_b}"; then
            setenv edge_state
        fi
        if test -n "${edge_state}"; then
            echo "edge-boot: boot state from copy ${edge_copy}"
        else
            echo "edge-boot: copy ${edge_copy} of the boot state is damaged"
        fi
    fi
done
if test -z "${edge_state}"; then
    echo "edge-boot: no valid copy of the boot state; using the defaults"
    setenv BOOT_ORDER "A B"
    setenv BOOT_A_LEFT 3
    setenv BOOT_B_LEFT 3
fi

# The first slot of BOOT_ORDER with tries left, its counter decremented. When
# no slot has tries left, both get 3 again and the second pass takes the
# first slot of BOOT_ORDER: a box that never boots is worse than one that
# retries.
setenv edge_slot
for edge_pass in 1 2; do
    if test -z "${edge_slot}"; then
        if test ${edge_pass} = 2; then
            echo "edge-boot: no slot has tries left; both counters reset to 3"
            setenv BOOT_A_LEFT 3
            setenv BOOT_B_LEFT 3
        fi
        for edge_try in ${BOOT_ORDER}; do
            if test -z "${edge_slot}"; then
                if test ${edge_try} = A && test ${BOOT_A_LEFT} -gt 0; then
                    setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
                    setenv edge_slot A
                elif test ${edge_try} = B && test ${BOOT_B_LEFT} -gt 0; then
                    setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
                    setenv edge_slot B
                fi
            fi
        done
    fi
done
echo "edge-boot: chose slot ${edge_slot}"
echo "edge-boot: BOOT_ORDER=${BOOT_ORDER} BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"

# Count the try before booting, so a kernel that hangs or panics has used it.
# `env export -c -s 0x4000` writes the CRC over exactly 0x4000 - 4 bytes and
# NUL-pads the block, as mkenvimage does. Copy 0 first, then copy 1: a power
# cut between the two leaves one valid copy.
if test -n "${edge_copy0}"; then
    env export -c -s 0x4000 ${edge_buf} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
    setenv edge_written
    if ${devtype} write ${edge_buf} ${edge_copy0} 0x20; then
        ${devtype} write ${edge_buf} ${edge_copy1} 0x20 && setenv edge_written 1
    fi
    if test -n "${edge_written}"; then
        echo "edge-boot: boot state written"
    else
        echo "edge-boot: could not write the boot state; this try is not counted"
    fi
fi

if test ${edge_slot} = A; then
    setenv edge_kernel_part 3
    setenv edge_root_part 5
else
    setenv edge_kernel_part 4
    setenv edge_root_part 6
fi

# The root is named by partition UUID, which the kernel resolves without an
# initrd (the production kernel has its drivers built in); an initrd, where a
# slot has one, mounts the root itself from edge.slot.
part uuid ${devtype} ${devnum}:${edge_root_part} edge_root_uuid
setenv bootargs "console=ttyAMA0 panic=-1 quiet edge.slot=${edge_slot}"
setenv bootargs "${bootargs} root=PARTUUID=${edge_root_uuid} rootfstype=squashfs ro rootwait"

# The device tree: the slot's own where it carries one at the path U-Boot's
# `fdtfile` names (the Raspberry Pi's U-Boot sets it, e.g.
# broadcom/bcm2711-rpi-4-b.dtb), so a kernel and its device tree are updated
# together; else the one the firmware handed over (QEMU's, or the Raspberry
# Pi firmware's with the overlays of config.txt applied).
setenv edge_fdt ${fdt_addr}
test -n "${edge_fdt}" || setenv edge_fdt ${fdtcontroladdr}
if test -n "${fdtfile}" && test -n "${fdt_addr_r}"; then
    if ext4load ${devtype} ${devnum}:${edge_kernel_part} ${fdt_addr_r} ${fdtfile}; then
        setenv edge_fdt ${fdt_addr_r}
    fi
fi

# The kernel: `Image.gz` where the slot has one, else an uncompressed
# `Image`. booti unpacks a gzip'd kernel into a scratch area at
# kernel_comp_addr_r, then moves it to kernel_addr_r. Where the board's
# U-Boot leaves that unset (QEMU's does, the Raspberry Pi's does not), the
# scratch area starts 32 MiB above the initrd's load address, which leaves
# room for an initrd of up to 32 MiB.
setenv edge_kernel
if ext4load ${devtype} ${devnum}:${edge_kernel_part} ${kernel_addr_r} Image.gz; then
    setenv kernel_comp_size ${filesize}
    test -n "${kernel_comp_addr_r}" || setexpr kernel_comp_addr_r ${ramdisk_addr_r} + 0x2000000
    setenv edge_kernel Image.gz
elif ext4load ${devtype} ${devnum}:${edge_kernel_part} ${kernel_addr_r} Image; then
    setenv edge_kernel Image
fi
if test -n "${edge_kernel}"; then
    if ext4load ${devtype} ${devnum}:${edge_kernel_part} ${ramdisk_addr_r} initrd; then
        echo "edge-boot: booting slot ${edge_slot} from ${edge_kernel} with its initrd"
        booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${edge_fdt}
    else
        echo "edge-boot: booting slot ${edge_slot} from ${edge_kernel}"
        booti ${kernel_addr_r} - ${edge_fdt}
    fi
fi

# Only reached when the slot's kernel is missing or does not start. The try
# is already counted, so resetting lets the next boot move on to the other
# slot once this one's tries are used up.
echo "edge-boot: slot ${edge_slot} did not boot; resetting"
reset
