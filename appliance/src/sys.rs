//! The system calls the box needs that have no safe wrapper: three ioctls.
//!
//! This is the one module of the workspace allowed `unsafe`. Each function
//! takes an open file and plain values, builds the argument the kernel
//! expects, and returns `io::Result`; nothing unsafe leaves this file.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

use nix::libc::{c_int, c_longlong};

/// `BLKPG_RESIZE_PARTITION` of `<linux/blkpg.h>`.
const BLKPG_RESIZE_PARTITION: c_int = 3;

/// `struct blkpg_partition` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    /// Start, in bytes.
    start: c_longlong,
    /// Length, in bytes.
    length: c_longlong,
    /// Partition number.
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut BlkpgPartition,
}

// BLKPG is `_IO(0x12, 105)` yet takes a pointer: a "bad" ioctl in nix's terms.
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, c_int);

/// Tells the kernel that partition `number` of `disk` now spans `length`
/// bytes from `start`. Works while the partition is mounted, unlike a
/// re-read of the whole table.
pub(crate) fn resize_partition(
    disk: &File,
    number: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let mut partition = BlkpgPartition {
        start: c_longlong::try_from(start).map_err(invalid)?,
        length: c_longlong::try_from(length).map_err(invalid)?,
        pno: c_int::try_from(number).map_err(invalid)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: c_int::try_from(size_of::<BlkpgPartition>()).map_err(invalid)?,
        data: &raw mut partition,
    };
    // SAFETY: `disk` is an open file for the whole ioctl; `arg` and the
    // partition it points to are live, initialised `repr(C)` values laid out
    // as <linux/blkpg.h> declares them, and the kernel only reads them.
    unsafe { blkpg(disk.as_raw_fd(), &raw const arg) }?;
    Ok(())
}

/// Grows the mounted ext4 file system that `mounted` (any file or directory
/// on it) belongs to, to `blocks` blocks, online.
pub(crate) fn resize_ext4(mounted: &File, blocks: u64) -> io::Result<()> {
    // SAFETY: `mounted` is an open file for the whole ioctl, and the kernel
    // reads one u64 from the live `blocks`.
    unsafe { ext4_resize_fs(mounted.as_raw_fd(), &raw const blocks) }?;
    Ok(())
}

/// Sets a watchdog's timeout in seconds; returns the timeout the driver
/// chose, which may differ from the one asked for.
pub(crate) fn set_watchdog_timeout(watchdog: &File, seconds: u32) -> io::Result<u32> {
    let mut timeout =
        c_int::try_from(seconds).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `watchdog` is an open file for the whole ioctl, and the kernel
    // reads and writes one int through the pointer to the live `timeout`.
    unsafe { wdioc_settimeout(watchdog.as_raw_fd(), &raw mut timeout) }?;
    u32::try_from(timeout).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}
